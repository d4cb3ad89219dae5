//! The raw topic's acknowledgement boundary against a real broker (tansu with `sqlite://`
//! storage, stopped and started again). A write that timed out while Kafka was gone (its webhook
//! answered 503) stays queued and is written, in order, once Kafka is back: an outage shorter
//! than the queue costs no back-fill. A write that finds the queue full waits for room until
//! `kafka.ack_timeout` (then the webhook is answered 503 and what GoTo gives up on is left to
//! back-fill), and gets in if Kafka drains the queue in time. Only notifications that were lost
//! (not queued, or refused by Kafka after their answer timed out) open an unwritten window for
//! the report sweep; the late refusal is made by librdkafka's mock cluster. A dead letter whose
//! answer timed out and that Kafka then refuses is written again (nothing else recovers bad input).
mod support;

use callbridge::ingest::{RawWriter, Transport, WriteError};
use callbridge::kafka::reader::{read_topic, ReadRecord};
use callbridge::kafka::{ensure_topics, KafkaConfig};
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

/// `kafka` with a producer queue of at most `records` records.
fn with_queue_of(mut kafka: KafkaConfig, records: u32) -> KafkaConfig {
    kafka
        .librdkafka
        .insert("queue.buffering.max.messages".into(), records.to_string());
    kafka
}

/// Ingests states `from..` of `conversation` until Kafka acknowledges one (60 s at most).
async fn accept_until_acknowledged(
    ingest: &callbridge::ingest::Ingest,
    conversation: &str,
    from: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in from.. {
        let body = notification(conversation, n);
        match ingest.accept(&body, Transport::Webhook).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "never acknowledged: {e}"),
        }
    }
}

/// Every record of the raw topic.
async fn raw_records(kafka: &KafkaConfig) -> Vec<ReadRecord> {
    let (kafka, topic) = (kafka.clone(), kafka.topics.raw.clone());
    tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("reading raw")
}

/// The `sequenceNumber` of every raw record, in the topic's order.
async fn raw_sequence_numbers(kafka: &KafkaConfig) -> Vec<u64> {
    raw_records(kafka)
        .await
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["content"]["state"]["sequenceNumber"].as_u64().unwrap()
        })
        .collect()
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
    // Still queued: shown below by state 2 reaching raw (nobody writes it again). Not by
    // `in_flight()`: librdkafka's count also holds its own events, so it is no exact record count.

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

    let seqs = raw_sequence_numbers(&kafka).await;
    let first = |n: u64| seqs.iter().position(|&s| s == n);
    assert_eq!(first(1), Some(0), "{seqs:?}");
    assert!(
        matches!((first(2), first(3)), (Some(two), Some(three)) if two < three),
        "the refused state is not in raw before its successor: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_a_write_until_its_bound_then_refuses_it() {
    let data = TempDir::new("raw-writer-refused");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = with_queue_of(broker.kafka(2), 2);
    kafka.ack_timeout = Duration::from_millis(300);
    ensure_topics(&kafka).await.expect("topics");
    let writer = RawWriter::new(&kafka).expect("producer");
    broker.stop();
    for n in 1..=2 {
        let r = writer.write("c-full", &state(n), Transport::Webhook).await;
        assert!(matches!(r, Err(WriteError::AckTimeout(_))), "{r:?}");
    }
    let asked = Instant::now();
    let r = writer.write("c-full", &state(3), Transport::Webhook).await;
    assert!(matches!(r, Err(WriteError::QueueFull)), "{r:?}");
    assert!(
        asked.elapsed() >= kafka.ack_timeout,
        "refused after {:?}, before waiting kafka.ack_timeout for room",
        asked.elapsed()
    );

    // Refused means not queued: once Kafka is back, raw holds the two queued states and the next
    // one, never state 3.
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = writer.write("c-full", &state(4), Transport::Webhook).await {
        assert!(Instant::now() < deadline, "Kafka never came back: {e}");
    }
    let mut seqs = raw_sequence_numbers(&kafka).await;
    seqs.sort();
    seqs.dedup();
    assert_eq!(
        seqs,
        vec![1, 2, 4],
        "the refused state 3 was queued after all"
    );
}

