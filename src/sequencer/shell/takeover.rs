//! Taking over a raw partition: rebuild what the previous owner knew from Kafka alone.
//!
//! 1. Read `changelog[p]` to its end: conversation checkpoints, the newest progress record, the
//!    highest epoch seen.
//! 2. Append `__fence/{epoch+1}` with a random token and keep reading until that very record comes
//!    back: a stale read (a broker or client lagging behind the log) would otherwise make us resume
//!    from an old index. If it does not come back in time, the takeover is refused, not guessed.
//! 3. Append a takeover marker to `ordered[p]` and scan from just after the progress record's
//!    offset up to the marker, moving every conversation past the states, gaps and completions
//!    found there: the output may be ahead of the index (the previous owner died between the two
//!    writes), never behind.
//!    An ENDING found without its completion record after it is reported, so the new owner
//!    writes the completion the previous one did not live to write.
//!
//! The result is a plain map the core is restored from; nothing here decides about ordering.
//!
//! A takeover whose partition is revoked before it finishes (it moves to a replica that joined,
//! a run ends) is told so through [`TakeoverContext::cancelled`]: it gives up between
//! steps and during the wait for an unclean owner's stragglers, and never writes its fence then,
//! so a discarded takeover neither outlives its run by that wait nor leaves an epoch nobody owns.
//! Given up after its fence, it still writes no takeover marker: the marker would claim an
//! ordered partition that is no longer ours, and could land after the next owner's. Given up by
//! a graceful stop (which still holds the assignment and waits for it before leaving the group),
//! it reads its fence back and then marks its epoch `released` with the previous owner's resume
//! point ([`release_unused_epoch`]): the epoch wrote nothing the next owner must wait for, and
//! left unreleased it made the next owner wait out an owner that never wrote an output (a
//! replica stopped while taking over, then every replica after it that was stopped during that
//! wait). Given up because the partition was revoked or lost, it leaves the epoch unreleased:
//! see [`TakeoverContext::release_if_given_up`].

use super::changelog::{self, ChangelogRecord, ConversationEntry, Fence, Progress};
use crate::publish::record::{self, headers as out_headers};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a waiting takeover looks whether it was given up.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// Why a takeover failed (the partition is then not processed; the shell retries).
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Kafka failed while reading or writing.
    #[error("takeover of partition {partition}: {action}: {source}")]
    Kafka {
        /// Partition being taken over.
        partition: i32,
        /// What was being done.
        action: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Our own fence did not come back: the read may be stale.
    #[error("takeover of partition {partition}: fence epoch {epoch} not read back within {waited:?}; refusing to resume from a possibly stale changelog")]
    FenceNotSeen {
        /// Partition.
        partition: i32,
        /// Our epoch.
        epoch: u64,
        /// How long we waited.
        waited: Duration,
    },
    /// The partition was revoked (or the run ended) before the takeover finished: no fence was
    /// written, or the fence's epoch was marked released ([`release_unused_epoch`]).
    #[error("takeover of partition {partition} given up: the partition is no longer ours")]
    Cancelled {
        /// Partition.
        partition: i32,
    },
    /// A fence of another takeover with our epoch or a later one, or a progress record of such
    /// an epoch, landed before our fence: another member was taking the partition over at the
    /// same time (the group gave it to both). Installing would make two writers of the output;
    /// the retry reads the changelog again and waits out the newest epoch's owner unless that
    /// owner has handed over.
    #[error("takeover of partition {partition}: another takeover fenced epoch {epoch} or a later one at the same time; taken over again after a backoff, waiting for that owner")]
    Rival {
        /// Partition.
        partition: i32,
        /// Our epoch.
        epoch: u64,
    },
    /// The takeover failed after its fence was read back with no rival before it, at a point
    /// where nothing else of its epoch can still land: reading the output's watermarks, or
    /// scanning the output after its marker was acknowledged. The epoch wrote nothing a later
    /// owner must wait for, so the retry is told the fence is its run's own
    /// ([`TakeoverContext::own_unused_fence`]) and a revoke or stop before then marks it
    /// released. Not a failed write of the marker (the marker may still land), nor a failed
    /// read-back: a rival's fence of the same epoch may have come before ours unseen, and the
    /// changelog's compaction, which keeps one fence per epoch, could then hide it from the
    /// retry.
    #[error("{source} (after fencing epoch {}, which wrote nothing to wait for)", fence.epoch)]
    AfterFence {
        /// The fence this takeover wrote.
        fence: OwnUnusedFence,
        /// The newest progress record before the fence, which a release repeats (`None`: a
        /// release writes nothing, see [`release_unused_epoch`]).
        previous: Option<Progress>,
        /// What failed.
        #[source]
        source: Box<TakeoverError>,
    },
    /// A changelog record could not be decoded.
    #[error("takeover of partition {partition}: {source}")]
    Changelog {
        /// Partition.
        partition: i32,
        /// The decode error.
        #[source]
        source: changelog::ChangelogError,
    },
}

