//! The one error type of the GoTo client.
//!
//! Every error names the endpoint by method and path template, and carries what GoTo said
//! about the failure (HTTP status, `errorCode`, `message`, constraint list), because the
//! operator reading the log has nothing else to go on: GoTo's 400 messages are often
//! boilerplate and the real cause sits in the constraints. Errors never carry a URL (a query
//! string is not ours to log), a request body, or a token: secrets live only in
//! [`Secret`](super::Secret) values, which are never formatted into an error.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::endpoint::{Api, Endpoint, TOKEN};

/// Longest GoTo-provided text kept in an error, so a pathological body cannot flood logs.
const MAX_TEXT: usize = 500;

/// One entry of GoTo's `constraints` / `constraintViolations` array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The offending field, e.g. `Events[0]`.
    pub field: Option<String>,
    /// What was wrong with it, e.g. `INVALID`, `REQUIRED`.
    pub constraint: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.constraint),
            None => f.write_str(&self.constraint),
        }
    }
}

/// Everything that can go wrong talking to GoTo.
#[derive(Debug, thiserror::Error)]
pub enum GotoError {
    /// The configuration cannot work (empty client id, zero attempts, ...).
    #[error("invalid GoTo client configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// A REST endpoint answered with a status the call does not accept.
    #[error("{}", describe_api(endpoint, *status, error_code, message, constraints))]
    Api {
        /// Which endpoint.
        endpoint: Endpoint,
        /// HTTP status.
        status: u16,
        /// GoTo's `errorCode`, e.g. `RTC-NOTIFICATION-CHANNEL-NOT-FOUND`.
        error_code: Option<String>,
        /// GoTo's `message`.
        message: Option<String>,
        /// GoTo's `reference` (a support correlation id).
        reference: Option<String>,
        /// `constraints` / `constraintViolations`, where GoTo hides the real cause of a 400.
        constraints: Vec<Constraint>,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// One item of a multi-status (207) answer failed while the answer itself was accepted:
    /// GoTo's subscribe answers one verdict per account key. Built by whoever reads the items
    /// when an item's verdict turns out to be about something else than the item (the keeper: a
    /// 404 item on a channel GoTo no longer lists), so the error names the endpoint and item
    /// rather than passing for an HTTP status the endpoint never answered.
    #[error("{}", describe_item(endpoint, item, *status, error_code, message))]
    Item {
        /// Which endpoint.
        endpoint: Endpoint,
        /// What the item is about (an account key).
        item: String,
        /// The item's `status`.
        status: u16,
        /// The item's `errorCode`.
        error_code: Option<String>,
        /// The item's `message`.
        message: Option<String>,
    },
    /// The token endpoint refused the grant (`invalid_client`, `invalid_grant`, ...).
    #[error("{}", describe_auth(grant, *status, error, description))]
    Auth {
        /// `personal_access_token` or `refresh_token`.
        grant: &'static str,
        /// HTTP status.
        status: u16,
        /// OAuth `error`.
        error: Option<String>,
        /// OAuth `error_description`.
        description: Option<String>,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The request did not complete: connect failure, timeout, reset, unreadable body.
    #[error("{endpoint}: transport error: {source}")]
    Transport {
        /// Which endpoint.
        endpoint: Endpoint,
        /// The underlying error, with its URL stripped.
        #[source]
        source: reqwest::Error,
    },
    /// A success response whose body is not what the endpoint documents.
    #[error("{endpoint}: undecodable response: {detail}")]
    Decode {
        /// Which endpoint.
        endpoint: Endpoint,
        /// What did not fit.
        detail: String,
    },
    /// Every allowed attempt failed with a retryable error; `last` is the final one.
    #[error("{endpoint}: gave up after {attempts} attempts, last error: {last}")]
    RetriesExhausted {
        /// Which endpoint.
        endpoint: Endpoint,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<GotoError>,
    },
}

impl GotoError {
    /// A transport error, with the URL removed (it may carry a query string).
    pub(crate) fn transport(endpoint: Endpoint, source: reqwest::Error) -> Self {
        GotoError::Transport {
            endpoint,
            source: source.without_url(),
        }
    }

    /// A decode error from serde. serde quotes offending values; where those may be
    /// credentials (tokens; channel URLs, whose path is the WebSocket credential or the
    /// webhook's shared secret) only the error's kind and position are kept.
    pub(crate) fn decode(endpoint: Endpoint, err: &serde_json::Error) -> Self {
        let sensitive = matches!(endpoint.api, Api::OAuth | Api::NotificationChannel);
        let detail = if sensitive && err.to_string().contains('"') {
            format!(
                "{:?} error at line {} column {}",
                err.classify(),
                err.line(),
                err.column()
            )
        } else {
            truncate(&err.to_string())
        };
        GotoError::Decode { endpoint, detail }
    }

    /// An API error built from a non-accepted response of a REST endpoint.
    pub(crate) fn from_api_response(
        endpoint: Endpoint,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let (error_code, message, reference, constraints) = match parsed {
            Some(b) => {
                let mut constraints = Vec::new();
                for item in b.constraints.iter().chain(b.constraint_violations.iter()) {
                    constraints.extend(constraint_from(item));
                }
                (
                    b.error_code
                        .as_ref()
                        .and_then(text)
                        .or(b.error)
                        .map(|c| truncate(&c)),
                    b.message.or(b.error_description).map(|m| truncate(&m)),
                    b.reference.map(|r| truncate(&r)),
                    constraints,
                )
            }
            None => {
                // Not JSON (a proxy's HTML page, say): keep a short snippet as the message.
                let snippet = String::from_utf8_lossy(body);
                let snippet = snippet.trim();
                let message = (!snippet.is_empty()).then(|| truncate(snippet));
                (None, message, None, Vec::new())
            }
        };
        GotoError::Api {
            endpoint,
            status,
            error_code,
            message,
            reference,
            constraints,
            retry_after,
        }
    }

    /// A failed item of a multi-status answer ([`GotoError::Item`]); GoTo's texts are kept as
    /// every GoTo text is (URL paths cut, length bounded).
    pub(crate) fn item(
        endpoint: Endpoint,
        item: impl Into<String>,
        status: u16,
        error_code: Option<&str>,
        message: Option<&str>,
    ) -> Self {
        GotoError::Item {
            endpoint,
            item: item.into(),
            status,
            error_code: error_code.map(truncate),
            message: message.map(truncate),
        }
    }

    /// A text GoTo gave outside an error of this type (a refused subscription item's
    /// `errorCode` or `message`), kept as every GoTo text in an error is (URL paths cut, length
    /// bounded) and with `from` replaced by `to` as [`GotoError::replace_in_goto_text`] does.
    pub(crate) fn goto_text(text: &str, from: &str, to: &str) -> String {
        let mut text = truncate(text);
        if !from.is_empty() {
            replace_in(&mut text, from, to);
        }
        text
    }

    /// Replaces `from` by `to` in every text GoTo provided (`errorCode`, `message`, `reference`,
    /// the constraints, serde's quotes of an answer), also inside a retried error: the keeper
    /// shows its channel ids by their tag only, and GoTo's answers about a channel name it
    /// anywhere, the real cause of a 400 in its constraints.
    ///
    /// GoTo's texts were cut to [`MAX_TEXT`] characters when the error was built, possibly
    /// through an occurrence of `from`: a cut text that ends (before the [`TRUNCATED`] marker)
    /// with the beginning of `from` has that beginning replaced by `to` too, so no part of
    /// `from` survives the cut.
    pub(crate) fn replace_in_goto_text(&mut self, from: &str, to: &str) {
        if from.is_empty() {
            return;
        }
        let replace = |text: &mut String| replace_in(text, from, to);
        match self {
            GotoError::Api {
                error_code,
                message,
                reference,
                constraints,
                ..
            } => {
                for text in [error_code, message, reference].into_iter().flatten() {
                    replace(text);
                }
                for c in constraints {
                    if let Some(field) = &mut c.field {
                        replace(field);
                    }
                    replace(&mut c.constraint);
                }
            }
            GotoError::Item {
                error_code,
                message,
                ..
            } => {
                for text in [error_code, message].into_iter().flatten() {
                    replace(text);
                }
            }
            GotoError::Auth {
                error, description, ..
            } => {
                for text in [error, description].into_iter().flatten() {
                    replace(text);
                }
            }
            GotoError::Decode { detail, .. } => replace(detail),
            GotoError::RetriesExhausted { last, .. } => last.replace_in_goto_text(from, to),
            // Ours, and reqwest's own text with its URL removed: nothing of GoTo's.
            GotoError::Config { .. } | GotoError::Transport { .. } => {}
        }
    }

    /// An auth error from the token endpoint's response. The raw body is never kept.
    pub(crate) fn from_token_response(
        grant: &'static str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let (error, description) = match parsed {
            Some(b) => (
                b.error
                    .or_else(|| b.error_code.as_ref().and_then(text))
                    .map(|e| truncate(&e)),
                b.error_description.or(b.message).map(|m| truncate(&m)),
            ),
            None => (None, None),
        };
        GotoError::Auth {
            grant,
            status,
            error,
            description,
            retry_after,
        }
    }

    /// True for failures that may succeed when repeated: 429, 5xx and transport errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            GotoError::Api { status, .. }
            | GotoError::Item { status, .. }
            | GotoError::Auth { status, .. } => *status == 429 || *status >= 500,
            GotoError::Transport { .. } => true,
            GotoError::Config { .. }
            | GotoError::Decode { .. }
            | GotoError::RetriesExhausted { .. } => false,
        }
    }

    /// The HTTP status GoTo answered (of the last attempt, for exhausted retries; an item's own
    /// status for a failed item of a multi-status answer).
    pub fn status(&self) -> Option<u16> {
        match self {
            GotoError::Api { status, .. }
            | GotoError::Item { status, .. }
            | GotoError::Auth { status, .. } => Some(*status),
            GotoError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// GoTo's `errorCode` (or the OAuth `error` for the token endpoint).
    pub fn error_code(&self) -> Option<&str> {
        match self {
            GotoError::Api { error_code, .. } | GotoError::Item { error_code, .. } => {
                error_code.as_deref()
            }
            GotoError::Auth { error, .. } => error.as_deref(),
            GotoError::RetriesExhausted { last, .. } => last.error_code(),
            _ => None,
        }
    }

    /// The server's `Retry-After`, if the failing response carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GotoError::Api { retry_after, .. } | GotoError::Auth { retry_after, .. } => {
                *retry_after
            }
            GotoError::RetriesExhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// The endpoint the error is about (`None` for configuration errors).
    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            GotoError::Api { endpoint, .. }
            | GotoError::Item { endpoint, .. }
            | GotoError::Transport { endpoint, .. }
            | GotoError::Decode { endpoint, .. }
            | GotoError::RetriesExhausted { endpoint, .. } => Some(*endpoint),
            GotoError::Auth { .. } => Some(TOKEN),
            GotoError::Config { .. } => None,
        }
    }

    /// True when GoTo rejected the credentials themselves (the token endpoint answered
    /// 400/401 with e.g. `invalid_grant`): retrying will not help, an operator must act.
    pub fn is_credential_rejected(&self) -> bool {
        matches!(self, GotoError::Auth { status, .. } if (400..500).contains(status) && *status != 429)
    }
}

