//! The WebSocket session when Kafka stops acknowledging: with every frame in flight waiting for
//! Kafka, the session stops reading the socket, but its loop stays live. It keeps pinging without
//! counting the pongs it cannot read as missed (no reconnect), sees shutdown at once, and writes
//! the frame it had read when reading paused. The simulator speaks real WebSocket and counts the
//! pings it receives; Kafka is tansu, stopped and started again.
//!
//! Binary frames (GoTo documents text ones) are written like text ones, not dropped.
//!
//! The same session while the channel election is unanswered (the owner's group session ran out,
//! as in a Kafka outage): it goes on, but once it ends nothing new starts until the election
//! answers, since another replica may own the channel by then.
mod contract_support;
mod support;

use callbridge::channel::sweep::ReportSweeper;
use callbridge::channel::websocket;
use callbridge::channel::ChannelState;
use callbridge::config::bridge::{ChannelKind, ChannelSettings};
use callbridge::ingest::{Ingest, RawWriter};
use callbridge::kafka::reader::read_topic;
use callbridge::kafka::{ensure_topics, KafkaConfig};
use callbridge::simulator::RunningSimulator;
use contract_support::*;
use std::time::Duration;
use support::tansu::{Tansu, TempDir};
use tokio::sync::watch;

/// Frames written to Kafka at once in these tests: the third frame of a call has to wait.
const IN_FLIGHT: usize = 2;
/// States of the one call the simulator plays.
const STATES: u64 = 4;

/// A simulator that plays one call of `STATES` states when told to.
async fn simulator() -> RunningSimulator {
    simulator_with(|_| {}).await
}

/// [`simulator`], with `change` applied to its configuration.
async fn simulator_with(
    change: impl FnOnce(&mut callbridge::simulator::SimulatorConfig),
) -> RunningSimulator {
    let mut c = sim_config();
    change(&mut c);
    c.scheduler.autostart = false;
    c.scheduler.calls = 1;
    c.scheduler.calls_per_second = 0.0;
    c.traffic.min_states = STATES as u32;
    c.traffic.max_states = STATES as u32;
    c.traffic.mean_state_interval = Duration::from_millis(2);
    start(c).await
}

fn settings() -> ChannelSettings {
    ChannelSettings {
        kind: ChannelKind::Websocket,
        ping_interval: Duration::from_millis(100),
        max_missed_pongs: 2,
        websocket_frames_in_flight: IN_FLIGHT,
        report_sweep_lookback: Duration::ZERO,
        ..ChannelSettings::default()
    }
}

/// A running WebSocket session and what the test watches of it.
struct Session {
    state: watch::Receiver<ChannelState>,
    shutdown: watch::Sender<bool>,
    doubt: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Shuts the session down; it must end within 5 s.
    async fn end(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the session ends on shutdown")
            .expect("no panic");
    }
}

/// Waits (20 s at most) until the session's state is `what`.
async fn until(
    state: &mut watch::Receiver<ChannelState>,
    what: &str,
    is: impl FnMut(&ChannelState) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(is))
        .await
        .unwrap_or_else(|_| panic!("not {what} within 20 s"))
        .expect("session running");
}

/// Starts the session on `ingest` and waits until its socket is connected.
async fn connected(sim: &RunningSimulator, ingest: &Ingest) -> Session {
    let keeper = bridge_keeper(client(sim));
    let (state_tx, mut state) = watch::channel(ChannelState::Starting);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (doubt, doubt_rx) = watch::channel(false);
    let sweeper = ReportSweeper::spawn(
        client(sim),
        ingest.clone(),
        vec![A1.to_owned()],
        settings().report_sweep_delay,
        shutdown_rx.clone(),
    );
    let task = tokio::spawn(websocket::run(
        keeper,
        ingest.clone(),
        settings(),
        sweeper,
        state_tx,
        shutdown_rx,
        doubt_rx,
    ));
    until(&mut state, "connected", |s| {
        matches!(s, ChannelState::Ready(_))
    })
    .await;
    // The simulator takes the socket once its side of the upgrade runs, which can be just after
    // the client saw the upgrade answered: frames sent before then find no socket and are
    // dropped, as GoTo would drop them. Wait for it, so a test's call reaches the socket.
    let control = sim.control();
    eventually(Duration::from_secs(10), async || {
        (control.stats().websocket_connections >= 1).then_some(())
    })
    .await;
    state.mark_unchanged();
    Session {
        state,
        shutdown,
        doubt,
        task,
    }
}

