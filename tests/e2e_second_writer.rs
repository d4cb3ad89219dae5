//! A second writer of an ordered partition, on librdkafka's mock cluster.
//!
//! The consumer group should give each raw partition to one member at a time, and callbridge's
//! fencing (takeover markers, unclean waits) assumes it does. tansu 0.6 once gave a partition to
//! two members for about 35 s (reliability.md, finding 27); an owner installed before the other
//! member's takeover was told nothing and wrote beside it. Each owner now checks that every
//! output of its own lands right after the previous one (or its takeover marker): a record
//! written there by anyone else ends its run like a lost assignment, so it stops writing.
mod support;

use callbridge::kafka::KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use support::mock_brokers::{cluster, describe, kind, read, spawn_shell, wait_for, write_raw};

/// States of each call; the last one is ENDING.
const LAST: u64 = 3;

/// `callbridge_sequencer_foreign_outputs_total` of this process.
fn foreign_outputs() -> u64 {
    callbridge::ops::prometheus()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("callbridge_sequencer_foreign_outputs_total "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// The sequence numbers of `conversation`'s states in the ordered topic, in order.
async fn published(kafka: &KafkaConfig, conversation: &str) -> Vec<u64> {
    read(kafka, &kafka.topics.ordered)
        .await
        .iter()
        .filter(|r| kind(r) == "state" && r.key.as_deref() == Some(conversation))
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["sequenceNumber"].as_u64().unwrap()
        })
        .collect()
}

/// Another writer puts a record in the partition a sequencer owns. The sequencer's next output
/// lands after it, not after its own last: it counts a foreign output, ends its run, and the
/// run that takes the partition over again publishes the rest, every state once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_landing_after_another_writers_record_stops_the_writer() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("callbridge=info")
        .try_init();
    // Registered on the process's recorder before the sequencer counts anything.
    let before = foreign_outputs();
    let (_cluster, kafka) = cluster(1);
    let sequencer = spawn_shell(&kafka, "replica-under-test", Duration::from_secs(10));
    let stats = sequencer.stats.clone();
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();

    // A first call, published by the one writer.
    let first = "1b6e2c3d-4f5a-4b7c-8d9e-0f1a2b3c4d5e";
    write_raw(&kafka, &raw, first, 1..=LAST, LAST).await;
    wait_for("the first call", Duration::from_secs(30), || {
        stats
            .completions_published
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    })
    .await;
    assert_eq!(foreign_outputs(), before, "one writer, no foreign output");

    // Someone else writes the partition.
    let other: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    other
        .send(
            FutureRecord::to(&kafka.topics.ordered)
                .partition(0)
                .key("written-by-another-member")
                .payload("{}"),
            Duration::from_secs(10),
        )
        .await
        .expect("the other writer's record");

    // The sequencer's next output lands after it.
    let second = "2c7f3d4e-5a6b-4c8d-9e0f-1a2b3c4d5e6f";
    write_raw(&kafka, &raw, second, 1..=LAST, LAST).await;
    let counted = || foreign_outputs() > before;
    wait_for("a foreign output counted", Duration::from_secs(30), counted).await;

    // Taken over again (the run's restart waits out its own unclean epoch), the rest of the
    // second call is published once.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seqs = published(&kafka, second).await;
        if seqs.len() as u64 >= LAST {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second call was not published: {seqs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| sequencer.shutdown());
    let ordered = read(&kafka, &kafka.topics.ordered).await;
    let lines: Vec<String> = ordered.iter().map(describe).collect();
    assert_eq!(published(&kafka, first).await, vec![1, 2, 3], "{lines:#?}");
    assert_eq!(published(&kafka, second).await, vec![1, 2, 3], "{lines:#?}");
}