/// The union of GoTo's REST error body and the OAuth error body; every field optional.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "errorCode")]
    error_code: Option<Value>,
    message: Option<String>,
    reference: Option<String>,
    #[serde(default, rename = "constraintViolations")]
    constraint_violations: Vec<Value>,
    #[serde(default)]
    constraints: Vec<Value>,
    error: Option<String>,
    error_description: Option<String>,
}

/// A JSON scalar as text (`errorCode` is a string everywhere seen, but be lenient).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn constraint_from(item: &Value) -> Option<Constraint> {
    match item {
        Value::String(s) => Some(Constraint {
            field: None,
            constraint: truncate(s),
        }),
        Value::Object(map) => {
            let field = map.get("field").and_then(text).map(|f| truncate(&f));
            let constraint = ["constraint", "message", "code"]
                .iter()
                .find_map(|k| map.get(*k).and_then(text))
                .unwrap_or_else(|| "(unspecified)".to_owned());
            Some(Constraint {
                field,
                constraint: truncate(&constraint),
            })
        }
        _ => None,
    }
}

/// GoTo-provided text as kept in an error: URLs cut to scheme and host ([`without_url_paths`]),
/// then at most [`MAX_TEXT`] characters.
fn truncate(s: &str) -> String {
    let s = without_url_paths(s);
    if s.chars().count() <= MAX_TEXT {
        return s;
    }
    let mut out: String = s.chars().take(MAX_TEXT).collect();
    out.push(TRUNCATED);
    out
}

