//! The bridge's discovery activity against the simulator (real HTTP) and tansu: a report sweep
//! window and a catch-up count as pending from the moment they are asked for until their work
//! is written, so whoever waits for the stream to be final (the demo, the end-to-end tests) does
//! not stop the bridge while a call GoTo never delivered is still being fetched.
mod contract_support;
mod support;

use callbridge::channel::activity::DiscoveryActivity;
use callbridge::channel::catchup::CatchUps;
use callbridge::channel::sweep::ReportSweeper;
use callbridge::ingest::{Ingest, RawWriter};
use callbridge::kafka::ensure_topics;
use contract_support::*;
use std::time::{Duration, SystemTime};
use support::tansu::Tansu;
use tokio::sync::watch;

async fn ingest(broker: &Tansu) -> (Ingest, callbridge::kafka::KafkaConfig) {
    let kafka = broker.kafka(1);
    ensure_topics(&kafka).await.expect("topics");
    (
        Ingest::new(RawWriter::new(&kafka).expect("producer")),
        kafka,
    )
}

async fn raw_records(kafka: &callbridge::kafka::KafkaConfig) -> usize {
    support::mock_brokers::read(kafka, &kafka.topics.raw)
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_window_is_pending_from_its_request_until_its_calls_are_written() {
    let window_start = SystemTime::now();
    let sim = start(with_traffic(sim_config(), 4, 3, 5)).await;
    let truth = traffic_done(&sim).await;
    let states: usize = truth.calls.iter().map(|c| c.states.len()).sum();
    let broker = Tansu::start();
    let (ingest, kafka) = ingest(&broker).await;
    let (_stop, stop_rx) = watch::channel(false);
    // Due a second after its request: long enough to see it waiting.
    let sweeper = ReportSweeper::spawn(
        client(&sim),
        ingest,
        vec![A1.to_owned(), A2.to_owned(), A3.to_owned()],
        Duration::from_secs(1),
        stop_rx,
    );
    let activity = sweeper.activity();
    assert!(activity.idle());

    sweeper.request((window_start, SystemTime::now()));
    assert_eq!(
        activity.sweep_windows_pending(),
        1,
        "waiting for its due time"
    );
    assert!(!activity.idle());
    tokio::time::timeout(Duration::from_secs(30), activity.wait_idle())
        .await
        .expect("idle once the window is swept");
    assert_eq!(
        *sweeper.windows_swept().borrow(),
        1,
        "idle only after the sweep"
    );
    assert_eq!(
        raw_records(&kafka).await,
        states,
        "every state the window found was written before the activity went idle"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_is_pending_from_its_ask_until_the_active_calls_are_written() {
    // Calls that stay active: a catch-up writes each one's last state.
    let mut config = with_traffic(sim_config(), 3, 40, 40);
    config.traffic.mean_state_interval = Duration::from_secs(5);
    let sim = start(config).await;
    let broker = Tansu::start();
    let (ingest, kafka) = ingest(&broker).await;
    let (_stop, stop_rx) = watch::channel(false);
    let activity = DiscoveryActivity::default();
    let catch_ups = CatchUps::spawn(
        client(&sim),
        ingest,
        vec![A1.to_owned(), A2.to_owned(), A3.to_owned()],
        activity.clone(),
        stop_rx,
    );
    // The calls are started at once; each stays active for minutes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.control().traffic_status().calls_started < 3 {
        assert!(tokio::time::Instant::now() < deadline, "calls started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // GoTo holds the listing: the catch-up stays in it until the fault is lifted.
    sim.control()
        .patch_faults(&serde_json::json!({ "active_calls_paused": true }))
        .expect("fault set");
    catch_ups.ask();
    assert_eq!(activity.catchups(), 1, "pending from the ask on");
    eventually(Duration::from_secs(10), async || {
        (sim.control().stats().active_call_listings.in_flight > 0).then_some(())
    })
    .await;
    // The runner took the ask: only its running catch-up counts now.
    assert_eq!(activity.catchups(), 1, "pending while it runs");
    catch_ups.ask();
    assert_eq!(activity.catchups(), 2, "one running, one asked");
    assert_eq!(raw_records(&kafka).await, 0, "nothing written yet");
    sim.control()
        .patch_faults(&serde_json::json!({ "active_calls_paused": false }))
        .expect("fault lifted");
    tokio::time::timeout(Duration::from_secs(30), activity.wait_idle())
        .await
        .expect("idle once both catch-ups ended");
    assert_eq!(
        raw_records(&kafka).await,
        6,
        "both runs wrote the three active calls before the activity went idle"
    );
    sim.shutdown().await;
}

/// On one thread, the runner task is not polled before the test yields: the ask below is never
/// taken by it.
#[tokio::test(flavor = "current_thread")]
async fn asks_the_runner_never_started_are_settled_when_it_is_dropped() {
    let sim = start(sim_config()).await;
    let broker = Tansu::start();
    let (ingest, _kafka) = ingest(&broker).await;
    let (_stop, stop_rx) = watch::channel(false);
    let activity = DiscoveryActivity::default();
    let catch_ups = CatchUps::spawn(client(&sim), ingest, vec![], activity.clone(), stop_rx);
    catch_ups.ask();
    assert_eq!(activity.catchups(), 1);
    drop(catch_ups);
    assert!(activity.idle(), "the unstarted ask no longer counts");
    sim.shutdown().await;
}
