//! HTTP behaviour of the client against a tiny scripted axum server on 127.0.0.1:0: real
//! sockets, no mocking library. Each test scripts the server's answers with a closure and then
//! asserts on what the client did (requests seen, results, counters).
//!
//! These tests run in real time (a paused clock would fire reqwest's timeouts while the
//! runtime waits on sockets), so every retry delay is configured to a few milliseconds and
//! the only long waits are the ones a test is about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;

use super::*;

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
    /// 0-based index among earlier requests with the same method and path.
    nth: usize,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the server answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Option<Duration>,
}

impl Reply {
    fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.into(),
            delay: None,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: None,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

type Responder = dyn Fn(&Seen) -> Reply + Send + Sync;

struct ServerState {
    log: Mutex<Vec<Seen>>,
    responder: Box<Responder>,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
}

impl TestServer {
    async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> TestServer {
        let state = Arc::new(ServerState {
            log: Mutex::new(Vec::new()),
            responder: Box::new(responder),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer { addr, state }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    fn requests_to(&self, method: &str, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    fn token_requests(&self) -> Vec<Seen> {
        self.requests_to("POST", "/oauth/token")
    }

    fn api_requests(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/oauth/token")
            .collect()
    }

    /// A client pointed at this server: fast retries, no client-side rate limit.
    fn client(&self, tweak: impl FnOnce(&mut GotoClientConfig)) -> GotoClient {
        let mut config = GotoClientConfig::new(
            "client-id",
            Secret::new("client-secret-XYZ"),
            Credential::PersonalAccessToken(Secret::new("pat-SECRET")),
        );
        config.api_base_url = self.base();
        config.auth_base_url = self.base();
        config.requests_per_second_per_api = 0;
        config.retry_base_delay = Duration::from_millis(1);
        config.retry_max_delay = Duration::from_millis(5);
        config.request_timeout = Duration::from_secs(5);
        tweak(&mut config);
        GotoClient::new(config).unwrap()
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = {
        let mut log = state.log.lock().unwrap();
        let nth = log
            .iter()
            .filter(|r| r.method == method.as_str() && r.path == uri.path())
            .count();
        let seen = Seen {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or("").to_owned(),
            headers,
            body,
            nth,
        };
        log.push(seen.clone());
        seen
    };
    let reply = (state.responder)(&seen);
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut headers = HeaderMap::new();
    for (name, value) in reply.headers {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    (
        StatusCode::from_u16(reply.status).unwrap(),
        headers,
        reply.body,
    )
        .into_response()
}

/// The token endpoint's answer: `tok-1`, `tok-2`, … by request order.
fn token_reply(seen: &Seen) -> Reply {
    Reply::json(
        200,
        format!(
            r#"{{"access_token":"tok-{}","token_type":"Bearer","expires_in":3600,"scope":"call-events.v1.notifications.manage","principal":"u@example.com"}}"#,
            seen.nth + 1
        ),
    )
}

const WS_CHANNEL: &str = r#"{"channelId":"ch-1","channelNickname":"bridge","channelData":{"channelType":"WebSockets","channelURL":"wss://example/ws","isConnected":false},"channelLifetime":10800}"#;

/// Token endpoint plus a channel GET answering `WS_CHANNEL`, everything else 404.
fn simple(seen: &Seen) -> Reply {
    match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        "/notification-channel/v1/channels/bridge/ch-1" => Reply::json(200, WS_CHANNEL),
        _ => Reply::empty(404),
    }
}

#[tokio::test]
async fn pat_grant_uses_form_basic_auth_and_bearer() {
    let server = TestServer::start(simple).await;
    let client = server.client(|_| {});
    let channel = client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
    assert_eq!(channel.channel_id, "ch-1");

    let tokens = server.token_requests();
    assert_eq!(tokens.len(), 1);
    let t = &tokens[0];
    let form = t.form();
    assert_eq!(form["grant_type"], "personal_access_token");
    assert_eq!(form["pat"], "pat-SECRET");
    assert_eq!(form.len(), 2);
    assert_eq!(
        t.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(t.header("accept"), "application/json");
    let basic = base64::engine::general_purpose::STANDARD.encode("client-id:client-secret-XYZ");
    assert_eq!(t.header("authorization"), format!("Basic {basic}"));

    let api = server.requests_to("GET", "/notification-channel/v1/channels/bridge/ch-1");
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].header("authorization"), "Bearer tok-1");
    assert_eq!(client.token_refreshes(), 1);

    // A second call reuses the cached token.
    client.get_channel("bridge", "ch-1").await.unwrap();
    assert_eq!(server.token_requests().len(), 1);
}

#[tokio::test]
async fn refresh_token_is_kept_unless_a_new_one_is_issued() {
    // Every API call is refused once (odd requests), forcing a refresh each time.
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => {
            let rt = if seen.nth == 1 {
                r#","refresh_token":"rt-2""#
            } else {
                ""
            };
            Reply::json(
                200,
                format!(
                    r#"{{"access_token":"tok-{}","expires_in":3600{rt}}}"#,
                    seen.nth + 1
                ),
            )
        }
        _ if seen.nth % 2 == 0 => Reply::json(401, r#"{"errorCode":"AUTHN_INVALID_TOKEN"}"#),
        _ => Reply::json(200, WS_CHANNEL),
    })
    .await;
    let client = server.client(|c| {
        c.credential = Credential::RefreshToken(Secret::new("rt-1"));
    });
    client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
    client.get_channel("bridge", "ch-1").await.unwrap().unwrap();

    let used: Vec<String> = server
        .token_requests()
        .iter()
        .map(|t| {
            let form = t.form();
            assert_eq!(form["grant_type"], "refresh_token");
            form["refresh_token"].clone()
        })
        .collect();
    // 1st: initial; 2nd: after a 401, old token kept (1st response had none);
    // 3rd: after the next 401, the rt-2 issued by the 2nd response.
    assert_eq!(used, vec!["rt-1", "rt-1", "rt-2"]);
    assert_eq!(client.token_refreshes(), 3);
}

#[tokio::test]
async fn api_401_refreshes_once_and_retries_once() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(
            401,
            r#"{"errorCode":"AUTHN_INVALID_TOKEN","message":"bad token"}"#,
        ),
    })
    .await;
    let client = server.client(|_| {});
    let err = client.get_channel("bridge", "ch-1").await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.error_code(), Some("AUTHN_INVALID_TOKEN"));
    let api = server.api_requests();
    assert_eq!(api.len(), 2, "one retry after the refresh, no more");
    assert_eq!(api[0].header("authorization"), "Bearer tok-1");
    assert_eq!(api[1].header("authorization"), "Bearer tok-2");
    assert_eq!(server.token_requests().len(), 2);
    assert_eq!(client.token_refreshes(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        // A slow token endpoint widens the window in which callers overlap.
        "/oauth/token" => token_reply(seen).delayed(Duration::from_millis(100)),
        _ => simple(seen),
    })
    .await;
    let client = server.client(|_| {});
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.get_channel("bridge", "ch-1").await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    assert_eq!(server.token_requests().len(), 1);
    assert_eq!(server.api_requests().len(), 20);
}