/// Replaces `from` (not empty) by `to` in `text`, a GoTo text as [`truncate`] kept it: when the
/// cut went through an occurrence of `from`, the beginning of it that ends the text (before the
/// [`TRUNCATED`] marker) is replaced by `to` as well.
fn replace_in(text: &mut String, from: &str, to: &str) {
    let cut = text.ends_with(TRUNCATED) && text.chars().count() == MAX_TEXT + 1;
    let body = if cut {
        &text[..text.len() - TRUNCATED.len_utf8()]
    } else {
        text.as_str()
    };
    // What follows the last whole occurrence: where the cut may have left a beginning
    // of `from` (unless that is `to`, from an earlier replacement of the same text).
    let tail = &body[body
        .match_indices(from)
        .last()
        .map_or(0, |(at, m)| at + m.len())..];
    let stub = if cut && !tail.ends_with(to) {
        (MIN_STUB..from.len().min(tail.len() + 1))
            .rev()
            .filter(|&n| from.is_char_boundary(n))
            .find(|&n| tail.ends_with(&from[..n]))
            .unwrap_or(0)
    } else {
        0
    };
    if stub == 0 && tail.len() == body.len() {
        return;
    }
    let mut out = body[..body.len() - stub].replace(from, to);
    if stub > 0 {
        out.push_str(to);
    }
    if cut {
        out.push(TRUNCATED);
    }
    *text = out;
}

