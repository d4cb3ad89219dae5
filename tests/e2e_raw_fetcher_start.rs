//! A partition's takeover and librdkafka's start of its raw fetcher are two separate things, on
//! librdkafka's mock cluster.
//!
//! librdkafka starts fetching an assigned partition only once it has read the group's committed
//! offset for it, and it sends that read only at a moment when none of the member's offset
//! commits is outstanding. Until then it refuses a seek (`Local: Erroneous state`). A clean-clone
//! CI run lost a partition for good this way: its takeover (an empty changelog, fast) ended before
//! the read, the seek failed the takeover, and from then on the other partitions' commits never
//! left librdkafka a moment to read it.
//!
//! - A takeover that ends before the fetcher starts waits for it instead of failing.
//! - A member busy committing for its other partitions still starts a partition handed to it.
//! - A partition librdkafka never starts (it failed to read its committed offset: it starts it
//!   only once it is assigned again) makes the run hand everything over and rejoin.
//! - A partition revoked while its takeover waits for the fetcher is handed over cleanly.
//! - A takeover that finished but whose installation could not read raw, or one that failed
//!   after its fence with nothing of its epoch in flight, is tried again without waiting out
//!   its own fence.
mod support;

use callbridge::kafka::reader::ReadRecord;
use callbridge::kafka::KafkaConfig;
use callbridge::sequencer::shell::changelog::{self, Progress};
use callbridge::sequencer::shell::{self, ShellStats};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::mock_brokers::{
    call_state, cluster, kind, read, released_epochs, spawn_shell, wait_for, MockBrokers,
    ORDERED_BROKER, OTHER_BROKER,
};

/// States of every call; the last one is ENDING.
const LAST: u64 = 4;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("callbridge=info")
        .try_init();
}

/// The group's next committed-offset read is refused with an error librdkafka does not retry:
/// the partitions it was for stay assigned and are never fetched until assigned again.
fn refuse_the_next_offset_read(cluster: &MockBrokers) {
    cluster.push_request_errors(
        OTHER_BROKER,
        RDKafkaApiKey::OffsetFetch,
        &[(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
            Duration::ZERO,
        )],
    );
}

/// A previous owner's clean hand-over of every partition: its takeover finds a progress record
/// (so it reads no committed offset of its own, which would queue behind the delayed one) and
/// waits for nobody, so it ends in a few milliseconds.
async fn handed_over(kafka: &KafkaConfig) {
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    for p in 0..kafka.topics.partitions {
        let previous = Progress {
            epoch: 1,
            ordered_offset: -1,
            raw_low_watermark: 0,
            raw_read_end: Some(0),
            released: true,
        };
        producer
            .send(
                FutureRecord::to(&kafka.topics.changelog)
                    .partition(p)
                    .key(&changelog::progress_key(1))
                    .payload(&changelog::encode(&previous)),
                Duration::from_secs(20),
            )
            .await
            .expect("the previous owner's progress record");
    }
}

/// Writes call `conversation` (states 1..=LAST) to raw partition `p`.
async fn write_call(kafka: &KafkaConfig, raw: &FutureProducer, p: i32, conversation: &str) {
    for seq in 1..=LAST {
        let body = call_state(conversation, seq, LAST);
        raw.send(
            FutureRecord::to(&kafka.topics.raw)
                .partition(p)
                .key(conversation)
                .payload(&body),
            Duration::from_secs(10),
        )
        .await
        .expect("writing raw");
    }
}

