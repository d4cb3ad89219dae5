//! The catalogue of GoTo endpoints the client calls.
//!
//! Each request is tagged with a static [`Endpoint`] so that errors and logs can name it by
//! method and path *template* (never the concrete URL, whose query string and path may carry
//! identifiers we do not want in every log line), and so the rate limiter knows which API's
//! quota the request spends — GoTo applies its 10 rps limit per API.

use std::fmt;

/// A GoTo API with its own rate-limit quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/notification-channel/v1`
    NotificationChannel,
    /// `/call-events/v1`
    CallEvents,
    /// `/call-events-report/v1`
    CallEventsReport,
    /// The token endpoint on the authentication host.
    OAuth,
}

impl Api {
    /// Every API, for iterating over per-API state.
    pub const ALL: [Api; 4] = [
        Api::NotificationChannel,
        Api::CallEvents,
        Api::CallEventsReport,
        Api::OAuth,
    ];

    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::NotificationChannel => "notification-channel",
            Api::CallEvents => "call-events",
            Api::CallEventsReport => "call-events-report",
            Api::OAuth => "oauth",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Api::NotificationChannel => 0,
            Api::CallEvents => 1,
            Api::CallEventsReport => 2,
            Api::OAuth => 3,
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint: which API, HTTP method and path template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The API whose quota this endpoint spends.
    pub api: Api,
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template, e.g. `/notification-channel/v1/channels/{nickname}`.
    pub template: &'static str,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.template)
    }
}

const fn ep(api: Api, method: &'static str, template: &'static str) -> Endpoint {
    Endpoint {
        api,
        method,
        template,
    }
}

/// `POST /oauth/token` on the authentication host.
pub const TOKEN: Endpoint = ep(Api::OAuth, "POST", "/oauth/token");
/// Create a channel (201). Not idempotent: a blind retry may create a second channel.
pub const CREATE_CHANNEL: Endpoint = ep(
    Api::NotificationChannel,
    "POST",
    "/notification-channel/v1/channels/{nickname}",
);
/// Refresh a (WebSocket) channel with the create body (200).
pub const REFRESH_CHANNEL: Endpoint = ep(
    Api::NotificationChannel,
    "PUT",
    "/notification-channel/v1/channels/{nickname}/{channelId}",
);
/// Extend a channel's lifetime by GoTo's default (200, body carries `channelLifetime`).
pub const EXTEND_CHANNEL_LIFETIME: Endpoint = ep(
    Api::NotificationChannel,
    "PUT",
    "/notification-channel/v1/channels/{nickname}/{channelId}/channel-lifetime",
);
/// Read one channel.
pub const GET_CHANNEL: Endpoint = ep(
    Api::NotificationChannel,
    "GET",
    "/notification-channel/v1/channels/{nickname}/{channelId}",
);
/// List the token user's channels (paged).
pub const LIST_CHANNELS: Endpoint = ep(
    Api::NotificationChannel,
    "GET",
    "/notification-channel/v1/channels",
);
/// Delete a channel (204; 404 when already gone).
pub const DELETE_CHANNEL: Endpoint = ep(
    Api::NotificationChannel,
    "DELETE",
    "/notification-channel/v1/channels/{nickname}/{channelId}",
);
/// Subscribe account keys to call events (207 multi-status).
pub const SUBSCRIBE_CALL_EVENTS: Endpoint =
    ep(Api::CallEvents, "POST", "/call-events/v1/subscriptions");
/// Read a channel's call-events subscriptions.
pub const LIST_CALL_EVENT_SUBSCRIPTIONS: Endpoint =
    ep(Api::CallEvents, "GET", "/call-events/v1/subscriptions");
/// Back-fill: the states of one conversation space (paged).
pub const CONVERSATION_EVENTS: Endpoint = ep(
    Api::CallEvents,
    "GET",
    "/call-events/v1/conversation-spaces/{conversationSpaceId}/events",
);
/// Last state of each active conversation of some accounts (paged).
pub const ACTIVE_CONVERSATIONS: Endpoint = ep(
    Api::CallEvents,
    "GET",
    "/call-events/v1/conversation-spaces",
);
/// One call's report (404 until the call ended and the report is ready).
pub const REPORT: Endpoint = ep(
    Api::CallEventsReport,
    "GET",
    "/call-events-report/v1/reports/{conversationSpaceId}",
);
/// Report summaries of an account in a time window (paged).
pub const REPORT_SUMMARIES: Endpoint = ep(
    Api::CallEventsReport,
    "GET",
    "/call-events-report/v1/report-summaries",
);
/// Subscribe account keys to `REPORT_SUMMARY` notifications (201).
pub const SUBSCRIBE_REPORTS: Endpoint = ep(
    Api::CallEventsReport,
    "POST",
    "/call-events-report/v1/subscriptions",
);
