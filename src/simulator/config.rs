//! Every setting of the simulator, in one serde tree loaded from TOML by the caller.
//!
//! GoTo leaves many behaviours undocumented (goto-api.md "Unknowns"); each such behaviour is a
//! setting here so the simulator can play every plausible variant and the bridge can be tested
//! against all of them. Defaults follow GoTo's official material where it exists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::FaultsConfig;
use super::traffic::TrafficConfig;

/// The whole simulator configuration (`callbridge simulate --config FILE`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Address the one HTTP/WebSocket listener binds (API, OAuth and control share it).
    pub listen: SocketAddr,
    /// Where the ground truth JSON is written on shutdown and on flush; None = not written.
    pub ground_truth_path: Option<PathBuf>,
    /// OAuth token endpoint settings.
    pub auth: AuthConfig,
    /// Notification Channel API settings.
    pub channels: ChannelsConfig,
    /// Call Events API settings.
    pub call_events: CallEventsConfig,
    /// Call Events Report API settings.
    pub reports: ReportsConfig,
    /// How notifications are shaped and delivered.
    pub delivery: DeliveryConfig,
    /// Per-API request rate limit.
    pub rate_limit: RateLimitConfig,
    /// How fast calls are started.
    pub scheduler: SchedulerConfig,
    /// What calls look like.
    pub traffic: TrafficConfig,
    /// Injected faults (changeable at run time through the control endpoint).
    pub faults: FaultsConfig,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ground_truth_path: None,
            auth: AuthConfig::default(),
            channels: ChannelsConfig::default(),
            call_events: CallEventsConfig::default(),
            reports: ReportsConfig::default(),
            delivery: DeliveryConfig::default(),
            rate_limit: RateLimitConfig::default(),
            scheduler: SchedulerConfig::default(),
            traffic: TrafficConfig::default(),
            faults: FaultsConfig::default(),
        }
    }
}

/// Every scope the simulator knows; granted by default.
pub const ALL_SCOPES: &[&str] = &[
    "call-events.v1.notifications.manage",
    "call-events.v1.events.read",
    "cr.v1.read",
    "notification-channel.v1.read",
    "notification-channel.v1.manage",
    "users.v1.read",
    "users.v1.lines.read",
];

/// OAuth settings. Credentials here are demo values, never real secrets.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The only accepted client id.
    pub client_id: String,
    /// The client secret (HTTP Basic).
    pub client_secret: String,
    /// Accepted personal access tokens (`grant_type=personal_access_token`).
    pub personal_access_tokens: Vec<String>,
    /// Accepted refresh tokens at start; auth-code grants add theirs.
    pub refresh_tokens: Vec<String>,
    /// Single-use authorization codes.
    pub authorization_codes: Vec<String>,
    /// Scopes granted to every token.
    pub scopes: Vec<String>,
    /// `expires_in` of access tokens.
    #[serde(with = "humantime_serde")]
    pub access_token_lifetime: Duration,
    /// Refresh grant issues a new refresh token (and invalidates the old one).
    pub rotate_refresh_token: bool,
    /// `principal` in token responses.
    pub principal: String,
}

impl std::fmt::Debug for AuthConfig {
    // Secrets are never printed, not even the demo ones: the habit matters more than the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("personal_access_tokens", &self.personal_access_tokens.len())
            .field("refresh_tokens", &self.refresh_tokens.len())
            .field("authorization_codes", &self.authorization_codes.len())
            .field("scopes", &self.scopes)
            .field("access_token_lifetime", &self.access_token_lifetime)
            .field("rotate_refresh_token", &self.rotate_refresh_token)
            .field("principal", &self.principal)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            client_id: "callbridge-demo".into(),
            client_secret: "demo-secret".into(),
            personal_access_tokens: vec!["demo-pat".into()],
            refresh_tokens: vec!["demo-refresh".into()],
            authorization_codes: vec!["demo-code".into()],
            scopes: ALL_SCOPES.iter().map(|s| s.to_string()).collect(),
            access_token_lifetime: Duration::from_secs(3600),
            rotate_refresh_token: false,
            principal: "demo@example.com".into(),
        }
    }
}