/// What the new owner knows after a takeover.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Epoch of this owner.
    pub epoch: u64,
    /// Conversation resume points (checkpoint merged with the ordered-topic scan).
    pub conversations: HashMap<String, ConversationEntry>,
    /// When each conversation's checkpoint was written (its changelog record's timestamp, ms
    /// since the Unix epoch), where the broker gave one: the abandon and retention clocks go on
    /// from there.
    pub written_at_ms: HashMap<String, u64>,
    /// Newest progress record, if any.
    pub progress: Option<Progress>,
    /// Offset of the last record in `ordered[p]` (-1 when empty).
    pub ordered_end: i64,
    /// Records of the ordered topic found beyond the index (how far the output led).
    pub scanned: u64,
    /// First offset of `ordered[p]` the scan read from.
    pub scan_from: i64,
    /// High watermark of `ordered[p]` as the broker reported it before the scan.
    pub scan_high_watermark: i64,
    /// The previous owner did not hand over cleanly (crash, lost session), so the takeover
    /// waited `unclean_wait` for its stragglers.
    pub waited_for_previous_owner: bool,
    /// Conversations the scan of the ordered topic moved past their changelog entry: their new
    /// resume point is not in the changelog yet.
    pub raised_by_scan: std::collections::HashSet<String>,
    /// A fence or progress record of another takeover with an epoch at least ours was read back
    /// before our fence: two takeovers that each read the changelog before the other's fence
    /// landed chose the same epoch. Such an epoch is never marked released on giving up (the
    /// record could stand for the other takeover's epoch and spare the next owner a wait it
    /// needs).
    pub rival_fence: bool,
    /// The token of our fence (with `epoch`), read back.
    pub fence_token: String,
    /// Conversations whose ENDING state (the sequence given) the scan found with no completion
    /// record after it: the previous owner died between the two writes, and the new owner must
    /// write the completion (nothing else would).
    pub ending_without_completion: HashMap<String, u64>,
}

