//! An output the broker refuses for good must send its partition down the crash path.
//!
//! The sequencer's run ends on any delivery error and is restarted; the restarted run is the
//! partition's next owner. The failed run must not hand the partition over as `released`: its
//! core has moved past a state that is not in the ordered topic, so a clean hand-over (no wait,
//! no scan, raw resumed past the refused state) loses it. Nor may the outputs queued behind the
//! refused one land after it: that hole is in the output itself, and a takeover's scan moves
//! past it. The next owner must take the unclean path and re-read raw from the last index
//! written for acknowledged outputs.
//!
//! librdkafka's mock cluster refuses a Produce request (`MSG_SIZE_TOO_LARGE`, never retried) on
//! the broker that leads the ordered topic, and only that topic: raw, changelog, dead letter and
//! the group live on another broker. GoTo answers every back-fill with nothing, so a state can
//! only come from raw: a state skipped by the hand-over shows up as missing or as a gap record.
mod support;

use callbridge::kafka::reader::ReadRecord;
use callbridge::kafka::KafkaConfig;
use callbridge::sequencer::shell::{self, BackfillSource, Fetched, FetchedState, ShellConfig};
use callbridge::sequencer::SequencerConfig;
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::mock_brokers::{
    describe, kind, read, released_epochs, shell_config, wait_for, write_raw, MockBrokers,
    ORDERED_BROKER,
};

const CONVERSATION: &str = "6513270e-269e-4d37-b2a7-4de452e6b438";
/// States of the call; the last one is ENDING.
const LAST: u64 = 6;

/// GoTo no longer has anything: every state must come from raw.
#[derive(Default)]
struct NothingLeft {
    asked: AtomicU64,
}

impl BackfillSource for NothingLeft {
    fn fetch<'a>(
        &'a self,
        _conversation: &'a str,
        _from: u64,
        _to: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Fetched::States(Vec::new()) })
    }
}

async fn read_ordered(kafka: &KafkaConfig) -> Vec<ReadRecord> {
    read(kafka, &kafka.topics.ordered).await
}

/// The sequence numbers of the state records, in topic order.
fn published_states(records: &[ReadRecord]) -> Vec<u64> {
    records
        .iter()
        .filter(|r| kind(r) == "state")
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["sequenceNumber"].as_u64().unwrap()
        })
        .collect()
}

/// Until the call's completion record is in the ordered topic; returns the topic.
async fn wait_for_completion(kafka: &KafkaConfig, within: Duration) -> Vec<ReadRecord> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_ordered(kafka).await;
        if records.iter().any(|r| kind(r) == "completion") || Instant::now() > deadline {
            return records;
        }
    }
}

/// A mock cluster, and the sequencer's shell on it with `source` for back-fill, past its first
/// takeover of the one partition.
async fn started(
    source: Arc<dyn BackfillSource>,
) -> (MockBrokers, KafkaConfig, shell::SequencerHandle) {
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = 1;
    kafka.topics.replication_factor = 1;
    let cluster = MockBrokers::start(&kafka);
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let base = shell_config(&kafka, "replica-under-test", Duration::from_secs(10));
    let config = ShellConfig {
        sequencer: SequencerConfig {
            gap_timeout: Duration::from_millis(300),
            backfill_retry_base: Duration::from_millis(100),
            backfill_retry_max: Duration::from_millis(200),
            ..base.sequencer
        },
        checkpoint_interval: Duration::from_millis(100),
        // The next owner of an unclean hand-over waits this + 5 s.
        session_timeout: Duration::from_secs(2),
        ..base
    };
    let sequencer = shell::spawn(config, source, tokio::runtime::Handle::current());
    let stats = sequencer.stats.clone();
    wait_for("the first takeover", Duration::from_secs(30), || {
        stats.takeovers.load(Ordering::SeqCst) >= 1
    })
    .await;
    (cluster, kafka, sequencer)
}

