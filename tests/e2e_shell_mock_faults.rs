//! Faults of the sequencer's I/O shell on librdkafka's mock cluster, where one broker can be
//! slowed down for one kind of request while the others answer at once: the ordered topic's
//! leader (Produce held) apart from raw, changelog and the group.
//!
//! - A full output queue must not keep the sequencer's consumer thread away from its consumer
//!   for long: the thread polls nothing while it waits for room, and a member that stops polling
//!   for `max.poll.interval.ms` is put out of the group while its queued outputs may still land
//!   after the next owner's takeover marker (a zombie writer). The wait is bounded by
//!   `sequencer_io.takeover_timeout`; past it the run fails, forgets its partitions (no
//!   `released` marker), and the next owner takes the unclean path: waits out the stragglers,
//!   scans the output, re-reads raw.
//! - A takeover given up after its fence writes no takeover marker.
mod support;

use callbridge::kafka::reader::ReadRecord;
use callbridge::kafka::KafkaConfig;
use callbridge::sequencer::shell::changelog::{self, ChangelogRecord};
use callbridge::sequencer::shell::ShellConfig;
use callbridge::sequencer::SequencerConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::mock_brokers::{
    call_state, describe, kind, read, released_epochs, shell_config, spawn_configured, wait_for,
    write_raw, MockBrokers, ORDERED_BROKER, OTHER_BROKER,
};

const CONVERSATION: &str = "0f7c1d2e-5b8a-4c3d-9e6f-7a8b9c0d1e2f";
/// States of the call; the last one is ENDING.
const LAST: u64 = 6;
/// The bound on the wait for room (`takeover_timeout`).
const BOUND: Duration = Duration::from_secs(3);
/// How long the broker holds the ordered write of state 2 before acknowledging it.
const HELD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_for_longer_than_the_bound_fails_the_run_and_loses_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("callbridge=info")
        .try_init();
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = 1;
    kafka.topics.replication_factor = 1;
    // Room for one record: the second output waits for the first one's acknowledgement.
    kafka
        .librdkafka
        .insert("queue.buffering.max.messages".into(), "1".into());
    let cluster = MockBrokers::start(&kafka);
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let base = shell_config(&kafka, "replica-under-test", BOUND);
    let sequencer = spawn_configured(ShellConfig {
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
    });
    let stats = sequencer.stats.clone();
    wait_for("the first takeover", Duration::from_secs(30), || {
        stats.takeovers.load(Ordering::SeqCst) >= 1
    })
    .await;

    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    write_raw(&kafka, &raw, CONVERSATION, 1..=1, LAST).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read(&kafka, &kafka.topics.ordered)
        .await
        .iter()
        .any(|r| kind(r) == "state")
    {
        assert!(
            Instant::now() < deadline,
            "state 1 never reached the ordered topic"
        );
    }

    // State 2's ordered write is taken but not acknowledged for a minute: the queue stays full,
    // and the outputs of states 3.. (and the changelog's) wait for room while raw is read on.
    cluster.push_request_errors(
        ORDERED_BROKER,
        RDKafkaApiKey::Produce,
        &[(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, HELD)],
    );
    write_raw(&kafka, &raw, CONVERSATION, 2..=2, LAST).await;
    wait_for(
        "state 2's request at the broker",
        Duration::from_secs(10),
        || cluster.request_errors_pending(ORDERED_BROKER, RDKafkaApiKey::Produce) == 0,
    )
    .await;
    let held_at = Instant::now();
    write_raw(&kafka, &raw, CONVERSATION, 3..=LAST, LAST).await;

    // The run gives up after the bound; the restarted run is the next owner (after the unclean
    // wait of session timeout + 5 s), well before the held request is answered.
    wait_for(
        "the next owner's takeover",
        HELD - Duration::from_secs(15),
        || stats.takeovers.load(Ordering::SeqCst) >= 2,
    )
    .await;
    let recovered_after = held_at.elapsed();

    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = read(&kafka, &kafka.topics.ordered).await;
        if records.iter().any(|r| kind(r) == "completion") || Instant::now() > deadline {
            break records;
        }
    };
    tokio::task::block_in_place(|| sequencer.shutdown());
    let released: Vec<u64> = released_epochs(&kafka).await;
    let stream: Vec<String> = records
        .iter()
        .filter(|r| kind(r) != "takeover")
        .map(describe)
        .collect();
    println!("ordered topic: {stream:?}; next owner after {recovered_after:?}");
    let states: Vec<u64> = records
        .iter()
        .filter(|r| kind(r) == "state")
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["sequenceNumber"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(states, (1..=LAST).collect::<Vec<_>>(), "{stream:?}");
    assert_eq!(
        records.iter().filter(|r| kind(r) == "gap").count(),
        0,
        "{stream:?}"
    );
    assert_eq!(
        records.iter().filter(|r| kind(r) == "completion").count(),
        1,
        "{stream:?}"
    );
    assert_eq!(
        released,
        vec![2],
        "only the shutdown hands over cleanly, not the run that gave up on its full queue"
    );
}