/// Topics and clients a takeover needs.
pub struct TakeoverContext<'a> {
    /// Connection settings for the reading consumers.
    pub client_config: ClientConfig,
    /// Producer for the fence.
    pub producer: &'a FutureProducer,
    /// Runtime to wait on the fence's delivery.
    pub runtime: &'a tokio::runtime::Handle,
    /// Changelog topic.
    pub changelog_topic: &'a str,
    /// Ordered topic.
    pub ordered_topic: &'a str,
    /// Identity written into the fence.
    pub member: &'a str,
    /// Bound on each read phase.
    pub timeout: Duration,
    /// How long to wait before fencing when the previous owner did not hand over cleanly: its
    /// session timeout (how long it may go on believing it owns the partition) plus its output
    /// timeout (how long what it queued may take to land or fail).
    pub unclean_wait: Duration,
    /// Set when the takeover's result is no longer wanted (its partition revoked, the run over).
    pub cancelled: &'a AtomicBool,
    /// Set by a graceful stop before it gives this takeover up: the run still holds the
    /// partition's assignment and waits for this takeover before it leaves the group, so nobody
    /// else can be taking the partition over, and a takeover given up after its fence marks its
    /// epoch released. Given up because the partition was revoked or lost, it must not: the
    /// next owner may have read the changelog before our fence landed and chosen our epoch too,
    /// and a `released` record for it would spare that owner's successor the wait for its
    /// stragglers. That next owner waits this epoch out instead (session timeout + 5 s).
    pub release_if_given_up: &'a AtomicBool,
    /// A fence of this run's for the partition that wrote nothing: an earlier takeover that
    /// finished but was never installed (what its installation read from Kafka failed), or that
    /// failed after its fence with nothing in flight ([`TakeoverError::AfterFence`]). When it
    /// is still the changelog's last word (no other fence of its epoch, nothing of a later
    /// epoch, no progress record of its epoch), this takeover does not wait it out: its owner is
    /// this very run, which wrote nothing under it.
    pub own_unused_fence: Option<&'a OwnUnusedFence>,
}

/// See [`TakeoverContext::own_unused_fence`].
#[derive(Clone, Debug)]
pub struct OwnUnusedFence {
    /// Its epoch.
    pub epoch: u64,
    /// Its token, which tells it from a rival's fence of the same epoch.
    pub token: String,
}

impl TakeoverError {
    /// Marks a failure after this takeover's fence that leaves nothing of its epoch in flight
    /// (see [`TakeoverError::AfterFence`]).
    fn after_fence(self, fence: &OwnUnusedFence, previous: Option<Progress>) -> TakeoverError {
        TakeoverError::AfterFence {
            fence: fence.clone(),
            previous,
            source: Box::new(self),
        }
    }

    /// The fence a failed takeover wrote and left unused, with the progress record a release
    /// of it repeats, when nothing else of its epoch can still land.
    pub fn unused_fence(&self) -> Option<(&OwnUnusedFence, Option<Progress>)> {
        match self {
            TakeoverError::AfterFence {
                fence, previous, ..
            } => Some((fence, *previous)),
            _ => None,
        }
    }
}

impl TakeoverContext<'_> {
    fn check_cancelled(&self, p: i32) -> Result<(), TakeoverError> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(TakeoverError::Cancelled { partition: p });
        }
        Ok(())
    }

    /// Sleeps `wait`, in slices, unless cancelled first.
    fn wait_unless_cancelled(&self, p: i32, wait: Duration) -> Result<(), TakeoverError> {
        let until = Instant::now() + wait;
        loop {
            self.check_cancelled(p)?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(CANCEL_CHECK));
        }
    }
}

