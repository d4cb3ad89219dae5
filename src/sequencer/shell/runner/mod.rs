//! The sequencer's I/O shell: a consumer-group member on the raw topic that feeds the pure core
//! and carries out what it decides.
//!
//! One dedicated thread owns the consumer, every owned partition's [`PartitionSequencer`] and the
//! bookkeeping of acknowledgements, so rebalance callbacks (which librdkafka runs inside `poll`)
//! act on the same state without locking across threads. The rules it keeps:
//! - outputs of partition `p` go to `ordered[p]` in decision order (one producer, idempotent);
//! - the changelog is written only for outputs already acknowledged (index never leads output);
//! - any delivery error ends the run: the caller restarts it, and the takeover rebuilds from
//!   Kafka, which is exactly the crash path, so there is one recovery path to trust;
//! - a takeover that fails (it, and the reads and seek installing it, use nothing the other
//!   partitions need) is that partition's alone: it stays uninstalled, so nothing of it is
//!   written, and is taken over again from scratch (a new fence and epoch) after a backoff of
//!   1 s doubling to 30 s, unless it is revoked first. Ending the run for it instead gave every
//!   healthy partition up without a `released` marker, so each next takeover waited out an
//!   unclean owner, and a slow changelog read became a restart loop for the whole process;
//! - a partition taken over is installed once librdkafka has started fetching it (its seek is
//!   accepted); one not started within `takeover_timeout` ends the run after a clean hand-over
//!   of every partition (`RunState::install_fetching`).
//!
//! This file holds the types, the rebalance callbacks and the loop; the loop's work is split by
//! direction: `input` (takeovers, raw records, back-fill answers, time), `output` (records to
//! Kafka in decision order), `checkpoint` (acknowledgements, the changelog index, commits,
//! hand-over), `committer` (raw offset commits, one at a time, off the loop) and
//! `metrics_export`.

mod checkpoint;
mod committer;
mod input;
mod metrics_export;
mod output;

pub(crate) use input::epoch_ms;

use super::backfill::{spawn_worker, BackfillDone, BackfillJob, BackfillSource, Fetched, LiveJobs};
use super::changelog::{self, ConversationEntry, Progress};
use super::takeover::{take_over, TakeoverContext, TakeoverError};
use crate::kafka::{ordered_producer, KafkaConfig};
use crate::notification::{self, Notification};
use crate::publish::record::{self, GapCause, OrderedRecord, RecordOrigin};
use crate::sequencer::{
    Action, BackfillOutcome, ConversationCheckpoint, GapReason, IncomingState, Origin,
    PartitionSequencer, SequencerConfig, Timestamp,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a published state carries from the raw record (or the back-fill) to the ordered topic.
#[derive(Debug)]
pub struct StatePayload {
    /// The ordered record's value ([`record::state_value`]), rendered when the state was read:
    /// GoTo's objects are copied once, and publishing copies nothing more.
    value: Vec<u8>,
    /// The origin `value` names. The core publishes a state under the origin of the copy it
    /// kept, which is this one; should it ever name another, the value is rendered again.
    origin: RecordOrigin,
    timestamp: Option<String>,
    /// When ingest received it (ms since the Unix epoch), for the end-to-end latency metric.
    received_at_ms: Option<u64>,
}

impl StatePayload {
    /// Renders a state's record value from GoTo's objects.
    fn render(
        conversation: &str,
        sequence: u64,
        origin: Origin,
        (metadata, state): (&RawValue, &RawValue),
        timestamp: Option<String>,
        received_at_ms: Option<u64>,
    ) -> StatePayload {
        let origin = record_origin(origin);
        StatePayload {
            value: record::state_value(conversation, sequence, origin, metadata, state),
            origin,
            timestamp,
            received_at_ms,
        }
    }

    /// The record value to publish the state under `origin`: the rendered one, or one rendered
    /// again should the core publish the state under another origin than its copy's.
    fn value_for(
        &self,
        conversation: &str,
        sequence: u64,
        origin: RecordOrigin,
    ) -> std::borrow::Cow<'_, [u8]> {
        if origin == self.origin {
            return std::borrow::Cow::Borrowed(&self.value);
        }
        let parts = record::state_value_parts(&self.value);
        debug_assert!(
            parts.is_some(),
            "a payload's value is one state_value rendered"
        );
        match parts {
            Some(parts) => std::borrow::Cow::Owned(record::state_value(
                conversation,
                sequence,
                origin,
                parts.0,
                parts.1,
            )),
            // Not reachable: the value was rendered by `state_value`.
            None => std::borrow::Cow::Borrowed(&self.value),
        }
    }
}

