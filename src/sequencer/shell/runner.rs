//! The sequencer's I/O shell: a consumer-group member on the raw topic that feeds the pure core
//! and carries out what it decides.
//!
//! One dedicated thread owns the consumer, every owned partition's [`PartitionSequencer`] and the
//! bookkeeping of acknowledgements, so rebalance callbacks (which librdkafka runs inside `poll`)
//! act on the same state without locking across threads. The rules it keeps:
//! - outputs of partition `p` go to `ordered[p]` in decision order (one producer, idempotent);
//! - the changelog is written only for outputs already acknowledged (index never leads output);
//! - any delivery error ends the run: the caller restarts it, and the takeover rebuilds from
//!   Kafka, which is exactly the crash path, so there is one recovery path to trust.

use super::backfill::{spawn_worker, BackfillDone, BackfillJob, BackfillSource, Fetched};
use super::changelog::{self, ConversationEntry, Progress};
use super::takeover::{take_over, TakeoverContext, TakeoverError};
use crate::kafka::{idempotent_producer, KafkaConfig};
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
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a published state carries from the raw record (or the back-fill) to the ordered topic.
#[derive(Debug)]
pub struct StatePayload {
    metadata: Box<RawValue>,
    state: Box<RawValue>,
    timestamp: Option<String>,
    /// When ingest received it (ms since the Unix epoch), for the end-to-end latency metric.
    received_at_ms: Option<u64>,
}

type Payload = Arc<StatePayload>;

/// Settings of the shell.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// The core's timers.
    pub sequencer: SequencerConfig,
    /// How often acknowledged progress is written to the changelog.
    pub checkpoint_interval: Duration,
    /// Bound on each takeover phase.
    pub takeover_timeout: Duration,
    /// Concurrent back-fill requests.
    pub backfill_concurrency: usize,
    /// Identity written into fences (host name, pod name).
    pub member: String,
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
    /// Back-fill requests issued.
    pub backfill_requests: std::sync::atomic::AtomicU64,
    /// Raw records dead-lettered by the sequencer.
    pub dead_lettered: std::sync::atomic::AtomicU64,
    /// Takeovers completed.
    pub takeovers: std::sync::atomic::AtomicU64,
    /// The consumer is in the group with an assignment (possibly empty: more replicas than
    /// partitions); false before the first assignment and during a rebalance.
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
    /// Next raw offset to process.
    next_raw: i64,
    /// Changelog snapshots waiting for their outputs' acknowledgements.
    pending: VecDeque<PendingSnapshot>,
    /// (send number of a progress record, raw offset to commit once it is acknowledged).
    commit_after: VecDeque<(u64, i64)>,
    last_snapshot: Instant,
}

struct PendingSnapshot {
    needs_acked: u64,
    ordered_offset: Option<i64>,
    entries: Vec<(Arc<str>, Option<ConversationCheckpoint>)>,
    raw_low_watermark: i64,
}

/// State shared by the loop and the revoke callback (both on the consumer thread).
struct RunState {
    config: ShellConfig,
    runtime: tokio::runtime::Handle,
    producer: FutureProducer,
    partitions: BTreeMap<i32, OwnedPartition>,
    backfill_tx: tokio::sync::mpsc::UnboundedSender<BackfillJob>,
    stats: Arc<ShellStats>,
    origin: Instant,
    actions: Vec<Action<Payload>>,
    /// Partitions assigned but not yet taken over.
    assigned: Vec<i32>,
    /// Set when a callback hit an error the loop must end the run for.
    failed: Option<ShellError>,
    /// Counters already exported, per partition (the core's counters are per core).
    exported: BTreeMap<i32, crate::sequencer::Counters>,
    last_metrics: Instant,
}

/// How often the core's counters and gauges are exported (its gauges walk every conversation).
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