/// Runs steps 1–3 for partition `p`.
pub fn take_over(ctx: &TakeoverContext<'_>, p: i32) -> Result<Recovered, TakeoverError> {
    ctx.check_cancelled(p)?;
    let kafka = |action: &'static str| {
        move |source| TakeoverError::Kafka {
            partition: p,
            action,
            source,
        }
    };
    let reader: BaseConsumer = reader_config(&ctx.client_config)
        .create()
        .map_err(kafka("creating the changelog reader"))?;

    // 1. The changelog as it stands.
    let mut rec = Recovered {
        ordered_end: -1,
        ..Recovered::default()
    };
    let mut max_epoch = 0u64;
    let (_, high) = reader
        .fetch_watermarks(ctx.changelog_topic, p, ctx.timeout)
        .map_err(kafka("reading changelog watermarks"))?;
    // Whether this run's unused fence is seen, and nothing but it at its epoch or later.
    let (mut own_seen, mut own_alone) = (false, true);
    let mut next_offset = read_range(
        &reader,
        ctx.changelog_topic,
        p,
        Offset::Beginning,
        high,
        ctx.timeout,
        None,
        |m| {
            let record = apply_changelog(&mut rec, &mut max_epoch, m, p)?;
            if let Some(own) = ctx.own_unused_fence {
                match &record {
                    ChangelogRecord::Fence(f) if f.epoch == own.epoch && f.token == own.token => {
                        own_seen = true
                    }
                    ChangelogRecord::Fence(f) if f.epoch >= own.epoch => own_alone = false,
                    ChangelogRecord::Progress(pr) if pr.epoch >= own.epoch => own_alone = false,
                    _ => {}
                }
            }
            Ok(())
        },
    )
    .map_err(|e| e.into_takeover(p, "reading the changelog"))?;

    // 2. Fence: our epoch, read back. A previous owner that did not hand over cleanly may still
    //    have outputs on their way (queued before it learnt it lost the partition); they land or
    //    fail within `unclean_wait`, and only after that is the scan of the output complete.
    //    Everything written to the changelog meanwhile is read with the fence below.
    let own_unused = own_seen
        && own_alone
        && ctx
            .own_unused_fence
            .is_some_and(|own| own.epoch == max_epoch);
    if own_unused {
        tracing::info!(
            partition = p,
            previous_epoch = max_epoch,
            "the last fence is this run's own, of a takeover never installed; not waiting for it"
        );
    }
    let clean = max_epoch == 0
        || own_unused
        || rec
            .progress
            .is_some_and(|pr| pr.epoch == max_epoch && pr.released);
    if !clean {
        tracing::warn!(
            partition = p,
            previous_epoch = max_epoch,
            wait = ?ctx.unclean_wait,
            "previous owner did not hand over cleanly; waiting for its in-flight outputs"
        );
        metrics::counter!("callbridge_takeover_unclean_total").increment(1);
        ctx.wait_unless_cancelled(p, ctx.unclean_wait)?;
        rec.waited_for_previous_owner = true;
    }
    ctx.check_cancelled(p)?;
    let epoch = max_epoch + 1;
    let token = uuid::Uuid::new_v4().to_string();
    let fence = Fence {
        epoch,
        member: ctx.member.to_string(),
        token: token.clone(),
    };
    let key = changelog::fence_key(epoch);
    let value = changelog::encode(&fence);
    let delivery = ctx
        .runtime
        .block_on(
            ctx.producer.send(
                FutureRecord::to(ctx.changelog_topic)
                    .partition(p)
                    .key(&key)
                    .payload(&value),
                ctx.timeout,
            ),
        )
        .map_err(|(e, _)| TakeoverError::Kafka {
            partition: p,
            action: "writing the fence",
            source: e,
        })?;
    let fence_offset = delivery.offset;
    let started = Instant::now();
    let mut seen = false;
    // Read back even when given up meanwhile: the release of a given-up epoch carries the index
    // as it stands up to the fence, and a stale one could resume raw below evicted calls.
    while !seen {
        if started.elapsed() > ctx.timeout {
            return Err(TakeoverError::FenceNotSeen {
                partition: p,
                epoch,
                waited: started.elapsed(),
            });
        }
        next_offset = read_range(
            &reader,
            ctx.changelog_topic,
            p,
            Offset::Offset(next_offset),
            fence_offset + 1,
            ctx.timeout,
            None,
            |m| {
                match apply_changelog(&mut rec, &mut max_epoch, m, p)? {
                    ChangelogRecord::Fence(f) if f.token == token => seen = true,
                    // Another takeover chose our epoch (each read the changelog before the
                    // other's fence landed), or one went past it.
                    ChangelogRecord::Fence(f) if f.epoch >= epoch => rec.rival_fence = true,
                    ChangelogRecord::Progress(pr) if pr.epoch >= epoch => rec.rival_fence = true,
                    _ => {}
                }
                Ok(())
            },
        )
        .map_err(|e| e.into_takeover(p, "reading the fence back"))?;
    }
    rec.epoch = epoch;
    rec.fence_token = token;
    if ctx.cancelled.load(Ordering::SeqCst) {
        return Err(give_up_fenced(ctx, p, &rec));
    }
    // Two members taking the partition over at once: the group gave it to both (tansu has done
    // so around a broker restart, reliability.md finding 27). The one whose fence landed first
    // sees no rival and goes on; this one must not install a second writer of `ordered[p]` under
    // an epoch the changelog has already passed. It writes nothing more, and its retry reads
    // the changelog again and waits out the newest epoch's owner unless that one handed over.
    if rec.rival_fence {
        return Err(TakeoverError::Rival {
            partition: p,
            epoch: rec.epoch,
        });
    }
    // From here on, a failure leaves nothing of this epoch in flight but a marker whose write
    // failed (`TakeoverError::AfterFence`).
    let fenced = OwnUnusedFence {
        epoch,
        token: rec.fence_token.clone(),
    };

    // 3. The output may be ahead of the index. Its end is where our marker lands: the broker's
    //    high watermark cannot be trusted for it (tansu 0.6 reports one that lags acknowledged
    //    writes by whole batches), and reading on until the partition is quiet bets on how long
    //    a fetch may take (a scan that ends early publishes the outputs it missed twice). Nothing
    //    but us writes `ordered[p]` now (the previous owner handed over or was waited out), so
    //    every output lies before the marker, and reading until the marker comes back reads all.
    crate::failpoint::hit(crate::failpoint::SEQUENCER_DURING_TAKEOVER_SCAN);
    let start = rec.progress.map(|pr| pr.ordered_offset + 1).unwrap_or(0);
    let (low, high) = reader
        .fetch_watermarks(ctx.ordered_topic, p, ctx.timeout)
        .map_err(|e| kafka("reading ordered watermarks")(e).after_fence(&fenced, rec.progress))?;
    // The last moment to give up before the marker: a marker written for a partition already
    // revoked could land after the next owner's marker, with a lower epoch (a false zombie to an
    // audit), and this owner would write nothing else there. (The fence stays, its epoch marked
    // released: it wrote nothing.)
    if ctx.cancelled.load(Ordering::SeqCst) {
        return Err(give_up_fenced(ctx, p, &rec));
    }
    let (value, marker_headers) = record::takeover_record(p, epoch);
    let marker = ctx
        .runtime
        .block_on(
            ctx.producer.send(
                FutureRecord::<(), _>::to(ctx.ordered_topic)
                    .partition(p)
                    .payload(&value)
                    .headers(crate::kafka::producer::owned_headers(&marker_headers)),
                ctx.timeout,
            ),
        )
        .map_err(|(e, _)| TakeoverError::Kafka {
            partition: p,
            action: "writing the takeover marker",
            source: e,
        })?
        .offset;
    let from = start.max(low);
    let convs = &mut rec.conversations;
    let raised = &mut rec.raised_by_scan;
    let endings = &mut rec.ending_without_completion;
    let mut scanned = 0u64;
    read_range(
        &reader,
        ctx.ordered_topic,
        p,
        Offset::Offset(from),
        marker + 1,
        ctx.timeout,
        Some(ctx.cancelled),
        |m| {
            if m.offset() >= marker {
                return Ok(());
            }
            scanned += 1;
            if let Some(key) = apply_output(convs, endings, m) {
                raised.insert(key.to_string());
            }
            Ok(())
        },
    )
    .map_err(|e| match e {
        // Given up during the scan: the marker is acknowledged, the epoch wrote nothing else.
        ReadError::Cancelled => give_up_fenced(ctx, p, &rec),
        // The marker is acknowledged: nothing of this epoch is in flight.
        e => e
            .into_takeover(p, "scanning the ordered topic")
            .after_fence(&fenced, rec.progress),
    })?;
    rec.scanned = scanned;
    rec.scan_from = from;
    rec.scan_high_watermark = high;
    rec.ordered_end = marker;
    // Given up during the scan: nobody installs this result (the shell releases one that slips
    // past this check, `RunState::release_unused`).
    if ctx.cancelled.load(Ordering::SeqCst) {
        return Err(give_up_fenced(ctx, p, &rec));
    }
    Ok(rec)
}