/// GoTo's two objects as a notification carries them: what the dead-letter topic gets for a
/// state the sequencer cannot publish.
fn notification_body(metadata: &RawValue, state: &RawValue) -> String {
    format!(
        "{{\"metadata\":{},\"state\":{}}}",
        metadata.get(),
        state.get()
    )
}

/// The record's name for where a state came from.
fn record_origin(origin: Origin) -> RecordOrigin {
    match origin {
        Origin::Webhook => RecordOrigin::Webhook,
        Origin::WebSocket => RecordOrigin::WebSocket,
        Origin::Backfill => RecordOrigin::Backfill,
    }
}

type Payload = Arc<StatePayload>;

/// librdkafka `fetch.wait.max.ms` of the raw consumer unless `kafka.librdkafka` sets it.
const RAW_FETCH_WAIT_MS: &str = "20";

/// Settings of the shell.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// The core's timers.
    pub sequencer: SequencerConfig,
    /// How often acknowledged progress is written to the changelog.
    pub checkpoint_interval: Duration,
    /// Bound on each takeover phase, and on the wait for librdkafka to start fetching a
    /// partition taken over.
    pub takeover_timeout: Duration,
    /// Concurrent back-fill requests.
    pub backfill_concurrency: usize,
    /// Identity written into fences (host name, pod name).
    pub member: String,
    /// `session.timeout.ms` of the raw consumer group.
    pub session_timeout: Duration,
}

/// Why a run of the shell ended.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// Kafka failed (client creation, delivery, commit).
    #[error("sequencer: {action}: {source}")]
    Kafka {
        /// What was being done.
        action: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A takeover failed.
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    /// The group took partitions away without a revoke we could act on (session lost): they
    /// may already be someone else's, so nothing more is written for them.
    #[error(
        "sequencer: assignment lost (session timed out or fenced); restarting with fresh clients"
    )]
    AssignmentLost,
    /// An output of ours to `ordered[p]` was acknowledged at another offset than the one after
    /// our previous output (or our takeover marker): something else wrote the partition
    /// meanwhile, a new owner's takeover marker or a zombie's output, so the group has given
    /// the partition to another member too. The run ends like one whose assignment was lost
    /// (nothing more written, no hand-over), which stops this writer; the next owner of each
    /// partition waits it out.
    #[error("sequencer: an output to ordered partition {partition} was written at offset {got}, not {expected}: another writer wrote the partition meanwhile (the group gave it to another member too); restarting with fresh clients and writing nothing more for it")]
    ForeignOutput {
        /// The partition.
        partition: i32,
        /// The offset after our previous output.
        expected: i64,
        /// Where the broker put this one.
        got: i64,
    },
    /// librdkafka did not start fetching a partition taken over within `takeover_timeout` of
    /// the takeover's end. It starts an assigned partition only once it has read the group's
    /// committed offset for it, and leaves the partition assigned but never started when that
    /// read fails, until it is assigned again: the run hands every partition over cleanly and
    /// rejoins with fresh clients.
    #[error("sequencer: raw partition {partition} was still not being fetched {waited:?} after its takeover (librdkafka had not read its committed offset: the read failed, or the group coordinator is unreachable); handing every partition over and rejoining the group with fresh clients")]
    FetcherNotStarted {
        /// The partition.
        partition: i32,
        /// How long its seek was retried.
        waited: Duration,
    },
}

/// Connection properties; only the SASL password file can make this fail.
fn client_config(kafka: &KafkaConfig) -> Result<rdkafka::ClientConfig, ShellError> {
    kafka.client_config().map_err(|e| ShellError::Kafka {
        action: "reading kafka.sasl.password_file".into(),
        source: KafkaError::ClientCreation(e.to_string()),
    })
}

fn kafka_err(action: impl Into<String>) -> impl FnOnce(KafkaError) -> ShellError {
    let action = action.into();
    move |source| ShellError::Kafka { action, source }
}