#[tokio::test]
async fn concurrent_401s_for_one_stale_token_trigger_one_refresh() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ if seen.header("authorization") == "Bearer tok-1" => {
            Reply::json(401, "{}").delayed(Duration::from_millis(50))
        }
        _ => Reply::json(200, WS_CHANNEL),
    })
    .await;
    let client = server.client(|_| {});
    client.check_credentials().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.get_channel("bridge", "ch-1").await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    assert_eq!(
        server.token_requests().len(),
        2,
        "initial token + one refresh"
    );
    assert_eq!(client.token_refreshes(), 2);
}

#[tokio::test]
async fn proactive_refresh_and_fallback_when_it_fails() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => match seen.nth {
            0 => Reply::json(200, r#"{"access_token":"tok-1","expires_in":4}"#),
            1 => Reply::json(
                400,
                r#"{"error":"invalid_grant","error_description":"nope"}"#,
            ),
            _ => Reply::json(200, r#"{"access_token":"tok-3","expires_in":3600}"#),
        },
        _ => simple(seen),
    })
    .await;
    // Refresh due after 10% of 4 s = 400 ms, the token stays valid for 4 s.
    let client = server.client(|c| c.refresh_after_fraction = 0.1);
    client.get_channel("bridge", "ch-1").await.unwrap();
    let due = Instant::now() + Duration::from_millis(450);
    tokio::time::sleep_until(due.into()).await;

    // The refresh fails: the still-valid token is used and the call succeeds.
    client.get_channel("bridge", "ch-1").await.unwrap();
    // The next call refreshes again, successfully.
    client.get_channel("bridge", "ch-1").await.unwrap();

    let bearers: Vec<String> = server
        .api_requests()
        .iter()
        .map(|r| r.header("authorization").to_owned())
        .collect();
    assert_eq!(
        bearers,
        vec!["Bearer tok-1", "Bearer tok-1", "Bearer tok-3"]
    );
    assert_eq!(server.token_requests().len(), 3);
    assert_eq!(
        client.token_refreshes(),
        2,
        "only successful token requests count"
    );
}

/// The token endpoint for the outage tests: the first token (valid an hour) is issued, then
/// every request fails with 503 or, with `hang`, is answered only after 30 s.
fn login_outage(hang: bool) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |seen| match seen.path.as_str() {
        "/oauth/token" if seen.nth == 0 => {
            Reply::json(200, r#"{"access_token":"tok-1","expires_in":3600}"#)
        }
        "/oauth/token" if hang => token_reply(seen).delayed(Duration::from_secs(30)),
        "/oauth/token" => Reply::empty(503),
        _ => simple(seen),
    }
}

