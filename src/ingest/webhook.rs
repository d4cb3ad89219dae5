//! The webhook receiver GoTo POSTs notifications to.
//!
//! GoTo signs nothing (no HMAC is documented or observed), so the URL itself is the credential:
//! an unguessable secret in the path, compared in constant time, and a wrong path looks exactly
//! like any unknown route (404). GoTo verifies a new webhook channel with an OPTIONS (or a GET),
//! which must get a 2xx before the channel exists. A POST is answered only after Kafka has the
//! body: 200 when it is in the raw topic, 202 when it was dead-lettered (GoTo retrying a bad body
//! cannot help), 413 above `route::MAX_NOTIFICATION_BYTES` (960,000 bytes), 503 when Kafka
//! cannot take it in time (GoTo then retries twice and the sequencer back-fills whatever is
//! still missing). With `webhook.answer = "on_receipt"`
//! a call state is answered 200 `queued` once it is in the producer's queue, within a bound (see
//! `Ingest::answering_on_receipt`).

use super::{Accepted, Ingest, Transport, WriteError};
use crate::secret::Secret;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::borrow::Cow;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Bodies above this are not read at all: answered 413 and dead-lettered as `oversize` without
/// their content. Between `route::MAX_NOTIFICATION_BYTES` and this, the body is read so its
/// head can be dead-lettered.
pub const HARD_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Shared, not copied: axum clones the state for every request, and `Ingest`'s clone copied
/// its topic names (six allocations per POST in heaptrack).
type WebhookState = Arc<Shared>;

struct Shared {
    ingest: Ingest,
    secret: Secret,
    /// `{path_prefix}/`: what precedes the secret in the path.
    prefix: String,
}

/// The webhook routes: `{path_prefix}/{secret}` for POST, OPTIONS and GET.
///
/// Every path reaches [`handle`], which finds the secret itself: a route with a `{secret}`
/// parameter cost about six allocations per POST for the parameter alone (axum's URL
/// parameters), and a route spelling the secret out would compare it in variable time.
pub fn router(ingest: Ingest, path_prefix: &str, secret: Secret) -> Router {
    let prefix = format!("{}/", path_prefix.trim_end_matches('/'));
    Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(HARD_BODY_LIMIT))
        .with_state(Arc::new(Shared {
            ingest,
            secret,
            prefix,
        }))
}

/// The secret a request's path presents: the one segment after the prefix, percent-decoded as
/// a route parameter would be (borrowed unless it has escapes).
fn presented_secret<'p>(path: &'p str, prefix: &str) -> Option<Cow<'p, str>> {
    let segment = path.strip_prefix(prefix)?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
}

/// Constant-time comparison of the presented path secret (only the length can leak).
fn secret_matches(presented: &str, expected: &Secret) -> bool {
    let expected = expected.expose().as_bytes();
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected))
}

/// Takes the request whole so that the body is read only after the secret matched, and the
/// `Content-Length` is looked at (not copied) only when the body is refused.
async fn handle(State(state): State<WebhookState>, request: axum::extract::Request) -> Response {
    let known = presented_secret(request.uri().path(), &state.prefix)
        .is_some_and(|presented| secret_matches(&presented, &state.secret));
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    match request.method().clone() {
        axum::http::Method::OPTIONS => (
            StatusCode::OK,
            [(axum::http::header::ALLOW, "POST, OPTIONS, GET")],
        )
            .into_response(),
        axum::http::Method::GET | axum::http::Method::HEAD => StatusCode::OK.into_response(),
        axum::http::Method::POST => {
            let declared = declared_length(&request);
            let answer = match Bytes::from_request(request, &state).await {
                Ok(body) => post(&state.ingest, &body).await,
                Err(rejection) => unread(&state.ingest, &rejection, declared).await,
            };
            metrics::counter!(
                "callbridge_webhook_responses_total",
                "status" => status_label(answer.status),
                "outcome" => answer.outcome
            )
            .increment(1);
            answer.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// The answer to a POST: the HTTP status, what became of the body (the metric's `outcome`), and
/// the JSON body GoTo gets. Built from static strings: this runs once per notification.
struct Answer {
    status: StatusCode,
    outcome: &'static str,
    body: std::borrow::Cow<'static, str>,
}

impl Answer {
    const fn fixed(status: StatusCode, outcome: &'static str, body: &'static str) -> Self {
        Answer {
            status,
            outcome,
            body: std::borrow::Cow::Borrowed(body),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = self.status;
        let json = [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )];
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = [(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            )];
            (status, json, retry, self.body).into_response()
        } else {
            (status, json, self.body).into_response()
        }
    }
}

/// The metric label of each status a POST can get.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        413 => "413",
        503 => "503",
        _ => "other",
    }
}

