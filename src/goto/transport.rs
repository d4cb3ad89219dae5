//! The one place that sends a request to GoTo's REST APIs.
//!
//! Every call goes the same way: take a bearer token, wait for a slot of the API's rate limit,
//! take the token again if another request replaced it meanwhile, send, classify the answer. A
//! 401 drops the token, refreshes once and re-sends once (a 401 means GoTo did not act, so this
//! is safe even for channel creation); 429, 5xx and transport failures are retried with backoff
//! for requests that may be repeated. Keeping this in one place is what lets the API modules be
//! plain request/decode code.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use url::Url;

use super::auth::{BearerToken, TokenManager};
use super::endpoint::Endpoint;
use super::error::GotoError;
use super::ratelimit::RateLimiter;
use super::retry::{parse_retry_after, retrying, RetryPolicy};

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
        let (status, retry_after, body) = exchange(endpoint, builder).await?;
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
) -> Result<(u16, Option<std::time::Duration>, Bytes), GotoError> {
    let sent_at = tokio::time::Instant::now();
    let response = builder.send().await.map_err(|e| {
        record_call(endpoint, "transport_error", sent_at);
        GotoError::transport(endpoint, e)
    })?;
    let status = response.status().as_u16();
    record_call(endpoint, response.status().as_str(), sent_at);
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = response
        .bytes()
        .await
        .map_err(|e| GotoError::transport(endpoint, e))?;
    Ok((status, retry_after, body))
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