/// A login host that fails or hangs while the token is still valid for most of an hour: API
/// calls keep using the token, and the proactive refresh is not repeated (let alone with its
/// retries) by every call. Before, each call ran the whole retrying refresh while holding the
/// token lock: 5 token requests per call, each waiting out the request timeout on a hang.
#[tokio::test]
async fn login_outage_while_the_token_is_valid_does_not_stall_requests() {
    const CALLS: usize = 10;
    for hang in [false, true] {
        let server = TestServer::start(login_outage(hang)).await;
        // Refresh due after 0.005 % of an hour = 180 ms; a hanging attempt times out at 500 ms.
        let client = server.client(|c| {
            c.refresh_after_fraction = 0.00005;
            c.request_timeout = Duration::from_millis(500);
        });
        client.get_channel("bridge", "ch-1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;

        let start = Instant::now();
        for _ in 0..CALLS {
            client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
        }
        let elapsed = start.elapsed();

        let bearers: Vec<String> = server
            .api_requests()
            .iter()
            .map(|r| r.header("authorization").to_owned())
            .collect();
        assert_eq!(bearers, vec!["Bearer tok-1"; CALLS + 1], "hang={hang}");
        // The first due call tries once, the next once more; then the refresh backs off
        // (1 s). A third attempt only if the calls took longer than that.
        let attempts = server.token_requests().len() - 1;
        assert!(
            (1..=3).contains(&attempts),
            "hang={hang}: {attempts} token requests for {CALLS} calls"
        );
        assert_eq!(client.token_refreshes(), 1);
        // Generous: the old code needed 5 × 500 ms per call on a hang.
        assert!(
            elapsed < Duration::from_secs(5),
            "hang={hang}: {CALLS} calls took {elapsed:?}"
        );
    }
}

/// While one caller's proactive refresh waits on a hanging login host, other calls holding
/// the still-valid token go ahead instead of queueing behind it, and make no token request of
/// their own (single flight).
#[tokio::test]
async fn calls_do_not_wait_for_a_proactive_refresh_in_flight() {
    let server = TestServer::start(login_outage(true)).await;
    // The hanging attempt lasts 2 s (the request timeout, below the proactive cap).
    let client = server.client(|c| {
        c.refresh_after_fraction = 0.00005;
        c.request_timeout = Duration::from_secs(2);
    });
    client.get_channel("bridge", "ch-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;

    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.get_channel("bridge", "ch-1").await })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.token_requests().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the proactive refresh never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Bounded below the 2 s the refresh in flight lasts: calls that queued behind it could
    // not finish in time.
    let others = tokio::time::timeout(Duration::from_millis(1500), async {
        for _ in 0..10 {
            client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
        }
    })
    .await;
    assert!(others.is_ok(), "calls waited for the refresh in flight");
    assert!(!first.is_finished(), "the refresh was still in flight");
    assert_eq!(
        server.token_requests().len(),
        2,
        "one token request at a time"
    );

    // The caller that made the refresh falls back to the valid token when it times out.
    assert!(first.await.unwrap().unwrap().is_some());
    let bearers: Vec<String> = server
        .api_requests()
        .iter()
        .map(|r| r.header("authorization").to_owned())
        .collect();
    assert_eq!(bearers, vec!["Bearer tok-1"; 12]);
    assert_eq!(
        server.token_requests().len(),
        2,
        "no retry of the timed-out refresh"
    );
    assert_eq!(client.token_refreshes(), 1);
}

#[tokio::test]
async fn token_endpoint_refusal_is_an_auth_error_without_secrets() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => Reply::json(
            401,
            r#"{"error":"invalid_client","error_description":"client not found"}"#,
        ),
        _ => simple(seen),
    })
    .await;
    let client = server.client(|_| {});
    let err = client.list_channels().await.unwrap_err();
    assert!(
        matches!(err, GotoError::Auth { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.error_code(), Some("invalid_client"));
    assert!(err.is_credential_rejected());
    assert_eq!(server.token_requests().len(), 1, "a refusal is not retried");
    assert!(server.api_requests().is_empty());
    let shown = format!("{err} {err:?} {client:?}");
    for secret in ["pat-SECRET", "client-secret-XYZ"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[tokio::test]
async fn token_endpoint_outage_is_retried() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" if seen.nth < 2 => Reply::empty(503),
        "/oauth/token" => token_reply(seen),
        _ => simple(seen),
    })
    .await;
    let client = server.client(|_| {});
    client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
    assert_eq!(server.token_requests().len(), 3);
    assert_eq!(client.token_refreshes(), 1);
}