struct ShellContext {
    state: Arc<Mutex<RunState>>,
    raw_topic: String,
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
            st.stats.group_joined.store(false, Ordering::SeqCst);
            for e in tpl.elements() {
                let p = e.partition();
                st.assigned.retain(|a| *a != p);
                if let Err(err) = st.release(p, |t| consumer.commit(t, CommitMode::Sync)) {
                    tracing::error!(partition = p, error = %err, "draining a revoked partition failed");
                    st.failed.get_or_insert(err);
                }
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

/// Starts the sequencer on its own thread. It runs until stopped; a run that fails (Kafka error,
/// takeover refused) is restarted after a backoff with fresh clients, through the same takeover a
/// crash would take.
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
            let mut backoff = Duration::from_millis(200);
            while !s.load(Ordering::SeqCst) {
                match run(&config, source.clone(), &runtime, &s, &st) {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "sequencer run failed; restarting from Kafka");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
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

fn run(
    config: &ShellConfig,
    source: Arc<dyn BackfillSource>,
    runtime: &tokio::runtime::Handle,
    stop: &AtomicBool,
    stats: &Arc<ShellStats>,
) -> Result<(), ShellError> {
    let topics = &config.kafka.topics;
    let base = client_config(&config.kafka)?;
    let producer =
        idempotent_producer(&config.kafka).map_err(kafka_err("creating the producer"))?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<BackfillDone>();
    let backfill_tx = spawn_worker(runtime, source, config.backfill_concurrency, done_tx);
    let state = Arc::new(Mutex::new(RunState {
        config: config.clone(),
        runtime: runtime.clone(),
        producer: producer.clone(),
        partitions: BTreeMap::new(),
        backfill_tx,
        stats: stats.clone(),
        origin: Instant::now(),
        actions: Vec::new(),
        assigned: Vec::new(),
        failed: None,
        exported: BTreeMap::new(),
        last_metrics: Instant::now(),
    }));
    let consumer: BaseConsumer<ShellContext> = base
        .clone()
        .set("group.id", &config.kafka.consumer_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "5000")
        .create_with_context(ShellContext {
            state: state.clone(),
            raw_topic: topics.raw.clone(),
        })
        .map_err(kafka_err("creating the raw consumer"))?;
    consumer
        .subscribe(&[&topics.raw])
        .map_err(kafka_err("subscribing to the raw topic"))?;

    let result = (|| -> Result<(), ShellError> {
        while !stop.load(Ordering::SeqCst) {
            stats.heartbeat_ms.store(epoch_ms(), Ordering::Relaxed);
            let polled = consumer.poll(Duration::from_millis(5));
            let mut st = lock(&state);
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            // Takeovers first: a newly assigned partition is paused until it is rebuilt.
            let assigned = std::mem::take(&mut st.assigned);
            for (p, recovered) in st.recover_all(&assigned, runtime)? {
                let resume = st.install(p, recovered, &consumer)?;
                consumer
                    .seek(
                        &topics.raw,
                        p,
                        Offset::Offset(resume),
                        Duration::from_secs(10),
                    )
                    .map_err(kafka_err(format!("seeking raw partition {p} to {resume}")))?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topics.raw, p);
                consumer
                    .resume(&tpl)
                    .map_err(kafka_err(format!("resuming raw partition {p}")))?;
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
            st.housekeeping(&consumer, &topics.raw)?;
        }
        // Graceful stop: drain every partition, then leave the group.
        let mut st = lock(&state);
        let owned: Vec<i32> = st.partitions.keys().copied().collect();
        for p in owned {
            st.release(p, |t| consumer.commit(t, CommitMode::Sync))?;
        }
        Ok(())
    })();
    drop(consumer);
    result
}

fn lock(state: &Mutex<RunState>) -> std::sync::MutexGuard<'_, RunState> {
    // The lock is only ever taken on the consumer thread; a poisoned lock means a panic there,
    // and its state is still the best we have (the run ends right after anyway).
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms(origin: Instant) -> Timestamp {
    Timestamp(origin.elapsed().as_millis() as u64)
}

#[derive(serde::Deserialize)]
struct StateTimestamp<'a> {
    #[serde(borrow)]
    timestamp: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

fn state_fields(state: &RawValue) -> (Option<String>, bool) {
    match serde_json::from_str::<StateTimestamp<'_>>(state.get()) {
        Ok(s) => (
            s.timestamp.map(|t| t.into_owned()),
            s.kind.as_deref() == Some("ENDING"),
        ),
        Err(_) => (None, false),
    }
}

pub(crate) fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn received_at(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<u64> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == crate::ingest::raw_writer::headers::RECEIVED_AT)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
}

fn origin_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Origin {
    let transport = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == crate::ingest::raw_writer::headers::TRANSPORT)
            .and_then(|h| h.value)
    });
    match transport {
        Some(b"websocket") => Origin::WebSocket,
        Some(b"catchup") => Origin::Backfill,
        _ => Origin::Webhook,
    }
}

