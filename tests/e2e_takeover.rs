//! Takeover against tansu: the new owner of a partition finishes what the ordered topic shows
//! the previous owner was in the middle of.
//!
//! The crash-point suite reaches these states by killing a replica at random moments; here the
//! ordered topic is written directly, so the case is certain to be exercised on every run.
mod support;

use callbridge::app::{self, Listeners, RunningBridge};
use callbridge::config::bridge::ChannelKind;
use callbridge::demo::bridge_config;
use callbridge::kafka::producer::owned_headers;
use callbridge::kafka::reader::{read_topic, ReadRecord};
use callbridge::kafka::KafkaConfig;
use callbridge::publish::record::{self, headers, OrderedRecord, RecordOrigin};
use callbridge::sequencer::shell::changelog::{self, Fence};
use callbridge::sequencer::shell::takeover::{
    take_over, OwnUnusedFence, Recovered, TakeoverContext, TakeoverError,
};
use callbridge::simulator::{self, RunningSimulator, SimulatorConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use support::tansu::Tansu;

fn kafka(broker: &Tansu) -> KafkaConfig {
    broker.kafka(2)
}

/// What a previous owner wrote to `ordered[partition]`: states `1..=last` of `conv`, the last one
/// ENDING, and no completion record (it stopped between the two writes).
async fn write_states_without_completion(
    kafka: &KafkaConfig,
    partition: i32,
    conv: &str,
    last: u64,
) {
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let metadata = RawValue::from_string(format!(r#"{{"conversationSpaceId":"{conv}"}}"#)).unwrap();
    for seq in 1..=last {
        let kind = if seq == last { "ENDING" } else { "ACTIVE" };
        let state = RawValue::from_string(format!(
            r#"{{"id":"s-{seq}","sequenceNumber":{seq},"type":"{kind}","participants":[]}}"#
        ))
        .unwrap();
        let r = record::state_record(conv, seq, RecordOrigin::Webhook, &metadata, &state, None, 1);
        write_ordered(&producer, kafka, partition, &r).await;
    }
}

/// Writes `r` to `ordered[partition]` as the sequencer would, and waits for Kafka to have it.
async fn write_ordered(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    partition: i32,
    r: &OrderedRecord,
) {
    producer
        .send(
            FutureRecord::to(&kafka.topics.ordered)
                .partition(partition)
                .key(&r.key)
                .payload(&r.value)
                .headers(owned_headers(&r.headers)),
            Duration::from_secs(10),
        )
        .await
        .expect("writing the ordered topic");
}

/// A takeover of partition 0 that nothing cancels, waited for (at most a minute) from a
/// multi-threaded test.
fn take_over_now(kafka: &KafkaConfig) -> Recovered {
    tokio::task::block_in_place(|| {
        spawn_takeover(
            kafka,
            Duration::ZERO,
            Arc::new(AtomicBool::new(false)),
            None,
        )
        .recv_timeout(Duration::from_secs(60))
    })
    .expect("the takeover ended")
    .expect("takeover")
}

/// Runs [`take_over`] of partition 0 on its own thread, as the shell does, with `unclean_wait`
/// for a previous owner that did not hand over; its result comes on the returned channel.
fn spawn_takeover(
    kafka: &KafkaConfig,
    unclean_wait: Duration,
    cancelled: Arc<AtomicBool>,
    own_unused_fence: Option<OwnUnusedFence>,
) -> mpsc::Receiver<Result<Recovered, TakeoverError>> {
    let (done_tx, done_rx) = mpsc::channel();
    let kafka = kafka.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
        // Revoked, not stopped: a takeover given up this way leaves its epoch unreleased.
        let release_if_given_up = AtomicBool::new(false);
        let ctx = TakeoverContext {
            client_config: kafka.client_config().unwrap(),
            producer: &producer,
            runtime: &runtime,
            changelog_topic: &kafka.topics.changelog,
            ordered_topic: &kafka.topics.ordered,
            member: "replica-under-test",
            timeout: Duration::from_secs(20),
            unclean_wait,
            cancelled: &cancelled,
            release_if_given_up: &release_if_given_up,
            own_unused_fence: own_unused_fence.as_ref(),
        };
        let _ = done_tx.send(take_over(&ctx, 0));
    });
    done_rx
}

async fn start_bridge(sim: &RunningSimulator, kafka: KafkaConfig) -> RunningBridge {
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = webhook.local_addr().unwrap();
    let config = bridge_config(&sim.base_url(), kafka, ChannelKind::Webhook, addr);
    app::start(
        config,
        Listeners {
            webhook: Some(webhook),
            admin: Some(admin),
        },
    )
    .await
    .expect("bridge starts")
}

async fn read_ordered(kafka: &KafkaConfig) -> Vec<ReadRecord> {
    let (kafka, topic) = (kafka.clone(), kafka.topics.ordered.clone());
    tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("reading the ordered topic")
}

fn kinds_of(records: &[ReadRecord], conv: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.key.as_deref() == Some(conv))
        .map(|r| {
            format!(
                "{}:{}",
                r.header(headers::KIND).unwrap_or("?"),
                r.header(headers::SEQUENCE).unwrap_or("?")
            )
        })
        .collect()
}

