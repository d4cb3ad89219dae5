//! librdkafka's mock cluster for the sequencer shell's fault tests: three brokers, the ordered
//! topic led by one of them and everything else (raw, changelog, the group) by another, so one
//! kind of request on one topic can be refused or held while the rest answers at once. The
//! per-broker faults are not in rdkafka's safe API: they go through the cluster's native handle,
//! here and nowhere else.
//!
//! Also what those tests write and read: a call's raw notifications, a topic read whole, the
//! changelog's released epochs, a back-fill source with nothing left, and a poll for a condition.

use callbridge::kafka::reader::{read_topic, ReadRecord};
use callbridge::kafka::KafkaConfig;
use callbridge::sequencer::shell::changelog::{self, ChangelogRecord};
use callbridge::sequencer::shell::{self, BackfillSource, Fetched, ShellConfig};
use callbridge::sequencer::SequencerConfig;
use rdkafka::mocking::MockCoordinator;
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// The broker leading the ordered topic.
pub const ORDERED_BROKER: i32 = 3;
/// The broker leading every other topic and coordinating the group.
pub const OTHER_BROKER: i32 = 1;

/// A mock cluster of 3 brokers, owned by a client created for it (`test.mock.num.brokers`), so
/// its native handle is reachable.
pub struct MockBrokers {
    owner: BaseProducer,
    pub bootstrap: String,
}

impl MockBrokers {
    /// Every topic of `kafka.topics` with `kafka.topics.partitions` partitions (the channel
    /// owner's one), the ordered topic on [`ORDERED_BROKER`], the rest and the group on
    /// [`OTHER_BROKER`], with no initial rebalance delay.
    pub fn start(kafka: &KafkaConfig) -> MockBrokers {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "3")
            .create()
            .expect("mock cluster");
        let mock = owner.client().mock_cluster().expect("mock cluster handle");
        for topic in kafka.topics.required() {
            let partitions = if topic == kafka.topics.channel_owner {
                1
            } else {
                kafka.topics.partitions
            };
            mock.create_topic(&topic, partitions, 1)
                .expect("mock topic");
            let leader = if topic == kafka.topics.ordered {
                ORDERED_BROKER
            } else {
                OTHER_BROKER
            };
            for p in 0..partitions {
                mock.partition_leader(&topic, p, Some(leader))
                    .expect("partition leader");
            }
        }
        mock.coordinator(
            MockCoordinator::Group(kafka.consumer_group.clone()),
            OTHER_BROKER,
        )
        .expect("group coordinator");
        let bootstrap = mock.bootstrap_servers();
        drop(mock);
        let cluster = MockBrokers { owner, bootstrap };
        // SAFETY: the handle belongs to `owner`, which outlives every use (`self`).
        unsafe {
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster.mock(), 0)
        };
        cluster
    }

    fn mock(&self) -> *mut rdkafka::bindings::rd_kafka_mock_cluster_t {
        // SAFETY: the client was created with a mock cluster, alive as long as the client.
        unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(self.owner.client().native_ptr()) }
    }

    /// The next `api` requests `broker` receives are answered with these errors, each (error,
    /// delay before the answer) in turn; `RD_KAFKA_RESP_ERR_NO_ERROR` with a delay holds a
    /// request that then succeeds.
    pub fn push_request_errors(
        &self,
        broker: i32,
        api: RDKafkaApiKey,
        errors: &[(RDKafkaRespErr, Duration)],
    ) {
        for &(error, rtt) in errors {
            // SAFETY: variadic (error, rtt in ms) pairs, both passed as C ints, as declared.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_mock_broker_push_request_error_rtts(
                    self.mock(),
                    broker,
                    api.into(),
                    1,
                    error as std::ffi::c_int,
                    rtt.as_millis() as std::ffi::c_int,
                )
            };
            assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
        }
    }

    /// Errors of [`Self::push_request_errors`] still waiting for an `api` request on `broker`.
    pub fn request_errors_pending(&self, broker: i32, api: RDKafkaApiKey) -> usize {
        let mut count = 0usize;
        // SAFETY: as above; `count` outlives the call.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_mock_broker_error_stack_cnt(
                self.mock(),
                broker,
                api.into(),
                &mut count,
            )
        };
        assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
        count
    }

    /// Moves `partition` of `topic` to `broker`.
    pub fn move_leader(&self, topic: &str, partition: i32, broker: i32) {
        let topic = std::ffi::CString::new(topic).expect("topic name");
        // SAFETY: as above; the topic name outlives the call.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_mock_partition_set_leader(
                self.mock(),
                topic.as_ptr(),
                partition,
                broker,
            )
        };
        assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
}