/// Ends a takeover given up after its fence: marks its epoch released when a graceful stop gave
/// it up and no rival chose the same epoch (best effort: unmarked, the next owner only waits
/// longer), and says it was given up.
fn give_up_fenced(ctx: &TakeoverContext<'_>, p: i32, rec: &Recovered) -> TakeoverError {
    if !ctx.release_if_given_up.load(Ordering::SeqCst) || rec.rival_fence {
        tracing::info!(
            partition = p,
            epoch = rec.epoch,
            rival = rec.rival_fence,
            "takeover given up after its fence; its epoch is left for the next owner to wait out"
        );
        return TakeoverError::Cancelled { partition: p };
    }
    if let Err(e) = release_unused_epoch(
        ctx.producer,
        ctx.runtime,
        ctx.changelog_topic,
        p,
        rec.epoch,
        rec.progress,
        ctx.timeout,
    ) {
        tracing::warn!(partition = p, epoch = rec.epoch, error = %e, "marking a given-up takeover's epoch released failed; the next owner will wait it out");
    }
    TakeoverError::Cancelled { partition: p }
}

/// Marks `epoch` of partition `p`, fenced by a takeover whose result is not used (given up, or
/// its run stopped before installing it), as handed over: a `released` progress record saying
/// what `previous` (the newest progress record before the fence) said. That epoch wrote nothing
/// but its fence and perhaps its keyless takeover marker, both acknowledged before this is
/// called, so the next owner need not wait for it, and resumes exactly where it would have
/// resumed from `previous` (the same raw offset, the same ordered scan). Without a previous
/// progress record nothing is written: the next owner resumes raw from the group's committed
/// offset then, which a progress record here would override, so it waits this epoch out instead.
pub fn release_unused_epoch(
    producer: &FutureProducer,
    runtime: &tokio::runtime::Handle,
    changelog_topic: &str,
    p: i32,
    epoch: u64,
    previous: Option<Progress>,
    timeout: Duration,
) -> Result<(), rdkafka::error::KafkaError> {
    let Some(previous) = previous else {
        return Ok(());
    };
    let release = Progress {
        epoch,
        released: true,
        ..previous
    };
    let key = changelog::progress_key(epoch);
    let value = changelog::encode(&release);
    // Bounded here: `send`'s timeout bounds only the wait for room in the queue, and the run's
    // output producer never times a delivery out (`message.timeout.ms` 0). Given up, the record
    // may still land; it says nothing untrue (the epoch wrote nothing).
    let record = FutureRecord::to(changelog_topic)
        .partition(p)
        .key(&key)
        .payload(&value);
    // The timer is made inside the runtime (this thread is not one of its own).
    runtime
        .block_on(async { tokio::time::timeout(timeout, producer.send(record, timeout)).await })
        .map_err(|_| {
            rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
            )
        })?
        .map_err(|(e, _)| e)?;
    tracing::info!(partition = p, epoch, "given-up takeover's epoch released");
    Ok(())
}

