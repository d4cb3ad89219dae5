//! The GoTo Connect API client: everything the bridge asks of GoTo goes through [`GotoClient`].
//!
//! GoTo's public material disagrees with itself in places (see `goto-api.md`), so the client
//! follows the documented wire format when sending and accepts every documented or observed
//! variant when receiving. Call states are passed through as raw JSON, never re-serialised.
//!
//! # Layout
//!
//! - [`config`]: [`GotoClientConfig`] and the [`Secret`] wrapper that keeps credentials out of
//!   logs.
//! - [`endpoint`]: the catalogue of endpoints ([`Endpoint`]) and the per-API quota ([`Api`]).
//! - `error`: [`GotoError`], naming endpoint, status, GoTo's `errorCode`/`message`/constraints.
//! - `auth`: the token manager (PAT or refresh-token grant, proactive single-flight refresh).
//! - `ratelimit`: a token bucket per API, waiting rather than failing.
//! - `retry`: backoff with jitter and `Retry-After`; the retry loop.
//! - `transport`: the one place a request is sent (rate limit → token → send → classify).
//! - `paging`: following `nextPageMarker` to the end.
//! - `model`: lenient response decoding.
//! - `channels`, `call_events`, `reports`: the API calls, as methods on [`GotoClient`].

mod auth;
mod call_events;
mod channels;
pub mod config;
pub mod endpoint;
mod error;
mod model;
mod paging;
mod ratelimit;
mod reports;
mod retry;
mod transport;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use url::Url;

pub use call_events::AccountSubscription;
pub use channels::ChannelRequest;
pub use config::{Credential, GotoClientConfig, Secret, WebSocketTypeSpelling};
pub use endpoint::{Api, Endpoint};
pub use error::{Constraint, GotoError};
pub use model::{BackfilledState, Channel, ChannelKind, ConversationEvents, SubscriptionOutcome};
pub use retry::{parse_retry_after, retry_after_header, RetryPolicy, MAX_RETRY_AFTER};

use auth::TokenManager;
use ratelimit::RateLimiter;
use transport::Transport;

/// The GoTo Connect client. Cheap to clone: clones share the token cache, rate limiters and
/// connection pool.
#[derive(Clone)]
pub struct GotoClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: GotoClientConfig,
    api_base: Url,
    transport: Transport,
    /// The WebSocket `channelType` spelling sent now: the configured one until
    /// [`GotoClient::switch_websocket_type`] (GoTo unknown #3: which of the two it accepts).
    websocket_spelling_is_plural: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for GotoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GotoClient")
            .field("api_base_url", &self.inner.config.api_base_url)
            .field("auth_base_url", &self.inner.config.auth_base_url)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

impl GotoClient {
    /// Builds a client. Does no I/O: the first call (or [`GotoClient::check_credentials`])
    /// fetches the first token.
    pub fn new(config: GotoClientConfig) -> Result<GotoClient, GotoError> {
        config
            .validate()
            .map_err(|detail| GotoError::Config { detail })?;
        let api_base = base_url("api_base_url", &config.api_base_url)?;
        let auth_base = base_url("auth_base_url", &config.auth_base_url)?;
        let token_url = join(&auth_base, &["oauth", "token"])?;

        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            // A redirect would be a misconfiguration; following it could send the bearer
            // token somewhere unintended.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GotoError::Config {
                detail: format!("cannot build HTTP client: {}", e.without_url()),
            })?;
        let policy = RetryPolicy {
            max_attempts: config.max_attempts,
            base_delay: config.retry_base_delay,
            max_delay: config.retry_max_delay,
        };
        let limiter = Arc::new(RateLimiter::new(config.requests_per_second_per_api));
        let auth = Arc::new(TokenManager::new(
            http.clone(),
            token_url,
            config.client_id.clone(),
            config.client_secret.clone(),
            config.credential.clone(),
            config.refresh_after_fraction,
            policy,
            config.request_timeout,
            config.refresh_token_file.clone(),
            limiter.clone(),
        ));
        let transport = Transport::new(http, limiter, auth, policy);
        let plural = config.websocket_channel_type == WebSocketTypeSpelling::WebSockets;
        Ok(GotoClient {
            inner: Arc::new(Inner {
                config,
                api_base,
                transport,
                websocket_spelling_is_plural: std::sync::atomic::AtomicBool::new(plural),
            }),
        })
    }

    /// The WebSocket `channelType` spelling channel creates and refreshes send now.
    pub fn websocket_type(&self) -> WebSocketTypeSpelling {
        if self
            .inner
            .websocket_spelling_is_plural
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            WebSocketTypeSpelling::WebSockets
        } else {
            WebSocketTypeSpelling::WebSocket
        }
    }

    /// Sends the other WebSocket `channelType` spelling from now on (GoTo's samples use both,
    /// and which one the live API takes is unknown); returns it.
    pub fn switch_websocket_type(&self) -> WebSocketTypeSpelling {
        self.inner
            .websocket_spelling_is_plural
            .fetch_xor(true, std::sync::atomic::Ordering::Relaxed);
        self.websocket_type()
    }

    /// The configuration the client was built with (secrets stay masked in its `Debug`).
    pub fn config(&self) -> &GotoClientConfig {
        &self.inner.config
    }

    /// Obtains an access token now (or reuses a fresh one), so a daemon can fail fast on bad
    /// credentials at start-up.
    pub async fn check_credentials(&self) -> Result<(), GotoError> {
        self.inner.transport.auth().bearer().await.map(|_| ())
    }

    /// Successful token-endpoint requests so far, the first one included.
    pub fn token_refreshes(&self) -> u64 {
        self.inner.transport.auth().refreshes()
    }

    /// How many requests to `api` had to wait for the client-side rate limiter.
    pub fn rate_limit_waits(&self, api: Api) -> u64 {
        self.inner.transport.limiter().waits(api)
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// `{api_base_url}/{segments…}`, each segment percent-encoded as a path segment.
    pub(crate) fn api_url(&self, segments: &[&str]) -> Result<Url, GotoError> {
        join(&self.inner.api_base, segments)
    }
}

fn base_url(name: &str, value: &str) -> Result<Url, GotoError> {
    let url = Url::parse(value).map_err(|e| GotoError::Config {
        detail: format!("{name} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(GotoError::Config {
            detail: format!("{name} must be an http(s) base URL"),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(GotoError::Config {
            detail: format!("{name} must not carry a query or fragment"),
        });
    }
    Ok(url)
}

fn join(base: &Url, segments: &[&str]) -> Result<Url, GotoError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| GotoError::Config {
            detail: "base URL cannot take path segments".to_owned(),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}