async fn post(ingest: &Ingest, body: &[u8]) -> Answer {
    match ingest.accept(body, Transport::Webhook).await {
        Ok(Accepted::Raw) => Answer::fixed(StatusCode::OK, "accepted", r#"{"status":"accepted"}"#),
        Ok(Accepted::Queued) => Answer::fixed(StatusCode::OK, "queued", r#"{"status":"queued"}"#),
        Ok(Accepted::DeadLettered("oversize")) => Answer::fixed(
            StatusCode::PAYLOAD_TOO_LARGE,
            "dead_lettered",
            r#"{"status":"dead_lettered","reason":"oversize"}"#,
        ),
        // Reasons are fixed codes (no quote or backslash to escape).
        Ok(Accepted::DeadLettered(reason)) => Answer {
            status: StatusCode::ACCEPTED,
            outcome: "dead_lettered",
            body: format!(r#"{{"status":"dead_lettered","reason":"{reason}"}}"#).into(),
        },
        Ok(Accepted::OtherSource(_)) => Answer::fixed(
            StatusCode::OK,
            "other_source",
            r#"{"status":"other_source"}"#,
        ),
        // Control messages belong to the WebSocket; over a webhook they are just acknowledged.
        Ok(Accepted::Control(_)) => {
            Answer::fixed(StatusCode::OK, "ignored", r#"{"status":"ignored"}"#)
        }
        Err(e) => unavailable(e),
    }
}

/// A POST whose body was not read: above [`HARD_BODY_LIMIT`] (dead-lettered without its content,
/// so the dead-letter topic still shows that it came), or cut off by the client.
/// The body length the client declared, if it did.
fn declared_length(request: &axum::extract::Request) -> Option<u64> {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn unread(ingest: &Ingest, rejection: &BytesRejection, declared: Option<u64>) -> Answer {
    if rejection.status() != StatusCode::PAYLOAD_TOO_LARGE {
        tracing::debug!(error = %rejection.body_text(), "webhook body could not be read");
        return Answer::fixed(
            StatusCode::BAD_REQUEST,
            "unreadable",
            r#"{"status":"unreadable"}"#,
        );
    }
    let detail = match declared {
        Some(n) => format!(
            "body of {n} bytes exceeds the {HARD_BODY_LIMIT} byte limit of the HTTP layer; not read"
        ),
        None => {
            format!("body exceeds the {HARD_BODY_LIMIT} byte limit of the HTTP layer; not read")
        }
    };
    match ingest.dead_letter_unread(Transport::Webhook, &detail).await {
        Ok(()) => Answer::fixed(
            StatusCode::PAYLOAD_TOO_LARGE,
            "dead_lettered",
            r#"{"status":"dead_lettered","reason":"oversize"}"#,
        ),
        Err(e) => unavailable(e),
    }
}

/// 503: Kafka did not take what GoTo sent in time (GoTo retries twice).
fn unavailable(e: WriteError) -> Answer {
    tracing::warn!(error = %e, "webhook answered 503: kafka did not take the notification");
    match e {
        WriteError::QueueFull => Answer::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_queue_full",
            r#"{"status":"unavailable","reason":"kafka_queue_full"}"#,
        ),
        WriteError::AckTimeout(_) => Answer::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_ack_timeout",
            r#"{"status":"unavailable","reason":"kafka_ack_timeout"}"#,
        ),
        WriteError::Kafka(_) => Answer::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_error",
            r#"{"status":"unavailable","reason":"kafka_error"}"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        let s = Secret::new("abc123");
        assert!(secret_matches("abc123", &s));
        assert!(!secret_matches("abc124", &s));
        assert!(!secret_matches("abc12", &s));
        assert!(
            !secret_matches("", &Secret::new("")),
            "an empty secret never matches"
        );
    }

    #[test]
    fn the_secret_is_the_one_segment_after_the_prefix_decoded() {
        let at = |path| presented_secret(path, "/goto/webhook/").map(Cow::into_owned);
        assert_eq!(at("/goto/webhook/abc").as_deref(), Some("abc"));
        assert_eq!(at("/goto/webhook/a%62c").as_deref(), Some("abc"));
        assert_eq!(at("/goto/webhook/"), None);
        assert_eq!(at("/goto/webhook/abc/"), None);
        assert_eq!(at("/goto/webhook/abc/x"), None);
        assert_eq!(at("/goto/webhookabc"), None);
        assert_eq!(at("/other/abc"), None);
        assert_eq!(at("/goto/webhook/%ff"), None, "not UTF-8");
        assert_eq!(
            presented_secret("/abc", "/").as_deref(),
            Some("abc"),
            "a prefix of / serves /{{secret}}"
        );
    }
}