/// The ordered topic once every one of `conversations` has its completion record.
async fn published(
    kafka: &KafkaConfig,
    conversations: &[String],
    within: Duration,
) -> Vec<ReadRecord> {
    let deadline = Instant::now() + within;
    loop {
        let records = read(kafka, &kafka.topics.ordered).await;
        let done = conversations.iter().all(|c| {
            records
                .iter()
                .any(|r| kind(r) == "completion" && r.key.as_deref() == Some(c.as_str()))
        });
        if done {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "not every call was published within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every call's states published once, in order, with one completion and no gap.
fn assert_exact(records: &[ReadRecord], conversations: &[String]) {
    for c in conversations {
        let of_call: Vec<&ReadRecord> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(c.as_str()))
            .collect();
        let states: Vec<u64> = of_call
            .iter()
            .filter(|r| kind(r) == "state")
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                v["sequenceNumber"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(states, (1..=LAST).collect::<Vec<_>>(), "call {c}");
        let count = |k: &str| of_call.iter().filter(|r| kind(r) == k).count();
        assert_eq!((count("completion"), count("gap")), (1, 0), "call {c}");
    }
}

fn counts(stats: &ShellStats) -> (u64, u64, u64) {
    (
        stats.takeovers.load(Ordering::SeqCst),
        stats.takeover_failures.load(Ordering::SeqCst),
        stats.unclean_takeovers.load(Ordering::SeqCst),
    )
}

/// The group's first committed-offset read is answered after 2 s: the takeover (a clean
/// hand-over) ends long before librdkafka starts the fetcher. The seek waits for it; a failed
/// takeover's retry would also have waited out its own fence (an unclean takeover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_ends_before_the_fetcher_starts_waits_for_it() {
    init_logs();
    let (cluster, kafka) = cluster(1);
    handed_over(&kafka).await;
    cluster.push_request_errors(
        OTHER_BROKER,
        RDKafkaApiKey::OffsetFetch,
        &[(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            Duration::from_secs(2),
        )],
    );
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let call = "0f7c1d2e-5b8a-4c3d-9e6f-7a8b9c0d1e2f".to_string();
    write_call(&kafka, &raw, 0, &call).await;
    let started = Instant::now();
    let sequencer = spawn_shell(&kafka, "replica-under-test", Duration::from_secs(10));
    let records = published(&kafka, std::slice::from_ref(&call), Duration::from_secs(30)).await;
    println!("published after {:?}", started.elapsed());
    let stats = sequencer.stats.clone();
    tokio::task::block_in_place(|| sequencer.shutdown());
    assert_eq!(
        cluster.request_errors_pending(OTHER_BROKER, RDKafkaApiKey::OffsetFetch),
        0,
        "the delayed read happened"
    );
    assert_exact(&records, &[call]);
    assert_eq!(
        counts(&stats),
        (1, 0, 0),
        "(takeovers, failed, unclean): one clean takeover, not failed"
    );
    assert_eq!(
        stats.fetcher_waits.load(Ordering::SeqCst),
        1,
        "the takeover ended before the fetcher started, and its seek was refused"
    );
}

/// Two members share two partitions; one leaves while the other is busy: calls flow on its
/// partition, and the coordinator answers each offset commit after 300 ms. The partition handed
/// over is started while the traffic goes on, with no failed takeover and no restart. Commits
/// sent one per partition per checkpoint (every 50 ms here) overlapped without end, so librdkafka
/// never read the partition's committed offset and never started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_to_a_member_busy_committing_is_started() {
    init_logs();
    let (cluster, kafka) = cluster(2);
    handed_over(&kafka).await;
    let stays = spawn_shell(&kafka, "stays", Duration::from_secs(10));
    let leaves = spawn_shell(&kafka, "leaves", Duration::from_secs(10));
    let (stays_stats, leaves_stats) = (stays.stats.clone(), leaves.stats.clone());
    wait_for("a partition each", Duration::from_secs(60), || {
        stays_stats.partitions_owned.load(Ordering::SeqCst) == 1
            && leaves_stats.partitions_owned.load(Ordering::SeqCst) == 1
    })
    .await;
    let stays_before = counts(&stays_stats);

    // Calls on both partitions, one every 10 ms, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (kafka, stop) = (kafka.clone(), stop.clone());
        tokio::spawn(async move {
            let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
            let mut written = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let p = (n % 2) as i32;
                let call = format!("busy-call-{n:05}");
                write_call(&kafka, &raw, p, &call).await;
                written.push(call);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            written
        })
    };
    // Every commit answered after 300 ms from now on.
    const DELAYED_COMMITS: usize = 3_000;
    cluster.push_request_errors(
        OTHER_BROKER,
        RDKafkaApiKey::OffsetCommit,
        &vec![
            (
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
                Duration::from_millis(300)
            );
            DELAYED_COMMITS
        ],
    );
    wait_for(
        "the busy member's commits to be delayed",
        Duration::from_secs(20),
        || {
            cluster.request_errors_pending(OTHER_BROKER, RDKafkaApiKey::OffsetCommit)
                <= DELAYED_COMMITS - 3
        },
    )
    .await;

    tokio::task::block_in_place(|| leaves.shutdown());
    let handed = Instant::now();
    wait_for(
        "the handed-over partition's installation, traffic going on",
        Duration::from_secs(30),
        || stays_stats.partitions_owned.load(Ordering::SeqCst) == 2,
    )
    .await;
    println!(
        "handed-over partition installed after {:?}",
        handed.elapsed()
    );
    assert!(
        cluster.request_errors_pending(OTHER_BROKER, RDKafkaApiKey::OffsetCommit) > 0,
        "commits were still delayed"
    );
    stop.store(true, Ordering::SeqCst);
    let written = traffic.await.expect("traffic");
    let records = published(&kafka, &written, Duration::from_secs(60)).await;
    let stays_after = counts(&stays_stats);
    tokio::task::block_in_place(|| stays.shutdown());
    println!(
        "{} calls; (takeovers, failed, unclean) of the member that stayed: {stays_before:?} -> {stays_after:?}",
        written.len()
    );
    assert!(written.len() >= 10, "traffic flowed: {}", written.len());
    assert_exact(&records, &written);
    assert_eq!(
        (
            stays_after.0 - stays_before.0,
            stays_after.1 - stays_before.1,
            stays_after.2 - stays_before.2
        ),
        (1, 0, 0),
        "the handed-over partition was taken over once, cleanly, without a restart"
    );
}