/// Counters the operator and the tests read.
#[derive(Debug, Default)]
pub struct ShellStats {
    /// Partitions currently owned and taken over.
    pub partitions_owned: std::sync::atomic::AtomicU64,
    /// States published (live and back-filled).
    pub states_published: std::sync::atomic::AtomicU64,
    /// States published from back-fill.
    pub states_backfilled: std::sync::atomic::AtomicU64,
    /// Gap records published.
    pub gaps_published: std::sync::atomic::AtomicU64,
    /// Completion records published.
    pub completions_published: std::sync::atomic::AtomicU64,
    /// Conversations open (seen, not ended) over the owned partitions, as of the last metrics
    /// export (once a second): `callbridge_conversations_open`.
    pub conversations_open: std::sync::atomic::AtomicU64,
    /// Back-fill requests issued.
    pub backfill_requests: std::sync::atomic::AtomicU64,
    /// Raw records dead-lettered by the sequencer.
    pub dead_lettered: std::sync::atomic::AtomicU64,
    /// Takeovers completed.
    pub takeovers: std::sync::atomic::AtomicU64,
    /// Takeovers completed that found no clean hand-over and waited out the previous owner.
    pub unclean_takeovers: std::sync::atomic::AtomicU64,
    /// Takeovers (or their installation) that failed and were retried after a backoff.
    pub takeover_failures: std::sync::atomic::AtomicU64,
    /// Takeovers that ended before librdkafka had started fetching their partition, and waited
    /// for it (their first seek was refused).
    pub fetcher_waits: std::sync::atomic::AtomicU64,
    /// The consumer is in the group with an assignment (possibly empty: more replicas than
    /// partitions); false before the first assignment and after a lost one. (A cooperative
    /// revocation leaves the member in the group with the rest of its partitions, and it need not
    /// be followed by an assignment callback, so it does not clear this.)
    pub group_joined: AtomicBool,
    /// Wall-clock ms of the consumer loop's latest turn (`/healthz`: is it still turning?).
    pub heartbeat_ms: std::sync::atomic::AtomicU64,
}

/// One owned partition.
struct OwnedPartition {
    epoch: u64,
    core: PartitionSequencer<Payload>,
    /// Unacknowledged outputs of this partition (ordered, changelog, dead letter) in send order:
    /// (send number, delivery, is an ordered-topic record).
    inflight: VecDeque<(u64, DeliveryFuture, bool)>,
    sent: u64,
    acked: u64,
    /// Offset of the newest acknowledged ordered-topic record.
    ordered_acked: i64,
    /// Set when an ordered acknowledgement came without an offset: the acknowledgements of the
    /// outputs sent up to this send number carry no usable offset (see
    /// `OwnedPartition::ordered_landed`).
    ordered_resync_after: Option<u64>,
    /// Next raw offset to process.
    next_raw: i64,
    /// Changelog snapshots waiting for their outputs' acknowledgements.
    pending: VecDeque<PendingSnapshot>,
    /// (send number of a progress record, raw offset to commit once it is acknowledged).
    commit_after: VecDeque<(u64, i64)>,
    last_snapshot: Instant,
    /// What the last progress record queued said (none is written while it stays the same).
    last_progress: Option<checkpoint::ProgressMark>,
}

impl OwnedPartition {
    /// The raw offset a restart must read from: the oldest raw offset still held back by the
    /// core, else the next one to process.
    fn raw_low_watermark(&self) -> i64 {
        self.core
            .raw_low_watermark()
            .map_or(self.next_raw, |held| held.min(self.next_raw))
    }

    /// One past the highest raw offset this partition's owners may have read (this one's
    /// reading, and the previous owner's end it was told at takeover), for progress records.
    fn raw_read_end(&self) -> i64 {
        self.core.raw_end().max(self.next_raw)
    }
}

struct PendingSnapshot {
    needs_acked: u64,
    ordered_offset: Option<i64>,
    entries: Vec<(
        crate::sequencer::ConversationId,
        Option<ConversationCheckpoint>,
    )>,
    raw_low_watermark: i64,
    raw_read_end: i64,
}

/// `callbridge_states_published_total` by origin and the end-to-end latency histogram.
struct PerStateMetrics {
    published: [metrics::Counter; 3],
    end_to_end: metrics::Histogram,
}

impl PerStateMetrics {
    fn new() -> Self {
        let published = |origin: RecordOrigin| metrics::counter!("callbridge_states_published_total", "origin" => origin.as_str());
        PerStateMetrics {
            published: [
                published(RecordOrigin::Webhook),
                published(RecordOrigin::WebSocket),
                published(RecordOrigin::Backfill),
            ],
            end_to_end: metrics::histogram!("callbridge_end_to_end_latency_seconds"),
        }
    }

    fn published(&self, origin: RecordOrigin) -> &metrics::Counter {
        &self.published[match origin {
            RecordOrigin::Webhook => 0,
            RecordOrigin::WebSocket => 1,
            RecordOrigin::Backfill => 2,
        }]
    }
}