#[tokio::test]
async fn retries_429_and_5xx_then_succeeds() {
    let server = TestServer::start(|seen| match (seen.path.as_str(), seen.nth) {
        ("/oauth/token", _) => token_reply(seen),
        (_, 0) => Reply::json(503, r#"{"errorCode":"UNKNOWN_ERROR"}"#),
        (_, 1) => Reply::json(429, "{}"),
        (_, 2) => Reply::empty(502),
        _ => Reply::json(200, WS_CHANNEL),
    })
    .await;
    let client = server.client(|_| {});
    let channel = client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
    assert_eq!(channel.lifetime_secs, Some(10800));
    assert_eq!(server.api_requests().len(), 4);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = TestServer::start(|seen| match (seen.path.as_str(), seen.nth) {
        ("/oauth/token", _) => token_reply(seen),
        (_, 0) => Reply::json(429, "{}").header("retry-after", "1"),
        _ => Reply::json(200, WS_CHANNEL),
    })
    .await;
    // Backoff alone would wait at most 5 ms.
    let client = server.client(|_| {});
    let start = Instant::now();
    client.get_channel("bridge", "ch-1").await.unwrap().unwrap();
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(server.api_requests().len(), 2);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(500, r#"{"errorCode":"UNKNOWN_ERROR","message":"boom"}"#),
    })
    .await;
    let client = server.client(|c| c.max_attempts = 3);
    let err = client.list_channels().await.unwrap_err();
    match &err {
        GotoError::RetriesExhausted {
            endpoint, attempts, ..
        } => {
            assert_eq!(*endpoint, endpoint::LIST_CHANNELS);
            assert_eq!(*attempts, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.error_code(), Some("UNKNOWN_ERROR"));
    assert_eq!(server.api_requests().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(
            400,
            r#"{"errorCode":"BAD_REQUEST","message":"The Notification Channel must be a WebSocket channel","constraints":[{"field":"Events[0]","constraint":"INVALID"}]}"#,
        ),
    })
    .await;
    let client = server.client(|_| {});
    let err = client
        .subscribe_call_events("Webhook.x", &[AccountSubscription::all_events("1")])
        .await
        .unwrap_err();
    assert_eq!(server.api_requests().len(), 1);
    let text = err.to_string();
    assert!(
        text.contains("POST /call-events/v1/subscriptions answered HTTP 400 BAD_REQUEST"),
        "{text}"
    );
    assert!(text.contains("Events[0]: INVALID"), "{text}");
}

#[tokio::test]
async fn channel_creation_is_never_retried_blindly() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::empty(503),
    })
    .await;
    let client = server.client(|_| {});
    let err = client
        .create_channel("bridge", &ChannelRequest::WebSocket { lifetime: None })
        .await
        .unwrap_err();
    assert!(matches!(err, GotoError::Api { status: 503, .. }), "{err:?}");
    assert!(
        err.is_retryable(),
        "the caller decides, after listing channels"
    );
    assert_eq!(server.api_requests().len(), 1);
}

#[tokio::test]
async fn channel_creation_timeout_is_not_retried() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(201, WS_CHANNEL).delayed(Duration::from_secs(5)),
    })
    .await;
    let client = server.client(|c| c.request_timeout = Duration::from_millis(200));
    let err = client
        .create_channel("bridge", &ChannelRequest::WebSocket { lifetime: None })
        .await
        .unwrap_err();
    assert!(matches!(err, GotoError::Transport { .. }), "{err:?}");
    assert_eq!(server.api_requests().len(), 1);
}

#[tokio::test]
async fn channel_creation_after_401_is_resent_once() {
    let server = TestServer::start(|seen| match (seen.path.as_str(), seen.nth) {
        ("/oauth/token", _) => token_reply(seen),
        (_, 0) => Reply::json(401, "{}"),
        _ => Reply::json(201, WS_CHANNEL),
    })
    .await;
    let client = server.client(|_| {});
    let channel = client
        .create_channel("bridge", &ChannelRequest::WebSocket { lifetime: None })
        .await
        .unwrap();
    assert_eq!(channel.kind.url(), Some("wss://example/ws"));
    assert_eq!(server.api_requests().len(), 2);
}

#[tokio::test]
async fn create_webhook_channel_sends_documented_body_and_encodes_nickname() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(
            201,
            r#"{"channelId":"Webhook.6050","webhookChannelData":{"webhook":{"url":"https://h.example/hook/s3cr3t"},"channelType":"Webhook"},"channelLifetime":2147483647,"resourceURL":"https://webrtc.jive.com/x","doNotDisturbAware":false}"#,
        ),
    })
    .await;
    let client = server.client(|_| {});
    let channel = client
        .create_channel(
            "bridge@host.example/a b",
            &ChannelRequest::Webhook {
                url: "https://h.example/hook/s3cr3t".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(channel.channel_id, "Webhook.6050");
    assert_eq!(channel.nickname, "bridge@host.example/a b");
    assert_eq!(
        channel.kind,
        ChannelKind::Webhook {
            url: Some("https://h.example/hook/s3cr3t".into())
        }
    );
    let req = &server.api_requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        "/notification-channel/v1/channels/bridge@host.example%2Fa%20b"
    );
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(
        req.json(),
        serde_json::json!({"channelType":"Webhook","webhookChannelData":{"webhook":{"url":"https://h.example/hook/s3cr3t"}}})
    );
}

