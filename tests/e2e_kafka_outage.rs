//! Kafka unreachable for 60 seconds under load (webhook mode, a real `callbridge run` process,
//! tansu with `sqlite://` storage killed and started again): while it is gone every webhook is
//! answered 503. The raw producer keeps the first records queued (written once Kafka is back);
//! its queue is cut to 200 records here so that it fills, after which writes are refused at once,
//! GoTo's two retries fail too and those states are lost to the channel. Once Kafka is back the
//! sequencer finds the holes and back-fills them. Nothing may be missing, doubled or out of
//! order, and no call may be lost.
mod support;

use callbridge::demo::metric_value;
use callbridge::simulator::{self, FaultsConfig, SimulatorConfig};
use callbridge::verify::verify;
use std::time::{Duration, Instant};
use support::cluster::{wait_for_completion, webhook_secret, Deployment, Replica};
use support::tansu::{Tansu, TempDir};

const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_seconds_without_kafka_loses_nothing() {
    let data = TempDir::new("outage-kafka");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    // Every call starts (and is announced) before the outage and lives through it: its states
    // during the outage can only come back by back-fill.
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.scheduler.calls = 60;
    sim_config.scheduler.calls_per_second = 30.0;
    sim_config.scheduler.max_concurrent_calls = 100;
    sim_config.traffic.seed = 60;
    sim_config.traffic.min_states = 14;
    sim_config.traffic.max_states = 18;
    sim_config.traffic.mean_state_interval = Duration::from_secs(5);
    sim_config.faults = FaultsConfig::default();
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();
    let dir = TempDir::new("outage");
    let d = Deployment {
        simulator_url: sim.base_url(),
        bootstrap: broker.bootstrap(),
        transport: "webhook",
        partitions: 3,
        webhook_secret: webhook_secret(),
        // Small enough for the outage to fill (it sees 600+ attempts), large for the traffic.
        extra_toml: "[kafka.librdkafka]\n\"queue.buffering.max.messages\" = \"200\"\n".into(),
    };
    let mut replica = Replica::new(&dir.0, "outage-replica", &d);
    replica.start();
    assert!(replica.wait_ready(Duration::from_secs(60)).await);
    control.start_traffic();
    // Load first: every call has started.
    let deadline = Instant::now() + Duration::from_secs(30);
    while control.traffic_status().calls_started < 60 {
        assert!(Instant::now() < deadline, "traffic never got going");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = control.stats().deliveries.clone();

    broker.stop();
    let down_at = Instant::now();
    println!("kafka stopped");
    tokio::time::sleep_until((down_at + OUTAGE).into()).await;
    let during = control.stats().deliveries.clone();
    broker.restart();
    println!("kafka back after {:?}", down_at.elapsed());

    assert!(control.wait_until_done(Duration::from_secs(180)).await.done);
    let complete = wait_for_completion(
        &d,
        &control,
        std::slice::from_ref(&replica),
        Duration::from_secs(180),
    )
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", replica.admin_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let queue_full = replica
        .log_lines()
        .iter()
        .filter(|l| l.contains("webhook answered 503") && l.contains("queue is full"))
        .count();
    let truth = control.ground_truth();
    let v = verify(&truth, &d.read_ordered().await);
    let answered_503 = metric_value(
        &metrics,
        "callbridge_webhook_responses_total{status=\"503\"}",
    );
    println!(
        "during the outage GoTo gave up on {} notifications ({} attempts failed); the bridge answered 503 {answered_503} times, {queue_full} of them with its queue full\n{v}",
        during.dropped - before.dropped,
        during.failed - before.failed,
    );
    replica.terminate();
    sim.shutdown().await;

    assert!(
        answered_503 > 0.0,
        "no webhook was answered 503 while Kafka was down"
    );
    assert!(
        queue_full > 0,
        "the raw producer's queue never filled: every state may have been bridged from memory"
    );
    assert!(
        during.dropped > before.dropped,
        "GoTo's retries never ran out during the outage: the test did not lose anything to recover"
    );
    assert!(complete, "not every call completed after the outage");
    assert_eq!(v.never_announced_calls, 0, "a call was lost as a whole");
    assert!(v.states_backfilled > 0, "nothing was back-filled");
    assert!(v.is_perfect(), "the ordered topic is not perfect:\n{v}");
    assert_eq!(
        v.gap_records, 0,
        "a gap record where GoTo still had the states"
    );
}