/// Refuses the ordered write of state 2 for good. With `queue_later_outputs`, states 3.. are
/// published while that request is still unanswered (they queue behind it: one request in
/// flight), otherwise they arrive only once the next owner has taken over. Either way the
/// ordered topic must end with every state once, in order, no gap record, one completion.
async fn refused_output_recovers(queue_later_outputs: bool) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("callbridge=info")
        .try_init();
    let source = Arc::new(NothingLeft::default());
    let (cluster, kafka, sequencer) = started(source.clone()).await;
    let stats = sequencer.stats.clone();

    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    write_raw(&kafka, &raw, CONVERSATION, 1..=1, LAST).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_ordered(&kafka)
        .await
        .iter()
        .any(|r| kind(r) == "state")
    {
        assert!(
            Instant::now() < deadline,
            "state 1 never reached the ordered topic"
        );
    }

    let refused = (
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
        Duration::from_millis(1500),
    );
    if queue_later_outputs {
        // State 2's request is held 1.5 s, then refused; 3.. are published meanwhile and wait
        // in the next request. A Kafka broker refuses that request too: its base sequence
        // follows a batch it never wrote. The mock checks sequences only for transactional
        // producers (rdkafka_mock.c, rd_kafka_mock_validate_records), so it is told to.
        let gap = (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            Duration::ZERO,
        );
        cluster.push_request_errors(ORDERED_BROKER, RDKafkaApiKey::Produce, &[refused, gap]);
        write_raw(&kafka, &raw, CONVERSATION, 2..=2, LAST).await;
        wait_for(
            "state 2's request at the broker",
            Duration::from_secs(10),
            || cluster.request_errors_pending(ORDERED_BROKER, RDKafkaApiKey::Produce) < 2,
        )
        .await;
        write_raw(&kafka, &raw, CONVERSATION, 3..=LAST, LAST).await;
    } else {
        cluster.push_request_errors(ORDERED_BROKER, RDKafkaApiKey::Produce, &[refused]);
        write_raw(&kafka, &raw, CONVERSATION, 2..=2, LAST).await;
    }
    // The refusal ends the run; the restarted run is the next owner.
    wait_for("the next owner's takeover", Duration::from_secs(60), || {
        stats.takeovers.load(Ordering::SeqCst) >= 2
    })
    .await;
    if !queue_later_outputs {
        write_raw(&kafka, &raw, CONVERSATION, 3..=LAST, LAST).await;
    }

    let records = wait_for_completion(&kafka, Duration::from_secs(60)).await;
    tokio::task::block_in_place(|| sequencer.shutdown());
    // Epoch 1 refused state 2; epoch 2 (the next owner) is released by the shutdown.
    let released = released_epochs(&kafka).await;
    let stream: Vec<String> = records
        .iter()
        .filter(|r| kind(r) != "takeover")
        .map(describe)
        .collect();
    println!("ordered topic: {stream:?}");

    let states = published_states(&records);
    let gaps = records.iter().filter(|r| kind(r) == "gap").count();
    let completions = records.iter().filter(|r| kind(r) == "completion").count();
    assert_eq!(
        states,
        (1..=LAST).collect::<Vec<_>>(),
        "every state once and in order (gap records: {gaps}, back-fill requests: {}): {stream:?}",
        source.asked.load(Ordering::SeqCst)
    );
    assert_eq!(
        gaps, 0,
        "a gap record for a state raw still holds: {stream:?}"
    );
    assert_eq!(completions, 1, "one completion record: {stream:?}");
    assert_eq!(
        released,
        vec![2],
        "only the shutdown hands over cleanly, not the run whose output was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_output_is_not_handed_over_as_released() {
    refused_output_recovers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_queued_behind_a_refused_one_do_not_land_past_it() {
    refused_output_recovers(true).await;
}

/// GoTo's back-fill returns state 2 too large for any Kafka record (over 1 MB): it cannot be
/// published, and must not stop the partition by failing its run over and over.
struct OversizeState {
    asked: AtomicU64,
}

impl BackfillSource for OversizeState {
    fn fetch<'a>(
        &'a self,
        _conversation: &'a str,
        from: u64,
        to: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let wanted = from <= 2 && to.is_none_or(|to| to >= 2);
        Box::pin(async move {
            let states = if wanted {
                let state = serde_json::json!({
                    "id": "s-2", "sequenceNumber": 2, "type": "ACTIVE",
                    "notes": "n".repeat(1_100_000),
                });
                vec![FetchedState {
                    sequence_number: 2,
                    metadata: None,
                    state: serde_json::value::to_raw_value(&state).unwrap(),
                }]
            } else {
                Vec::new()
            };
            Fetched::States(states)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_back_filled_state_is_dead_lettered_and_declared_a_gap() {
    let source = Arc::new(OversizeState {
        asked: AtomicU64::new(0),
    });
    let (_cluster, kafka, sequencer) = started(source).await;
    let stats = sequencer.stats.clone();

    // State 2 never reaches raw: only back-fill has it, and too large to publish.
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    write_raw(&kafka, &raw, CONVERSATION, 1..=1, LAST).await;
    write_raw(&kafka, &raw, CONVERSATION, 3..=LAST, LAST).await;
    let records = wait_for_completion(&kafka, Duration::from_secs(60)).await;
    let takeovers = stats.takeovers.load(Ordering::SeqCst);
    tokio::task::block_in_place(|| sequencer.shutdown());

    let states = published_states(&records);
    let gaps: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| kind(r) == "gap")
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (
                v["fromSequence"].as_u64().unwrap_or(0),
                v["toSequence"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(states, vec![1, 3, 4, 5, 6]);
    assert_eq!(gaps, vec![(2, 2)], "one gap record, for state 2");
    assert_eq!(
        records.iter().filter(|r| kind(r) == "completion").count(),
        1
    );
    assert_eq!(takeovers, 1, "the run failed and was restarted");

    // The state itself is in the dead-letter topic, cut to fit, with why.
    let dead = read(&kafka, &kafka.topics.dead_letter).await;
    assert!(!dead.is_empty(), "the oversize state was not dead-lettered");
    for r in &dead {
        assert_eq!(r.header("callbridge-dead-letter-reason"), Some("oversize"));
        assert_eq!(r.key.as_deref(), Some(CONVERSATION));
        assert!(r.value.len() <= 512 * 1024, "{} bytes", r.value.len());
        assert!(r
            .header("callbridge-original-length")
            .is_some_and(|n| n.parse::<usize>().unwrap() > 1_100_000));
    }
}