#[tokio::test]
async fn websocket_spelling_is_a_setting() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(200, WS_CHANNEL),
    })
    .await;
    let client = server.client(|c| c.websocket_channel_type = WebSocketTypeSpelling::WebSocket);
    let refreshed = client
        .refresh_channel(
            "bridge",
            "ch-1",
            &ChannelRequest::WebSocket { lifetime: None },
        )
        .await
        .unwrap();
    assert_eq!(refreshed.lifetime_secs, Some(10800));
    let req = &server.api_requests()[0];
    assert_eq!(req.method, "PUT");
    assert_eq!(req.path, "/notification-channel/v1/channels/bridge/ch-1");
    assert_eq!(req.json(), serde_json::json!({"channelType":"WebSocket"}));
}

#[tokio::test]
async fn extend_lifetime_reads_the_new_lifetime() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        "/notification-channel/v1/channels/bridge/ch-1/channel-lifetime" => {
            Reply::json(200, r#"{"channelLifetime":1200}"#)
        }
        _ => Reply::empty(404),
    })
    .await;
    let client = server.client(|_| {});
    assert_eq!(
        client
            .extend_channel_lifetime("bridge", "ch-1")
            .await
            .unwrap(),
        1200
    );
    assert_eq!(server.api_requests()[0].method, "PUT");
}

