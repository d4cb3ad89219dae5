//! The one place that sends a request to GoTo's REST APIs.
//!
//! Every call goes the same way: take a bearer token, wait for a slot of the API's rate limit,
//! take the token again if another request replaced it meanwhile, send, classify the answer. A
//! 401 drops the token, refreshes once and re-sends once (a 401 means GoTo did not act, so this
//! is safe even for channel creation); 429, 5xx and transport failures are retried with backoff
//! for requests that may be repeated. Keeping this in one place is what lets the API modules be
//! plain request/decode code.
//!
//! The transport also reads GoTo's clock: every REST answer's `Date` header is compared with this
//! host's clock ([`GotoClient::goto_clock_skew`]). GoTo stamps `callCreated` with its own clock,
//! and the report sweep lists calls by it over windows measured with this host's: a skew beyond
//! the sweep's margin would drop the calls at a window's edges, so the sweep widens its windows
//! by the skew measured here.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, DATE};
use reqwest::Method;
use url::Url;

use super::auth::{BearerToken, TokenManager};
use super::endpoint::Endpoint;
use super::error::GotoError;
use super::ratelimit::RateLimiter;
use super::retry::{parse_http_date, retry_after_header, retrying, RetryPolicy};
use super::GotoClient;

/// A clock skew above this is logged as a warning (once, until it falls back under it): the
/// sweep copes, but other things read GoTo's timestamps against this host's clock too.
const SKEW_WARNING: Duration = Duration::from_secs(5);

/// `skew_ms` before any answer carried a `Date` header.
const SKEW_UNKNOWN: i64 = i64::MIN;

/// A request to a REST endpoint.
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub(crate) endpoint: Endpoint,
    pub(crate) url: Url,
    /// JSON body, already serialised.
    pub(crate) body: Option<Vec<u8>>,
    /// Non-2xx statuses the caller handles itself (typically 404), returned as responses.
    pub(crate) also_accept: &'static [u16],
    /// False for requests that must not be repeated blindly (channel creation).
    pub(crate) idempotent: bool,
}

impl ApiRequest {
    /// An idempotent request without body.
    pub(crate) fn new(endpoint: Endpoint, url: Url) -> Self {
        ApiRequest {
            endpoint,
            url,
            body: None,
            also_accept: &[],
            idempotent: true,
        }
    }

