//! End to end: the simulator (real HTTP/WebSocket) with faults on, the real bridge, a real Kafka
//! broker (tansu). The ordered topic is compared state by state with the simulator's ground truth.
mod support;

use callbridge::config::bridge::ChannelKind;
use callbridge::demo::{faults_for, run_scenario, Scenario};
use callbridge::kafka::KafkaConfig;
use std::time::Duration;
use support::tansu::Tansu;

fn kafka(broker: &Tansu) -> KafkaConfig {
    let mut k = KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    k.topics.partitions = 4;
    k.topics.replication_factor = 1;
    k
}

async fn run(transport: ChannelKind, seed: u64) {
    callbridge::telemetry::init("human", "warn");
    let broker = Tansu::start();
    let mut faults = faults_for("harsh", seed).unwrap();
    // Guarantee every kind of fault shows up in a short run.
    faults.unrecoverable_rate = 0.04;
    let outcome = run_scenario(Scenario {
        kafka: kafka(&broker),
        transport,
        calls: 60,
        rate: 30.0,
        faults,
        seed,
        timeout: Duration::from_secs(120),
        progress: false,
    })
    .await
    .expect("scenario runs");
    let v = &outcome.verification;
    let counts = &outcome.truth.fault_counts;
    // The run must have exercised what it claims to verify.
    assert!(
        counts.get("dropped").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        counts.get("duplicated").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        counts.get("unrecoverable").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(v.states_backfilled > 0, "{v}");
    assert!(!outcome.timed_out, "not every call completed:\n{v}");
    // The promises.
    assert!(v.is_perfect(), "{v}");
    assert_eq!(v.states_published + v.unrecoverable, v.states, "{v}");
    assert_eq!(v.completions, v.calls, "{v}");
    assert!(v.gap_records > 0 && v.gap_records <= v.unrecoverable, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_with_faults_is_exact() {
    run(ChannelKind::Webhook, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_with_faults_is_exact() {
    run(ChannelKind::Websocket, 11).await;
}