/// The group's first committed-offset read is refused with an error librdkafka does not retry:
/// it keeps the partition assigned and never starts it. The run gives up after
/// `takeover_timeout`, hands over cleanly (the unused epoch is marked released), rejoins, and
/// the partition's calls are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_librdkafka_never_starts_is_handed_over_and_rejoined() {
    init_logs();
    let (cluster, kafka) = cluster(1);
    handed_over(&kafka).await;
    refuse_the_next_offset_read(&cluster);
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let call = "5e0b9a7c-1d2e-4f3a-8b6c-9d0e1f2a3b4c".to_string();
    write_call(&kafka, &raw, 0, &call).await;
    let bound = Duration::from_secs(3);
    let started = Instant::now();
    let sequencer = spawn_shell(&kafka, "replica-under-test", bound);
    let records = published(&kafka, std::slice::from_ref(&call), Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    println!("published after {elapsed:?}");
    let stats = sequencer.stats.clone();
    tokio::task::block_in_place(|| sequencer.shutdown());
    assert_eq!(
        cluster.request_errors_pending(OTHER_BROKER, RDKafkaApiKey::OffsetFetch),
        0,
        "the refused read happened"
    );
    assert!(
        elapsed >= bound,
        "published only after the bound: {elapsed:?}"
    );
    assert_exact(&records, &[call]);
    assert_eq!(
        counts(&stats),
        (1, 0, 0),
        "(takeovers installed, failed, unclean): only the restarted run's, cleanly"
    );
    let released: Vec<u64> = released_epochs(&kafka).await;
    assert_eq!(
        released,
        vec![1, 2, 3],
        "the epoch never installed was marked released, and so was the last one at shutdown"
    );
}

