//! Broker faults tansu cannot produce, on librdkafka's mock cluster: slow brokers (round-trip
//! time), bursts of retriable Produce and Fetch errors (not leader, timed out) and partition
//! leaders moving between brokers, while the whole pipeline runs (simulator with GoTo's delivery
//! faults, webhook ingest, sequencer with back-fill). The ordered topic must still be perfect.
use callbridge::config::bridge::ChannelKind;
use callbridge::demo::{faults_for, run_scenario, MockFault, MockKafka, Scenario};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_request_errors_and_leader_moves_lose_nothing() {
    let mut kafka = callbridge::kafka::KafkaConfig::default();
    let partitions = 4;
    kafka.topics.partitions = partitions;
    kafka.topics.replication_factor = 1;
    let topics = kafka.topics.required();
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    // Offsets from the cluster's start; the bridge is up after a few seconds and the traffic
    // runs for about ten.
    let schedule = vec![
        (s(6), MockFault::RoundTrip(ms(250))),
        (s(8), MockFault::ProduceErrors(12)),
        (s(9), MockFault::MoveLeaders),
        (s(10), MockFault::RoundTrip(Duration::ZERO)),
        (s(11), MockFault::FetchErrors(12)),
        (s(12), MockFault::MoveLeaders),
        (s(13), MockFault::ProduceErrors(12)),
        (s(14), MockFault::RoundTrip(ms(800))),
        (s(16), MockFault::MoveLeaders),
        (s(17), MockFault::RoundTrip(Duration::ZERO)),
    ];
    let scheduled = schedule.len();
    let cluster = MockKafka::start_with_faults(&topics, partitions, schedule).unwrap();
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let outcome = run_scenario(Scenario {
        kafka,
        transport: ChannelKind::Webhook,
        calls: 300,
        rate: 30.0,
        faults: faults_for("realistic", 11).unwrap(),
        seed: 11,
        timeout: Duration::from_secs(150),
        progress: false,
        mean_state_interval: Duration::from_millis(80),
        min_states: 3,
        simulator: None,
    })
    .await
    .expect("scenario runs");
    // The whole schedule ran while the pipeline did (the scenario outlasts the last fault).
    let applied = cluster.faults_applied();
    drop(cluster);
    assert_eq!(
        applied, scheduled,
        "not every broker fault was applied during the run"
    );
    let v = &outcome.verification;
    println!("{v}");
    // On failure, show the stream of each conversation named in the examples.
    for example in &v.examples {
        let conv = example.split(':').next().unwrap_or_default();
        let stream: Vec<String> = outcome
            .records
            .iter()
            .filter(|r| r.key.as_deref() == Some(conv))
            .map(|r| {
                let value: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
                format!(
                    "{}:{} {} {} {}",
                    r.partition,
                    r.offset,
                    r.header("callbridge-kind").unwrap_or("?"),
                    value["sequenceNumber"],
                    r.header("callbridge-epoch").unwrap_or("?")
                )
            })
            .collect();
        println!("{conv}: {stream:?}");
    }
    if !v.is_perfect() {
        // Holes in the offsets of the ordered topic, per partition (reader or broker problem).
        let mut by_partition: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
        for r in &outcome.records {
            by_partition.entry(r.partition).or_default().push(r.offset);
        }
        for (p, offsets) in by_partition {
            let holes: Vec<i64> = offsets
                .windows(2)
                .filter(|w| w[1] != w[0] + 1)
                .map(|w| w[0] + 1)
                .collect();
            println!(
                "partition {p}: {} records, offsets {}..={}, holes after {:?}",
                offsets.len(),
                offsets[0],
                offsets[offsets.len() - 1],
                holes
            );
        }
    }
    assert!(!outcome.timed_out, "not every call completed:\n{v}");
    assert!(
        v.states_published > 1000,
        "too little traffic to mean anything:\n{v}"
    );
    assert!(v.is_perfect(), "the ordered topic is not perfect:\n{v}");
}