/// How the webhook URL is checked at channel creation.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookVerification {
    /// OPTIONS request, must answer 2xx.
    Options,
    /// Empty GET with `User-Agent: GoTo Notifications`, must answer 2xx.
    Get,
    /// No check.
    None,
}

/// Spelling of a WebSocket channel's type in responses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum WebSocketSpelling {
    /// `"WebSockets"` (GoTo's README example).
    WebSockets,
    /// `"WebSocket"`.
    WebSocket,
    /// Echo what the request used.
    #[serde(rename = "as_requested")]
    AsRequested,
}

/// Where a WebSocket channel's URL is returned.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebSocketUrlLocation {
    /// `channelData.channelURL` (official).
    ChannelData,
    /// Top-level `channelURL` (said to be in older docs).
    TopLevel,
}

/// Notification Channel API settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Default (and maximum) lifetime of a WebSocket channel.
    #[serde(with = "humantime_serde")]
    pub websocket_lifetime: Duration,
    /// Default (and maximum) lifetime of a Webhook channel.
    #[serde(with = "humantime_serde")]
    pub webhook_lifetime: Duration,
    /// `WEBSOCKET_REFRESH_REQUIRED` is sent when this much lifetime remains.
    #[serde(with = "humantime_serde")]
    pub refresh_required_before: Duration,
    /// Time between `WEBSOCKET_TO_BE_CLOSED` and the close.
    #[serde(with = "humantime_serde")]
    pub to_be_closed_grace: Duration,
    /// After the to-be-closed grace the channel is deleted too (not only the socket closed).
    pub to_be_closed_deletes_channel: bool,
    /// Webhook URL check at creation.
    pub webhook_verification: WebhookVerification,
    /// Enforce GoTo's https + port 443 rule on webhook URLs.
    pub require_https_443: bool,
    /// Expiry or deletion of a channel removes its subscriptions.
    pub remove_subscriptions_with_channel: bool,
    /// Spelling of the WebSocket type in responses.
    pub websocket_type_spelling: WebSocketSpelling,
    /// Spellings of the WebSocket `channelType` accepted on create and refresh; another is
    /// answered 400 `channelType` `INVALID` (GoTo unknown #3: which of the two it takes).
    pub accepted_websocket_types: Vec<String>,
    /// Where the WebSocket URL is returned.
    pub websocket_url_location: WebSocketUrlLocation,
    /// Largest accepted `pageSize` of the channel list (also its default).
    pub max_page_size: usize,
    /// A refresh (`PUT …/{channelId}`) answers 200 with an empty body instead of the channel
    /// (GoTo's demos ignore the body; whether it carries the channel is not documented).
    pub refresh_empty_body: bool,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            websocket_lifetime: Duration::from_secs(10800),
            webhook_lifetime: Duration::from_secs(2_147_483_647),
            refresh_required_before: Duration::from_secs(600),
            to_be_closed_grace: Duration::from_millis(500),
            to_be_closed_deletes_channel: true,
            webhook_verification: WebhookVerification::Options,
            require_https_443: false,
            remove_subscriptions_with_channel: true,
            websocket_type_spelling: WebSocketSpelling::WebSockets,
            accepted_websocket_types: vec!["WebSocket".into(), "WebSockets".into()],
            websocket_url_location: WebSocketUrlLocation::ChannelData,
            max_page_size: 100,
            refresh_empty_body: false,
        }
    }
}

/// Response shape of the back-fill endpoint (GoTo unknown #7).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackfillShape {
    /// `{pageSize, nextPageMarker, metadata, states:[…]}` (the official guide).
    States,
    /// `{items:[{metadata, state}], nextPageMarker}`.
    Items,
}

/// How the last page of a paged answer says "no more".
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LastPageMarker {
    /// `nextPageMarker` omitted.
    Absent,
    /// `"nextPageMarker": ""` (the official guide's example).
    Empty,
}

/// Call Events API settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallEventsConfig {
    /// Subscribing these account keys fails with an item-level 403.
    pub forbidden_account_keys: Vec<String>,
    /// Refuse Webhook channels with 400 "must be a WebSocket channel" (GoTo unknown #2).
    pub require_websocket_channel: bool,
    /// Largest page of the back-fill and active-calls endpoints (also the default).
    pub page_size_cap: usize,
    /// Shape of the back-fill response.
    pub backfill_shape: BackfillShape,
    /// Last-page marker of the back-fill response.
    pub last_page_marker: LastPageMarker,
}