/// State shared by the loop and the revoke callback (both on the consumer thread).
struct RunState {
    config: ShellConfig,
    runtime: tokio::runtime::Handle,
    producer: FutureProducer,
    partitions: BTreeMap<i32, OwnedPartition>,
    backfill_tx: tokio::sync::mpsc::UnboundedSender<BackfillJob>,
    stats: Arc<ShellStats>,
    /// The cores' clock, started with the run.
    origin: RunClock,
    actions: Vec<Action<Payload>>,
    /// Metric handles of every published state, taken once: `counter!` with a label builds a
    /// key (a label vector, a registry lookup) at each call.
    per_state: PerStateMetrics,
    /// Partitions assigned but whose takeover has not started yet.
    assigned: Vec<i32>,
    /// Takeovers running on their own threads, by partition: the latest one of each (a result
    /// whose token no longer matches was revoked meanwhile and is dropped).
    pending_takeovers: BTreeMap<i32, PendingTakeover>,
    next_takeover_token: u64,
    takeover_tx: std::sync::mpsc::Sender<TakeoverDone>,
    /// Partitions whose takeover failed, waiting to be taken over again from scratch: when, and
    /// the backoff of the attempt after that one should it fail too. A failed partition is not
    /// in `partitions` (nothing of it is written) until a later takeover succeeds; a revoke drops
    /// its retry.
    takeover_retries: BTreeMap<i32, TakeoverRetry>,
    /// Partitions taken over whose raw fetcher librdkafka has not started yet: installed once
    /// the seek to their resume offset is accepted (see `RunState::install_fetching`).
    awaiting_fetch: BTreeMap<i32, AwaitingFetch>,
    /// The committing thread's outstanding commit, which a hand-over's commit waits for.
    commits: Arc<committer::CommitGate>,
    /// Set when a callback hit an error the loop must end the run for.
    failed: Option<ShellError>,
    /// Counters already exported, per partition, with the epoch of the core they came from
    /// (the core's counters are per core).
    exported: BTreeMap<i32, metrics_export::Exported>,
    last_metrics: Instant,
}

/// How long a graceful stop waits for the takeovers it gave up to mark their epochs released.
const GIVEN_UP_TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A takeover running on its own thread. Dropping it (its partition revoked, the run over, the
/// takeover done) tells the thread to give up if it has not finished.
struct PendingTakeover {
    token: u64,
    cancel: Arc<AtomicBool>,
    /// Set before a graceful stop drops it (see `TakeoverContext::release_if_given_up`).
    release_if_given_up: Arc<AtomicBool>,
}

impl Drop for PendingTakeover {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// A failed takeover waiting for its next attempt.
#[derive(Clone, Debug)]
struct TakeoverRetry {
    /// When the next attempt starts; `None` while it runs.
    at: Option<Instant>,
    /// How long to wait should that attempt fail too.
    next_wait: Duration,
    /// The newest fence of a failed attempt that wrote nothing else that can still land (it
    /// finished but could not be installed, or failed after its fence with nothing in flight):
    /// the next attempt does not wait it out while it is still the changelog's last word, and a
    /// revoke or stop before then marks it released (see `RunState::takeover_failed`).
    unused: Option<UnusedEpoch>,
}

/// An epoch this run fenced and wrote nothing under but its fence and perhaps its takeover
/// marker, each acknowledged.
#[derive(Clone, Debug)]
struct UnusedEpoch {
    fence: crate::sequencer::shell::takeover::OwnUnusedFence,
    /// The newest progress record before its fence, which a release repeats (none: no release
    /// can be written, see `takeover::release_unused_epoch`).
    previous: Option<crate::sequencer::shell::changelog::Progress>,
}

/// The first wait before a failed takeover is tried again; it doubles up to
/// [`TAKEOVER_RETRY_MAX`].
const TAKEOVER_RETRY_BASE: Duration = Duration::from_secs(1);
const TAKEOVER_RETRY_MAX: Duration = Duration::from_secs(30);

/// A finished takeover whose partition librdkafka is not fetching yet: what installing it needs,
/// kept while the seek to its resume offset is retried.
struct AwaitingFetch {
    recovered: crate::sequencer::shell::takeover::Recovered,
    reads: input::InstallReads,
    /// When the takeover's result came in.
    since: Instant,
    /// When the seek is tried next.
    next_seek: Instant,
    /// A seek was refused already.
    refused: bool,
}

/// How often the seek of a partition whose fetcher has not started is tried again.
const SEEK_RETRY: Duration = Duration::from_millis(10);

/// A finished takeover, sent back to the consumer thread.
struct TakeoverDone {
    partition: i32,
    token: u64,
    result: Result<crate::sequencer::shell::takeover::Recovered, TakeoverError>,
}

/// How often the core's counters and gauges are exported (its gauges walk every conversation).
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

struct ShellContext {
    state: Arc<Mutex<RunState>>,
    raw_topic: String,
    /// The run's back-fill jobs still read; a revoke ends those of its partitions.
    backfill_live: LiveJobs,
}

impl ClientContext for ShellContext {
    /// librdkafka's statistics carry the consumer lag of every owned raw partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(topic) = statistics.topics.get(&self.raw_topic) {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            metrics::gauge!("callbridge_raw_consumer_lag").set(lag as f64);
        }
    }
}