/// A mock cluster with `partitions` partitions per topic, and the settings to reach it.
pub fn cluster(partitions: i32) -> (MockBrokers, KafkaConfig) {
    let mut kafka = KafkaConfig::default();
    kafka.topics.partitions = partitions;
    kafka.topics.replication_factor = 1;
    let cluster = MockBrokers::start(&kafka);
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    (cluster, kafka)
}

/// A sequencer named `member` whose takeovers (and waits for a fetcher) are bounded by
/// `takeover_timeout`, checkpointing every 50 ms, with nothing to back-fill from and no gap
/// timing out within a test.
pub fn spawn_shell(
    kafka: &KafkaConfig,
    member: &str,
    takeover_timeout: Duration,
) -> shell::SequencerHandle {
    spawn_configured(shell_config(kafka, member, takeover_timeout))
}

/// `config` run with nothing to back-fill from.
pub fn spawn_configured(config: ShellConfig) -> shell::SequencerHandle {
    shell::spawn(
        config,
        std::sync::Arc::new(NothingLeft),
        tokio::runtime::Handle::current(),
    )
}

/// The shell's settings of [`spawn_shell`]; tests that need others change them with struct
/// update syntax, so what differs is what they spell out.
pub fn shell_config(kafka: &KafkaConfig, member: &str, takeover_timeout: Duration) -> ShellConfig {
    ShellConfig {
        kafka: kafka.clone(),
        sequencer: SequencerConfig {
            gap_timeout: Duration::from_secs(30),
            idle_probe_after: Duration::from_secs(600),
            ..SequencerConfig::default()
        },
        checkpoint_interval: Duration::from_millis(50),
        takeover_timeout,
        backfill_concurrency: 1,
        member: member.into(),
        // Longer than a committed-offset read the tests hold (librdkafka counts a heartbeat
        // queued behind it as missing).
        session_timeout: Duration::from_secs(6),
    }
}

/// State `seq` of `conversation` as a webhook notification; `last` is its ENDING.
pub fn call_state(conversation: &str, seq: u64, last: u64) -> String {
    serde_json::json!({
        "id": format!("n-{seq}"),
        "source": "call-events",
        "type": "call-state",
        "content": {
            "metadata": { "conversationSpaceId": conversation, "direction": "INBOUND" },
            "state": {
                "id": format!("s-{seq}"),
                "sequenceNumber": seq,
                "type": if seq == last { "ENDING" } else { "ACTIVE" },
                "participants": []
            }
        }
    })
    .to_string()
}

/// Writes states `seqs` of `conversation` (ENDING at `last`) to raw partition 0, as ingest would.
pub async fn write_raw(
    kafka: &KafkaConfig,
    producer: &FutureProducer,
    conversation: &str,
    seqs: std::ops::RangeInclusive<u64>,
    last: u64,
) {
    for seq in seqs {
        let body = call_state(conversation, seq, last);
        producer
            .send(
                FutureRecord::to(&kafka.topics.raw)
                    .partition(0)
                    .key(conversation)
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .expect("writing raw");
    }
}

/// Every record of `topic`.
pub async fn read(kafka: &KafkaConfig, topic: &str) -> Vec<ReadRecord> {
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(30)))
        .await
        .expect("reader task")
        .expect("reading a topic")
}

/// What an ordered record is (`callbridge-kind`).
pub fn kind(r: &ReadRecord) -> &str {
    r.header("callbridge-kind").unwrap_or("?")
}

/// One ordered record as a line of a failure's or a run's log: offset, kind, sequence number,
/// epoch.
pub fn describe(r: &ReadRecord) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
    format!(
        "{}:{}:{} epoch {}",
        r.offset,
        kind(r),
        v["sequenceNumber"],
        r.header("callbridge-epoch").unwrap_or("?")
    )
}

/// `what` every 20 ms until it holds; panics after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GoTo no longer has anything: every state must come from raw.
pub struct NothingLeft;

impl BackfillSource for NothingLeft {
    fn fetch<'a>(
        &'a self,
        _conversation: &'a str,
        _from: u64,
        _to: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>> {
        Box::pin(async { Fetched::States(Vec::new()) })
    }
}

/// The epochs of the changelog's `released` progress records, in the order written.
pub async fn released_epochs(kafka: &KafkaConfig) -> Vec<u64> {
    read(kafka, &kafka.topics.changelog)
        .await
        .iter()
        .filter_map(|r| {
            let key = r.key.as_deref().unwrap_or_default().as_bytes();
            match changelog::decode(key, Some(&r.value)) {
                Ok(ChangelogRecord::Progress(p)) if p.released => Some(p.epoch),
                _ => None,
            }
        })
        .collect()
}
