//! The raw topic's acknowledgement boundary against a real broker (tansu with `sqlite://`
//! storage, stopped and started again). A write that timed out while Kafka was gone (its webhook
//! answered 503) stays queued and is written, in order, once Kafka is back: an outage shorter
//! than the queue costs no back-fill. A full queue refuses at once, so the webhook is answered
//! 503 without waiting and what GoTo then gives up on is left to back-fill.
mod support;

use callbridge::ingest::{RawWriter, Transport, WriteError};
use callbridge::kafka::{ensure_topics, reader::read_topic};
use std::time::{Duration, Instant};
use support::tansu::{Tansu, TempDir};

/// A call-state notification of `conversation`, sequence `n`.
fn notification(conversation: &str, n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "source": "call-events", "type": "call-state",
        "content": {"metadata": {"conversationSpaceId": conversation},
                    "state": {"id": format!("{conversation}-{n}"), "sequenceNumber": n, "type": "ACTIVE"}}
    }))
    .unwrap()
}

fn state(n: u64) -> Vec<u8> {
    notification("c-outage", n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_while_kafka_is_down_is_written_once_it_is_back() {
    let data = TempDir::new("raw-writer-outage");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = broker.kafka(2);
    kafka.ack_timeout = Duration::from_secs(1);
    ensure_topics(&kafka).await.expect("topics");
    let writer = RawWriter::new(&kafka).expect("producer");

    writer
        .write("c-outage", &state(1), Transport::Webhook)
        .await
        .expect("written while Kafka is up");

    broker.stop();
    let refused = writer
        .write("c-outage", &state(2), Transport::Webhook)
        .await;
    assert!(
        matches!(refused, Err(WriteError::AckTimeout(_))),
        "{refused:?}"
    );
    assert_eq!(writer.in_flight(), 1, "the refused record is still queued");

    broker.restart();
    // The next state of the same conversation: same partition, so state 2 is written first.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match writer
            .write("c-outage", &state(3), Transport::Webhook)
            .await
        {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "Kafka never came back: {e}"),
        }
    }

    let raw_topic = kafka.topics.raw.clone();
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&kafka, &raw_topic, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .expect("reading raw");
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["content"]["state"]["sequenceNumber"].as_u64().unwrap()
        })
        .collect();
    let first = |n: u64| seqs.iter().position(|&s| s == n);
    assert_eq!(first(1), Some(0), "{seqs:?}");
    assert!(
        matches!((first(2), first(3)), (Some(two), Some(three)) if two < three),
        "the refused state is not in raw before its successor: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let mut broker = Tansu::start();
    let mut kafka = broker.kafka(2);
    kafka.ack_timeout = Duration::from_millis(300);
    kafka
        .librdkafka
        .insert("queue.buffering.max.messages".into(), "2".into());
    ensure_topics(&kafka).await.expect("topics");
    let writer = RawWriter::new(&kafka).expect("producer");
    broker.stop();
    for n in 1..=2 {
        let r = writer.write("c-full", &state(n), Transport::Webhook).await;
        assert!(matches!(r, Err(WriteError::AckTimeout(_))), "{r:?}");
    }
    assert_eq!(writer.in_flight(), 2);
    let r = writer.write("c-full", &state(3), Transport::Webhook).await;
    assert!(matches!(r, Err(WriteError::QueueFull)), "{r:?}");
    assert_eq!(writer.in_flight(), 2, "the refused record was not queued");
}

/// `webhook.answer = "on_receipt"`: with Kafka gone, webhook states are answered at once up to
/// the limit (nothing is acknowledged, so nothing but the limit can be holding them back), the
/// next one waits for Kafka like `after_kafka` and times out, and a WebSocket frame never skips
/// the wait. Once Kafka is back every queued state is written and the places are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_on_receipt_queues_up_to_its_limit_and_then_waits_for_kafka() {
    use callbridge::ingest::{Accepted, Ingest};
    let data = TempDir::new("raw-writer-on-receipt");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = broker.kafka(2);
    kafka.ack_timeout = Duration::from_millis(500);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer")).answering_on_receipt(2);
    let conversation = |n: u64| notification(&format!("c-receipt-{n}"), 1);

    broker.stop();
    for n in 1..=2 {
        let r = ingest.accept(&conversation(n), Transport::Webhook).await;
        assert!(matches!(r, Ok(Accepted::Queued)), "state {n}: {r:?}");
    }
    assert_eq!(ingest.answered_unacknowledged(), 2);
    let r = ingest.accept(&conversation(3), Transport::Webhook).await;
    assert!(
        matches!(r, Err(WriteError::AckTimeout(_))),
        "beyond the limit the answer waits for Kafka: {r:?}"
    );
    let r = ingest.accept(&conversation(4), Transport::WebSocket).await;
    assert!(
        matches!(r, Err(WriteError::AckTimeout(_))),
        "a WebSocket frame is never answered on receipt: {r:?}"
    );

    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ingest.answered_unacknowledged() > 0 {
        assert!(
            Instant::now() < deadline,
            "the queued states were never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = ingest.accept(&conversation(5), Transport::Webhook).await;
    assert!(
        matches!(r, Ok(Accepted::Queued)),
        "places are released: {r:?}"
    );
    while ingest.answered_unacknowledged() > 0 {
        assert!(Instant::now() < deadline, "state 5 never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let raw_topic = kafka.topics.raw.clone();
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&kafka, &raw_topic, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .expect("reading raw");
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        (1..=5)
            .map(|n| format!("c-receipt-{n}"))
            .collect::<Vec<_>>(),
        "every state, answered on receipt or refused, reached raw"
    );
}