impl ConsumerContext for ShellContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            if consumer.assignment_lost() {
                st.stats.group_joined.store(false, Ordering::SeqCst);
                // Not a hand-over: the partitions may already belong to another replica. Write
                // nothing more for them (no drain, no index, no commit) and end the run: its
                // producer is destroyed with what it still queues. No explicit purge: purging
                // in-flight records makes an idempotent producer bump its epoch, and some
                // brokers (tansu 0.6) fail on that. The next owner's takeover waits out what
                // was already on its way.
                tracing::warn!("raw partitions lost without a hand-over; restarting the sequencer");
                st.failed.get_or_insert(ShellError::AssignmentLost);
                st.abandon_all();
                return;
            }
            let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for &p in &revoked {
                st.assigned.retain(|a| *a != p);
                st.pending_takeovers.remove(&p);
                // Still ours until this callback returns: nothing was written under the unused
                // epochs of a failed attempt or of a takeover waiting for its fetcher. (Each
                // release is bounded by `takeover_timeout`.)
                st.drop_retry(p);
                if let Some(waiting) = st.awaiting_fetch.remove(&p) {
                    st.release_unused(p, &waiting.recovered);
                }
                st.stats.heartbeat_ms.store(epoch_ms(), Ordering::Relaxed);
                // The run goes on with its other partitions, and so does its back-fill worker:
                // the jobs it still queues for this owner of `p` must not reach GoTo (their
                // answers would be discarded while the next owner asks again).
                if let Some(part) = st.partitions.get(&p) {
                    self.backfill_live.end(p, part.epoch);
                }
            }
            for p in revoked {
                if let Err(err) = st.release(p, |t| consumer.commit(t, CommitMode::Sync)) {
                    // Stop at the first failure: each release may take up to three times
                    // `takeover_timeout`, and going on with the others would keep this callback
                    // (and the poll it runs in) away past `max.poll.interval.ms` while `p`'s
                    // unacknowledged outputs stay queued. The run fails like any other: every
                    // partition, released or not, is forgotten here without a marker, so
                    // nothing more is written for any of them; their next owners wait out what
                    // is still on its way and re-read raw from the last index.
                    tracing::error!(partition = p, error = %err, "draining a revoked partition failed; giving every partition up without a hand-over");
                    st.failed.get_or_insert(err);
                    st.abandon_all();
                    break;
                }
                // Each release is bounded (`takeover_timeout`), but they run one after another
                // inside this callback: a hand-over of many partitions while Kafka is slow
                // must not look like a stuck loop to `/healthz` and get the pod killed in the
                // middle of it.
                st.stats.heartbeat_ms.store(epoch_ms(), Ordering::Relaxed);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Nothing of a new partition may be processed before its takeover.
            if let Err(e) = consumer.pause(tpl) {
                tracing::error!(error = %e, "pausing newly assigned partitions failed");
            }
            if let Ok(mut st) = self.state.lock() {
                for e in tpl.elements() {
                    // A fresh assignment starts its takeover now, not at an older retry's time.
                    st.takeover_retries.remove(&e.partition());
                }
                st.assigned
                    .extend(tpl.elements().iter().map(|e| e.partition()));
                st.stats.group_joined.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Handle to a running sequencer.
pub struct SequencerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Live counters.
    pub stats: Arc<ShellStats>,
}

impl SequencerHandle {
    /// Asks the loop to stop (it drains, checkpoints, commits and leaves the group) and waits.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SequencerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts the sequencer on its own thread. It runs until stopped; a run that fails (a Kafka output
/// or client error, a lost assignment) is restarted after a backoff with fresh clients, through
/// the same takeover a crash would take. A failed takeover is not the run's failure: that
/// partition alone is taken over again after a backoff (1 s doubling to 30 s) while the others
/// go on.
pub fn spawn(
    config: ShellConfig,
    source: Arc<dyn BackfillSource>,
    runtime: tokio::runtime::Handle,
) -> SequencerHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ShellStats::default());
    let (s, st) = (stop.clone(), stats.clone());
    let thread = std::thread::Builder::new()
        .name("sequencer".into())
        .spawn(move || {
            let mut backoff = RestartBackoff::default();
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                match run(&config, source.clone(), &runtime, &s, &st) {
                    Ok(()) => return,
                    Err(e) => {
                        metrics::counter!("callbridge_sequencer_run_failures_total").increment(1);
                        tracing::error!(error = %e, "sequencer run failed; restarting from Kafka");
                        std::thread::sleep(backoff.after_failure(started.elapsed()));
                    }
                }
            }
        })
        .ok();
    SequencerHandle {
        stop,
        thread,
        stats,
    }
}