/// A takeover whose partition is revoked after its fence was written must not write its
/// takeover marker: it would claim `ordered[p]` for an owner that writes nothing more there,
/// and could land after the next owner's marker with a lower epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_given_up_after_its_fence_writes_no_marker() {
    let progress = given_up_after_its_fence(false).await;
    // Revoked (or lost), the partition may be another replica's already, one that read the
    // changelog before our fence landed and chose our epoch too: a `released` record for it
    // would spare that owner's successor the wait for its stragglers.
    assert!(
        progress.iter().all(|pr| pr.epoch == 1),
        "a revoked takeover marked its epoch released: {progress:?}"
    );
}

/// A graceful stop gives its running takeovers up while it still holds their partitions (it
/// leaves the group only after them): one past its fence marks its epoch released, with the
/// previous owner's resume point, so the next owner does not wait out an epoch that wrote
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_given_up_by_a_graceful_stop_releases_its_epoch() {
    let progress = given_up_after_its_fence(true).await;
    let previous = progress
        .iter()
        .find(|pr| pr.epoch == 1)
        .expect("the previous owner's record");
    let released = progress
        .iter()
        .find(|pr| pr.epoch == 2)
        .unwrap_or_else(|| panic!("no release of the given-up epoch: {progress:?}"));
    assert!(released.released, "{released:?}");
    assert_eq!(
        (released.ordered_offset, released.raw_low_watermark),
        (previous.ordered_offset, previous.raw_low_watermark),
        "the release resumes where the previous owner's record did"
    );
}

