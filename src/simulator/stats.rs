//! Counters a tester reads to see how the bridge behaved towards GoTo.
//!
//! The bridge promises to respect GoTo's rate limits and to retry sensibly; these counters are
//! how a test proves it (`GET /_simulator/stats`): requests per API and status, 429s, the
//! busiest one-second window per API, and what happened to deliveries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Request counters of one API.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiStats {
    /// Requests seen, all statuses.
    pub requests: u64,
    /// Requests by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// 429 answers (rate limit and injected).
    pub too_many_requests: u64,
    /// Most requests seen in any one-second window.
    pub max_requests_in_one_second: usize,
}

/// Delivery counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    /// Webhook HTTP attempts (incl. attempts lost by fault) and WebSocket frame sends.
    pub attempted: u64,
    /// Attempts that failed (5xx, 4xx, transport error, timeout, lost by fault).
    pub failed: u64,
    /// Notification copies given up on (retries exhausted, no socket, oversize, channel gone).
    pub dropped: u64,
    /// Notification copies acknowledged (2xx) or written to a socket.
    pub succeeded: u64,
    /// Notifications over the size cap, never sent.
    pub oversize: u64,
    /// Report-summary notifications dispatched.
    pub report_notifications: u64,
    /// WebSocket control messages sent (refresh required, to be closed).
    pub control_messages: u64,
}

/// Listings of active calls (`GET /call-events/v1/conversation-spaces`) in flight: a client
/// that lists them after every reconnect must not pile listings up while GoTo is slow.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListingStats {
    /// Listings received (past authorisation and validation).
    pub requests: u64,
    /// Listings received and not answered yet (a client that gives up one ends it).
    pub in_flight: u64,
    /// Most listings in flight at once.
    pub max_in_flight: u64,
}

/// All counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Per API name.
    pub apis: BTreeMap<String, ApiStats>,
    /// Deliveries.
    pub deliveries: DeliveryStats,
    /// WebSocket pings received from clients (a client that stops reading its socket must still
    /// ping, or proxies drop an idle connection).
    pub websocket_pings: u64,
    /// WebSocket connections accepted.
    pub websocket_connections: u64,
    /// WebSocket upgrades refused by the fault `websocket_upgrade_status`.
    pub websocket_upgrades_refused: u64,
    /// Listings of active calls.
    pub active_call_listings: ListingStats,
}

impl Stats {
    /// Count one answered request.
    pub fn record_request(&mut self, api: &str, status: u16, window_len: usize) {
        let s = self.apis.entry(api.to_string()).or_default();
        s.requests += 1;
        *s.by_status.entry(status).or_default() += 1;
        if status == 429 {
            s.too_many_requests += 1;
        }
        s.max_requests_in_one_second = s.max_requests_in_one_second.max(window_len);
    }
}