/// `fetch.wait.max.ms` of the takeover's reader unless `kafka.librdkafka` sets it: the reader
/// polls to an end it already knows, and waiting for more data only slows it.
const READER_FETCH_WAIT_MS: &str = "10";

/// The takeover reader's settings on top of `base` (connection settings and `kafka.librdkafka`).
/// What the reads depend on is owned (refused in `kafka.librdkafka`, `kafka::config`): its own
/// group, no commits, and no partition-EOF events, which [`read_range`] would take for a failed
/// read. What only tunes it is a default the operator's value overrides.
fn reader_config(base: &ClientConfig) -> ClientConfig {
    use crate::kafka::config::{set_default, set_owned};
    let mut c = base.clone();
    set_owned(
        &mut c,
        "group.id",
        format!("callbridge-takeover-{}", uuid::Uuid::new_v4()),
    );
    set_owned(&mut c, "enable.auto.commit", "false");
    set_owned(&mut c, "enable.partition.eof", "false");
    set_default(&mut c, "fetch.wait.max.ms", READER_FETCH_WAIT_MS);
    c
}

enum ReadError {
    Kafka(rdkafka::error::KafkaError),
    Timeout,
    Changelog(changelog::ChangelogError),
    /// The takeover was given up during the read (only reads passed a cancel flag).
    Cancelled,
}