/// Reads the ordered topic until `conv` has a completion record (an awaited condition with a
/// deadline); returns everything read then.
async fn wait_for_completion_of(kafka: &KafkaConfig, conv: &str) -> Vec<ReadRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = read_ordered(kafka).await;
        if kinds_of(&records, conv)
            .iter()
            .any(|k| k.starts_with("completion:"))
        {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "no completion record for {conv}; its records: {:?}",
            kinds_of(&records, conv)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counter `name` of this process (every bridge and takeover of a test shares it).
fn counter(name: &str) -> u64 {
    let text = callbridge::ops::prometheus().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// `callbridge_takeover_completions_total` of this process.
fn takeover_completions() -> u64 {
    counter("callbridge_takeover_completions_total")
}

/// Another member's fence of `epoch` in `changelog[0]`.
async fn write_rival_fence(kafka: &KafkaConfig, epoch: u64) {
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let rival = Fence {
        epoch,
        member: "another-replica".into(),
        token: "a-token-of-another-replica".into(),
    };
    producer
        .send(
            FutureRecord::to(&kafka.topics.changelog)
                .partition(0)
                .key(&changelog::fence_key(epoch))
                .payload(&changelog::encode(&rival)),
            Duration::from_secs(10),
        )
        .await
        .expect("the rival fence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ending_without_its_completion_is_completed_once_by_the_next_owner() {
    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::topics::ensure_topics(&kafka)
        .await
        .expect("topics");
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let sim = simulator::start(sim_config).await.unwrap();

    // The previous owner's ENDING landed; its completion record did not. Nothing will ever send
    // this call's states again, so only the takeover can close it.
    let first = "3f0d5a8e-6c1b-4d7e-9a2f-000000000001";
    write_states_without_completion(&kafka, 0, first, 3).await;
    let bridge = start_bridge(&sim, kafka.clone()).await;
    let records = wait_for_completion_of(&kafka, first).await;
    assert_eq!(
        kinds_of(&records, first),
        ["state:1", "state:2", "state:3", "completion:3"]
    );
    let completion = records
        .iter()
        .find(|r| r.key.as_deref() == Some(first) && r.header(headers::KIND) == Some("completion"))
        .expect("just seen");
    let value: serde_json::Value = serde_json::from_slice(&completion.value).unwrap();
    assert_eq!(value["lastSequence"], 3);
    assert_eq!(value["gapCount"], 0);
    assert_eq!(value["complete"], true);
    assert_eq!(takeover_completions(), 1);
    bridge.shutdown().await;

    // The owner after that finds the call closed and must not complete it again. A second
    // unfinished call in the same partition shows when its takeover has run.
    let second = "3f0d5a8e-6c1b-4d7e-9a2f-000000000002";
    write_states_without_completion(&kafka, 0, second, 2).await;
    let bridge = start_bridge(&sim, kafka.clone()).await;
    let records = wait_for_completion_of(&kafka, second).await;
    assert_eq!(
        kinds_of(&records, second),
        ["state:1", "state:2", "completion:2"]
    );
    assert_eq!(
        kinds_of(&records, first),
        ["state:1", "state:2", "state:3", "completion:3"],
        "completed twice"
    );
    assert_eq!(
        takeover_completions(),
        2,
        "one completion per unfinished call"
    );
    bridge.shutdown().await;
    sim.shutdown().await;
}

/// A takeover given up before it finished (its partition revoked, its run over) while it has an
/// unclean previous owner to wait out (120 s here) returns without that wait, and writes no
/// fence: an epoch nobody would own, which would make the next clean hand-over look unclean.
/// (It is given up as soon as it starts, so it may stop before the wait or in it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_given_up_while_waiting_writes_no_fence() {
    use callbridge::sequencer::shell::changelog::{self, Fence};

    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::ensure_topics(&kafka).await.unwrap();
    // A previous owner took partition 0 and never handed it over: no released progress record.
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let previous = Fence {
        epoch: 1,
        member: "crashed-replica".into(),
        token: "t-1".into(),
    };
    producer
        .send(
            FutureRecord::to(&kafka.topics.changelog)
                .partition(0)
                .key(&changelog::fence_key(1))
                .payload(&changelog::encode(&previous)),
            Duration::from_secs(10),
        )
        .await
        .expect("writing the previous owner's fence");

    const UNCLEAN_WAIT: Duration = Duration::from_secs(120);
    let cancelled = Arc::new(AtomicBool::new(false));
    let done = spawn_takeover(&kafka, UNCLEAN_WAIT, cancelled.clone(), None);
    cancelled.store(true, Ordering::SeqCst);
    let result = tokio::task::spawn_blocking(move || done.recv_timeout(UNCLEAN_WAIT / 2))
        .await
        .unwrap()
        .expect("the takeover went on waiting after it was given up");
    assert!(
        matches!(result, Err(TakeoverError::Cancelled { partition: 0 })),
        "{result:?}"
    );

    let (k, topic) = (kafka.clone(), kafka.topics.changelog.clone());
    let fences: Vec<String> =
        tokio::task::spawn_blocking(move || read_topic(&k, &topic, Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("reading the changelog")
            .iter()
            .filter_map(|r| r.key.clone())
            .filter(|k| k.starts_with(changelog::FENCE_PREFIX))
            .collect();
    assert_eq!(
        fences,
        vec![changelog::fence_key(1)],
        "a given-up takeover wrote a fence"
    );
}

/// The scan reads the previous owner's whole output, however the broker reports the partition's
/// end: it reads until its own takeover marker comes back. Here the previous owner wrote two
/// calls in one burst (one batch, whose end tansu's high watermark does not show) and indexed
/// none of it; the new owner must resume both past every state, owe the unfinished ENDING its
/// completion, and leave its marker, keyless and with its epoch, exactly where its scan ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_reads_to_its_own_marker() {
    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::ensure_topics(&kafka).await.unwrap();
    let (a, b) = ("call-a", "call-b");
    // One producer, lingering, so the burst goes as one batch.
    let producer: FutureProducer = kafka
        .client_config()
        .unwrap()
        .set("linger.ms", "200")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let metadata = |conv: &str| {
        RawValue::from_string(format!(r#"{{"conversationSpaceId":"{conv}"}}"#)).unwrap()
    };
    let mut sends = Vec::new();
    for (conv, last, ending) in [(a, 5u64, false), (b, 3, true)] {
        for seq in 1..=last {
            let kind = if ending && seq == last {
                "ENDING"
            } else {
                "ACTIVE"
            };
            let state =
                RawValue::from_string(format!(r#"{{"sequenceNumber":{seq},"type":"{kind}"}}"#))
                    .unwrap();
            let r = record::state_record(
                conv,
                seq,
                RecordOrigin::Webhook,
                &metadata(conv),
                &state,
                None,
                1,
            );
            let send = producer.send_result(
                FutureRecord::to(&kafka.topics.ordered)
                    .partition(0)
                    .key(&r.key)
                    .payload(&r.value)
                    .headers(owned_headers(&r.headers)),
            );
            sends.push(send.map_err(|(e, _)| e).expect("queued"));
        }
    }
    let mut last_offset = -1;
    for s in sends {
        last_offset = s.await.unwrap().expect("written").offset;
    }
    assert_eq!(last_offset, 7, "eight records from offset 0");

    let recovered = take_over_now(&kafka);

    let summary = format!(
        "scan from {} (broker's high watermark {}), {} records, ended at {}",
        recovered.scan_from,
        recovered.scan_high_watermark,
        recovered.scanned,
        recovered.ordered_end
    );
    println!("{summary}");
    assert_eq!(recovered.epoch, 1, "{summary}");
    assert_eq!(recovered.scanned, 8, "{summary}");
    assert_eq!(recovered.conversations[a].next, 6, "{summary}");
    assert_eq!(recovered.conversations[b].next, 4, "{summary}");
    assert_eq!(
        recovered.ending_without_completion.get(b),
        Some(&3),
        "{summary}"
    );
    assert_eq!(
        recovered.ordered_end, 8,
        "the marker follows the output: {summary}"
    );

    let records = read_ordered(&kafka).await;
    let marker = records
        .iter()
        .find(|r| r.offset == recovered.ordered_end)
        .expect("a record where the scan ended");
    assert_eq!(marker.header(headers::KIND), Some("takeover"));
    assert_eq!(marker.header(headers::EPOCH), Some("1"));
    assert_eq!(marker.key, None);
}

/// Waits (at most a minute) until `bridge`'s sequencer has taken over `partitions` partitions.
async fn wait_for_takeovers(bridge: &RunningBridge, partitions: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while bridge.sequencer.takeovers.load(Ordering::SeqCst) < partitions {
        assert!(
            Instant::now() < deadline,
            "the sequencer did not take its partitions over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fences in the changelog so far.
async fn changelog_fences(kafka: &KafkaConfig) -> usize {
    use callbridge::sequencer::shell::changelog::FENCE_PREFIX;
    let (k, topic) = (kafka.clone(), kafka.topics.changelog.clone());
    tokio::task::spawn_blocking(move || read_topic(&k, &topic, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("reading the changelog")
        .iter()
        .filter(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(FENCE_PREFIX))
        })
        .count()
}

/// A bridge stopped cleanly while its sequencer is still taking a partition over (fenced, not
/// installed yet: a replica stopped right after it started, as a rolling deploy can) hands the
/// partition over cleanly: the next owner does not wait out an epoch that never wrote an output
/// (`unclean_takeovers`). Given up unmarked, that fence made every next owner wait session
/// timeout + 5 s, and each replica stopped during that wait left it unmarked for the one after.
/// A backlog of keyless records beyond the index makes each takeover's scan long enough for the
/// stop to land after the fence, before the installation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_stopped_while_taking_over_hands_the_partition_over_cleanly() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let broker = Tansu::start();
    let kafka = broker.kafka(1);
    callbridge::kafka::ensure_topics(&kafka).await.unwrap();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let sim = simulator::start(sim_config).await.unwrap();

    let first = start_bridge(&sim, kafka.clone()).await;
    wait_for_takeovers(&first, 1).await;
    first.shutdown().await;

    // Keyless records (takeover markers to a scan) after the released index.
    const BACKLOG: usize = 1_500_000;
    let producer: FutureProducer = kafka
        .client_config()
        .unwrap()
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .unwrap();
    let mut sends = Vec::with_capacity(BACKLOG);
    for _ in 0..BACKLOG {
        let send = producer.send_result(
            FutureRecord::<(), _>::to(&kafka.topics.ordered)
                .partition(0)
                .payload("{}"),
        );
        sends.push(send.map_err(|(e, _)| e).expect("queued"));
    }
    for s in sends {
        s.await.unwrap().expect("written");
    }

    // Stop a bridge once its fence is in the changelog, while it scans the backlog. A round
    // whose takeover finished first did not exercise the case: try again.
    let mut exercised = false;
    for _ in 0..5 {
        let fences = changelog_fences(&kafka).await;
        let bridge = start_bridge(&sim, kafka.clone()).await;
        let stats = bridge.sequencer.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while changelog_fences(&kafka).await == fences {
            assert!(Instant::now() < deadline, "the bridge never fenced");
        }
        bridge.shutdown().await;
        if stats.takeovers.load(Ordering::SeqCst) == 0 {
            exercised = true;
            break;
        }
    }
    assert!(
        exercised,
        "no bridge was stopped between its fence and its installation"
    );

    let next = start_bridge(&sim, kafka.clone()).await;
    wait_for_takeovers(&next, 1).await;
    assert_eq!(
        next.sequencer.unclean_takeovers.load(Ordering::SeqCst),
        0,
        "the takeover after a clean stop waited out the stopped bridge"
    );
    next.shutdown().await;
    sim.shutdown().await;
}

/// During a rolling upgrade a binary that predates the `abandoned` flag restores an abandoned
/// call open and may publish past where it was abandoned. The next owner's scan must then take
/// the output as the truth, the call open (else it would dead-letter the rest of a live call as
/// `after_abandonment`); a call the output shows nothing new for stays abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_reopens_an_abandoned_call_the_output_went_past() {
    use callbridge::sequencer::shell::changelog::{self, ConversationEntry, Progress};
    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::ensure_topics(&kafka).await.unwrap();
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let (resumed, stopped) = ("call-resumed", "call-stopped");
    let abandoned_at_3 = ConversationEntry {
        next: 3,
        ended: false,
        gaps: 0,
        abandoned: true,
    };
    let index = Progress {
        epoch: 1,
        ordered_offset: -1,
        raw_low_watermark: 0,
        raw_read_end: None,
        released: true,
    };
    let changelog_records = [
        (resumed.to_string(), changelog::encode(&abandoned_at_3)),
        (stopped.to_string(), changelog::encode(&abandoned_at_3)),
        (changelog::progress_key(1), changelog::encode(&index)),
    ];
    for (key, value) in &changelog_records {
        producer
            .send(
                FutureRecord::to(&kafka.topics.changelog)
                    .partition(0)
                    .key(key)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .expect("writing the changelog");
    }
    // The older binary's output: the resumed call went on to state 3, the other did not.
    for (conv, last) in [(resumed, 3u64), (stopped, 2)] {
        let metadata =
            RawValue::from_string(format!(r#"{{"conversationSpaceId":"{conv}"}}"#)).unwrap();
        for seq in 1..=last {
            let state = RawValue::from_string(format!(
                r#"{{"id":"s-{seq}","sequenceNumber":{seq},"type":"ACTIVE","participants":[]}}"#
            ))
            .unwrap();
            let r =
                record::state_record(conv, seq, RecordOrigin::Webhook, &metadata, &state, None, 1);
            write_ordered(&producer, &kafka, 0, &r).await;
        }
    }
    let recovered = take_over_now(&kafka);
    let entry = |conv: &str| recovered.conversations[conv];
    assert_eq!(
        (entry(resumed).next, entry(resumed).abandoned),
        (4, false),
        "the output went past the abandonment: the call is open"
    );
    assert_eq!(
        (entry(stopped).next, entry(stopped).abandoned),
        (3, true),
        "nothing past the abandonment: the call stays abandoned"
    );
}

/// Records at sequence 0 or `u64::MAX` (only a corrupt or foreign record carries one: the
/// sequencer publishes neither), and keyed records of a kind that is not ours, move no call and
/// open none; before, each opened a call at 1 that was probed for six hours, then abandoned (and
/// `u64::MAX + 1` overflowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_opens_no_call_for_a_record_at_sequence_0_or_the_last() {
    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::ensure_topics(&kafka).await.unwrap();
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let state = |conv: &str, seq: u64| {
        let metadata =
            RawValue::from_string(format!(r#"{{"conversationSpaceId":"{conv}"}}"#)).unwrap();
        let state = RawValue::from_string(format!(r#"{{"sequenceNumber":{seq},"type":"ENDING"}}"#))
            .unwrap();
        record::state_record(conv, seq, RecordOrigin::Webhook, &metadata, &state, None, 1)
    };
    let mut records = vec![
        state("call-real", 2),
        state("bad-zero", 0),
        state("bad-last", u64::MAX),
        record::gap_record("bad-gap", 1, u64::MAX, record::GapCause::Gone, 1),
        record::gap_record("bad-gap-zero", 0, 0, record::GapCause::Gone, 1),
    ];
    let mut foreign = state("foreign", 5);
    foreign.headers.retain(|(name, _)| *name != headers::KIND);
    foreign
        .headers
        .push((headers::KIND, "something-else".into()));
    records.push(foreign);
    for r in &records {
        write_ordered(&producer, &kafka, 0, r).await;
    }
    let recovered = take_over_now(&kafka);
    assert_eq!(recovered.scanned, 6);
    let mut opened: Vec<&String> = recovered.conversations.keys().collect();
    opened.sort();
    assert_eq!(opened, ["call-real"], "{:?}", recovered.conversations);
    assert_eq!(recovered.conversations["call-real"].next, 3);
    let raised: Vec<&String> = recovered.raised_by_scan.iter().collect();
    assert_eq!(raised, ["call-real"]);
    let endings: Vec<&String> = recovered.ending_without_completion.keys().collect();
    assert_eq!(endings, ["call-real"]);
}

/// A takeover told that the changelog's last fence is its run's own, of a takeover never
/// installed, does not wait it out, but only while nothing came after it: a fence of the same
/// epoch by another member (which took the partition meanwhile, having read the changelog before
/// ours landed) makes it wait as for any owner that did not hand over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_waits_for_its_runs_own_unused_fence_only_when_another_came_after_it() {
    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::topics::ensure_topics(&kafka)
        .await
        .expect("topics");
    const LONG: Duration = Duration::from_secs(120);
    let run = |own: Option<OwnUnusedFence>, wait: Duration| {
        tokio::task::block_in_place(|| {
            spawn_takeover(&kafka, wait, Arc::new(AtomicBool::new(false)), own)
                .recv_timeout(Duration::from_secs(60) + wait)
        })
        .expect("the takeover ended")
        .expect("takeover")
    };
    // A first takeover, never installed: the changelog's last fence.
    let first = take_over_now(&kafka);
    assert_eq!(first.epoch, 1);
    // Told it is ours and unused: no wait.
    let own = |r: &Recovered| OwnUnusedFence {
        epoch: r.epoch,
        token: r.fence_token.clone(),
    };
    let second = run(Some(own(&first)), LONG);
    assert_eq!(second.epoch, 2);
    assert!(!second.waited_for_previous_owner, "{second:?}");

    // Another member fences epoch 2 after ours: told that epoch 2 is ours and unused, the next
    // takeover waits all the same.
    write_rival_fence(&kafka, 2).await;
    let started = Instant::now();
    let third = run(Some(own(&second)), Duration::from_secs(2));
    assert_eq!(third.epoch, 3);
    assert!(
        third.waited_for_previous_owner && started.elapsed() >= Duration::from_secs(2),
        "waited for the rival: {:?} {third:?}",
        started.elapsed()
    );
}

/// `callbridge_takeover_unclean_total` of this process: takeovers that began waiting out a
/// previous owner.
fn unclean_takeovers() -> u64 {
    counter("callbridge_takeover_unclean_total")
}

/// Two members take the partition over at once (the group gave it to both): another member's
/// fence of the epoch this takeover chose lands while it waits out the previous owner. Reading
/// its own fence back it finds the rival's first, and fails instead of installing a second
/// writer of the output under an epoch the changelog has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_that_finds_a_rival_fence_of_its_epoch_fails_instead_of_installing() {
    let broker = Tansu::start();
    let kafka = kafka(&broker);
    callbridge::kafka::topics::ensure_topics(&kafka)
        .await
        .expect("topics");
    // A previous owner of epoch 1 that did not hand over.
    let first = take_over_now(&kafka);
    assert_eq!(first.epoch, 1);
    let unclean_before = unclean_takeovers();
    let done = spawn_takeover(
        &kafka,
        Duration::from_secs(8),
        Arc::new(AtomicBool::new(false)),
        None,
    );
    // It has read the changelog (epoch 1, not released) and waits: another member fences 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    while unclean_takeovers() == unclean_before {
        assert!(
            Instant::now() < deadline,
            "the takeover never began its wait"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_rival_fence(&kafka, 2).await;
    let result = tokio::task::block_in_place(|| done.recv_timeout(Duration::from_secs(60)))
        .expect("the takeover ended");
    match result {
        Err(TakeoverError::Rival { epoch: 2, .. }) => {}
        other => panic!("expected a rival fence of epoch 2, got {other:?}"),
    }
    // It wrote no takeover marker: only the first takeover's is in the output.
    let markers = read_ordered(&kafka)
        .await
        .iter()
        .filter(|r| r.header(headers::KIND) == Some("takeover"))
        .count();
    assert_eq!(markers, 1);
}