#[tokio::test]
async fn list_channels_follows_page_markers() {
    let server = TestServer::start(|seen| {
        let marker = seen
            .query_pairs()
            .into_iter()
            .find(|(k, _)| k == "pageMarker")
            .map(|(_, v)| v);
        match (seen.path.as_str(), marker.as_deref()) {
            ("/oauth/token", _) => token_reply(seen),
            (_, None) => Reply::json(
                200,
                r#"{"items":[{"channelId":"a","channelType":"Webhook"},{"channelId":"b","channelData":{"channelType":"WebSocket"}}],"nextPageMarker":"m/1+"}"#,
            ),
            (_, Some("m/1+")) => Reply::json(
                200,
                r#"{"items":[{"channelId":"c"}],"nextPageMarker":""}"#,
            ),
            _ => Reply::empty(400),
        }
    })
    .await;
    let client = server.client(|_| {});
    let channels = client.list_channels().await.unwrap();
    let ids: Vec<&str> = channels.iter().map(|c| c.channel_id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    let api = server.api_requests();
    assert_eq!(api.len(), 2);
    assert_eq!(
        api[0].query_pairs(),
        vec![("pageSize".into(), "100".into())]
    );
    assert_eq!(
        api[1].query_pairs(),
        vec![
            ("pageSize".into(), "100".into()),
            ("pageMarker".into(), "m/1+".into())
        ]
    );
}

/// serde quotes the offending value of a type error, and in a channel listing that value can
/// be a webhook URL (with its shared secret in the path) or a WebSocket URL (the credential
/// itself). An item that does not decode is another app's business and is skipped; a page that
/// does not decode fails with an error that names the endpoint and what went wrong, not the
/// value: it goes through the same redaction as create and get.
#[tokio::test]
async fn channel_listing_decode_error_does_not_show_the_channel_url() {
    const SECRET: &str = "s3cr3t-PATH-TOKEN";
    let odd_items = [
        // `webhook` must be an object `{"url": …}`.
        format!(
            r#"{{"channelId":"Webhook.1","channelType":"Webhook","webhookChannelData":{{"webhook":"https://hooks.example.com/goto/{SECRET}"}}}}"#
        ),
        // `channelData` must be an object.
        format!(r#"{{"channelId":"ch-2","channelData":"wss://ws.example.com/ch/{SECRET}"}}"#),
    ];
    let bad_page = format!(r#"{{"items":"wss://ws.example.com/ch/{SECRET}"}}"#);
    for item in odd_items {
        let body = format!(r#"{{"items":[{{"channelId":"ok"}},{item}]}}"#);
        let server = TestServer::start(move |seen| match seen.path.as_str() {
            "/oauth/token" => token_reply(seen),
            _ => Reply::json(200, body.clone()),
        })
        .await;
        let client = server.client(|_| {});
        let listed = client
            .list_channels()
            .await
            .expect("the odd item is skipped");
        let ids: Vec<&str> = listed.iter().map(|c| c.channel_id.as_str()).collect();
        assert_eq!(ids, ["ok"]);
    }
    let premise = crate::goto::model::decode_channel_page(bad_page.as_bytes()).unwrap_err();
    assert!(premise.to_string().contains(SECRET), "premise: {premise}");
    let server = TestServer::start(move |seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(200, bad_page.clone()),
    })
    .await;
    let client = server.client(|_| {});
    let err = client.list_channels().await.unwrap_err();
    assert!(matches!(err, GotoError::Decode { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("GET /notification-channel/v1/channels: undecodable response"),
        "{text}"
    );
    let shown = format!("{err} / {err:?}");
    for leak in [SECRET, "https://", "wss://", "example.com"] {
        assert!(!shown.contains(leak), "{leak} leaked: {shown}");
    }
}

#[tokio::test]
async fn looping_page_marker_is_an_error() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(200, r#"{"items":[],"nextPageMarker":"same"}"#),
    })
    .await;
    let client = server.client(|_| {});
    let err = client.list_channels().await.unwrap_err();
    assert!(matches!(err, GotoError::Decode { .. }), "{err:?}");
    assert_eq!(server.api_requests().len(), 2);
}

#[tokio::test]
async fn get_and_delete_treat_404_as_absence() {
    let server = TestServer::start(|seen| match (seen.method.as_str(), seen.path.as_str()) {
        (_, "/oauth/token") => token_reply(seen),
        ("DELETE", "/notification-channel/v1/channels/bridge/ch-1") => Reply::empty(204),
        _ => Reply::json(
            404,
            r#"{"reference":"r","constraintViolations":[],"errorCode":"RTC-NOTIFICATION-CHANNEL-NOT-FOUND","message":"Notification channel does not exist"}"#,
        ),
    })
    .await;
    let client = server.client(|_| {});
    assert_eq!(client.get_channel("bridge", "gone").await.unwrap(), None);
    assert!(!client.delete_channel("bridge", "gone").await.unwrap());
    assert!(client.delete_channel("bridge", "ch-1").await.unwrap());
    // 404 elsewhere is an error naming GoTo's code.
    let err = client
        .extend_channel_lifetime("bridge", "gone")
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("RTC-NOTIFICATION-CHANNEL-NOT-FOUND"));
}

const STATE_3: &str = r#"{"id":"s3","sequenceNumber":3, "type":"ACTIVE","participants":[{"participantId":"p","futureField":{"a":[1,2.50]}}]}"#;
const STATE_4: &str =
    r#"{ "id": "s4", "sequenceNumber": 4, "type": "ENDING", "participants": [] }"#;

#[tokio::test]
async fn conversation_events_follow_pages_and_keep_raw_states() {
    let server = TestServer::start(|seen| {
        let has_marker = seen.query_pairs().iter().any(|(k, _)| k == "pageMarker");
        match (seen.path.as_str(), has_marker) {
            ("/oauth/token", _) => token_reply(seen),
            ("/call-events/v1/conversation-spaces/conv%2F1/events", false) => Reply::json(
                200,
                format!(
                    r#"{{"items":[{{"metadata":{{"conversationSpaceId":"conv/1"}},"state":{STATE_3}}}],"nextPageMarker":"p2"}}"#
                ),
            ),
            ("/call-events/v1/conversation-spaces/conv%2F1/events", true) => Reply::json(
                200,
                format!(
                    r#"{{"pageSize":100,"nextPageMarker":"","metadata":{{"conversationSpaceId":"conv/1"}},"states":[{STATE_4}]}}"#
                ),
            ),
            _ => Reply::json(404, r#"{"errorCode":"NOT_FOUND"}"#),
        }
    })
    .await;
    let client = server.client(|_| {});
    let found = client
        .conversation_events("conv/1", Some(3), Some(4))
        .await
        .unwrap();
    let ConversationEvents::Found(states) = found else {
        panic!("expected states");
    };
    assert_eq!(states.len(), 2);
    assert_eq!(states[0].sequence_number, 3);
    assert_eq!(states[0].state.get(), STATE_3);
    assert_eq!(states[1].sequence_number, 4);
    assert_eq!(states[1].state.get(), STATE_4);
    assert_eq!(
        states[1].metadata.as_ref().map(|m| m.get()),
        Some(r#"{"conversationSpaceId":"conv/1"}"#)
    );
    let first = &server.api_requests()[0];
    assert_eq!(
        first.query_pairs(),
        vec![
            ("sequenceFrom".into(), "3".into()),
            ("sequenceTo".into(), "4".into()),
            ("pageSize".into(), "100".into())
        ]
    );

    let missing = client
        .conversation_events("nope", None, None)
        .await
        .unwrap();
    assert!(matches!(missing, ConversationEvents::NotFound));
    let last = server.api_requests().pop().unwrap();
    assert_eq!(last.query_pairs(), vec![("pageSize".into(), "100".into())]);
}

#[tokio::test]
async fn subscribe_call_events_reports_each_account() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        "/call-events/v1/subscriptions" if seen.method == "POST" => Reply::json(
            207,
            r#"{"accountKeys":[{"id":"111","status":200,"message":"Success"},{"id":"222","status":403,"message":"Forbidden","errorCode":"AUTHZ_INSUFFICIENT_SCOPE"}]}"#,
        ),
        "/call-events/v1/subscriptions" => {
            Reply::json(200, r#"{"accountKeys":["111",{"id":"333"}]}"#)
        }
        _ => Reply::empty(404),
    })
    .await;
    let client = server.client(|_| {});
    let outcomes = client
        .subscribe_call_events(
            "ch-1",
            &[
                AccountSubscription {
                    account_key: "111".into(),
                    events: Some(vec!["STARTING".into(), "ACTIVE".into(), "ENDING".into()]),
                },
                AccountSubscription::all_events("222"),
            ],
        )
        .await
        .unwrap();
    assert!(outcomes[0].is_subscribed());
    assert!(matches!(
        &outcomes[1],
        SubscriptionOutcome::Failed { status: 403, permanent: true, error_code: Some(code), .. }
            if code == "AUTHZ_INSUFFICIENT_SCOPE"
    ));
    assert_eq!(
        server.api_requests()[0].json(),
        serde_json::json!({"channelId":"ch-1","accountKeys":[
            {"id":"111","events":["STARTING","ACTIVE","ENDING"]},{"id":"222"}]})
    );

    let keys = client.call_event_subscriptions("ch-1").await.unwrap();
    assert_eq!(keys, vec!["111", "333"]);
    assert_eq!(
        server.api_requests()[1].query_pairs(),
        vec![("channelId".into(), "ch-1".into())]
    );
}

#[tokio::test]
async fn active_conversations_repeat_account_key() {
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        _ => Reply::json(
            200,
            r#"{"pageSize":100,"items":[{"metadata":{"conversationSpaceId":"c1"},"state":{"sequenceNumber":2}}]}"#,
        ),
    })
    .await;
    let client = server.client(|_| {});
    let items = client
        .active_conversations(&["a".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].get(),
        r#"{"metadata":{"conversationSpaceId":"c1"},"state":{"sequenceNumber":2}}"#
    );
    let req = &server.api_requests()[0];
    assert_eq!(req.path, "/call-events/v1/conversation-spaces");
    assert_eq!(
        req.query_pairs(),
        vec![
            ("accountKey".into(), "a".into()),
            ("accountKey".into(), "b".into()),
            ("pageSize".into(), "100".into())
        ]
    );
}