/// The wait before a failed run is restarted: 0.2 s doubling to 10 s over failures in a row, and
/// back to 0.2 s after a run that lasted [`RestartBackoff::HEALTHY_RUN`] (else a process that
/// failed a few times over its life would wait 10 s after every later failure).
#[derive(Debug)]
struct RestartBackoff {
    next: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff { next: Self::FIRST }
    }
}

impl RestartBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);
    const HEALTHY_RUN: Duration = Duration::from_secs(60);

    /// The wait after a run that failed after `lasted`.
    fn after_failure(&mut self, lasted: Duration) -> Duration {
        if lasted >= Self::HEALTHY_RUN {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

fn run(
    config: &ShellConfig,
    source: Arc<dyn BackfillSource>,
    runtime: &tokio::runtime::Handle,
    stop: &AtomicBool,
    stats: &Arc<ShellStats>,
) -> Result<(), ShellError> {
    let topics = &config.kafka.topics;
    let base = client_config(&config.kafka)?;
    let producer = ordered_producer(&config.kafka).map_err(kafka_err("creating the producer"))?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<BackfillDone>();
    let (takeover_tx, takeover_rx) = std::sync::mpsc::channel::<TakeoverDone>();
    let backfill_live = LiveJobs::default();
    let commits = Arc::new(committer::CommitGate::default());
    let backfill_tx = spawn_worker(
        runtime,
        source,
        config.backfill_concurrency,
        done_tx,
        backfill_live.clone(),
    );
    let state = Arc::new(Mutex::new(RunState {
        config: config.clone(),
        runtime: runtime.clone(),
        producer: producer.clone(),
        partitions: BTreeMap::new(),
        backfill_tx,
        stats: stats.clone(),
        origin: RunClock::start(),
        actions: Vec::new(),
        per_state: PerStateMetrics::new(),
        assigned: Vec::new(),
        pending_takeovers: BTreeMap::new(),
        next_takeover_token: 0,
        takeover_tx,
        takeover_retries: BTreeMap::new(),
        awaiting_fetch: BTreeMap::new(),
        commits: commits.clone(),
        failed: None,
        exported: BTreeMap::new(),
        last_metrics: Instant::now(),
    }));
    let mut consumer_config = base.clone();
    consumer_config
        .set("group.id", &config.kafka.consumer_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A join or leave moves only the partitions that must move; with an eager assignor every
        // rebalance revoked all of them, and each was released and taken over again.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().max(1000).to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout.as_millis() / 3)
                .max(300)
                .to_string(),
        )
        .set("statistics.interval.ms", "5000");
    // A broker that does not answer a fetch early when data arrives (tansu) holds every raw
    // record for up to this long before the sequencer sees it; librdkafka's 500 ms default made
    // that most of the end-to-end latency (docs/performance.md). Kafka answers early anyway, so a
    // short wait only adds cheap empty fetches while idle. `kafka.librdkafka` may change it.
    crate::kafka::config::set_default(&mut consumer_config, "fetch.wait.max.ms", RAW_FETCH_WAIT_MS);
    let consumer: Arc<BaseConsumer<ShellContext>> = Arc::new(
        consumer_config
            .create_with_context(ShellContext {
                state: state.clone(),
                raw_topic: topics.raw.clone(),
                backfill_live,
            })
            .map_err(kafka_err("creating the raw consumer"))?,
    );
    consumer
        .subscribe(&[&topics.raw])
        .map_err(kafka_err("subscribing to the raw topic"))?;
    let committer = committer::RawCommitter::start(consumer.clone(), commits.clone())?;

    let result = (|| -> Result<(), ShellError> {
        // Set when the run must end with a clean hand-over of every partition and start again.
        let mut restart = None;
        while !stop.load(Ordering::SeqCst) {
            stats.heartbeat_ms.store(epoch_ms(), Ordering::Relaxed);
            let polled = consumer.poll(Duration::from_millis(5));
            let mut st = lock(&state);
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            // A newly assigned partition stays paused until its takeover, which runs on its own
            // thread so this loop keeps polling (a takeover may wait out a previous owner, and
            // a consumer that stops polling misses rebalances and loses its session).
            let mut assigned = std::mem::take(&mut st.assigned);
            assigned.extend(st.due_takeover_retries(Instant::now()));
            for p in assigned {
                st.start_takeover(p)?;
            }
            while let Ok(done) = takeover_rx.try_recv() {
                if st.pending_takeovers.get(&done.partition).map(|t| t.token) != Some(done.token) {
                    // Given up (revoked, lost, replaced) after it passed its last check: the
                    // partition may be someone else's by now, so its epoch is left unreleased
                    // for the next owner to wait out (`TakeoverContext::release_if_given_up`).
                    continue;
                }
                st.pending_takeovers.remove(&done.partition);
                let p = done.partition;
                // A takeover runs with clients of its own, so its failure (a slow or failing
                // changelog read, a fence not read back, a timeout) is this partition's alone:
                // it is taken over again from scratch after a backoff, and the run goes on with
                // its other partitions. Nothing of `p` is written meanwhile (it is not installed).
                let recovered = match done.result {
                    Ok(recovered) => recovered,
                    Err(e) => {
                        st.takeover_failed(p, &ShellError::Takeover(e), None);
                        continue;
                    }
                };
                // The reads the installation needs fail for this partition alone too; they come
                // before anything of `p` is decided or written.
                match st.install_reads(p, &recovered, &consumer) {
                    Ok(reads) => {
                        let now = Instant::now();
                        st.awaiting_fetch.insert(
                            p,
                            AwaitingFetch {
                                recovered,
                                reads,
                                since: now,
                                next_seek: now,
                                refused: false,
                            },
                        );
                    }
                    Err(e) => st.takeover_failed(p, &e, Some(&recovered)),
                }
            }
            match st.install_fetching(&consumer) {
                Ok(()) => {}
                Err(e @ ShellError::FetcherNotStarted { .. }) => {
                    tracing::error!(error = %e, "restarting the sequencer");
                    restart = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
            match polled {
                Some(Ok(m)) => st.on_raw(&m)?,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "raw consumer error");
                }
                None => {}
            }
            while let Ok(done) = done_rx.try_recv() {
                st.on_backfill(done)?;
            }
            st.tick()?;
            st.housekeeping(&committer, &topics.raw)?;
        }
        // Graceful stop: drain every partition, then leave the group.
        let mut st = lock(&state);
        let owned: Vec<i32> = st.partitions.keys().copied().collect();
        for p in owned {
            st.release(p, |t| consumer.commit(t, CommitMode::Sync))?;
        }
        for (p, waiting) in std::mem::take(&mut st.awaiting_fetch) {
            st.release_unused(p, &waiting.recovered);
        }
        let retries: Vec<i32> = st.takeover_retries.keys().copied().collect();
        for p in retries {
            st.drop_retry(p);
        }
        // Takeovers still running are given up now (only now: had a release above failed, the
        // run would fail, and a takeover told it may release could still write after the group
        // was left). One that has written its fence marks its epoch released before it ends
        // (`takeover::release_unused_epoch`), and one that finished (or failed after its fence
        // with nothing in flight, `TakeoverError::AfterFence`) is released here: waited
        // for before the group is left, so the next owner (chosen when we leave) finds every
        // epoch handed over. Given up unmarked, a takeover's fence made the next owner wait out
        // this replica (session timeout + 5 s) for outputs it never wrote.
        let mut running: Vec<(i32, u64)> = st
            .pending_takeovers
            .iter()
            .map(|(p, t)| {
                // Still assigned to us, and we leave the group only after this wait: nobody
                // else can be taking these partitions over.
                t.release_if_given_up.store(true, Ordering::SeqCst);
                (*p, t.token)
            })
            .collect();
        st.pending_takeovers.clear();
        // A given-up takeover ends at its next step (the scan checks between records), then
        // reads its fence back and writes its release, each bounded by `takeover_timeout` but
        // fast on a healthy broker. The wait is short, so the stop stays well within
        // `shutdown.timeout` and the group is left with a LeaveGroup: a takeover not done by
        // then only costs its partition's next owner an unclean wait.
        let deadline = Instant::now() + GIVEN_UP_TAKEOVER_WAIT;
        while !running.is_empty() {
            let Ok(done) =
                takeover_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                tracing::warn!(partitions = ?running, "stopping without waiting longer for takeovers in progress; their next owners may wait them out");
                break;
            };
            running.retain(|&(p, token)| (p, token) != (done.partition, done.token));
            match &done.result {
                Ok(recovered) => st.release_unused(done.partition, recovered),
                Err(e) => st.release_failed(done.partition, e),
            }
        }
        restart.map_or(Ok(()), Err)
    })();
    if result.is_err() {
        // (A run ended for a restart has released every partition already.)
        // A failed run is a crash, not a hand-over. Dropping the consumer closes it, and the
        // close revokes every partition as not lost, which would run `release` for each: drain
        // what is still queued, index the core (already past the output that failed, whose
        // delivery error `drain_acks` consumed) and write a `released` marker, so the next
        // owner would resume raw past that output without waiting or suspecting anything.
        // Forget the partitions instead: the next owner finds no marker and takes the unclean
        // path (waits out this epoch, scans the output, re-reads raw from the last index).
        lock(&state).abandon_all();
    }
    // The committer holds the consumer: the consumer closes (and leaves the group) at the drop
    // below only once it has stopped.
    drop(committer);
    drop(consumer);
    result
}

fn lock(state: &Mutex<RunState>) -> std::sync::MutexGuard<'_, RunState> {
    // The lock is only ever taken on the consumer thread; a poisoned lock means a panic there,
    // and its state is still the best we have (the run ends right after anyway).
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cores' clock: the wall clock's ms since the Unix epoch as read when the run started,
/// advanced by the monotonic clock from there (so it never goes back within a run).
///
/// Anchored on the wall clock, not at 0, so that the age of a restored checkpoint (from its
/// changelog record's timestamp) maps onto it without clamping: a clock starting at 0 put every
/// checkpoint older than the run at the run's start, so each new run (a pod restart, a rolling
/// deploy, a failed run restarted by [`spawn`]) restarted the abandon and retention clocks of
/// every call it restored, and with runs shorter than `abandon_after` a call whose ENDING never
/// comes was never abandoned.
#[derive(Clone, Copy, Debug)]
struct RunClock {
    start: Instant,
    start_wall_ms: u64,
}

/// The lowest a run's clock starts at (a year), should the wall clock read before 1971: still
/// more than any of the core's timers, so a restored checkpoint's age never clamps.
const RUN_CLOCK_FLOOR_MS: u64 = 365 * 24 * 3_600_000;

impl RunClock {
    fn start() -> Self {
        RunClock {
            start: Instant::now(),
            start_wall_ms: input::epoch_ms().max(RUN_CLOCK_FLOOR_MS),
        }
    }

    fn now(self) -> Timestamp {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.start_wall_ms.saturating_add(elapsed))
    }

    /// Wall-clock time `at_ms` (ms since the Unix epoch, read when the clock said `now` and the
    /// wall clock `wall_now_ms`) on this clock: `now` less its age.
    fn at_wall(now: Timestamp, wall_now_ms: u64, at_ms: u64) -> Timestamp {
        Timestamp(now.0.saturating_sub(wall_now_ms.saturating_sub(at_ms)))
    }
}