impl ReadError {
    fn into_takeover(self, p: i32, action: &'static str) -> TakeoverError {
        match self {
            ReadError::Kafka(source) => TakeoverError::Kafka {
                partition: p,
                action,
                source,
            },
            ReadError::Timeout => TakeoverError::Kafka {
                partition: p,
                action,
                source: rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
                ),
            },
            ReadError::Changelog(source) => TakeoverError::Changelog {
                partition: p,
                source,
            },
            ReadError::Cancelled => TakeoverError::Cancelled { partition: p },
        }
    }
}

/// Reads `[from, until)` of one partition (records of any other topic or partition still
/// queued from an earlier assignment of the reader are skipped); returns the offset after the
/// last record read. Records beyond `until` that arrive in the same batch are passed on too. A
/// stale `until` (a lagging high watermark) only ends the read early: callers read on to an
/// offset of their own write (the fence, the marker) before trusting what they read.
// Each argument is a different bound of the one read; a struct for them would only rename them.
#[allow(clippy::too_many_arguments)]
fn read_range(
    reader: &BaseConsumer,
    topic: &str,
    p: i32,
    from: Offset,
    until: i64,
    timeout: Duration,
    cancelled: Option<&AtomicBool>,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), changelog::ChangelogError>,
) -> Result<i64, ReadError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, from)
        .map_err(ReadError::Kafka)?;
    reader.assign(&tpl).map_err(ReadError::Kafka)?;
    let mut next = match from {
        Offset::Offset(o) => o,
        _ => 0,
    };
    let deadline = Instant::now() + timeout;
    while next < until {
        if cancelled.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(ReadError::Cancelled);
        }
        match reader.poll(Duration::from_millis(50)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == p => {
                next = next.max(m.offset() + 1);
                f(&m).map_err(ReadError::Changelog)?;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ReadError::Kafka(e)),
            None if Instant::now() > deadline => return Err(ReadError::Timeout),
            None => {}
        }
    }
    Ok(next)
}

fn apply_changelog(
    rec: &mut Recovered,
    max_epoch: &mut u64,
    m: &rdkafka::message::BorrowedMessage<'_>,
    _p: i32,
) -> Result<ChangelogRecord, changelog::ChangelogError> {
    let record = changelog::decode(m.key().unwrap_or_default(), m.payload())?;
    match &record {
        ChangelogRecord::Conversation(id, entry) => {
            rec.conversations.insert(id.clone(), *entry);
            match m
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
            {
                Some(ms) => rec.written_at_ms.insert(id.clone(), ms),
                None => rec.written_at_ms.remove(id),
            };
        }
        ChangelogRecord::Tombstone(id) => {
            rec.conversations.remove(id);
            rec.written_at_ms.remove(id);
        }
        ChangelogRecord::Progress(p) => {
            *max_epoch = (*max_epoch).max(p.epoch);
            if rec.progress.is_none_or(|old| p.epoch >= old.epoch) {
                rec.progress = Some(*p);
            }
        }
        ChangelogRecord::Fence(f) => *max_epoch = (*max_epoch).max(f.epoch),
        ChangelogRecord::Housekeeping => {}
    }
    Ok(record)
}

