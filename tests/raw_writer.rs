//! The raw topic's acknowledgement boundary against a real broker (tansu with `sqlite://`
//! storage, stopped and started again): a write that was refused because Kafka was gone is given
//! up by librdkafka too, so it never turns up in raw once Kafka is back. A 503 then means what it
//! says, and an outage does not pile every attempt of every notification up in the bridge's
//! memory to be written as duplicates afterwards.
mod support;

use callbridge::ingest::{RawWriter, Transport, WriteError};
use callbridge::kafka::{ensure_topics, reader::read_topic};
use std::time::{Duration, Instant};
use support::tansu::{Tansu, TempDir};

fn state(n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "source": "call-events", "type": "call-state",
        "content": {"metadata": {"conversationSpaceId": "c-refused"},
                    "state": {"id": format!("s-{n}"), "sequenceNumber": n, "type": "ACTIVE"}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_not_written_once_kafka_is_back() {
    let data = TempDir::new("raw-writer-outage");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = broker.kafka(2);
    kafka.ack_timeout = Duration::from_secs(1);
    ensure_topics(&kafka).await.expect("topics");
    let writer = RawWriter::new(&kafka).expect("producer");

    writer
        .write("c-refused", &state(1), Transport::Webhook)
        .await
        .expect("written while Kafka is up");

    broker.stop();
    let refused = writer
        .write("c-refused", &state(2), Transport::Webhook)
        .await;
    assert!(
        matches!(refused, Err(WriteError::AckTimeout(_))),
        "{refused:?}"
    );
    // librdkafka gives the record up by itself (its timeout scan runs about once a second).
    let deadline = Instant::now() + Duration::from_secs(15);
    while writer.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "librdkafka still holds {} record(s) after the ack timeout: they would be written \
             once Kafka is back",
            writer.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    broker.restart();
    // The next state of the same conversation: same partition, so had state 2 still been
    // queued it would be written before this one is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match writer
            .write("c-refused", &state(3), Transport::Webhook)
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
    assert!(seqs.contains(&1) && seqs.contains(&3), "{seqs:?}");
    assert!(
        !seqs.contains(&2),
        "the refused state was written after all: {seqs:?}"
    );
}