fn now_ms(clock: RunClock) -> Timestamp {
    clock.now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn restarts_back_off_over_failures_in_a_row_and_start_over_after_a_healthy_run() {
        let mut b = RestartBackoff::default();
        let quick = Duration::from_secs(1);
        let waits: Vec<u128> = (0..8).map(|_| b.after_failure(quick).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(
            b.after_failure(RestartBackoff::HEALTHY_RUN).as_millis(),
            200
        );
        assert_eq!(b.after_failure(quick).as_millis(), 400);
    }

    #[test]
    fn a_payload_is_rendered_once_as_the_record_value() {
        let metadata = raw(r#"{ "conversationSpaceId":"c\"1","zNew":{"x":"é"}}"#);
        let state = raw(r#"{"sequenceNumber":4,  "type":"ACTIVE","s":"\u00e9\n"}"#);
        let payload = StatePayload::render(
            "c\"1",
            4,
            Origin::WebSocket,
            (&metadata, &state),
            Some("t".into()),
            None,
        );
        let expected = concat!(
            r#"{"type":"call-state","conversationSpaceId":"c\"1","sequenceNumber":4,"#,
            r#""origin":"websocket","metadata":{ "conversationSpaceId":"c\"1","zNew":{"x":"é"}},"#,
            r#""state":{"sequenceNumber":4,  "type":"ACTIVE","s":"\u00e9\n"}}"#
        );
        assert_eq!(std::str::from_utf8(&payload.value), Ok(expected));
        let value = payload.value_for("c\"1", 4, RecordOrigin::WebSocket);
        assert!(
            matches!(value, std::borrow::Cow::Borrowed(v) if std::ptr::eq(v, payload.value.as_slice())),
            "published from where it was rendered"
        );
    }

    #[test]
    fn a_payload_published_under_another_origin_is_rendered_again() {
        let (metadata, state) = (raw(r#"{"a": 1}"#), raw(r#"{"sequenceNumber":2}"#));
        let payload =
            StatePayload::render("c", 2, Origin::Webhook, (&metadata, &state), None, None);
        let value = payload.value_for("c", 2, RecordOrigin::Backfill);
        let expected = record::state_value("c", 2, RecordOrigin::Backfill, &metadata, &state);
        assert_eq!(value.as_ref(), expected.as_slice());
        assert_ne!(value.as_ref(), payload.value.as_slice());
    }
}