fn header<'m>(m: &'m rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'m str> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Moves a conversation past one ordered-topic record (read from its headers; a state's value
/// only to learn whether it is ENDING) and keeps `endings` to the ENDING states not yet followed
/// by their completion record. Returns the record's key when it counted: a record without one
/// of our kinds, or a state or gap ending at sequence 0 or `u64::MAX` (only a corrupt or foreign
/// record carries one: the sequencer publishes neither), moves nothing and opens no
/// conversation, as `PartitionSequencer::observe_published` does for the core.
fn apply_output<'c, 'm>(
    convs: &'c mut HashMap<String, ConversationEntry>,
    endings: &mut HashMap<String, u64>,
    m: &'m rdkafka::message::BorrowedMessage<'_>,
) -> Option<&'m str> {
    let key = m.key().and_then(|k| std::str::from_utf8(k).ok())?;
    let seq = header(m, out_headers::SEQUENCE).and_then(|s| s.parse::<u64>().ok())?;
    // The sequence after `last`, when `last` is one the sequencer can have published.
    let after = |last: u64| last.checked_add(1).filter(|_| last != 0);
    let entry = |convs: &'c mut HashMap<String, ConversationEntry>| {
        convs.entry(key.to_string()).or_insert(ConversationEntry {
            next: 1,
            ended: false,
            gaps: 0,
            abandoned: false,
        })
    };
    match header(m, out_headers::KIND) {
        Some("state") => {
            let next = after(seq)?;
            let entry = entry(convs);
            if next > entry.next {
                // Published past where the checkpoint says the call was abandoned: an owner
                // that did not know the flag (an older binary, during a rolling upgrade)
                // restored it open and went on. The output is the truth: it is open.
                entry.abandoned = false;
                entry.next = next;
            }
            if m.payload().is_some_and(record::state_record_is_ending) {
                endings.insert(key.to_string(), seq);
            }
        }
        Some("gap") => {
            let to = header(m, out_headers::SEQUENCE_END)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(seq);
            let next = after(to)?;
            let entry = entry(convs);
            if next > entry.next {
                entry.gaps += 1;
                entry.next = next;
                entry.abandoned = false;
            }
        }
        Some("completion") => {
            endings.remove(key);
            let entry = entry(convs);
            // The output is the truth: a call it shows completed was not abandoned.
            entry.ended = true;
            entry.abandoned = false;
            entry.next = entry.next.max(seq.saturating_add(1));
        }
        _ => return None,
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::KafkaConfig;

    fn reader_for(librdkafka: &[(&str, &str)]) -> ClientConfig {
        let mut kafka = KafkaConfig::default();
        for (k, v) in librdkafka {
            kafka.librdkafka.insert(k.to_string(), v.to_string());
        }
        reader_config(&kafka.client_config().expect("client config"))
    }

    /// `kafka.librdkafka` tunes the takeover's reader like every other client: the reader's own
    /// `fetch.wait.max.ms` is only a default.
    #[test]
    fn the_operators_fetch_wait_wins_over_the_readers_default() {
        assert_eq!(
            reader_for(&[]).get("fetch.wait.max.ms"),
            Some(READER_FETCH_WAIT_MS)
        );
        assert_eq!(
            reader_for(&[("fetch.wait.max.ms", "250")]).get("fetch.wait.max.ms"),
            Some("250")
        );
    }

    /// What the reads depend on cannot be passed through `kafka.librdkafka`: it is refused at
    /// load, naming the key, so the reader's value is never a silent override.
    #[test]
    fn what_the_reader_depends_on_is_refused_in_librdkafka() {
        let reader = reader_for(&[]);
        assert_eq!(reader.get("enable.partition.eof"), Some("false"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        for property in ["group.id", "enable.auto.commit", "enable.partition.eof"] {
            let mut kafka = KafkaConfig::default();
            kafka.librdkafka.insert(property.into(), "true".into());
            let mut report = crate::config::InvalidReport::default();
            kafka.validate(&mut report);
            let problems: Vec<String> = report.into_iter().map(|i| i.to_string()).collect();
            assert!(
                problems.len() == 1
                    && problems[0].starts_with(&format!("kafka.librdkafka.\"{property}\"")),
                "{property}: {problems:?}"
            );
        }
    }
}