/// A partition whose takeover is waiting for its fetcher is revoked (another member joins): its
/// unused epoch is marked released in the revoke, so the next owner's takeover is clean instead
/// of waiting out an owner that wrote nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_waiting_for_its_fetcher_is_handed_over_cleanly() {
    init_logs();
    let (cluster, kafka) = cluster(2);
    handed_over(&kafka).await;
    // The first member's committed-offset read (both partitions in one) is refused: neither of
    // its partitions is ever fetched, and their takeovers wait.
    refuse_the_next_offset_read(&cluster);
    let waits = spawn_shell(&kafka, "waits", Duration::from_secs(60));
    let waits_stats = waits.stats.clone();
    wait_for(
        "both takeovers waiting for their fetchers",
        Duration::from_secs(30),
        || waits_stats.fetcher_waits.load(Ordering::SeqCst) == 2,
    )
    .await;
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let calls: Vec<String> = (0..2).map(|p| format!("revoked-call-{p}")).collect();
    for (p, call) in calls.iter().enumerate() {
        write_call(&kafka, &raw, p as i32, call).await;
    }

    let joins = spawn_shell(&kafka, "joins", Duration::from_secs(60));
    let joins_stats = joins.stats.clone();
    wait_for(
        "the joining member's takeover of a revoked partition",
        Duration::from_secs(60),
        || joins_stats.partitions_owned.load(Ordering::SeqCst) == 1,
    )
    .await;
    let after_revoke = counts(&joins_stats);
    // The member still waiting hands its other partition over at its stop.
    tokio::task::block_in_place(|| waits.shutdown());
    let records = published(&kafka, &calls, Duration::from_secs(60)).await;
    let after_stop = counts(&joins_stats);
    tokio::task::block_in_place(|| joins.shutdown());
    assert_eq!(
        waits_stats.takeovers.load(Ordering::SeqCst),
        0,
        "the first member installed nothing"
    );
    assert_eq!(
        after_revoke,
        (1, 0, 0),
        "(takeovers, failed, unclean) of the joining member: the revoked partition's, clean"
    );
    assert_eq!(
        after_stop,
        (2, 0, 0),
        "(takeovers, failed, unclean) of the joining member: the other one's too"
    );
    assert_exact(&records, &calls);
}

/// The broker raw is moved to when its reads must be held alone (the mock cluster's third broker
/// leads nothing else).
const RAW_BROKER: i32 = 2;

/// A sequencer whose first takeover (clean: a previous owner handed over) finishes, but whose
/// installation cannot read raw's end: raw's leader holds its answers past the read's 10 s bound.
/// Returns the sequencer and the call waiting in raw.
async fn installation_cannot_read_raw(
    cluster: &MockBrokers,
    kafka: &KafkaConfig,
) -> (shell::SequencerHandle, String) {
    handed_over(kafka).await;
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let call = "7d2c4b1a-9e8f-4a6b-8c5d-3e2f1a0b9c8d".to_string();
    write_call(kafka, &raw, 0, &call).await;
    cluster.move_leader(&kafka.topics.raw, 0, RAW_BROKER);
    cluster.push_request_errors(
        RAW_BROKER,
        RDKafkaApiKey::ListOffsets,
        &[(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            Duration::from_secs(12),
        ); 2],
    );
    let sequencer = spawn_shell(kafka, "replica-under-test", Duration::from_secs(10));
    (sequencer, call)
}

/// The installation's read of raw's end fails after a clean takeover. The partition is taken
/// over again, and the retry knows the changelog's last fence for its run's own, unused one: its
/// takeover is clean instead of waiting out this very run as an unclean previous owner (session
/// timeout + 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_whose_installation_cannot_read_raw_is_retried_without_waiting_for_itself() {
    init_logs();
    let (cluster, kafka) = cluster(1);
    let started = Instant::now();
    let (sequencer, call) = installation_cannot_read_raw(&cluster, &kafka).await;
    retried_without_waiting_for_itself(&cluster, &kafka, sequencer, call, RAW_BROKER, started)
        .await;
}

/// The first takeover of the partition failed without writing anything but its fence (and
/// perhaps its marker) and was retried: `call` is published after one retry that did not wait
/// out this run's own fence (no unclean takeover), and nothing was written for the failed
/// attempt's epoch 2. `held` is the broker whose answers were held.
async fn retried_without_waiting_for_itself(
    cluster: &MockBrokers,
    kafka: &KafkaConfig,
    sequencer: shell::SequencerHandle,
    call: String,
    held: i32,
    started: Instant,
) {
    let records = published(kafka, std::slice::from_ref(&call), Duration::from_secs(90)).await;
    println!("published after {:?}", started.elapsed());
    let stats = sequencer.stats.clone();
    tokio::task::block_in_place(|| sequencer.shutdown());
    assert_eq!(
        cluster.request_errors_pending(held, RDKafkaApiKey::ListOffsets),
        0,
        "the held reads happened"
    );
    assert_exact(&records, &[call]);
    let (installed, failed, unclean) = counts(&stats);
    assert!(failed >= 1, "the first takeover failed: {failed}");
    assert_eq!(
        (installed, unclean),
        (1, 0),
        "(takeovers installed, unclean): the retry did not wait for its own run's fence"
    );
    // Nothing was written for the failed attempt's epoch: the retry knew it for its own.
    let released: Vec<u64> = released_epochs(kafka).await;
    assert_eq!(released.first(), Some(&1), "{released:?}");
    assert!(!released.contains(&2), "{released:?}");
}