    pub(crate) fn json_body(mut self, body: &impl serde::Serialize) -> Result<Self, GotoError> {
        let bytes = serde_json::to_vec(body).map_err(|e| GotoError::Decode {
            endpoint: self.endpoint,
            detail: format!("cannot encode request body: {e}"),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    pub(crate) fn also_accept(mut self, statuses: &'static [u16]) -> Self {
        self.also_accept = statuses;
        self
    }

    pub(crate) fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

/// An accepted response: 2xx or one of the request's `also_accept` statuses.
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// Rate limit → bearer token → send → classify, with retries.
pub(crate) struct Transport {
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
    auth: Arc<TokenManager>,
    policy: RetryPolicy,
    /// GoTo's clock minus this host's, in milliseconds, from the latest REST answer with a
    /// `Date` header; [`SKEW_UNKNOWN`] before one.
    skew_ms: AtomicI64,
    /// Whether the current skew was logged as above [`SKEW_WARNING`].
    skew_warned: AtomicBool,
}

impl Transport {
    pub(crate) fn new(
        http: reqwest::Client,
        limiter: Arc<RateLimiter>,
        auth: Arc<TokenManager>,
        policy: RetryPolicy,
    ) -> Self {
        Transport {
            http,
            limiter,
            auth,
            policy,
            skew_ms: AtomicI64::new(SKEW_UNKNOWN),
            skew_warned: AtomicBool::new(false),
        }
    }

    /// GoTo's clock minus this host's, in seconds, as last measured.
    pub(crate) fn clock_skew(&self) -> Option<f64> {
        let ms = self.skew_ms.load(Ordering::Relaxed);
        (ms != SKEW_UNKNOWN).then(|| ms as f64 / 1000.0)
    }

    /// Takes one answer's `Date` into the skew: gauge `callbridge_goto_clock_skew_seconds`, and a
    /// warning when it goes above [`SKEW_WARNING`].
    fn note_clock(&self, timing: &Timing) {
        let Some(skew) = timing.skew() else {
            return;
        };
        self.skew_ms
            .store((skew * 1000.0).round() as i64, Ordering::Relaxed);
        metrics::gauge!("callbridge_goto_clock_skew_seconds").set(skew);
        let above = skew.abs() > SKEW_WARNING.as_secs_f64();
        if above != self.skew_warned.swap(above, Ordering::Relaxed) {
            if above {
                tracing::warn!(
                    skew_seconds = skew,
                    "this host's clock differs from GoTo's (its Date header); report sweeps widen \
                     their windows by it, but fix the host's time sync (NTP)"
                );
            } else {
                tracing::info!(
                    skew_seconds = skew,
                    "this host's clock agrees with GoTo's again"
                );
            }
        }
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    pub(crate) fn auth(&self) -> &TokenManager {
        &self.auth
    }

    /// Sends `req`, retrying as its idempotency allows.
    pub(crate) async fn send(&self, req: &ApiRequest) -> Result<ApiResponse, GotoError> {
        retrying(req.endpoint, &self.policy, req.idempotent, || {
            self.send_authenticated(req)
        })
        .await
    }

    /// One attempt, plus the single re-send after a 401 with a refreshed token.
    async fn send_authenticated(&self, req: &ApiRequest) -> Result<ApiResponse, GotoError> {
        let token = self.slot_and_token(req).await?;
        match self.send_once(req, &token).await {
            Err(GotoError::Api { status: 401, .. }) => {
                self.auth.invalidate(token.generation).await;
                let token = self.slot_and_token(req).await?;
                self.send_once(req, &token).await
            }
            other => other,
        }
    }

    /// Takes the token, waits for a rate-limit slot, then checks the token is still the one to
    /// send. The wait can be seconds long, and a token revoked or replaced meanwhile (another
    /// request's 401) is stale by the time it is sent: a rate-limited queue longer than the
    /// time between two revocations answered 401 even to the re-send after a refresh. A refresh
    /// that is due is done before the wait, so it does not delay the send past its slot (GoTo
    /// counts arrivals; the limiter's slots must stay send times).
    async fn slot_and_token(&self, req: &ApiRequest) -> Result<BearerToken, GotoError> {
        let taken = self.auth.bearer().await?;
        self.limiter.acquire(req.endpoint.api).await;
        self.auth.after_wait(taken).await
    }

    /// Sends `req` now: its rate-limit slot has been taken.
    async fn send_once(
        &self,
        req: &ApiRequest,
        token: &BearerToken,
    ) -> Result<ApiResponse, GotoError> {
        let endpoint = req.endpoint;
        let mut builder = self
            .http
            .request(method(endpoint), req.url.clone())
            .bearer_auth(token.secret.expose())
            .header(ACCEPT, "application/json");
        if let Some(body) = &req.body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let (status, retry_after, body, timing) = exchange_timed(endpoint, builder).await?;
        self.note_clock(&timing);
        tracing::debug!(%endpoint, status, bytes = body.len(), "GoTo answered");
        if (200..300).contains(&status) || req.also_accept.contains(&status) {
            Ok(ApiResponse { status, body })
        } else {
            Err(GotoError::from_api_response(
                endpoint,
                status,
                &body,
                retry_after,
            ))
        }
    }
}

/// Sends one request and reads the whole answer: status, `Retry-After` and body. Every GoTo call
/// (the token endpoint included) goes through here, so every one is counted and timed.
pub(crate) async fn exchange(
    endpoint: Endpoint,
    builder: reqwest::RequestBuilder,
) -> Result<(u16, Option<Duration>, Bytes), GotoError> {
    let (status, retry_after, body, _) = exchange_timed(endpoint, builder).await?;
    Ok((status, retry_after, body))
}

/// When one exchange was sent and answered by this host's clock, and GoTo's `Date` of the answer.
#[derive(Clone, Copy, Debug)]
struct Timing {
    sent: SystemTime,
    answered: SystemTime,
    date: Option<SystemTime>,
}

impl Timing {
    /// GoTo's clock minus this host's, in seconds. `Date` is GoTo's time while it answered, cut
    /// to the second; this host's time then lies between sending and the answer. So the skew is
    /// `Date` plus half a second against the middle of the exchange, within half a second plus
    /// half the round trip.
    fn skew(&self) -> Option<f64> {
        let date = self.date? + Duration::from_millis(500);
        let round_trip = self.answered.duration_since(self.sent).unwrap_or_default();
        let middle = self.sent + round_trip / 2;
        Some(match date.duration_since(middle) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        })
    }
}

/// [`exchange`], also telling when it happened and GoTo's `Date`.
async fn exchange_timed(
    endpoint: Endpoint,
    builder: reqwest::RequestBuilder,
) -> Result<(u16, Option<Duration>, Bytes, Timing), GotoError> {
    let sent_at = tokio::time::Instant::now();
    let sent = SystemTime::now();
    let response = builder.send().await.map_err(|e| {
        record_call(endpoint, "transport_error", sent_at);
        GotoError::transport(endpoint, e)
    })?;
    let timing = Timing {
        sent,
        answered: SystemTime::now(),
        date: response
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date),
    };
    let status = response.status().as_u16();
    record_call(endpoint, response.status().as_str(), sent_at);
    let retry_after = retry_after_header(response.headers(), SystemTime::now());
    let body = response
        .bytes()
        .await
        .map_err(|e| GotoError::transport(endpoint, e))?;
    Ok((status, retry_after, body, timing))
}

impl GotoClient {
    /// GoTo's clock minus this host's, in seconds (positive: GoTo is ahead), from the `Date`
    /// header of the latest REST answer that had one; `None` before any. Good to about half a
    /// second plus half a round trip (`Date` counts whole seconds).
    pub fn goto_clock_skew(&self) -> Option<f64> {
        self.transport().clock_skew()
    }
}

/// `callbridge_goto_requests_total{endpoint,status}` and the request latency: the endpoint is
/// the path template (`GET /call-events/v1/conversation-spaces/{conversationSpaceId}/events`),
/// never an id, so the label set stays bounded.
fn record_call(endpoint: Endpoint, status: &str, sent_at: tokio::time::Instant) {
    let label = format!("{} {}", endpoint.method, endpoint.template);
    metrics::counter!(
        "callbridge_goto_requests_total",
        "endpoint" => label.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("callbridge_goto_request_duration_seconds", "endpoint" => label)
        .record(sent_at.elapsed().as_secs_f64());
}

fn method(endpoint: Endpoint) -> Method {
    match endpoint.method {
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        _ => Method::GET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    #[test]
    fn skew_is_date_against_the_middle_of_the_exchange() {
        // GoTo's clock 30 s ahead: its Date (cut to the second) reads 30 s after ours.
        let ahead = Timing {
            sent: at(0),
            answered: at(200),
            date: Some(at(30_000)),
        };
        assert_eq!(ahead.skew(), Some(30.4));
        let behind = Timing {
            sent: at(45_000),
            answered: at(45_000),
            date: Some(at(0)),
        };
        assert_eq!(behind.skew(), Some(-44.5));
        let undated = Timing {
            date: None,
            ..ahead
        };
        assert_eq!(undated.skew(), None);
    }
}
