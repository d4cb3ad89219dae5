//! Shared helpers of the simulator's integration tests: start a simulator on 127.0.0.1:0, get a
//! token, run a tiny webhook receiver, open WebSockets, await conditions with a deadline.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::Router;
use callbridge::simulator::{self, RunningSimulator, SimulatorConfig};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A config for fast tests: quick calls, no rate limit, traffic not started.
pub fn fast_config() -> SimulatorConfig {
    let mut c = SimulatorConfig::default();
    c.rate_limit.requests_per_second = 0;
    c.traffic.mean_state_interval = Duration::from_millis(5);
    c.traffic.min_states = 3;
    c.traffic.max_states = 6;
    c.scheduler.calls_per_second = 100.0;
    c.scheduler.max_concurrent_calls = 20;
    c.delivery.webhook_retry_spacing = Duration::from_millis(20);
    c.reports.summary_delay = Duration::ZERO;
    c
}

pub async fn start(config: SimulatorConfig) -> RunningSimulator {
    simulator::start(config).await.unwrap()
}

thread_local! {
    // Building a client loads TLS roots (slow); each #[tokio::test] runs on its own thread and
    // runtime, so one client per thread never outlives the runtime its connections belong to.
    static CLIENT: reqwest::Client = reqwest::Client::builder().no_proxy().build().unwrap();
}

pub fn client() -> reqwest::Client {
    CLIENT.with(|c| c.clone())
}

/// An access token from the PAT grant with the default demo credentials.
pub async fn token(base: &str) -> String {
    let r = client()
        .post(format!("{base}/oauth/token"))
        .basic_auth("callbridge-demo", Some("demo-secret"))
        .form(&[("grant_type", "personal_access_token"), ("pat", "demo-pat")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// POST/GET/… with a bearer token, returning status and JSON (Null when no body).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = client().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// Create a WebSocket channel and subscribe all default accounts; returns (channelId, wsUrl).
pub async fn websocket_channel(base: &str, token: &str, nickname: &str) -> (String, String) {
    let (s, ch) = call(
        reqwest::Method::POST,
        &format!("{base}/notification-channel/v1/channels/{nickname}"),
        token,
        Some(serde_json::json!({"channelType": "WebSockets"})),
    )
    .await;
    assert_eq!(s, 201, "{ch}");
    let id = ch["channelId"].as_str().unwrap().to_string();
    let url = ch["channelData"]["channelURL"]
        .as_str()
        .unwrap()
        .to_string();
    (id, url)
}

/// Subscribe every default account key to all events on a channel.
pub async fn subscribe_all(base: &str, token: &str, channel_id: &str) {
    let keys: Vec<Value> = simulator::traffic::TrafficConfig::default()
        .account_keys
        .iter()
        .map(|k| serde_json::json!({"id": k}))
        .collect();
    let (s, v) = call(
        reqwest::Method::POST,
        &format!("{base}/call-events/v1/subscriptions"),
        token,
        Some(serde_json::json!({"channelId": channel_id, "accountKeys": keys})),
    )
    .await;
    assert_eq!(s, 207, "{v}");
}

/// One request the webhook receiver saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on 127.0.0.1:0 answering POSTs with a settable status (200 by default)
/// and OPTIONS/GET with 200.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    post_status: Arc<AtomicU16>,
    verify_status: Arc<AtomicU16>,
}

#[derive(Clone)]
struct RxState {
    seen: Arc<Mutex<Vec<Seen>>>,
    post_status: Arc<AtomicU16>,
    verify_status: Arc<AtomicU16>,
}

async fn receive(
    State(st): State<RxState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = if method == Method::POST {
        st.post_status.load(Ordering::SeqCst)
    } else {
        st.verify_status.load(Ordering::SeqCst)
    };
    st.seen.lock().unwrap().push(Seen {
        method,
        headers,
        body,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let post_status = Arc::new(AtomicU16::new(200));
        let verify_status = Arc::new(AtomicU16::new(200));
        let st = RxState {
            seen: seen.clone(),
            post_status: post_status.clone(),
            verify_status: verify_status.clone(),
        };
        let app = Router::new().route("/hook", any(receive)).with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook"),
            seen,
            post_status,
            verify_status,
        }
    }

    pub fn answer_posts_with(&self, status: u16) {
        self.post_status.store(status, Ordering::SeqCst);
    }

    pub fn answer_verification_with(&self, status: u16) {
        self.verify_status.store(status, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn posts(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == Method::POST)
            .collect()
    }

    /// Wait until at least `n` POSTs arrived (panics after `timeout`).
    pub async fn wait_posts(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        eventually(timeout, || {
            let p = self.posts();
            (p.len() >= n).then_some(p)
        })
        .await
    }
}

/// Poll `check` every 10 ms until it yields, or panic after `timeout`.
pub async fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Next text frame as JSON, skipping pings/pongs; None when the socket closed.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no frame within timeout");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Wait until the simulator reports the channel's socket connected (registration happens
/// asynchronously after the WebSocket handshake).
pub async fn wait_connected(base: &str, token: &str, nickname: &str, channel_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, ch) = call(
            reqwest::Method::GET,
            &format!("{base}/notification-channel/v1/channels/{nickname}/{channel_id}"),
            token,
            None,
        )
        .await;
        if ch["channelData"]["isConnected"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