impl RunState {
    /// Exports the cores' counters (as increments since the last export) and gauges.
    fn export_metrics(&mut self) {
        use metrics::{counter, gauge};
        self.last_metrics = Instant::now();
        let now = now_ms(self.origin);
        let (mut open_gaps, mut held, mut open, mut oldest) = (0usize, 0usize, 0usize, None);
        for (p, part) in &self.partitions {
            let st = part.core.stats();
            let c = &st.counters;
            let last = self.exported.entry(*p).or_default();
            let inc = |now: u64, before: u64| now.saturating_sub(before);
            counter!("callbridge_duplicates_dropped_total")
                .increment(inc(c.duplicates_dropped, last.duplicates_dropped));
            counter!("callbridge_conflicting_duplicates_total")
                .increment(inc(c.conflicts, last.conflicts));
            counter!("callbridge_gaps_detected_total")
                .increment(inc(c.gaps_detected, last.gaps_detected));
            counter!("callbridge_gap_records_published_total", "reason" => "gone")
                .increment(inc(c.gaps_gone, last.gaps_gone));
            counter!("callbridge_gap_records_published_total", "reason" => "backfill_failed")
                .increment(inc(c.gaps_backfill_failed, last.gaps_backfill_failed));
            counter!("callbridge_backfill_requests_total", "kind" => "gap")
                .increment(inc(c.backfills_requested, last.backfills_requested));
            counter!("callbridge_backfill_requests_total", "kind" => "idle_probe")
                .increment(inc(c.probes_requested, last.probes_requested));
            counter!("callbridge_backfill_failures_total")
                .increment(inc(c.backfills_failed, last.backfills_failed));
            counter!("callbridge_completions_published_total")
                .increment(inc(c.completions, last.completions));
            counter!("callbridge_conversations_abandoned_total")
                .increment(inc(c.abandoned, last.abandoned));
            *last = c.clone();
            open_gaps += st.open_gaps;
            held += st.held_states;
            open += st.open_conversations;
            oldest = match (oldest, st.oldest_open_gap_since) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
        }
        self.exported.retain(|p, _| self.partitions.contains_key(p));
        gauge!("callbridge_gaps_open").set(open_gaps as f64);
        gauge!("callbridge_states_held").set(held as f64);
        gauge!("callbridge_conversations_open").set(open as f64);
        gauge!("callbridge_partitions_owned").set(self.partitions.len() as f64);
        let age = oldest.map_or(0.0, |t: Timestamp| now.since(t).as_secs_f64());
        gauge!("callbridge_gap_oldest_age_seconds").set(age);
    }

    /// Runs the Kafka part of the takeover of every newly assigned partition at once (each
    /// is independent, and most of a takeover is waiting on the broker).
    fn recover_all(
        &self,
        partitions: &[i32],
        runtime: &tokio::runtime::Handle,
    ) -> Result<Vec<(i32, super::takeover::Recovered)>, ShellError> {
        let topics = &self.config.kafka.topics;
        let base = client_config(&self.config.kafka)?;
        let ctx = TakeoverContext {
            client_config: base,
            producer: &self.producer,
            runtime,
            changelog_topic: &topics.changelog,
            ordered_topic: &topics.ordered,
            member: &self.config.member,
            timeout: self.config.takeover_timeout,
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = partitions
                .iter()
                .map(|&p| {
                    let ctx = &ctx;
                    (p, scope.spawn(move || take_over(ctx, p)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(p, h)| match h.join() {
                    Ok(r) => r.map(|rec| (p, rec)).map_err(ShellError::from),
                    Err(_) => Err(ShellError::Kafka {
                        action: format!("takeover of partition {p} panicked"),
                        source: KafkaError::Canceled,
                    }),
                })
                .collect()
        })
    }

    /// Builds partition `p`'s core from what the takeover recovered; returns the raw offset to
    /// resume from.
    fn install(
        &mut self,
        p: i32,
        recovered: super::takeover::Recovered,
        consumer: &BaseConsumer<ShellContext>,
    ) -> Result<i64, ShellError> {
        let topics = &self.config.kafka.topics;
        let now = now_ms(self.origin);
        let mut core = PartitionSequencer::new(self.config.sequencer.clone());
        for (conv, entry) in &recovered.conversations {
            core.restore(
                conv,
                ConversationCheckpoint {
                    next_sequence: entry.next,
                    ended: entry.ended,
                    gap_count: entry.gaps,
                },
                now,
            );
        }
        // Resume from the index; without one, from the group's committed offset (never past an
        // unindexed output: commits only ever follow an acknowledged index write).
        let resume = match recovered.progress {
            Some(pr) => pr.raw_low_watermark,
            None => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topics.raw, p);
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(10))
                    .map_err(kafka_err(format!(
                        "reading the committed offset of raw {p}"
                    )))?;
                committed
                    .find_partition(&topics.raw, p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .unwrap_or(0)
            }
        };
        tracing::info!(
            partition = p,
            epoch = recovered.epoch,
            conversations = recovered.conversations.len(),
            scanned = recovered.scanned,
            resume,
            "partition taken over"
        );
        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        self.stats.partitions_owned.fetch_add(1, Ordering::Relaxed);
        self.partitions.insert(
            p,
            OwnedPartition {
                epoch: recovered.epoch,
                core,
                inflight: VecDeque::new(),
                sent: 0,
                acked: 0,
                ordered_acked: recovered.ordered_end,
                next_raw: resume,
                pending: VecDeque::new(),
                commit_after: VecDeque::new(),
                last_snapshot: Instant::now(),
            },
        );
        Ok(resume)
    }