impl Default for CallEventsConfig {
    fn default() -> Self {
        Self {
            forbidden_account_keys: Vec::new(),
            require_websocket_channel: false,
            page_size_cap: 100,
            backfill_shape: BackfillShape::States,
            last_page_marker: LastPageMarker::Absent,
        }
    }
}

/// Call Events Report API settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Time from a call's ENDING to its `REPORT_SUMMARY` notification.
    #[serde(with = "humantime_serde")]
    pub summary_delay: Duration,
    /// Largest `pageSize` of report summaries.
    pub max_page_size: usize,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            summary_delay: Duration::from_secs(1),
            max_page_size: 1000,
        }
    }
}

/// Body of a call-state notification.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// `{id, source, type, timestamp, ttl, content:{metadata,state}, bypassDoNotDisturb}`.
    Full,
    /// Just `{metadata, state}` (the official guide's example).
    Bare,
}

/// Outer shape of a WebSocket frame.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebSocketFrame {
    /// `{"data": notification}`.
    Data,
    /// `{"event":"Notification","eventId","timestamp","data": notification}`.
    Event,
}

/// Delivery settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Notification body shape.
    pub envelope: Envelope,
    /// WebSocket frame shape.
    pub websocket_frame: WebSocketFrame,
    /// Send notifications as binary WebSocket messages (the same UTF-8 JSON bytes) instead of
    /// text: every documented example is text, binary is the plausible variant.
    pub websocket_binary: bool,
    /// Extra webhook attempts after a 5xx or transport failure.
    pub webhook_retries: u32,
    /// Pause between webhook attempts.
    #[serde(with = "humantime_serde")]
    pub webhook_retry_spacing: Duration,
    /// Per-attempt webhook timeout.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Webhook POSTs in flight at once.
    pub max_concurrent_webhooks: usize,
    /// Notifications larger than this are never sent.
    pub max_body_bytes: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            envelope: Envelope::Full,
            websocket_frame: WebSocketFrame::Data,
            websocket_binary: false,
            webhook_retries: 2,
            webhook_retry_spacing: Duration::from_millis(100),
            webhook_timeout: Duration::from_secs(5),
            max_concurrent_webhooks: 32,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Rate limit applied to each API separately.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second per API; 0 = unlimited.
    pub requests_per_second: u32,
    /// Send `Retry-After: N` (seconds) with 429s; None = no header (as GoTo documents).
    pub retry_after_seconds: Option<u64>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 10,
            retry_after_seconds: None,
        }
    }
}

/// Traffic scheduler settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Start traffic as soon as the simulator listens.
    pub autostart: bool,
    /// New calls per second; 0 = as fast as concurrency allows.
    pub calls_per_second: f64,
    /// Calls open at once.
    pub max_concurrent_calls: usize,
    /// Calls to run before stopping; 0 = unbounded.
    pub calls: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            autostart: false,
            calls_per_second: 2.0,
            max_concurrent_calls: 10,
            calls: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default() {
        let c: SimulatorConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.auth.client_id, "callbridge-demo");
        assert_eq!(c.rate_limit.requests_per_second, 10);
        assert_eq!(c.channels.webhook_lifetime.as_secs(), 2_147_483_647);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<SimulatorConfig, _> = serde_json::from_str(r#"{"nope":1}"#);
        assert!(r.is_err());
        let r: Result<SimulatorConfig, _> = serde_json::from_str(r#"{"delivery":{"nope":1}}"#);
        assert!(r.is_err());
    }

    #[test]
    fn default_round_trips() {
        let v = serde_json::to_value(SimulatorConfig::default()).unwrap();
        let back: SimulatorConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.channels.websocket_lifetime, Duration::from_secs(10800));
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = format!("{:?}", SimulatorConfig::default());
        assert!(!s.contains("demo-secret"));
        assert!(!s.contains("demo-pat"));
        assert!(!s.contains("demo-refresh"));
    }
}