/// Kafka on tansu (kept on disk across a restart) with a long acknowledgement bound, so writes
/// made while it is stopped stay pending for the whole test.
async fn kafka(data: &TempDir) -> (Tansu, KafkaConfig, Ingest) {
    let broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = broker.kafka(1);
    kafka.ack_timeout = Duration::from_secs(120);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    (broker, kafka, ingest)
}

/// Plays the call and waits until the simulator has written all its frames to the socket.
async fn play_call(sim: &RunningSimulator) {
    let control = sim.control();
    control.start_traffic();
    eventually(Duration::from_secs(20), async || {
        (control.stats().deliveries.succeeded >= STATES).then_some(())
    })
    .await;
}

/// Waits until the simulator has received `n` more pings than `since`.
async fn pings_after(sim: &RunningSimulator, since: u64, n: u64) {
    let control = sim.control();
    eventually(Duration::from_secs(20), async || {
        (control.stats().websocket_pings >= since + n).then_some(())
    })
    .await;
}

/// The `sequenceNumber`s of the WebSocket frames in raw, sorted. (The catch-up that follows a
/// connect may also write the call's state listed from the REST API, if the call is already
/// active then: that record is not a frame read off the socket, and is left out.)
async fn raw_sequence_numbers(kafka: &KafkaConfig, at_least: usize) -> Vec<u64> {
    let (kafka, topic) = (kafka.clone(), kafka.topics.raw.clone());
    let records = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut records = read_topic(&kafka, &topic, Duration::from_secs(10)).expect("raw");
            records.retain(|r| r.header("callbridge-transport") == Some("websocket"));
            if records.len() >= at_least || std::time::Instant::now() > deadline {
                return records;
            }
        }
    })
    .await
    .unwrap();
    let mut seqs: Vec<u64> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["data"]["content"]["state"]["sequenceNumber"]
                .as_u64()
                .or_else(|| v["content"]["state"]["sequenceNumber"].as_u64())
                .unwrap_or_else(|| panic!("no sequenceNumber in {v}"))
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// `_sum` and `_count` of the read-pause summary in this process's metrics.
fn read_pauses() -> (f64, u64) {
    let text = callbridge::ops::prometheus().render();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("callbridge_websocket_read_pause_seconds_sum"),
        value("callbridge_websocket_read_pause_seconds_count") as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paused_by_kafka_keeps_pinging_without_reconnecting_then_writes_everything() {
    // Before anything records a metric, so the session's metrics land in this handle.
    let _ = callbridge::ops::prometheus();
    let sim = simulator().await;
    let data = TempDir::new("ws-backpressure");
    let (mut broker, kafka, ingest) = kafka(&data).await;
    let session = connected(&sim, &ingest).await;

    broker.stop();
    play_call(&sim).await;
    // Two frames wait for Kafka, the third is held: reading is paused. A paused session that
    // counted its unread pongs would reconnect after `max_missed_pongs` (2) pings; one that
    // blocked on Kafka would send none.
    let pings = sim.control().stats().websocket_pings;
    pings_after(&sim, pings, 5).await;
    assert!(
        !session.state.has_changed().unwrap(),
        "the session changed state while paused: {:?}",
        *session.state.borrow()
    );
    // (That the bound holds, and the fourth frame stays unread, is the next test's: librdkafka's
    // in-flight count also counts its own events, so it cannot tell here.)

    broker.restart();
    let seqs = raw_sequence_numbers(&kafka, STATES as usize).await;
    assert_eq!(
        seqs,
        (1..=STATES).collect::<Vec<_>>(),
        "raw after the pause"
    );
    let (paused_for, pauses) = read_pauses();
    assert!(pauses >= 1, "no read pause was recorded");
    // Five pings 100 ms apart span at least 0.4 s, all of it paused.
    assert!(
        paused_for >= 0.35,
        "the recorded pause ({paused_for} s) is shorter than the pings sent during it"
    );
    assert!(
        !session.state.has_changed().unwrap(),
        "the session changed state after the pause: {:?}",
        *session.state.borrow()
    );
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_session_ends_at_once_on_shutdown_and_still_writes_the_frame_it_held() {
    let sim = simulator().await;
    let data = TempDir::new("ws-backpressure-shutdown");
    let (mut broker, kafka, ingest) = kafka(&data).await;
    let session = connected(&sim, &ingest).await;

    broker.stop();
    play_call(&sim).await;
    // Pings flowing show the loop is live and past the frames it read.
    let pings = sim.control().stats().websocket_pings;
    pings_after(&sim, pings, 3).await;

    // Kafka would answer the pending writes only after 120 s: the session must not wait for them.
    session.end().await;

    broker.restart();
    // The two frames in flight and the held third one; the fourth was never read off the socket.
    let seqs = raw_sequence_numbers(&kafka, IN_FLIGHT + 1).await;
    assert_eq!(
        seqs,
        (1..=IN_FLIGHT as u64 + 1).collect::<Vec<_>>(),
        "raw after a shutdown while paused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_doubt_goes_on_but_nothing_new_starts_until_the_election_answers() {
    let sim = simulator().await;
    let data = TempDir::new("ws-doubt");
    let (_broker, kafka, ingest) = kafka(&data).await;
    let mut session = connected(&sim, &ingest).await;
    let ChannelState::Ready(channel_id) = session.state.borrow().clone() else {
        unreachable!("connected")
    };

    session.doubt.send(true).unwrap();
    play_call(&sim).await;
    let seqs = raw_sequence_numbers(&kafka, STATES as usize).await;
    assert_eq!(
        seqs,
        (1..=STATES).collect::<Vec<_>>(),
        "the session in doubt stopped writing"
    );

    // GoTo drops the socket (as it may when another replica connects to the channel).
    let connections = sim.control().stats().websocket_connections;
    assert!(sim.control().disconnect_socket(&channel_id));
    until(
        &mut session.state,
        "waiting for the election",
        |s| matches!(s, ChannelState::Down(why) if why == "channel election unanswered"),
    )
    .await;
    assert_eq!(
        sim.control().stats().websocket_connections,
        connections,
        "a socket was opened while the election was unanswered"
    );

    session.doubt.send(false).unwrap();
    until(
        &mut session.state,
        "reconnected once the election answered",
        |s| matches!(s, ChannelState::Ready(_)),
    )
    .await;
    // The simulator counts a socket once its side of the upgrade runs, which can be just after
    // the client saw the upgrade answered: wait for the count, then check it is one socket.
    let control = sim.control();
    eventually(Duration::from_secs(10), async || {
        (control.stats().websocket_connections > connections).then_some(())
    })
    .await;
    assert_eq!(control.stats().websocket_connections, connections + 1);
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_written_like_text_ones() {
    let sim = simulator_with(|c| c.delivery.websocket_binary = true).await;
    let data = TempDir::new("ws-binary");
    let (_broker, kafka, ingest) = kafka(&data).await;
    let session = connected(&sim, &ingest).await;
    play_call(&sim).await;
    let seqs = raw_sequence_numbers(&kafka, STATES as usize).await;
    assert_eq!(
        seqs,
        (1..=STATES).collect::<Vec<_>>(),
        "raw after a call sent in binary frames"
    );
    session.end().await;
}