/// The shortest beginning of `from` that [`replace_in`] takes for a cut occurrence: a text may
/// well end with an id's first character or two by chance, and so few say nothing of the id.
const MIN_STUB: usize = 4;

/// What [`truncate`] appends to a text it cut.
const TRUNCATED: char = '…';

/// What replaces the path (and query) of a URL quoted in GoTo's text.
const CUT: &str = "/…";

/// `text` with every URL-like word cut to its scheme and host: `https://host/goto/webhook/s3cr3t`
/// becomes `https://host/…`. GoTo's messages may quote what the request sent (a channel create
/// refused over its webhook URL, say), and the paths of the URLs callbridge sends are credentials:
/// the webhook URL ends in the shared secret, a WebSocket channel URL is the socket's only
/// credential. A word counts as a URL when it holds `://` (also percent-encoded), starts with `/`
/// (a path alone), or has a `/` after a dotted host (`host.example.com/path`). Words are split at
/// whitespace, quotes and brackets, so a URL quoted or in parentheses is found too.
fn without_url_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || "\"'`<>()[]{},;".contains(c) {
            out.push_str(&cut_url(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&cut_url(&word));
    out
}

/// One word of [`without_url_paths`].
fn cut_url(word: &str) -> std::borrow::Cow<'_, str> {
    // Escaped and percent-encoded separators count as the real ones (a URL quoted in JSON text
    // or as a query value).
    let decoded = word
        .replace("\\/", "/")
        .replace("%3A", ":")
        .replace("%3a", ":")
        .replace("%2F", "/")
        .replace("%2f", "/");
    if let Some(at) = decoded.find("://") {
        let (scheme, rest) = (&decoded[..at], &decoded[at + 3..]);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if end == rest.len() {
            return word.into();
        }
        // Credentials in the authority (`user:pass@host`) go too.
        let host = rest[..end].rsplit('@').next().unwrap_or_default();
        return format!("{scheme}://{host}{CUT}").into();
    }
    match decoded.find('/') {
        Some(0) if decoded.len() > 1 => CUT.into(),
        Some(at) if decoded[..at].contains('.') && at + 1 < decoded.len() => {
            format!("{}{CUT}", &decoded[..at]).into()
        }
        _ => word.into(),
    }
}

fn describe_api(
    endpoint: &Endpoint,
    status: u16,
    error_code: &Option<String>,
    message: &Option<String>,
    constraints: &[Constraint],
) -> String {
    let mut out = format!("{endpoint} answered HTTP {status}");
    if let Some(code) = error_code {
        let _ = write!(out, " {code}");
    }
    if let Some(message) = message {
        let _ = write!(out, ": {message}");
    }
    if !constraints.is_empty() {
        out.push_str(" [constraints: ");
        for (i, c) in constraints.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{c}");
        }
        out.push(']');
    }
    out
}

fn describe_item(
    endpoint: &Endpoint,
    item: &str,
    status: u16,
    error_code: &Option<String>,
    message: &Option<String>,
) -> String {
    let mut out = format!("{endpoint} answered item {item} with status {status}");
    if let Some(code) = error_code {
        let _ = write!(out, " {code}");
    }
    if let Some(message) = message {
        let _ = write!(out, ": {message}");
    }
    out
}