/// A takeover of partition 0 whose fence is acknowledged after 2 s, given up while it waits for
/// that acknowledgement (past its checks), after a previous owner's released progress record
/// (epoch 1); `stopping` says whether a graceful stop gave it up. Checks it wrote no takeover
/// marker, and returns the progress records in the changelog.
async fn given_up_after_its_fence(stopping: bool) -> Vec<changelog::Progress> {
    use callbridge::sequencer::shell::changelog::{Fence, Progress};
    use callbridge::sequencer::shell::takeover::{take_over, TakeoverContext, TakeoverError};
    use std::sync::atomic::AtomicBool;
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = 1;
    kafka.topics.replication_factor = 1;
    let cluster = MockBrokers::start(&kafka);
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let previous = Progress {
        epoch: 1,
        ordered_offset: -1,
        raw_low_watermark: 7,
        raw_read_end: Some(9),
        released: true,
    };
    let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    producer
        .send(
            FutureRecord::to(&kafka.topics.changelog)
                .partition(0)
                .key(&changelog::progress_key(1))
                .payload(&changelog::encode(&previous)),
            Duration::from_secs(20),
        )
        .await
        .expect("the previous owner's progress record");
    // The fence is written at once and acknowledged after 2 s: the takeover is past its checks
    // before the fence, waiting for its delivery, when it is given up.
    cluster.push_request_errors(
        OTHER_BROKER,
        RDKafkaApiKey::Produce,
        &[(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            Duration::from_secs(2),
        )],
    );
    let cancelled = Arc::new(AtomicBool::new(false));
    let release_if_given_up = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let (kafka, cancelled, release_if_given_up) = (
            kafka.clone(),
            cancelled.clone(),
            release_if_given_up.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let producer: FutureProducer = kafka.client_config().unwrap().create().unwrap();
            let ctx = TakeoverContext {
                client_config: kafka.client_config().unwrap(),
                producer: &producer,
                runtime: &runtime,
                changelog_topic: &kafka.topics.changelog,
                ordered_topic: &kafka.topics.ordered,
                member: "replica-under-test",
                timeout: Duration::from_secs(20),
                unclean_wait: Duration::ZERO,
                cancelled: &cancelled,
                release_if_given_up: &release_if_given_up,
                own_unused_fence: None,
            };
            let _ = done_tx.send(take_over(&ctx, 0));
        });
    }
    wait_for("the fence at the broker", Duration::from_secs(20), || {
        cluster.request_errors_pending(OTHER_BROKER, RDKafkaApiKey::Produce) == 0
    })
    .await;
    release_if_given_up.store(stopping, Ordering::SeqCst);
    cancelled.store(true, Ordering::SeqCst);
    let result = tokio::task::block_in_place(|| done_rx.recv_timeout(Duration::from_secs(60)))
        .expect("the takeover ends");
    assert!(
        matches!(result, Err(TakeoverError::Cancelled { partition: 0 })),
        "{result:?}"
    );
    let records: Vec<ChangelogRecord> = read(&kafka, &kafka.topics.changelog)
        .await
        .iter()
        .filter_map(|r| {
            let key = r.key.as_deref().unwrap_or_default().as_bytes();
            changelog::decode(key, Some(&r.value)).ok()
        })
        .collect();
    let fences: Vec<&Fence> = records
        .iter()
        .filter_map(|r| match r {
            ChangelogRecord::Fence(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(fences.len(), 1, "the fence was written before the give-up");
    let ordered = read(&kafka, &kafka.topics.ordered).await;
    let kinds: Vec<&str> = ordered.iter().map(kind).collect();
    assert!(kinds.is_empty(), "no marker after the give-up: {kinds:?}");
    records
        .into_iter()
        .filter_map(|r| match r {
            ChangelogRecord::Progress(pr) => Some(pr),
            _ => None,
        })
        .collect()
}

/// A hand-over whose first release fails (its outputs are not acknowledged within
/// `takeover_timeout`) must not go on releasing the other revoked partitions, each bounded by
/// the same timeout (three times over): the revoke callback would keep the consumer away from
/// the group for all of them while the failed partition's outputs stay queued. The run fails at
/// once and gives every partition up without a hand-over, after one timeout, not one per
/// revoked partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_ends_the_hand_over_at_once() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("callbridge=info")
        .try_init();
    const PARTITIONS: i32 = 4;
    const TIMEOUT: Duration = Duration::from_secs(8);
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = PARTITIONS;
    kafka.topics.replication_factor = 1;
    let cluster = MockBrokers::start(&kafka);
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let base = shell_config(&kafka, "replica-under-test", TIMEOUT);
    let sequencer = spawn_configured(ShellConfig {
        // Gaps time out as by default here.
        sequencer: SequencerConfig {
            idle_probe_after: Duration::from_secs(600),
            ..SequencerConfig::default()
        },
        checkpoint_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(2),
        ..base
    });
    let stats = sequencer.stats.clone();
    wait_for(
        "the takeover of every partition",
        Duration::from_secs(30),
        || stats.takeovers.load(Ordering::SeqCst) >= PARTITIONS as u64,
    )
    .await;

    // Every output from here on waits behind a request the broker holds for a minute.
    cluster.push_request_errors(
        ORDERED_BROKER,
        RDKafkaApiKey::Produce,
        &[(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, HELD)],
    );
    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    for p in 0..PARTITIONS {
        let conversation = format!("{CONVERSATION}-{p}");
        let body = call_state(&conversation, 1, LAST);
        raw.send(
            FutureRecord::to(&kafka.topics.raw)
                .partition(p)
                .key(&conversation)
                .payload(&body),
            Duration::from_secs(10),
        )
        .await
        .expect("writing raw");
    }
    wait_for(
        "an output of every partition on its way",
        Duration::from_secs(20),
        || {
            stats.states_published.load(Ordering::SeqCst) >= PARTITIONS as u64
                && cluster.request_errors_pending(ORDERED_BROKER, RDKafkaApiKey::Produce) == 0
        },
    )
    .await;

    // A second member joins: the cooperative assignor revokes half the partitions from the
    // replica under test, whose releases cannot drain. It polls on its own thread meanwhile.
    let joined = Instant::now();
    let member_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let member = {
        let (kafka, stop) = (kafka.clone(), member_stop.clone());
        std::thread::spawn(move || {
            let member: BaseConsumer = kafka
                .client_config()
                .unwrap()
                .set("group.id", &kafka.consumer_group)
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", "30000")
                .create()
                .expect("second member");
            member.subscribe(&[&kafka.topics.raw]).expect("subscribe");
            while !stop.load(Ordering::SeqCst) {
                let _ = member.poll(Duration::from_millis(50));
            }
        })
    };
    // The replica gives its partitions up (every one, without a hand-over) once its revoke
    // callback is done: after the first failed release, or after all of them.
    wait_for(
        "the replica to give its partitions up",
        Duration::from_secs(60),
        || stats.partitions_owned.load(Ordering::SeqCst) == 0,
    )
    .await;
    let assigned_after = joined.elapsed();
    println!("partitions given up {assigned_after:?} after the second member joined");
    member_stop.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| {
        let _ = member.join();
        sequencer.shutdown();
    });
    // One failed release takes TIMEOUT; noticing the rebalance about 2 s more here. Releasing
    // the second revoked partition too would add another TIMEOUT.
    assert!(
        assigned_after < TIMEOUT * 3 / 2 + Duration::from_secs(2),
        "the hand-over took {assigned_after:?}: it went on releasing after the first failure \
         (takeover_timeout {TIMEOUT:?} per partition)"
    );
}

