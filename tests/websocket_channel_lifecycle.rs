//! The WebSocket channel's lifecycle against the simulator, over real HTTP and WebSocket, Kafka on
//! tansu.
//!
//! - A refresh that fails (GoTo's REST API answering 503 for a while) keeps the socket and the
//!   channel: GoTo delivers to the socket until the channel expires, and deleting the channel
//!   would leave nobody to deliver to for the whole outage.
//! - The channel id is part of the channel's URL (GoTo documents
//!   `wss://…/channels/{channelId}/…/ws`, and the simulator's URL holds it too): neither the logs
//!   nor the channel states (what `/readyz` shows) carry it, across creation, connection,
//!   a refresh answered 404 and the recreation that follows.
mod contract_support;
mod support;

use callbridge::channel::sweep::ReportSweeper;
use callbridge::channel::websocket;
use callbridge::channel::{ChannelKeeper, ChannelState, DesiredChannel};
use callbridge::config::bridge::{ChannelKind, ChannelSettings};
use callbridge::goto::Channel;
use callbridge::ingest::{Ingest, RawWriter};
use callbridge::kafka::ensure_topics;
use callbridge::simulator::{RunningSimulator, SimulatorConfig};
use contract_support::*;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::tansu::Tansu;
use tokio::sync::watch;

/// Everything logged in this test process (nextest runs each test in its own process).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            // The simulator is GoTo's side: its logs name channels as GoTo's would.
            .with_env_filter("info,callbridge=debug,callbridge::simulator=off")
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buffer
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running WebSocket duty and every channel state it went through.
struct Session {
    state: watch::Receiver<ChannelState>,
    seen: Arc<Mutex<Vec<ChannelState>>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _broker: Tansu,
}

impl Session {
    async fn start(sim: &RunningSimulator, settings: ChannelSettings) -> Session {
        let broker = Tansu::start();
        let kafka = broker.kafka(1);
        ensure_topics(&kafka).await.expect("topics");
        let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
        let keeper = ChannelKeeper::new(
            client(sim),
            "bridge",
            DesiredChannel::WebSocket,
            vec![A1.to_owned()],
            vec!["STARTING".into(), "ACTIVE".into(), "ENDING".into()],
        );
        let (state_tx, state) = watch::channel(ChannelState::Starting);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (_doubt, doubt_rx) = watch::channel(false);
        let sweeper = ReportSweeper::spawn(
            client(sim),
            ingest.clone(),
            vec![A1.to_owned()],
            settings.report_sweep_delay,
            shutdown_rx.clone(),
        );
        // Every state, as readiness would have seen it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (record, mut watched) = (seen.clone(), state.clone());
        tokio::spawn(async move {
            while watched.changed().await.is_ok() {
                record
                    .lock()
                    .unwrap()
                    .push(watched.borrow_and_update().clone());
            }
        });
        let task = tokio::spawn(async move {
            let _doubt = _doubt;
            websocket::run(
                keeper,
                ingest,
                settings,
                sweeper,
                state_tx,
                shutdown_rx,
                doubt_rx,
            )
            .await
        });
        Session {
            state,
            seen,
            shutdown,
            task,
            _broker: broker,
        }
    }

    /// Waits (30 s at most) until the state is `Ready` on a channel `is` accepts; its id.
    async fn ready(&mut self, what: &str, mut is: impl FnMut(&str) -> bool) -> String {
        let seen = self.seen.clone();
        let state = tokio::time::timeout(
            Duration::from_secs(30),
            self.state
                .wait_for(|s| matches!(s, ChannelState::Ready(id) if is(id))),
        )
        .await
        .unwrap_or_else(|_| panic!("not {what} within 30 s; states: {:?}", seen.lock().unwrap()))
        .expect("session running")
        .clone();
        match state {
            ChannelState::Ready(id) => id,
            other => unreachable!("{other:?}"),
        }
    }

    fn seen(&self) -> Vec<ChannelState> {
        self.seen.lock().unwrap().clone()
    }

    async fn end(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the session ends on shutdown")
            .expect("no panic");
    }
}

fn settings(refresh_margin: Duration) -> ChannelSettings {
    ChannelSettings {
        kind: ChannelKind::Websocket,
        refresh_margin,
        ping_interval: Duration::from_millis(500),
        reconnect_base: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        report_sweep_lookback: Duration::ZERO,
        ..ChannelSettings::default()
    }
}

/// A simulator whose WebSocket channels live `lifetime`, without `WEBSOCKET_REFRESH_REQUIRED`
/// (the bridge's own refresh is under test).
fn simulator_config(lifetime: Duration) -> SimulatorConfig {
    let mut c = sim_config();
    c.channels.websocket_lifetime = lifetime;
    c.channels.refresh_required_before = Duration::ZERO;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_outage_keeps_the_socket_and_the_channel() {
    // Lifetime 12 s, margin 6 s: the refresh is due at 6 s, retried until 9 s.
    let sim = start(simulator_config(Duration::from_secs(12))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(6))).await;
    let id = session.ready("connected", |_| true).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_status": 503 }))
        .expect("fault set");

    // Two refresh rounds fail (the client makes 4 attempts per round).
    let control = sim.control();
    eventually(Duration::from_secs(20), async || {
        (answered(&sim, "notification-channel", 503) >= 8).then_some(())
    })
    .await;
    assert_eq!(
        control.channel_ids(),
        vec![id.clone()],
        "the channel was replaced during the outage"
    );
    assert_eq!(
        control.stats().websocket_connections,
        1,
        "the socket was dropped during the outage"
    );
    assert_eq!(*session.state.borrow(), ChannelState::Ready(id.clone()));

    // GoTo answers again: the next retry refreshes the same channel.
    let refreshed_before = answered(&sim, "notification-channel", 200);
    control
        .patch_faults(&serde_json::json!({ "channel_refresh_status": null }))
        .expect("fault cleared");
    eventually(Duration::from_secs(20), async || {
        (answered(&sim, "notification-channel", 200) > refreshed_before).then_some(())
    })
    .await;
    assert_eq!(control.channel_ids(), vec![id.clone()]);
    assert_eq!(control.stats().websocket_connections, 1);
    assert!(
        session
            .seen()
            .iter()
            .all(|s| matches!(s, ChannelState::Ready(i) if *i == id)),
        "never down: {:?}",
        session.seen()
    );
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_id_is_in_no_log_and_no_state() {
    let logs = logs();
    // Lifetime 4 s, margin 2 s: a refresh every 2 s.
    let sim = start(simulator_config(Duration::from_secs(4))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(2))).await;
    let first = session.ready("connected", |_| true).await;
    // GoTo answers the refresh 404 (its message names the channel): recreated.
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_status": 404 }))
        .expect("fault set");
    let second = session.ready("on a new channel", |id| id != first).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_status": null }))
        .expect("fault cleared");
    // And once more on WEBSOCKET_TO_BE_CLOSED.
    assert!(sim.control().send_to_be_closed(&second));
    let third = session
        .ready("on a third channel", |id| id != first && id != second)
        .await;
    let states = format!("{:?}", session.seen());
    session.end().await;

    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("WebSocket connected"),
        "the logs were captured: {logged}"
    );
    for id in [&first, &second, &third] {
        assert!(!logged.contains(id.as_str()), "{id} in the logs:\n{logged}");
        assert!(
            !states.contains(id.as_str()),
            "{id} in the states: {states}"
        );
        // What the logs and states show instead.
        assert!(logged.contains(&Channel::tag_of(id)), "{logged}");
    }
    assert!(states.contains(&Channel::tag_of(&first)), "{states}");
    assert_no_secrets(&logged);
}