#[tokio::test]
async fn reports_raw_paged_and_subscribed() {
    const REPORT_BODY: &str =
        r#"{"conversationSpaceId":"c1","callStates":[{"sequenceNumber":1}],"aiAnalysis":{"x":1}}"#;
    let server = TestServer::start(|seen| {
        let has_marker = seen.query_pairs().iter().any(|(k, _)| k == "pageMarker");
        match (seen.method.as_str(), seen.path.as_str(), has_marker) {
            (_, "/oauth/token", _) => token_reply(seen),
            ("GET", "/call-events-report/v1/reports/c1", _) => Reply::json(200, REPORT_BODY),
            ("GET", "/call-events-report/v1/report-summaries", false) => Reply::json(
                200,
                r#"{"pageSize":1000,"nextPageMarker":"n","items":[{"conversationSpaceId":"c1"}]}"#,
            ),
            ("GET", "/call-events-report/v1/report-summaries", true) => {
                Reply::json(200, r#"{"items":[{"conversationSpaceId":"c2"}]}"#)
            }
            ("POST", "/call-events-report/v1/subscriptions", _) if seen.nth == 0 => Reply::json(
                201,
                r#"{"items":[{"id":"s","channelId":"ch-1","value":"111","eventTypes":["REPORT_SUMMARY"]}]}"#,
            ),
            ("POST", "/call-events-report/v1/subscriptions", _) => {
                Reply::json(409, r#"{"errorCode":"CONFLICT"}"#)
            }
            _ => Reply::empty(404),
        }
    })
    .await;
    let client = server.client(|_| {});
    let report = client.report("c1").await.unwrap().unwrap();
    assert_eq!(report.get(), REPORT_BODY);
    assert!(client.report("not-ended").await.unwrap().is_none());

    let start = UNIX_EPOCH + Duration::from_secs(1_709_164_800);
    let end = start + Duration::from_secs(3600);
    let summaries = client.report_summaries("111", start, end).await.unwrap();
    let ids: Vec<&str> = summaries.iter().map(|s| s.get()).collect();
    assert_eq!(
        ids,
        vec![
            r#"{"conversationSpaceId":"c1"}"#,
            r#"{"conversationSpaceId":"c2"}"#
        ]
    );
    let summary_req = &server.requests_to("GET", "/call-events-report/v1/report-summaries")[0];
    assert_eq!(
        summary_req.query_pairs(),
        vec![
            ("accountKey".into(), "111".into()),
            ("startTime".into(), "2024-02-29T00:00:00.000Z".into()),
            ("endTime".into(), "2024-02-29T01:00:00.000Z".into()),
            ("pageSize".into(), "1000".into())
        ]
    );

    client
        .subscribe_reports("ch-1", &["111".into()])
        .await
        .unwrap();
    client
        .subscribe_reports("ch-1", &["111".into()])
        .await
        .unwrap();
    let subs = server.requests_to("POST", "/call-events-report/v1/subscriptions");
    assert_eq!(subs.len(), 2);
    assert_eq!(
        subs[0].json(),
        serde_json::json!({"channelId":"ch-1","accountKeys":["111"],"eventTypes":["REPORT_SUMMARY"]})
    );
}

#[tokio::test]
async fn rate_limiter_paces_requests_per_api() {
    let server = TestServer::start(simple).await;
    let client = server.client(|c| c.requests_per_second_per_api = 5);
    let start = Instant::now();
    for _ in 0..7 {
        client.get_channel("bridge", "ch-1").await.unwrap();
    }
    // 5 at once; the 6th waits until the first leaves the one-second window (plus margin); the
    // 7th then fits beside it.
    assert!(
        start.elapsed() >= Duration::from_millis(1050),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(client.rate_limit_waits(Api::NotificationChannel), 1);
    assert_eq!(client.rate_limit_waits(Api::OAuth), 0);
    assert_eq!(client.rate_limit_waits(Api::CallEvents), 0);
}

/// A request that waited for a rate-limit slot sends the current token, not the one it held when
/// it began to wait. Sending that one, every queued request met a 401 once it was revoked; with
/// a queue longer than the time between revocations even the re-send after a refresh failed,
/// and the caller saw the 401.
#[tokio::test]
async fn a_token_replaced_during_the_rate_limit_wait_is_not_sent() {
    const CHANNEL: &str = "/notification-channel/v1/channels/bridge/ch-1";
    // GoTo revokes the first token once it has answered two requests with it.
    let server = TestServer::start(|seen| match seen.path.as_str() {
        "/oauth/token" => token_reply(seen),
        CHANNEL if seen.nth >= 2 && seen.header("authorization") == "Bearer tok-1" => Reply::json(
            401,
            r#"{"errorCode":"AUTHN_INVALID_TOKEN","message":"Invalid token"}"#,
        ),
        CHANNEL => Reply::json(200, WS_CHANNEL),
        _ => Reply::empty(404),
    })
    .await;
    // Two requests a second: of six sent at once, four wait for a slot (1 s and 2 s).
    let client = server.client(|c| c.requests_per_second_per_api = 2);
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_channel("bridge", "ch-1").await })
        })
        .collect();
    for r in requests {
        let channel = r.await.unwrap().expect("every request succeeds");
        assert_eq!(channel.unwrap().channel_id, "ch-1");
    }
    let refused = server
        .requests_to("GET", CHANNEL)
        .iter()
        .skip(2)
        .filter(|r| r.header("authorization") == "Bearer tok-1")
        .count();
    // Only the requests whose slot came first after the revocation (at most the two a second
    // allows) can still hold the revoked token; the ones behind them take the refreshed one.
    assert!(
        (1..=2).contains(&refused),
        "{refused} requests sent the revoked token"
    );
    assert_eq!(server.token_requests().len(), 2, "one refresh");
}

