//! Shared set-up of the contract tests: the GoTo client pointed at a simulator on 127.0.0.1:0.
//!
//! The client (`callbridge::goto`) and the simulator (`callbridge::simulator`) were written
//! independently from GoTo's documentation; these helpers only wire one to the other over real
//! sockets, so every assertion in the `contract_*` files is about the wire contract between
//! them. Raw HTTP helpers exist for the few reads the client has no method for, and for
//! comparing the client's output with the bytes that were actually on the wire.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::Router;
use callbridge::goto::{Credential, GotoClient, GotoClientConfig, Secret};
use callbridge::simulator::{self, GroundTruth, RunningSimulator, SimulatorConfig};
use serde_json::Value;

/// The simulator's default OAuth client and user credentials (docs/simulator.md).
pub const CLIENT_ID: &str = "callbridge-demo";
pub const CLIENT_SECRET: &str = "demo-secret";
pub const PAT: &str = "demo-pat";
pub const REFRESH_TOKEN: &str = "demo-refresh";
/// Prefixes of every access / refresh token the simulator issues.
pub const ACCESS_TOKEN_PREFIX: &str = "sim-at-";
pub const ISSUED_REFRESH_PREFIX: &str = "sim-rt-";

/// The simulator's default account keys.
pub const A1: &str = "1000000000000000001";
pub const A2: &str = "1000000000000000002";
pub const A3: &str = "1000000000000000003";

/// `SimulatorConfig::default()` with the server-side rate limit off, so tests that are not
/// about rate limiting are not slowed down by it (the rate-limit tests turn it back on).
pub fn sim_config() -> SimulatorConfig {
    let mut c = SimulatorConfig::default();
    c.rate_limit.requests_per_second = 0;
    c
}

/// Adds quick, bounded traffic that starts as soon as the simulator listens.
pub fn with_traffic(
    mut c: SimulatorConfig,
    calls: u64,
    min_states: u32,
    max_states: u32,
) -> SimulatorConfig {
    c.scheduler.autostart = true;
    c.scheduler.calls = calls;
    c.scheduler.calls_per_second = 0.0;
    c.scheduler.max_concurrent_calls = 50;
    c.traffic.min_states = min_states;
    c.traffic.max_states = max_states;
    c.traffic.mean_state_interval = Duration::from_millis(2);
    c.reports.summary_delay = Duration::ZERO;
    c
}

pub async fn start(config: SimulatorConfig) -> RunningSimulator {
    simulator::start(config).await.expect("simulator starts")
}

/// Client settings for tests: the simulator for both hosts, the PAT grant, fast retries, no
/// client-side rate limit (tests about rate limiting set it).
pub fn client_config(sim: &RunningSimulator) -> GotoClientConfig {
    let mut c = GotoClientConfig::new(
        CLIENT_ID,
        Secret::new(CLIENT_SECRET),
        Credential::PersonalAccessToken(Secret::new(PAT)),
    );
    c.api_base_url = sim.base_url();
    c.auth_base_url = sim.base_url();
    c.requests_per_second_per_api = 0;
    c.max_attempts = 4;
    c.retry_base_delay = Duration::from_millis(5);
    c.retry_max_delay = Duration::from_millis(40);
    c.request_timeout = Duration::from_secs(5);
    c
}

pub fn client_with(config: GotoClientConfig) -> GotoClient {
    GotoClient::new(config).expect("client config is valid")
}

pub fn client(sim: &RunningSimulator) -> GotoClient {
    client_with(client_config(sim))
}

/// Waits (awaiting the simulator's progress notification) until bounded traffic is done.
pub async fn traffic_done(sim: &RunningSimulator) -> GroundTruth {
    let status = sim.control().wait_until_done(Duration::from_secs(20)).await;
    assert!(status.done, "traffic not done in time: {status:?}");
    sim.control().ground_truth()
}

/// Requests the simulator answered for `api` (all statuses).
pub fn requests(sim: &RunningSimulator, api: &str) -> u64 {
    sim.control()
        .stats()
        .apis
        .get(api)
        .map_or(0, |s| s.requests)
}

/// When each of the next `n` requests of `api` reached the simulator (polled every 10 ms: the
/// simulator counts requests, it does not announce them).
pub async fn next_requests(
    sim: &RunningSimulator,
    api: &str,
    n: usize,
) -> Vec<tokio::time::Instant> {
    next_counted(&format!("requests of {api}"), n, || requests(sim, api)).await
}

/// When each of the next `n` increments of `count` (one of the simulator's counters, named
/// `what` in a failure) was seen, polled every 10 ms, within 30 s.
pub async fn next_counted(
    what: &str,
    n: usize,
    count: impl Fn() -> u64,
) -> Vec<tokio::time::Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut counted = count();
    let mut times = Vec::new();
    while times.len() < n {
        let now = count();
        times.extend((counted..now).map(|_| tokio::time::Instant::now()));
        counted = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} {what} within 30 s",
            times.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    times
}