/// Backpressure instead of refusal: writes that find the queue full wait in line and get in once
/// Kafka is back and drains it, within their bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_find_the_queue_full_get_in_once_kafka_drains_it() {
    let data = TempDir::new("raw-writer-full");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = with_queue_of(broker.kafka(2), 2);
    kafka.ack_timeout = Duration::from_secs(60);
    ensure_topics(&kafka).await.expect("topics");
    let writer = RawWriter::new(&kafka).expect("producer");
    broker.stop();
    let bodies: Vec<Vec<u8>> = (1..=4).map(|n| notification("c-full", n)).collect();
    let write = |n: usize| writer.write("c-full", &bodies[n - 1], Transport::Webhook);
    // `join!` first polls its branches in order, each up to its first wait: writes 1 and 2 fill
    // the queue (two records, no broker to take them) and wait for their acknowledgement, 3 and
    // 4 meet the full queue, and only then does Kafka come back.
    let (one, two, three, four, ()) = tokio::join!(write(1), write(2), write(3), write(4), async {
        tokio::task::block_in_place(|| broker.restart());
    });
    assert!(
        one.is_ok() && two.is_ok(),
        "the writes that filled the queue: {one:?} {two:?}"
    );
    assert!(
        three.is_ok() && four.is_ok(),
        "writes waiting for room were refused: {three:?} {four:?}"
    );

    let mut seqs = raw_sequence_numbers(&kafka).await;
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs, vec![1, 2, 3, 4], "every write reached raw");
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

    let mut ids: Vec<String> = raw_records(&kafka)
        .await
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

/// The windows swept from GoTo's reports after an outage cover only notifications that were not
/// even queued: one whose answer timed out is still queued and written once Kafka is back, so
/// sweeping for it would spend GoTo requests on nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_notifications_left_unqueued_open_an_unwritten_window() {
    use callbridge::ingest::Ingest;
    let data = TempDir::new("raw-writer-windows");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = broker.kafka(2);
    kafka.ack_timeout = Duration::from_millis(300);
    ensure_topics(&kafka).await.expect("topics");
    let roomy = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    let cramped = Ingest::new(RawWriter::new(&with_queue_of(kafka.clone(), 1)).expect("producer"));
    // Writes further states of `conversation` until Kafka acknowledges one.
    broker.stop();
    let r = roomy
        .accept(&notification("c-roomy", 1), Transport::Webhook)
        .await;
    assert!(matches!(r, Err(WriteError::AckTimeout(_))), "{r:?}");
    broker.restart();
    accept_until_acknowledged(&roomy, "c-roomy", 100).await;
    assert!(
        roomy.take_unwritten_windows().is_empty(),
        "a window for a notification that stayed queued"
    );

    broker.stop();
    let r = cramped
        .accept(&notification("c-cramped", 1), Transport::Webhook)
        .await;
    assert!(matches!(r, Err(WriteError::AckTimeout(_))), "{r:?}");
    let r = cramped
        .accept(&notification("c-cramped", 2), Transport::Webhook)
        .await;
    assert!(matches!(r, Err(WriteError::QueueFull)), "{r:?}");
    broker.restart();
    accept_until_acknowledged(&cramped, "c-cramped", 100).await;
    assert_eq!(
        cramped.take_unwritten_windows().len(),
        1,
        "no window for the notification the full queue refused"
    );
}

/// A record whose answer timed out is followed to its end: if Kafka then refuses it for good, it
/// was lost after all and opens an unwritten window from its receipt. (librdkafka's mock cluster:
/// tansu cannot refuse a record late.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_after_its_answer_timed_out_opens_an_unwritten_window() {
    let (_, cluster, ingest) = refusing_late("c-refused").await;
    assert!(
        ingest.take_unwritten_windows().is_empty(),
        "a window before any refusal"
    );
    let before = std::time::SystemTime::now();
    let r = ingest
        .accept(&notification("c-refused", 1), Transport::Webhook)
        .await;
    assert!(matches!(r, Err(WriteError::AckTimeout(_))), "{r:?}");
    accept_until_acknowledged(&ingest, "c-refused", 2).await;
    let windows = ingest.take_unwritten_windows();
    drop(cluster);
    assert_eq!(
        windows.len(),
        1,
        "the record Kafka refused after its answer timed out opened no window"
    );
    assert!(
        windows[0].0 >= before && windows[0].0 < windows[0].1,
        "the window starts when the refused record was received: {windows:?}"
    );
}