#[test]
fn bad_configuration_is_rejected() {
    let base = GotoClientConfig::new(
        "cid",
        Secret::new("s"),
        Credential::PersonalAccessToken(Secret::new("p")),
    );
    let mut c = base.clone();
    c.api_base_url = "not a url".into();
    assert!(matches!(GotoClient::new(c), Err(GotoError::Config { .. })));
    let mut c = base.clone();
    c.auth_base_url = "mailto:x@example.com".into();
    assert!(matches!(GotoClient::new(c), Err(GotoError::Config { .. })));
    let mut c = base.clone();
    c.client_id.clear();
    assert!(matches!(GotoClient::new(c), Err(GotoError::Config { .. })));
    assert!(GotoClient::new(base).is_ok());
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = TestServer::start(move |seen| match seen.path.as_str() {
        "/auth/oauth/token" => token_reply(seen),
        "/goto/notification-channel/v1/channels/bridge/ch-1" => {
            counter.fetch_add(1, Ordering::SeqCst);
            Reply::json(200, WS_CHANNEL)
        }
        _ => Reply::empty(404),
    })
    .await;
    let client = server.client(|c| {
        c.api_base_url = format!("{}/goto/", server.base());
        c.auth_base_url = format!("{}/auth", server.base());
    });
    assert!(client
        .get_channel("bridge", "ch-1")
        .await
        .unwrap()
        .is_some());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