/// The same failed installation, and the sequencer stopped while the retry waits for its turn:
/// the stop marks the failed attempt's epoch released, so the next owner does not wait it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_a_failed_takeover_waits_for_its_retry_releases_its_epoch() {
    init_logs();
    let (cluster, kafka) = cluster(1);
    let (sequencer, _call) = installation_cannot_read_raw(&cluster, &kafka).await;
    stopped_while_the_retry_waits(&kafka, sequencer).await;
}

/// Stops the sequencer once its first takeover failed, before the retry (a second later) could
/// install, and checks that the stop marked the failed attempt's epoch 2 released.
async fn stopped_while_the_retry_waits(kafka: &KafkaConfig, sequencer: shell::SequencerHandle) {
    let stats = sequencer.stats.clone();
    wait_for(
        "the first takeover to fail",
        Duration::from_secs(40),
        || stats.takeover_failures.load(Ordering::SeqCst) >= 1,
    )
    .await;
    tokio::task::block_in_place(|| sequencer.shutdown());
    assert_eq!(
        stats.takeovers.load(Ordering::SeqCst),
        0,
        "stopped before a retry could install"
    );
    let released: Vec<u64> = released_epochs(kafka).await;
    assert!(
        released.starts_with(&[1, 2]),
        "the failed attempt's epoch was marked released at the stop: {released:?}"
    );
}

/// A sequencer whose first takeover (clean: a previous owner handed over) fails after its fence:
/// the ordered topic's leader holds the answer to the takeover's read of its watermarks past the
/// read's 10 s bound. Nothing of the fence's epoch can land later (no marker was sent). Returns
/// the sequencer, once the takeover failed, and the call waiting in raw.
async fn takeover_fails_after_its_fence(
    cluster: &MockBrokers,
    kafka: &KafkaConfig,
) -> (shell::SequencerHandle, String) {
    handed_over(kafka).await;
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    let call = "3b9e1f7a-6c2d-4e8b-9a1f-5d7c3e2b8a64".to_string();
    write_call(kafka, &raw, 0, &call).await;
    // The first request for the ordered topic's offsets is the takeover's.
    cluster.push_request_errors(
        ORDERED_BROKER,
        RDKafkaApiKey::ListOffsets,
        &[(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            Duration::from_secs(12),
        )],
    );
    let sequencer = spawn_shell(kafka, "replica-under-test", Duration::from_secs(10));
    // Nothing may read the ordered topic before the takeover's read failed.
    let stats = sequencer.stats.clone();
    wait_for(
        "the takeover's read of the output's watermarks to fail",
        Duration::from_secs(40),
        || stats.takeover_failures.load(Ordering::SeqCst) >= 1,
    )
    .await;
    (sequencer, call)
}

/// The takeover itself fails after its fence, with nothing of its epoch in flight: the retry
/// knows the fence for its run's own, unused one and takes the partition over without waiting
/// out this very run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_fails_after_its_fence_is_retried_without_waiting_for_itself() {
    init_logs();
    let (cluster, kafka) = cluster(1);
    let started = Instant::now();
    let (sequencer, call) = takeover_fails_after_its_fence(&cluster, &kafka).await;
    retried_without_waiting_for_itself(&cluster, &kafka, sequencer, call, ORDERED_BROKER, started)
        .await;
}

/// The same failure, and the sequencer stopped while the retry waits for its turn: the stop
/// marks the failed attempt's epoch released, repeating the previous owner's progress record,
/// so the next owner does not wait it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_a_takeover_failed_after_its_fence_waits_for_its_retry_releases_its_epoch() {
    init_logs();
    let (cluster, kafka) = cluster(1);
    let (sequencer, _call) = takeover_fails_after_its_fence(&cluster, &kafka).await;
    stopped_while_the_retry_waits(&kafka, sequencer).await;
}