/// Every two requests in `times` at least `least` apart: each waited for GoTo's `retry_after`
/// (`least` is that, less the polling's resolution and a generous scheduling stall on two busy
/// cores: a stall seen late shortens the next gap as much as it lengthens this one).
pub fn assert_spaced_by_retry_after(
    times: &[tokio::time::Instant],
    least: Duration,
    retry_after: Duration,
    what: &str,
) {
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|gap| *gap >= least),
        "{what}: requests {gaps:?} apart, GoTo asked for {retry_after:?}"
    );
}

/// The keeper the channel tests run: `goto`'s channel nicknamed `bridge`, WebSocket, account
/// [`A1`] subscribed to every call-event type.
pub fn bridge_keeper(goto: GotoClient) -> callbridge::channel::ChannelKeeper {
    callbridge::channel::ChannelKeeper::new(
        goto,
        "bridge",
        callbridge::channel::DesiredChannel::WebSocket,
        vec![A1.to_owned()],
        vec!["STARTING".into(), "ACTIVE".into(), "ENDING".into()],
    )
}

/// Webhook mode's repair loop (a pass every 100 ms) on a channel found and subscribed while
/// GoTo answered, then GoTo answering every REST request 429 with the simulator's
/// `Retry-After`: what that does to the passes, and to a stop. `goto` makes the channel and
/// runs the passes. Returns the stop and the running loop.
pub async fn repair_loop_meeting_429s(
    sim: &RunningSimulator,
    goto: GotoClient,
    kafka: &callbridge::kafka::KafkaConfig,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    use callbridge::channel::ChannelState;
    use callbridge::ingest::{Ingest, RawWriter};
    callbridge::kafka::ensure_topics(kafka)
        .await
        .expect("topics");
    let ingest = Ingest::new(RawWriter::new(kafka).expect("producer"));
    let keeper = bridge_keeper(goto);
    let channel = keeper.ensure_channel().await.expect("channel");
    keeper
        .ensure_subscriptions(&channel)
        .await
        .expect("subscribed");
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let sweeper = callbridge::channel::sweep::ReportSweeper::spawn(
        client(sim),
        ingest.clone(),
        vec![A1.to_owned()],
        Duration::from_secs(60),
        shutdown_rx.clone(),
    );
    let (state_tx, _state) = tokio::sync::watch::channel(ChannelState::Starting);
    sim.control()
        .patch_faults(&serde_json::json!({ "rest_429_rate": 1.0 }))
        .expect("fault set");
    let running = tokio::spawn(callbridge::channel::repair_loop(
        keeper,
        ingest,
        channel,
        Duration::from_millis(100),
        sweeper,
        state_tx,
        shutdown_rx,
    ));
    (shutdown, running)
}

/// Requests of `api` the simulator answered with `status`.
pub fn answered(sim: &RunningSimulator, api: &str, status: u16) -> u64 {
    sim.control()
        .stats()
        .apis
        .get(api)
        .and_then(|s| s.by_status.get(&status).copied())
        .unwrap_or(0)
}

/// Fails if `text` shows any credential of the test set-up or any issued token.
pub fn assert_no_secrets(text: &str) {
    for secret in [
        CLIENT_SECRET,
        PAT,
        REFRESH_TOKEN,
        ACCESS_TOKEN_PREFIX,
        ISSUED_REFRESH_PREFIX,
        "Bearer ",
        "Basic ",
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
    }
}

thread_local! {
    static RAW: reqwest::Client = reqwest::Client::builder().no_proxy().build().expect("client");
}

/// A plain HTTP client for reads the GoTo client has no method for.
pub fn raw() -> reqwest::Client {
    RAW.with(|c| c.clone())
}

/// An access token obtained directly (PAT grant), for raw requests.
pub async fn raw_token(sim: &RunningSimulator) -> String {
    let r = raw()
        .post(format!("{}/oauth/token", sim.base_url()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "personal_access_token"), ("pat", PAT)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// GET `path_and_query` on the simulator with a bearer token: status and body text.
pub async fn raw_get(sim: &RunningSimulator, token: &str, path_and_query: &str) -> (u16, String) {
    let r = raw()
        .get(format!("{}{path_and_query}", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// One request the webhook receiver saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub user_agent: Option<String>,
}

/// A tiny webhook receiver on 127.0.0.1:0: answers OPTIONS/GET (GoTo's verification) and
/// POSTs (deliveries) with chosen statuses, recording what it saw.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    /// Verification answered with `verification_status`, deliveries with 200.
    pub async fn start(verification_status: u16) -> Receiver {
        Receiver::answering(verification_status, 200).await
    }

    pub async fn answering(verification_status: u16, post_status: u16) -> Receiver {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let handler = move |method: Method, headers: HeaderMap| {
            let record = record.clone();
            async move {
                let user_agent = headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let status = if method == Method::POST {
                    post_status
                } else {
                    verification_status
                };
                record.lock().unwrap().push(Seen { method, user_agent });
                StatusCode::from_u16(status).unwrap()
            }
        };
        let app = Router::new().route("/hook/{secret}", any(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook/s3cr3t-path"),
            seen,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Polls `check` every 20 ms until it yields, failing after `timeout`.
pub async fn eventually<T>(timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