    fn on_raw(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<(), ShellError> {
        let p = m.partition();
        let now = now_ms(self.origin);
        let Some(part) = self.partitions.get_mut(&p) else {
            return Ok(()); // not taken over (yet): it will be re-read after the seek
        };
        if m.offset() < part.next_raw {
            return Ok(());
        }
        part.next_raw = m.offset() + 1;
        let body = m.payload().unwrap_or_default();
        match notification::parse(body) {
            Ok(Notification::CallState(cs)) => {
                let (timestamp, _) = state_fields(cs.state);
                let payload = Arc::new(StatePayload {
                    metadata: cs.metadata.to_owned(),
                    state: cs.state.to_owned(),
                    timestamp,
                    received_at_ms: received_at(m),
                });
                let _span = tracing::debug_span!("state", conversation = %cs.conversation_space_id, partition = p).entered();
                let incoming = IncomingState {
                    sequence_number: cs.sequence_number,
                    fingerprint: cs.fingerprint,
                    is_ending: cs.is_ending(),
                    origin: origin_of(m),
                    raw_offset: Some(m.offset()),
                    payload,
                };
                part.core
                    .on_state(&cs.conversation_space_id, incoming, now, &mut self.actions);
            }
            Ok(_) => {} // ingest routes other notifications elsewhere; nothing to sequence
            Err(e) => {
                let reason = e.reason_code();
                let detail = e.to_string();
                self.dead_letter(p, m.key(), body, reason, &detail)?;
            }
        }
        self.execute(p)
    }

    fn on_backfill(&mut self, done: BackfillDone) -> Result<(), ShellError> {
        let p = done.job.partition;
        let now = now_ms(self.origin);
        let Some(part) = self.partitions.get_mut(&p) else {
            return Ok(());
        };
        if part.epoch != done.job.epoch {
            return Ok(()); // issued before a re-takeover: the new core asks again if needed
        }
        let conv = &done.job.conversation;
        let outcome = match done.fetched {
            Fetched::States(states) => BackfillOutcome::Answered(
                states
                    .into_iter()
                    .filter_map(|fs| {
                        let fingerprint = notification::state_fingerprint(&fs.state).ok()?;
                        let (timestamp, is_ending) = state_fields(&fs.state);
                        let metadata = fs.metadata.unwrap_or_else(|| synthesized_metadata(conv));
                        Some(IncomingState {
                            sequence_number: fs.sequence_number,
                            fingerprint,
                            is_ending,
                            origin: Origin::Backfill,
                            raw_offset: None,
                            payload: Arc::new(StatePayload {
                                metadata,
                                state: fs.state,
                                timestamp,
                                received_at_ms: None,
                            }),
                        })
                    })
                    .collect(),
            ),
            Fetched::NotFound => BackfillOutcome::NotFound,
            Fetched::Failed { retryable, error } => {
                tracing::warn!(conversation = %conv, partition = p, %error, "back-fill failed");
                BackfillOutcome::Failed { retryable }
            }
        };
        part.core.on_backfill(
            conv,
            done.job.from,
            done.job.to,
            outcome,
            now,
            &mut self.actions,
        );
        self.execute(p)
    }

    fn tick(&mut self) -> Result<(), ShellError> {
        let now = now_ms(self.origin);
        let due: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, part)| part.core.next_deadline().is_some_and(|d| d <= now))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            if let Some(part) = self.partitions.get_mut(&p) {
                part.core.on_tick(now, &mut self.actions);
            }
            self.execute(p)?;
        }
        Ok(())
    }

    /// Carries out the core's decisions for partition `p`, in order.
    fn execute(&mut self, p: i32) -> Result<(), ShellError> {
        let actions = std::mem::take(&mut self.actions);
        let Some(epoch) = self.partitions.get(&p).map(|x| x.epoch) else {
            return Ok(());
        };
        let ordered = self.config.kafka.topics.ordered.clone();
        for action in actions {
            match action {
                Action::Publish {
                    conversation,
                    sequence_number,
                    origin,
                    payload,
                } => {
                    let origin = match origin {
                        Origin::Webhook => RecordOrigin::Webhook,
                        Origin::WebSocket => RecordOrigin::WebSocket,
                        Origin::Backfill => RecordOrigin::Backfill,
                    };
                    let r = record::state_record(
                        &conversation,
                        sequence_number,
                        origin,
                        &payload.metadata,
                        &payload.state,
                        payload.timestamp.as_deref(),
                        epoch,
                    );
                    self.send(p, &ordered, r, true)?;
                    self.stats.states_published.fetch_add(1, Ordering::Relaxed);
                    if origin == RecordOrigin::Backfill {
                        self.stats.states_backfilled.fetch_add(1, Ordering::Relaxed);
                    }
                    metrics::counter!("callbridge_states_published_total", "origin" => origin.as_str())
                        .increment(1);
                    if let Some(at) = payload.received_at_ms {
                        let latency = epoch_ms().saturating_sub(at) as f64 / 1000.0;
                        metrics::histogram!("callbridge_end_to_end_latency_seconds")
                            .record(latency);
                    }
                }
                Action::PublishGap {
                    conversation,
                    from,
                    to,
                    reason,
                } => {
                    let cause = match reason {
                        GapReason::Gone => GapCause::Gone,
                        GapReason::BackfillFailed { .. } => GapCause::BackfillFailed,
                    };
                    tracing::warn!(conversation = %conversation, partition = p, from, to, reason = cause.as_str(), "gap record published");
                    let r = record::gap_record(&conversation, from, to, cause, epoch);
                    self.send(p, &ordered, r, true)?;
                    self.stats.gaps_published.fetch_add(1, Ordering::Relaxed);
                }
                Action::PublishCompletion {
                    conversation,
                    last_sequence,
                    gap_count,
                } => {
                    let r =
                        record::completion_record(&conversation, last_sequence, gap_count, epoch);
                    self.send(p, &ordered, r, true)?;
                    self.stats
                        .completions_published
                        .fetch_add(1, Ordering::Relaxed);
                }
                Action::RequestBackfill {
                    conversation,
                    from,
                    to,
                } => {
                    self.stats.backfill_requests.fetch_add(1, Ordering::Relaxed);
                    let _ = self.backfill_tx.send(BackfillJob {
                        partition: p,
                        epoch,
                        conversation,
                        from,
                        to,
                    });
                }
                Action::DeadLetter {
                    conversation,
                    sequence_number,
                    payload,
                    ..
                } => {
                    let body = format!(
                        "{{\"metadata\":{},\"state\":{}}}",
                        payload.metadata.get(),
                        payload.state.get()
                    );
                    let detail = format!(
                        "sequence {sequence_number} was already seen with different content"
                    );
                    tracing::warn!(conversation = %conversation, partition = p, sequence_number, "conflicting duplicate dead-lettered");
                    self.dead_letter(
                        p,
                        Some(conversation.as_bytes()),
                        body.as_bytes(),
                        "conflicting_duplicate",
                        &detail,
                    )?;
                }
                Action::Abandoned {
                    conversation,
                    next_sequence,
                } => {
                    tracing::warn!(conversation = %conversation, partition = p, next_sequence, "open conversation abandoned after sequencer.abandon_after without activity");
                }
            }
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        p: i32,
        key: Option<&[u8]>,
        body: &[u8],
        reason: &str,
        detail: &str,
    ) -> Result<(), ShellError> {
        use crate::ingest::raw_writer::headers as h;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: h::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: h::DEAD_LETTER_DETAIL,
                value: Some(detail),
            });
        let topic = self.config.kafka.topics.dead_letter.clone();
        let mut rec = FutureRecord::to(&topic).payload(body).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let fut = self.enqueue(rec, &topic)?;
        self.track(p, fut, false);
        Ok(())
    }

    fn send(
        &mut self,
        p: i32,
        topic: &str,
        r: OrderedRecord,
        is_ordered: bool,
    ) -> Result<(), ShellError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let rec = FutureRecord::to(topic)
            .partition(p)
            .key(&r.key)
            .payload(&r.value)
            .headers(headers);
        let fut = self.enqueue(rec, topic)?;
        self.track(p, fut, is_ordered);
        Ok(())
    }

    /// Enqueues a record, waiting while librdkafka's queue is full: the consumer thread stops
    /// reading raw until Kafka catches up (backpressure, not an unbounded buffer).
    fn enqueue<K, V>(
        &self,
        mut rec: FutureRecord<'_, K, V>,
        topic: &str,
    ) -> Result<DeliveryFuture, ShellError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        V: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    return Err(ShellError::Kafka {
                        action: format!("producing to {topic}"),
                        source: e,
                    })
                }
            }
        }
    }

    fn track(&mut self, p: i32, fut: DeliveryFuture, is_ordered: bool) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.sent += 1;
            part.inflight.push_back((part.sent, fut, is_ordered));
        }
    }

    /// Acknowledgements, snapshots, changelog writes and raw commits for every partition.
    fn housekeeping(
        &mut self,
        consumer: &BaseConsumer<ShellContext>,
        raw_topic: &str,
    ) -> Result<(), ShellError> {
        if self.last_metrics.elapsed() >= METRICS_INTERVAL {
            self.export_metrics();
        }
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        for p in owned {
            self.drain_acks(p, false)?;
            let due = self
                .partitions
                .get(&p)
                .is_some_and(|x| x.last_snapshot.elapsed() >= self.config.checkpoint_interval);
            if due {
                self.snapshot(p);
            }
            self.write_ready_snapshots(p)?;
            self.commit_ready(p, |t| consumer.commit(t, CommitMode::Async), raw_topic)?;
        }
        Ok(())
    }

    fn drain_acks(&mut self, p: i32, block: bool) -> Result<(), ShellError> {
        let runtime = self.runtime.clone();
        let drain_bound = self.config.takeover_timeout;
        let Some(part) = self.partitions.get_mut(&p) else {
            return Ok(());
        };
        while let Some((seq, fut, is_ordered)) = part.inflight.front_mut() {
            let result = if block {
                // Bounded: with Kafka gone, a shutdown or revoke must not hang forever; the
                // unacknowledged tail is simply re-derived by the next owner's takeover.
                match runtime.block_on(async { tokio::time::timeout(drain_bound, &mut *fut).await })
                {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ShellError::Kafka {
                            action: format!("waiting for acknowledgements of partition {p}"),
                            source: KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                            ),
                        })
                    }
                }
            } else {
                match futures_util::FutureExt::now_or_never(&mut *fut) {
                    Some(r) => r,
                    None => break,
                }
            };
            let (seq, is_ordered) = (*seq, *is_ordered);
            part.inflight.pop_front();
            match result {
                Ok(Ok(delivery)) => {
                    part.acked = seq;
                    if is_ordered {
                        part.ordered_acked = delivery.offset;
                    }
                    for snap in part.pending.iter_mut().filter(|s| s.needs_acked == seq) {
                        snap.ordered_offset = Some(part.ordered_acked);
                    }
                }
                Ok(Err((e, _))) => {
                    crate::kafka::producer::count_delivery_error(&e);
                    return Err(ShellError::Kafka {
                        action: format!("delivery of an output of partition {p}"),
                        source: e,
                    });
                }
                Err(_) => {
                    return Err(ShellError::Kafka {
                        action: format!("delivery of an output of partition {p}"),
                        source: KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(())
    }

    fn snapshot(&mut self, p: i32) {
        let Some(part) = self.partitions.get_mut(&p) else {
            return;
        };
        part.last_snapshot = Instant::now();
        let entries = part.core.take_dirty();
        let lwm = part
            .core
            .raw_low_watermark()
            .map_or(part.next_raw, |held| held.min(part.next_raw));
        let progressed = part
            .pending
            .back()
            .is_none_or(|s| s.raw_low_watermark != lwm);
        if entries.is_empty() && !progressed {
            return;
        }
        let ordered_offset = (part.acked >= part.sent).then_some(part.ordered_acked);
        part.pending.push_back(PendingSnapshot {
            needs_acked: part.sent,
            ordered_offset,
            entries,
            raw_low_watermark: lwm,
        });
    }

    fn write_ready_snapshots(&mut self, p: i32) -> Result<(), ShellError> {
        let changelog_topic = self.config.kafka.topics.changelog.clone();
        loop {
            let Some(part) = self.partitions.get_mut(&p) else {
                return Ok(());
            };
            let ready = part
                .pending
                .front()
                .is_some_and(|s| s.needs_acked <= part.acked && s.ordered_offset.is_some());
            if !ready {
                return Ok(());
            }
            let Some(snap) = part.pending.pop_front() else {
                return Ok(());
            };
            let epoch = part.epoch;
            for (conv, checkpoint) in &snap.entries {
                let value = checkpoint.map(|c| {
                    changelog::encode(&ConversationEntry {
                        next: c.next_sequence,
                        ended: c.ended,
                        gaps: c.gap_count,
                    })
                });
                let mut rec = FutureRecord::to(&changelog_topic)
                    .partition(p)
                    .key(conv.as_bytes());
                if let Some(v) = &value {
                    rec = rec.payload(v.as_slice());
                }
                let fut = self.enqueue(rec, &changelog_topic)?;
                self.track(p, fut, false);
            }
            let progress = Progress {
                epoch,
                ordered_offset: snap.ordered_offset.unwrap_or(-1),
                raw_low_watermark: snap.raw_low_watermark,
            };
            let key = changelog::progress_key(epoch);
            let value = changelog::encode(&progress);
            let rec = FutureRecord::to(&changelog_topic)
                .partition(p)
                .key(key.as_bytes())
                .payload(value.as_slice());
            let fut = self.enqueue(rec, &changelog_topic)?;
            self.track(p, fut, false);
            if let Some(part) = self.partitions.get_mut(&p) {
                let seq = part.sent;
                part.commit_after.push_back((seq, snap.raw_low_watermark));
            }
        }
    }

    fn commit_ready(
        &mut self,
        p: i32,
        commit: impl Fn(&TopicPartitionList) -> rdkafka::error::KafkaResult<()>,
        raw_topic: &str,
    ) -> Result<(), ShellError> {
        let Some(part) = self.partitions.get_mut(&p) else {
            return Ok(());
        };
        let mut offset = None;
        while part
            .commit_after
            .front()
            .is_some_and(|(seq, _)| *seq <= part.acked)
        {
            offset = part.commit_after.pop_front().map(|(_, o)| o);
        }
        if let Some(o) = offset {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(raw_topic, p, Offset::Offset(o))
                .map_err(kafka_err("building a commit"))?;
            // A refused commit only delays lag reporting; resume uses the changelog.
            if let Err(e) = commit(&tpl) {
                tracing::debug!(partition = p, error = %e, "raw offset commit failed");
            }
        }
        Ok(())
    }

    /// Gives partition `p` up cleanly: every output acknowledged, the index written and
    /// acknowledged, the raw offset committed. Runs in the revoke callback and at shutdown.
    fn release(
        &mut self,
        p: i32,
        commit: impl Fn(&TopicPartitionList) -> rdkafka::error::KafkaResult<()>,
    ) -> Result<(), ShellError> {
        if !self.partitions.contains_key(&p) {
            return Ok(());
        }
        let raw_topic = self.config.kafka.topics.raw.clone();
        self.drain_acks(p, true)?;
        self.snapshot(p);
        self.write_ready_snapshots(p)?;
        self.drain_acks(p, true)?;
        self.commit_ready(p, commit, &raw_topic)?;
        self.export_metrics();
        self.partitions.remove(&p);
        self.stats.partitions_owned.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(partition = p, "partition released");
        Ok(())
    }
}

/// Metadata for a back-filled state whose response carried none (GoTo's `items: [state]` shape).
fn synthesized_metadata(conversation: &str) -> Box<RawValue> {
    let json = serde_json::json!({ "conversationSpaceId": conversation }).to_string();
    RawValue::from_string(json).unwrap_or_else(|_| Box::<RawValue>::default())
}