/// A dead letter whose answer timed out (the webhook answered 503) is followed like a raw record:
/// if Kafka then refuses it for good, nothing else would ever bring the bad body back (back-fill
/// and the report sweep recover call states, not bad input), so ingest writes it again.
/// (librdkafka's mock cluster: tansu cannot refuse a record late.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_refused_after_its_answer_timed_out_is_written_again() {
    let (kafka, cluster, ingest) = refusing_late("c-dead-letter").await;
    let marker = uuid::Uuid::new_v4().to_string();
    let body = format!("{{\"not json\": {marker}");
    let r = ingest.accept(body.as_bytes(), Transport::Webhook).await;
    assert!(
        matches!(r, Err(WriteError::AckTimeout(_))),
        "the dead letter's answer did not time out (the webhook would not answer 503): {r:?}"
    );

    // Refused by Kafka ~1.5 s later; written again afterwards.
    let (dead_letter_config, dead_letter_topic) = (kafka.clone(), kafka.topics.dead_letter.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = loop {
        let (c, t) = (dead_letter_config.clone(), dead_letter_topic.clone());
        let records =
            tokio::task::spawn_blocking(move || read_topic(&c, &t, Duration::from_secs(20)))
                .await
                .unwrap()
                .unwrap_or_default();
        if let Some(r) = records.into_iter().find(|r| r.value == body.as_bytes()) {
            break Some(r);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(cluster);
    let written =
        written.expect("the dead letter Kafka refused after its answer timed out was lost");
    assert_eq!(
        written.header("callbridge-dead-letter-reason"),
        Some("invalid_json"),
        "{:?}",
        written.headers
    );
}

/// A mock cluster that, once `conversation`'s first state is acknowledged, answers slowly enough
/// (1.5 s) for a write's answer to time out (`ack_timeout` 300 ms), then refuses one Produce,
/// then is healthy again; returned once the slow answers and the refusal are in place.
/// (librdkafka's mock cluster: tansu cannot refuse a record late.)
async fn refusing_late(
    conversation: &str,
) -> (
    KafkaConfig,
    callbridge::demo::MockKafka,
    callbridge::ingest::Ingest,
) {
    use callbridge::demo::{MockFault, MockKafka};
    use callbridge::ingest::Ingest;
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = 1;
    kafka.topics.replication_factor = 1;
    kafka.ack_timeout = Duration::from_millis(300);
    let topics = [kafka.topics.raw.clone(), kafka.topics.dead_letter.clone()];
    let schedule = vec![
        (
            Duration::from_secs(3),
            MockFault::RoundTrip(Duration::from_millis(1500)),
        ),
        (Duration::from_secs(3), MockFault::ProduceRefused(1)),
        (Duration::from_secs(7), MockFault::RoundTrip(Duration::ZERO)),
    ];
    let cluster = MockKafka::start_with_faults(&topics, 1, schedule).expect("mock cluster");
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    accept_until_acknowledged(&ingest, conversation, 100).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.faults_applied() < 2 {
        assert!(
            Instant::now() < deadline,
            "the mock faults were never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (kafka, cluster, ingest)
}

/// `callbridge_raw_write_seconds{transport}` times each raw write Kafka acknowledged, by either
/// path (waiting for the acknowledgement, or answering on receipt and following the delivery),
/// under its own transport; a write whose answer timed out is not timed, not even once Kafka
/// acknowledges it later. (Exact counts: nextest runs each test in a process of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_raw_writes_are_timed_per_transport() {
    use callbridge::demo::metric_total;
    use callbridge::ingest::{Accepted, Ingest};
    // This process's recorder, installed before the writers take their handles.
    let metrics = callbridge::ops::prometheus();
    let data = TempDir::new("raw-writer-timed");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    let mut kafka = broker.kafka(2);
    ensure_topics(&kafka).await.expect("topics");
    let writer = RawWriter::new(&kafka).expect("producer");
    let ingest = Ingest::new(writer.clone()).answering_on_receipt(4);
    kafka.ack_timeout = Duration::from_millis(500);
    let impatient = RawWriter::new(&kafka).expect("producer");
    let timed = |transport: &str| {
        metric_total(
            &metrics.render(),
            "callbridge_raw_write_seconds_count",
            &[("transport", transport)],
        )
    };

    for n in 1..=2 {
        writer
            .write("c-timed", &notification("c-timed", n), Transport::Webhook)
            .await
            .expect("written");
    }
    writer
        .write(
            "c-timed-ws",
            &notification("c-timed-ws", 1),
            Transport::WebSocket,
        )
        .await
        .expect("written");
    let r = ingest
        .accept(&notification("c-timed-receipt", 1), Transport::Webhook)
        .await;
    assert!(matches!(r, Ok(Accepted::Queued)), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ingest.answered_unacknowledged() > 0 {
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The delivery's follower times the write before it releases the place; the exporter folds
    // samples in when rendering.
    assert_eq!(timed("webhook"), 3.0, "{}", metrics.render());
    assert_eq!(timed("websocket"), 1.0, "{}", metrics.render());
    assert_eq!(timed("catchup"), 0.0, "{}", metrics.render());
    let sum = metric_total(
        &metrics.render(),
        "callbridge_raw_write_seconds_sum",
        &[("transport", "webhook")],
    );
    assert!(sum > 0.0 && sum < 60.0, "webhook write time {sum} s");

    broker.stop();
    let (late_tx, late_rx) = tokio::sync::oneshot::channel();
    let r = impatient
        .write_then(
            "c-timed",
            &notification("c-timed", 3),
            Transport::Webhook,
            move |late| {
                let _ = late_tx.send(late.is_ok());
            },
        )
        .await;
    assert!(matches!(r, Err(WriteError::AckTimeout(_))), "{r:?}");
    broker.restart();
    let acknowledged_late = tokio::time::timeout(Duration::from_secs(60), late_rx)
        .await
        .expect("the queued write's outcome within 60 s")
        .expect("outcome sent");
    assert!(acknowledged_late, "written once Kafka was back");
    assert_eq!(timed("webhook"), 3.0, "a write that timed out is not timed");
}