fn describe_auth(
    grant: &str,
    status: u16,
    error: &Option<String>,
    description: &Option<String>,
) -> String {
    let mut out = format!("{TOKEN} refused the {grant} grant with HTTP {status}");
    if let Some(error) = error {
        let _ = write!(out, " {error}");
    }
    if let Some(description) = description {
        let _ = write!(out, ": {description}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::{CREATE_CHANNEL, DELETE_CHANNEL, SUBSCRIBE_CALL_EVENTS};
    use super::*;

    #[test]
    fn api_error_names_endpoint_code_message_and_constraints() {
        let body = br#"{"reference":"ref-1","constraintViolations":[],
            "errorCode":"BAD_REQUEST","message":"The Notification Channel must be a WebSocket channel",
            "constraints":[{"field":"Events[0]","constraint":"INVALID"},{"field":"ID","constraint":"REQUIRED"}]}"#;
        let err = GotoError::from_api_response(SUBSCRIBE_CALL_EVENTS, 400, body, None);
        assert_eq!(
            err.to_string(),
            "POST /call-events/v1/subscriptions answered HTTP 400 BAD_REQUEST: The Notification \
             Channel must be a WebSocket channel [constraints: Events[0]: INVALID, ID: REQUIRED]"
        );
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.error_code(), Some("BAD_REQUEST"));
        assert!(!err.is_retryable());
        match err {
            GotoError::Api { reference, .. } => assert_eq!(reference.as_deref(), Some("ref-1")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn constraint_violations_and_not_found_body() {
        let body = br#"{"reference":"r","constraintViolations":[{"field":"to","constraint":"SIZE"}],
            "errorCode":"RTC-NOTIFICATION-CHANNEL-NOT-FOUND","message":"Notification channel does not exist Webhook.x"}"#;
        let err = GotoError::from_api_response(DELETE_CHANNEL, 404, body, None);
        assert_eq!(err.error_code(), Some("RTC-NOTIFICATION-CHANNEL-NOT-FOUND"));
        let text = err.to_string();
        assert!(
            text.starts_with("DELETE /notification-channel/v1/channels/{nickname}/{channelId}"),
            "{text}"
        );
        assert!(text.contains("[constraints: to: SIZE]"), "{text}");
    }

    #[test]
    fn non_json_body_becomes_a_short_message() {
        let body = "<html>".repeat(200);
        let err = GotoError::from_api_response(CREATE_CHANNEL, 502, body.as_bytes(), None);
        assert!(err.is_retryable());
        match &err {
            GotoError::Api {
                message: Some(m), ..
            } => assert!(m.chars().count() <= MAX_TEXT + 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oauth_error_body() {
        let body = br#"{"error":"invalid_client","error_description":"client not found"}"#;
        let err = GotoError::from_token_response("personal_access_token", 401, body, None);
        assert_eq!(
            err.to_string(),
            "POST /oauth/token refused the personal_access_token grant with HTTP 401 \
             invalid_client: client not found"
        );
        assert_eq!(err.error_code(), Some("invalid_client"));
        assert!(err.is_credential_rejected());
        assert!(!err.is_retryable());
        let busy = GotoError::from_token_response("refresh_token", 503, b"", None);
        assert!(busy.is_retryable());
        assert!(!busy.is_credential_rejected());
    }

    #[test]
    fn retryable_classification_and_exhausted_delegates() {
        let e429 = GotoError::from_api_response(
            SUBSCRIBE_CALL_EVENTS,
            429,
            b"{}",
            Some(Duration::from_secs(2)),
        );
        assert!(e429.is_retryable());
        let exhausted = GotoError::RetriesExhausted {
            endpoint: SUBSCRIBE_CALL_EVENTS,
            attempts: 5,
            last: Box::new(e429),
        };
        assert!(!exhausted.is_retryable());
        assert_eq!(exhausted.status(), Some(429));
        assert_eq!(exhausted.retry_after(), Some(Duration::from_secs(2)));
        assert!(exhausted.to_string().contains("gave up after 5 attempts"));
    }

    /// GoTo's 400s carry a boilerplate message and the real cause in their constraints, which
    /// may quote the channel the request named: a caller hiding a channel id must find it there
    /// too, as in every other text GoTo gave, also after retries.
    #[test]
    fn a_text_is_replaced_in_everything_goto_said() {
        const ID: &str = "0vTpo-UTMtHMl3lE4xYz";
        let body = format!(
            r#"{{"reference":"ref {ID}","errorCode":"BAD_REQUEST","message":"The Notification Channel must be a WebSocket channel",
                "constraints":[{{"field":"channelId","constraint":"Notification channel {ID} is not a WebSocket channel"}},
                               {{"field":"channels[{ID}]","constraint":"INVALID"}}, "{ID} expired"]}}"#
        );
        let mut err = GotoError::RetriesExhausted {
            endpoint: SUBSCRIBE_CALL_EVENTS,
            attempts: 2,
            last: Box::new(GotoError::from_api_response(
                SUBSCRIBE_CALL_EVENTS,
                400,
                body.as_bytes(),
                None,
            )),
        };
        assert!(err.to_string().contains(ID), "premise: {err}");
        err.replace_in_goto_text(ID, "ch-1234abcd");
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains(ID), "{shown}");
        assert!(
            err.to_string().ends_with(
                "[constraints: channelId: Notification channel ch-1234abcd is not a WebSocket \
                 channel, channels[ch-1234abcd]: INVALID, ch-1234abcd expired]"
            ),
            "{err}"
        );

        let mut item = GotoError::item(
            SUBSCRIBE_CALL_EVENTS,
            "1234567890123456789",
            404,
            Some("NOT_FOUND"),
            Some(&format!("Channel {ID} not found")),
        );
        item.replace_in_goto_text(ID, "ch-1234abcd");
        assert_eq!(
            item.to_string(),
            "POST /call-events/v1/subscriptions answered item 1234567890123456789 with status \
             404 NOT_FOUND: Channel ch-1234abcd not found"
        );
        assert_eq!(item.status(), Some(404));
        assert!(!item.is_retryable());
    }

    /// GoTo's texts are cut to [`MAX_TEXT`] characters when the error is built, before the
    /// keeper replaces its channel id: a cut through the id must not leave its beginning.
    #[test]
    fn an_id_the_cut_went_through_leaves_nothing_behind() {
        const ID: &str = "0vTpo-UTMtHMl3lE4xYz";
        const TAG: &str = "ch-1234abcd";
        // 490 characters before the id: the cut keeps its first 10.
        let long = format!(
            "{} {ID} is not a WebSocket channel",
            "a".repeat(MAX_TEXT - 11)
        );
        let body = serde_json::json!({
            "errorCode": "BAD_REQUEST",
            "message": long,
            "reference": format!("ref {ID} {long}"),
            "constraints": [{ "field": "channelId", "constraint": long }],
        });
        let api = GotoError::from_api_response(
            SUBSCRIBE_CALL_EVENTS,
            400,
            body.to_string().as_bytes(),
            None,
        );
        let item = GotoError::item(SUBSCRIBE_CALL_EVENTS, "1", 404, None, Some(&long));
        for err in [api, item] {
            let mut err = GotoError::RetriesExhausted {
                endpoint: SUBSCRIBE_CALL_EVENTS,
                attempts: 2,
                last: Box::new(err),
            };
            let before = err.to_string();
            assert!(
                before.contains(&format!("{}…", &ID[..10])),
                "premise: {before}"
            );
            err.replace_in_goto_text(ID, TAG);
            // Replacing again changes nothing.
            let once = format!("{err:?}");
            err.replace_in_goto_text(ID, TAG);
            assert_eq!(format!("{err:?}"), once);
            let shown = format!("{err} / {err:?}");
            for n in 6..=ID.len() {
                assert!(!shown.contains(&ID[..n]), "{} left: {shown}", &ID[..n]);
            }
            assert!(err.to_string().contains(&format!(" {TAG}…")), "{err}");
        }

        // A cut text ending with something else, and an uncut text, stay as they were.
        let mut err = GotoError::item(
            SUBSCRIBE_CALL_EVENTS,
            "1",
            404,
            Some("0vT"),
            Some(&"b".repeat(MAX_TEXT + 5)),
        );
        let before = err.to_string();
        err.replace_in_goto_text(ID, TAG);
        assert_eq!(err.to_string(), before);
        // Nor one that ends, by chance, with the id's first character or few.
        for chance in ["0", "0vT"] {
            let text = format!("{}{chance} and more", "b".repeat(MAX_TEXT - chance.len()));
            let mut err = GotoError::item(SUBSCRIBE_CALL_EVENTS, "1", 404, None, Some(&text));
            let before = err.to_string();
            assert!(before.contains(&format!("b{chance}…")), "premise: {before}");
            err.replace_in_goto_text(ID, TAG);
            assert_eq!(err.to_string(), before);
        }
    }

    /// GoTo's text may quote what the request sent; the paths of the URLs callbridge sends are
    /// credentials (the webhook URL ends in its shared secret, a WebSocket URL is the socket's
    /// credential), so every URL-like word keeps its scheme and host only.
    #[test]
    fn urls_quoted_by_goto_keep_only_scheme_and_host() {
        const SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c";
        let body = format!(
            r#"{{"errorCode":"BAD_REQUEST",
                "message":"Webhook URL https://bridge.example.com/goto/webhook/{SECRET} did not answer (\"wss://webrtc.jive.com/notification-channel/v1/channels/{SECRET}/ws\")",
                "reference":"https://user:{SECRET}@h.example.com/x?{SECRET}",
                "constraints":[{{"field":"webhookChannelData.webhook.url","constraint":"bridge.example.com/goto/webhook/{SECRET}"}},
                               {{"field":"/goto/webhook/{SECRET}","constraint":"INVALID"}},
                               "https%3A%2F%2Fbridge.example.com%2Fgoto%2Fwebhook%2F{SECRET}"]}}"#
        );
        let err = GotoError::from_api_response(CREATE_CHANNEL, 400, body.as_bytes(), None);
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert!(
            shown.contains("Webhook URL https://bridge.example.com/… did not answer"),
            "{shown}"
        );
        assert!(shown.contains("wss://webrtc.jive.com/…"), "{shown}");
        assert!(shown.contains("bridge.example.com/…"), "{shown}");
        assert_eq!(err.error_code(), Some("BAD_REQUEST"));

        // A proxy's page that is not JSON, with JSON-escaped slashes.
        let page = format!(
            r#"<p>upstream refused "https:\/\/bridge.example.com\/goto\/webhook\/{SECRET}"</p>"#
        );
        let err = GotoError::from_api_response(CREATE_CHANNEL, 502, page.as_bytes(), None);
        assert!(!format!("{err} / {err:?}").contains(SECRET), "{err:?}");

        // Words that are not URLs stay as they were.
        for kept in [
            "Notification channel does not exist Webhook.6050752e-78dd",
            "Events[0]: INVALID, application/json, 10/s, 2026/01/31",
            "see https://developer.goto.com",
        ] {
            assert_eq!(without_url_paths(kept), kept);
        }
    }

    /// No error built by this module may show a token: token-endpoint decode errors drop
    /// serde's quoted values, transport errors drop the URL.
    #[tokio::test]
    async fn errors_never_show_secrets() {
        const SECRET: &str = "eyJsecret-token-value";
        // serde quotes the offending value; for the token endpoint it must not appear.
        let bad: Result<u64, _> = serde_json::from_str(&format!("\"{SECRET}\""));
        let serde_err = bad.unwrap_err();
        assert!(
            serde_err.to_string().contains(SECRET),
            "premise of the test"
        );
        let decode = GotoError::decode(TOKEN, &serde_err);
        let channel_decode = GotoError::decode(CREATE_CHANNEL, &serde_err);

        // reqwest puts the URL (query string included) into its errors; ours must not.
        let reqwest_err = reqwest::Client::new()
            .get(format!("http://127.0.0.1:1/x?token={SECRET}"))
            .send()
            .await
            .unwrap_err();
        assert!(format!("{reqwest_err:?}").contains(SECRET), "premise");
        let transport = GotoError::transport(CREATE_CHANNEL, reqwest_err);

        let auth = GotoError::from_token_response(
            "refresh_token",
            400,
            br#"{"error":"invalid_grant"}"#,
            None,
        );
        let wrapped = GotoError::RetriesExhausted {
            endpoint: CREATE_CHANNEL,
            attempts: 2,
            last: Box::new(GotoError::transport(
                CREATE_CHANNEL,
                reqwest::Client::new()
                    .get(format!("http://127.0.0.1:1/?pat={SECRET}"))
                    .send()
                    .await
                    .unwrap_err(),
            )),
        };
        for err in [decode, channel_decode, transport, auth, wrapped] {
            let shown = format!("{err} / {err:?}");
            assert!(!shown.contains(SECRET), "secret leaked: {shown}");
            assert!(!shown.contains("token="), "query string leaked: {shown}");
            assert!(!shown.contains("http://"), "URL leaked: {shown}");
        }
    }
}