/// The broker that leads only the faulty partition's changelog in
/// [`a_failed_takeover_is_retried_alone_while_the_other_partitions_go_on`].
const CHANGELOG_BROKER: i32 = 2;

/// One partition's takeover failing (here its changelog's watermarks cannot be read) is that
/// partition's problem alone: it is taken over again after a backoff while the others go on.
/// Ending the run for it gave every healthy partition up without a `released` marker, so each
/// of their next takeovers was unclean (a wait of the session timeout + 5 s, a second takeover
/// marker), and a changelog read that keeps failing became a restart loop for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_takeover_is_retried_alone_while_the_other_partitions_go_on() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("callbridge=info")
        .try_init();
    const PARTITIONS: i32 = 3;
    const FAULTY: i32 = 1;
    const REFUSED: usize = 10_000;
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = PARTITIONS;
    kafka.topics.replication_factor = 1;
    let cluster = MockBrokers::start(&kafka);
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    // Only the faulty partition's changelog is on the broker that refuses ListOffsets.
    cluster.move_leader(&kafka.topics.changelog, FAULTY, CHANGELOG_BROKER);
    // Refused with an error librdkafka does not retry: a watermark query fails at once.
    cluster.push_request_errors(
        CHANGELOG_BROKER,
        RDKafkaApiKey::ListOffsets,
        &vec![
            (
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                Duration::ZERO
            );
            REFUSED
        ],
    );
    let sequencer = spawn_configured(ShellConfig {
        checkpoint_interval: Duration::from_millis(100),
        // An unclean takeover waits this + 5 s.
        session_timeout: Duration::from_secs(2),
        ..shell_config(&kafka, "replica-under-test", Duration::from_secs(5))
    });
    let stats = sequencer.stats.clone();
    let conversation = |p: i32| format!("{CONVERSATION}-{p}");

    // The healthy partitions are taken over, and the faulty one has been tried more than once
    // (each watermark query takes two refused requests).
    wait_for(
        "the healthy partitions' takeovers and two failed ones",
        Duration::from_secs(30),
        || {
            stats.takeovers.load(Ordering::SeqCst) >= (PARTITIONS - 1) as u64
                && cluster.request_errors_pending(CHANGELOG_BROKER, RDKafkaApiKey::ListOffsets)
                    <= REFUSED - 4
        },
    )
    .await;

    let raw: FutureProducer = kafka.client_config().unwrap().create().unwrap();
    for p in 0..PARTITIONS {
        for seq in 1..=LAST {
            let body = call_state(&conversation(p), seq, LAST);
            raw.send(
                FutureRecord::to(&kafka.topics.raw)
                    .partition(p)
                    .key(&conversation(p))
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .expect("writing raw");
        }
    }
    let completed = |records: &[ReadRecord], p: i32| {
        records
            .iter()
            .any(|r| r.partition == p && kind(r) == "completion")
    };
    // The healthy partitions' calls flow while the faulty partition's takeover keeps failing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = read(&kafka, &kafka.topics.ordered).await;
        if (0..PARTITIONS)
            .filter(|&p| p != FAULTY)
            .all(|p| completed(&records, p))
        {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the healthy partitions' calls were not published"
        );
    };
    assert!(
        records.iter().all(|r| r.partition != FAULTY),
        "nothing is written for a partition whose takeover failed"
    );
    assert!(
        cluster.request_errors_pending(CHANGELOG_BROKER, RDKafkaApiKey::ListOffsets) > 0,
        "the fault was still on"
    );

    // The fault lifts: the faulty partition is taken over at its next attempt.
    cluster.move_leader(&kafka.topics.changelog, FAULTY, OTHER_BROKER);
    let lifted = Instant::now();
    wait_for(
        "the faulty partition's takeover",
        Duration::from_secs(60),
        || stats.takeovers.load(Ordering::SeqCst) >= PARTITIONS as u64,
    )
    .await;
    println!(
        "faulty partition taken over {:?} after the fault lifted",
        lifted.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = read(&kafka, &kafka.topics.ordered).await;
        if completed(&records, FAULTY) {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the faulty partition's call was not published"
        );
    };
    tokio::task::block_in_place(|| sequencer.shutdown());

    for p in 0..PARTITIONS {
        let stream: Vec<String> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(describe)
            .collect();
        println!("ordered[{p}]: {stream:?}");
        let states: Vec<u64> = records
            .iter()
            .filter(|r| r.partition == p && kind(r) == "state")
            .map(|r| {
                assert_eq!(r.key.as_deref(), Some(conversation(p).as_str()));
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                v["sequenceNumber"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(states, (1..=LAST).collect::<Vec<_>>(), "{stream:?}");
        let count = |k: &str| {
            records
                .iter()
                .filter(|r| r.partition == p && kind(r) == k)
                .count()
        };
        assert_eq!(count("gap"), 0, "{stream:?}");
        assert_eq!(count("completion"), 1, "{stream:?}");
        assert_eq!(
            count("takeover"),
            1,
            "partition {p} was taken over exactly once: {stream:?}"
        );
    }
    assert_eq!(
        stats.unclean_takeovers.load(Ordering::SeqCst),
        0,
        "no takeover had to wait out an unclean owner"
    );
    assert!(stats.takeover_failures.load(Ordering::SeqCst) >= 2);
}
