//! Settings of the GoTo client.
//!
//! The bridge embeds [`GotoClientConfig`] in its own figment configuration, so everything here
//! derives `Deserialize` with defaults for every knob that GoTo's public material pins down
//! (10 requests/second per API, tokens refreshed after a third of their life, ...). Only the
//! OAuth client and the user credential have no sensible default.

use std::time::Duration;

use serde::Deserialize;

pub use crate::secret::Secret;

/// The user credential exchanged at the token endpoint. An unattended daemon prefers a
/// personal access token (no browser step, nothing to persist); a refresh token obtained once
/// through the authorization-code flow works too.
///
/// In TOML: `credential = { personal_access_token = "…" }` or `{ refresh_token = "…" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// `grant_type=personal_access_token&pat=…`
    PersonalAccessToken(Secret),
    /// `grant_type=refresh_token&refresh_token=…`; replaced in memory when GoTo issues a new one.
    RefreshToken(Secret),
}

/// How a WebSocket channel's `channelType` is spelled on create/refresh. GoTo's own samples use
/// both spellings and which one the live API insists on is unknown, so it is a setting, and the
/// channel keeper tries the other one when GoTo refuses a create with 400.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum WebSocketTypeSpelling {
    /// `"WebSockets"` (screen-pop-demo, most third parties). The default.
    #[default]
    WebSockets,
    /// `"WebSocket"` (call-events-report-demo).
    WebSocket,
}

impl WebSocketTypeSpelling {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebSocketTypeSpelling::WebSockets => "WebSockets",
            WebSocketTypeSpelling::WebSocket => "WebSocket",
        }
    }
}

/// Everything the GoTo client needs. Construct with [`GotoClientConfig::new`] (defaults for
/// the rest) or deserialize it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GotoClientConfig {
    /// REST API base URL; a path prefix is kept (useful for a simulator behind a prefix).
    #[serde(default = "default_api_base_url")]
    pub api_base_url: String,
    /// OAuth host; the token endpoint is `{auth_base_url}/oauth/token`.
    #[serde(default = "default_auth_base_url")]
    pub auth_base_url: String,
    /// OAuth client id (sent with HTTP Basic auth to the token endpoint).
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// The user credential exchanged for access tokens.
    pub credential: Credential,
    /// Client-side rate limit, requests per second, applied separately to each GoTo API
    /// (GoTo's documented default quota is 10 rps per API). 0 disables client-side limiting.
    #[serde(default = "default_requests_per_second_per_api")]
    pub requests_per_second_per_api: u32,
    /// Attempts per request, the first one included, for retryable failures (429, 5xx,
    /// transport). At least 1.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt, with jitter.
    #[serde(default = "default_retry_base_delay", with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// Cap on one computed backoff delay (a server `Retry-After` may ask for longer).
    #[serde(default = "default_retry_max_delay", with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Timeout of one HTTP attempt, connect included.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Refresh the access token proactively once this fraction of `expires_in` has passed,
    /// so a failed refresh can be retried while the old token still works. In (0, 1].
    #[serde(default = "default_refresh_after_fraction")]
    pub refresh_after_fraction: f64,
    /// Spelling of the WebSocket `channelType` sent on channel create/refresh.
    #[serde(default)]
    pub websocket_channel_type: WebSocketTypeSpelling,
    /// A file holding the refresh token of a [`Credential::RefreshToken`]. Read again before
    /// each refresh grant (a token another process or an operator put there is used), and
    /// replaced when GoTo issues a new refresh token, so a restart does not present the one GoTo
    /// retired. `None`: a new refresh token lives in memory only.
    #[serde(default)]
    pub refresh_token_file: Option<std::path::PathBuf>,
}

fn default_api_base_url() -> String {
    "https://api.goto.com".to_owned()
}

fn default_auth_base_url() -> String {
    "https://authentication.logmeininc.com".to_owned()
}

const fn default_requests_per_second_per_api() -> u32 {
    10
}

const fn default_max_attempts() -> u32 {
    5
}

const fn default_retry_base_delay() -> Duration {
    Duration::from_millis(200)
}

const fn default_retry_max_delay() -> Duration {
    Duration::from_secs(10)
}

const fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

const fn default_refresh_after_fraction() -> f64 {
    1.0 / 3.0
}

impl GotoClientConfig {
    /// A configuration with GoTo's production hosts and the documented defaults.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: Secret,
        credential: Credential,
    ) -> Self {
        GotoClientConfig {
            api_base_url: default_api_base_url(),
            auth_base_url: default_auth_base_url(),
            client_id: client_id.into(),
            client_secret,
            credential,
            requests_per_second_per_api: default_requests_per_second_per_api(),
            max_attempts: default_max_attempts(),
            retry_base_delay: default_retry_base_delay(),
            retry_max_delay: default_retry_max_delay(),
            request_timeout: default_request_timeout(),
            refresh_after_fraction: default_refresh_after_fraction(),
            websocket_channel_type: WebSocketTypeSpelling::default(),
            refresh_token_file: None,
        }
    }

    /// Checks the values serde cannot: returns a human-readable reason for the first problem.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.client_id.is_empty() {
            return Err("client_id is empty".to_owned());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".to_owned());
        }
        if !(self.refresh_after_fraction > 0.0 && self.refresh_after_fraction <= 1.0) {
            return Err("refresh_after_fraction must be in (0, 1]".to_owned());
        }
        if self.retry_max_delay < self.retry_base_delay {
            return Err("retry_max_delay must not be smaller than retry_base_delay".to_owned());
        }
        if self.request_timeout.is_zero() {
            return Err("request_timeout must not be zero".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_masked_in_debug_and_display() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
        let cfg = GotoClientConfig::new(
            "cid",
            Secret::new("client-secret-value"),
            Credential::PersonalAccessToken(Secret::new("pat-value")),
        );
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("client-secret-value"), "{dbg}");
        assert!(!dbg.contains("pat-value"), "{dbg}");
    }

    #[test]
    fn deserializes_with_defaults() {
        let json = r#"{
            "client_id": "cid",
            "client_secret": "cs",
            "credential": {"refresh_token": "rt"},
            "retry_base_delay": "50ms",
            "websocket_channel_type": "WebSocket"
        }"#;
        let cfg: GotoClientConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.api_base_url, "https://api.goto.com");
        assert_eq!(cfg.auth_base_url, "https://authentication.logmeininc.com");
        assert_eq!(cfg.credential, Credential::RefreshToken(Secret::new("rt")));
        assert_eq!(cfg.retry_base_delay, Duration::from_millis(50));
        assert_eq!(cfg.retry_max_delay, Duration::from_secs(10));
        assert_eq!(cfg.requests_per_second_per_api, 10);
        assert_eq!(cfg.max_attempts, 5);
        assert_eq!(cfg.websocket_channel_type.as_str(), "WebSocket");
        assert!((cfg.refresh_after_fraction - 1.0 / 3.0).abs() < 1e-9);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn validate_rejects_nonsense() {
        let mut cfg = GotoClientConfig::new(
            "cid",
            Secret::new("cs"),
            Credential::PersonalAccessToken(Secret::new("p")),
        );
        cfg.refresh_after_fraction = 0.0;
        assert!(cfg.validate().is_err());
        cfg.refresh_after_fraction = 0.5;
        cfg.max_attempts = 0;
        assert!(cfg.validate().is_err());
    }
}
