//! Acknowledgements and the resume index: outputs acknowledged in order, changelog snapshots
//! written only for acknowledged outputs, raw offsets committed after their snapshot, and the
//! clean hand-over of a partition.

use super::*;

impl RunState {
    /// Acknowledgements, snapshots, changelog writes and raw commits for every partition.
    pub(super) fn housekeeping(
        &mut self,
        committer: &super::committer::RawCommitter,
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
        }
        self.commit_owned(committer, raw_topic)
    }

    pub(super) fn drain_acks(&mut self, p: i32, block: bool) -> Result<(), ShellError> {
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
                    if is_ordered {
                        if let Err(expected) = part.ordered_landed(seq, delivery.offset) {
                            metrics::counter!("callbridge_sequencer_foreign_outputs_total")
                                .increment(1);
                            return Err(ShellError::ForeignOutput {
                                partition: p,
                                expected,
                                got: delivery.offset,
                            });
                        }
                    }
                    part.acked = seq;
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

    pub(super) fn snapshot(&mut self, p: i32) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.snapshot();
        }
    }

    pub(super) fn write_ready_snapshots(&mut self, p: i32) -> Result<(), ShellError> {
        let changelog_topic = self.config.kafka.topics.changelog.clone();
        loop {
            let Some(part) = self.partitions.get_mut(&p) else {
                return Ok(());
            };
            let Some(snap) = part.next_snapshot_to_write() else {
                return Ok(());
            };
            for (key, value) in snapshot_records(part.epoch, &snap) {
                let mut rec = FutureRecord::to(&changelog_topic)
                    .partition(p)
                    .key(key.as_bytes());
                if let Some(v) = &value {
                    rec = rec.payload(v.as_slice());
                }
                let fut = self.enqueue(rec, &changelog_topic)?;
                self.track(p, fut, false);
            }
            if let Some(part) = self.partitions.get_mut(&p) {
                let seq = part.sent;
                part.commit_after.push_back((seq, snap.raw_low_watermark));
            }
        }
    }

    /// The raw offset partition `p` may commit now (its index is acknowledged), if it moved.
    fn take_commit_offset(&mut self, p: i32) -> Option<i64> {
        let part = self.partitions.get_mut(&p)?;
        let mut offset = None;
        while part
            .commit_after
            .front()
            .is_some_and(|(seq, _)| *seq <= part.acked)
        {
            offset = part.commit_after.pop_front().map(|(_, o)| o);
        }
        offset
    }

    /// Commits every owned partition's committable raw offset in one commit, unless the previous
    /// one is still outstanding (see [`super::committer`] for why never two at once).
    pub(super) fn commit_owned(
        &mut self,
        committer: &super::committer::RawCommitter,
        raw_topic: &str,
    ) -> Result<(), ShellError> {
        if !committer.idle() {
            return Ok(());
        }
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        let mut tpl = TopicPartitionList::new();
        for p in owned {
            if let Some(o) = self.take_commit_offset(p) {
                tpl.add_partition_offset(raw_topic, p, Offset::Offset(o))
                    .map_err(kafka_err("building a commit"))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        crate::failpoint::hit(crate::failpoint::SEQUENCER_BEFORE_COMMIT);
        committer.commit(tpl);
        Ok(())
    }

    /// Commits partition `p`'s committable raw offset with `commit` (a hand-over's, synchronous).
    fn commit_partition(
        &mut self,
        p: i32,
        commit: impl Fn(&TopicPartitionList) -> rdkafka::error::KafkaResult<()>,
        raw_topic: &str,
    ) -> Result<(), ShellError> {
        if let Some(o) = self.take_commit_offset(p) {
            // After the committing thread's outstanding commit, which may carry an older offset
            // of `p` (bounded: a coordinator that does not answer must not stall a hand-over).
            if !self.commits.wait_idle(self.config.takeover_timeout) {
                tracing::debug!(
                    partition = p,
                    "an earlier raw offset commit is still unanswered"
                );
            }
            crate::failpoint::hit(crate::failpoint::SEQUENCER_BEFORE_COMMIT);
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

    /// Forgets every partition without writing anything (their assignment was lost, or the run
    /// failed and must not hand them over).
    pub(super) fn abandon_all(&mut self) {
        let n = self.partitions.len() as u64;
        self.partitions.clear();
        self.assigned.clear();
        self.pending_takeovers.clear();
        self.awaiting_fetch.clear();
        // Dropped unreleased: the consumer's close revokes what is left, and `drop_retry` would
        // write releases for a run that hands nothing over.
        self.takeover_retries.clear();
        self.stats.partitions_owned.fetch_sub(n, Ordering::Relaxed);
    }

    /// Marks the epoch of a takeover of `p` that finished but will not be installed (given up,
    /// revoked before its fetcher started, or the run stopping) as
    /// handed over, so that its fence does not make the next owner wait. Not when a rival
    /// takeover chose the same epoch: the record could stand for the rival's epoch.
    pub(super) fn release_unused(
        &self,
        p: i32,
        recovered: &crate::sequencer::shell::takeover::Recovered,
    ) {
        if recovered.rival_fence {
            return;
        }
        self.release_epoch(p, recovered.epoch, recovered.progress);
    }

    /// Drops partition `p`'s pending takeover retry (its partition revoked, or the run
    /// stopping: still ours). The epoch of a failed attempt that finished, which the retry would
    /// not have waited out (`RunState::takeover_failed`) but the next owner would, is marked
    /// released now.
    pub(super) fn drop_retry(&mut self, p: i32) {
        let Some(retry) = self.takeover_retries.remove(&p) else {
            return;
        };
        if let Some(unused) = retry.unused {
            self.release_epoch(p, unused.fence.epoch, unused.previous);
        }
    }

    /// Marks the epoch of a takeover of `p` that failed after its fence with nothing in flight
    /// ([`crate::sequencer::shell::takeover::TakeoverError::AfterFence`]) as handed over, when
    /// the run still holds `p` and will not retry it (a graceful stop); any other failure is
    /// left for the next owner to wait out.
    pub(super) fn release_failed(
        &self,
        p: i32,
        error: &crate::sequencer::shell::takeover::TakeoverError,
    ) {
        if let Some((fence, previous)) = error.unused_fence() {
            self.release_epoch(p, fence.epoch, previous);
        }
    }

    fn release_epoch(&self, p: i32, epoch: u64, previous: Option<changelog::Progress>) {
        if let Err(e) = crate::sequencer::shell::takeover::release_unused_epoch(
            &self.producer,
            &self.runtime,
            &self.config.kafka.topics.changelog,
            p,
            epoch,
            previous,
            self.config.takeover_timeout,
        ) {
            tracing::warn!(partition = p, epoch, error = %e, "marking an unused takeover's epoch released failed; the next owner will wait it out");
        }
    }

    /// The last progress record of a clean hand-over, `released`: every output is acknowledged
    /// (the caller drained), so the next owner need not wait for stragglers of this epoch.
    fn write_release_marker(&mut self, p: i32) -> Result<(), ShellError> {
        let Some(part) = self.partitions.get(&p) else {
            return Ok(());
        };
        let progress = Progress {
            epoch: part.epoch,
            ordered_offset: part.ordered_acked,
            raw_low_watermark: part.raw_low_watermark(),
            raw_read_end: Some(part.raw_read_end()),
            released: true,
        };
        self.write_progress(p, &progress)
    }

    /// Queues one progress record of partition `p` to the changelog (keyed by its epoch).
    fn write_progress(&mut self, p: i32, progress: &Progress) -> Result<(), ShellError> {
        let changelog_topic = self.config.kafka.topics.changelog.clone();
        let key = changelog::progress_key(progress.epoch);
        let value = changelog::encode(progress);
        let rec = FutureRecord::to(&changelog_topic)
            .partition(p)
            .key(key.as_bytes())
            .payload(value.as_slice());
        let fut = self.enqueue(rec, &changelog_topic)?;
        self.track(p, fut, false);
        Ok(())
    }

    /// Gives partition `p` up cleanly: every output acknowledged, the index written and
    /// acknowledged, the raw offset committed. Runs in the revoke callback and at shutdown.
    pub(super) fn release(
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
        self.write_release_marker(p)?;
        self.drain_acks(p, true)?;
        self.commit_partition(p, commit, &raw_topic)?;
        self.export_metrics();
        self.partitions.remove(&p);
        self.stats.partitions_owned.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(partition = p, "partition released");
        Ok(())
    }
}

impl OwnedPartition {
    /// Takes the acknowledgement of our output number `seq` to `ordered[p]`, which landed at
    /// `offset`. Our outputs are the only records written there after our takeover marker, one
    /// producer in send order, so each lands right after the last: anything else means a second
    /// writer (reliability.md finding 27), answered `Err` with the offset expected.
    ///
    /// Except where the broker gave no offset: tansu answers a retried batch it already has with
    /// `DuplicateSequenceNumber` and none, which librdkafka reports as success with offsets
    /// counted from -1 across the batch. Which of our outputs were in that batch is unknown (any
    /// sent so far), so their acknowledgements are not checked and move nothing; the first
    /// ordered acknowledgement of an output sent after it is taken as the new reference.
    fn ordered_landed(&mut self, seq: u64, offset: i64) -> Result<(), i64> {
        if offset < 0 {
            self.ordered_resync_after = Some(self.sent);
            return Ok(());
        }
        match self.ordered_resync_after {
            Some(after) if seq <= after => return Ok(()),
            Some(_) => self.ordered_resync_after = None,
            None if offset != self.ordered_acked + 1 => return Err(self.ordered_acked + 1),
            None => {}
        }
        self.ordered_acked = offset;
        Ok(())
    }

    /// Queues a snapshot of the dirty checkpoints and the progress, to be written once every
    /// output sent before it is acknowledged. None when nothing changed: idle, the progress
    /// record would say again what the last one said (one a second per partition would fill the
    /// changelog every takeover reads).
    fn snapshot(&mut self) {
        self.last_snapshot = Instant::now();
        let entries = self.core.take_dirty();
        let lwm = self.raw_low_watermark();
        let raw_read_end = self.raw_read_end();
        let ordered_offset = (self.acked >= self.sent).then_some(self.ordered_acked);
        let last = match self.pending.back() {
            Some(s) => s.ordered_offset.map(|o| s.mark(o)),
            None => self.last_progress,
        };
        let unchanged = ordered_offset.is_some_and(|o| {
            last == Some(ProgressMark {
                ordered_offset: o,
                raw_low_watermark: lwm,
                raw_read_end,
            })
        });
        if entries.is_empty() && unchanged {
            return;
        }
        self.pending.push_back(PendingSnapshot {
            needs_acked: self.sent,
            ordered_offset,
            entries,
            raw_low_watermark: lwm,
            raw_read_end,
        });
    }

    /// The oldest queued snapshot whose outputs are all acknowledged, to be written now, passing
    /// over those that would only repeat the last progress record (their outputs' offsets
    /// became known only at acknowledgement).
    fn next_snapshot_to_write(&mut self) -> Option<PendingSnapshot> {
        loop {
            let ready = self
                .pending
                .front()
                .is_some_and(|s| s.needs_acked <= self.acked && s.ordered_offset.is_some());
            if !ready {
                return None;
            }
            let snap = self.pending.pop_front()?;
            let mark = snap.mark(snap.ordered_offset.unwrap_or(-1));
            if snap.entries.is_empty() && self.last_progress == Some(mark) {
                continue;
            }
            crate::failpoint::hit(crate::failpoint::SEQUENCER_BEFORE_CHANGELOG);
            self.last_progress = Some(mark);
            return Some(snap);
        }
    }
}

/// What a progress record says besides its epoch. The shell writes one only when this changed
/// (or conversation checkpoints come with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProgressMark {
    ordered_offset: i64,
    raw_low_watermark: i64,
    raw_read_end: i64,
}

impl PendingSnapshot {
    fn mark(&self, ordered_offset: i64) -> ProgressMark {
        ProgressMark {
            ordered_offset,
            raw_low_watermark: self.raw_low_watermark,
            raw_read_end: self.raw_read_end,
        }
    }
}

/// The changelog records of one snapshot (key, value; `None`: a tombstone), in the order they
/// must be written: the conversations' checkpoints, then the progress record, then the
/// tombstones of evicted conversations.
///
/// Checkpoints before progress: the index must never lead the output, and the progress record
/// moves the resume point past what they index. Tombstones after it: a conversation is evicted
/// only once the raw low watermark has passed its raw records, and it is this progress record
/// that carries that watermark. Landed before it (the owner dying in between), a tombstone
/// would leave the next owner with the older progress, whose watermark lies below the
/// forgotten call's records: it would re-read them for a call nobody remembers and publish the
/// call again. The other way round is harmless: the call is restored and evicted again.
pub(super) fn snapshot_records(
    epoch: u64,
    snap: &PendingSnapshot,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut records = Vec::with_capacity(snap.entries.len() + 1);
    let mut tombstones = Vec::new();
    for (conv, checkpoint) in &snap.entries {
        let key = conv.as_text().to_string();
        match checkpoint {
            Some(c) => records.push((key, Some(changelog::encode(&ConversationEntry::from(*c))))),
            None => tombstones.push((key, None)),
        }
    }
    let progress = Progress {
        epoch,
        ordered_offset: snap.ordered_offset.unwrap_or(-1),
        raw_low_watermark: snap.raw_low_watermark,
        raw_read_end: Some(snap.raw_read_end),
        released: false,
    };
    records.push((
        changelog::progress_key(epoch),
        Some(changelog::encode(&progress)),
    ));
    records.extend(tombstones);
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequencer::ConversationId;

    fn partition() -> OwnedPartition {
        OwnedPartition {
            epoch: 3,
            core: PartitionSequencer::new(SequencerConfig::default()),
            inflight: VecDeque::new(),
            sent: 0,
            acked: 0,
            ordered_acked: 41,
            ordered_resync_after: None,
            next_raw: 100,
            pending: VecDeque::new(),
            commit_after: VecDeque::new(),
            last_snapshot: Instant::now(),
            last_progress: None,
        }
    }

    #[test]
    fn ordered_outputs_must_land_one_after_another_except_after_an_answer_without_offset() {
        let mut part = partition();
        part.sent = 3;
        // Right after the marker (41), then the next.
        assert_eq!(part.ordered_landed(1, 42), Ok(()));
        assert_eq!(part.ordered_landed(2, 43), Ok(()));
        // Someone wrote 44.
        assert_eq!(part.ordered_landed(3, 45), Err(44));
        assert_eq!(part.ordered_acked, 43);

        // A duplicate batch answered without offsets (-1, then counted on: 0, 1): outputs 4..=6
        // sent by then are not checked and move nothing; 7, sent after, is the new reference.
        let mut part = partition();
        part.sent = 6;
        assert_eq!(part.ordered_landed(4, -1), Ok(()));
        assert_eq!(part.ordered_landed(5, 0), Ok(()));
        assert_eq!(part.ordered_landed(6, 1), Ok(()));
        assert_eq!(part.ordered_acked, 41);
        part.sent = 8;
        assert_eq!(part.ordered_landed(7, 50), Ok(()));
        assert_eq!(part.ordered_landed(8, 51), Ok(()));
        assert_eq!(part.ordered_acked, 51);
        assert_eq!(part.ordered_landed(9, 53), Err(52));
    }

    #[test]
    fn tombstones_are_written_after_the_progress_record_checkpoints_before_it() {
        let cp = ConversationCheckpoint {
            next_sequence: 4,
            ended: false,
            gap_count: 0,
            abandoned: false,
        };
        let snap = PendingSnapshot {
            needs_acked: 0,
            ordered_offset: Some(41),
            entries: vec![
                (ConversationId::from("gone-1"), None),
                (ConversationId::from("open-1"), Some(cp)),
                (ConversationId::from("gone-2"), None),
                (ConversationId::from("open-2"), Some(cp)),
            ],
            raw_low_watermark: 100,
            raw_read_end: 103,
        };
        let records = snapshot_records(3, &snap);
        let keys: Vec<(&str, bool)> = records
            .iter()
            .map(|(k, v)| (k.as_str(), v.is_some()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("open-1", true),
                ("open-2", true),
                ("__progress/3", true),
                ("gone-1", false),
                ("gone-2", false),
            ]
        );
        let progress = changelog::decode(records[2].0.as_bytes(), records[2].1.as_deref());
        assert_eq!(
            progress.unwrap(),
            changelog::ChangelogRecord::Progress(Progress {
                epoch: 3,
                ordered_offset: 41,
                raw_low_watermark: 100,
                raw_read_end: Some(103),
                released: false,
            })
        );
    }

    /// An abandoned call's record says so, and a new owner, restoring it as `install` does,
    /// sets a state at or above where it stopped aside instead of publishing it.
    #[test]
    fn an_abandoned_calls_record_restores_it_abandoned() {
        let cp = ConversationCheckpoint {
            next_sequence: 4,
            ended: false,
            gap_count: 1,
            abandoned: true,
        };
        let snap = PendingSnapshot {
            needs_acked: 0,
            ordered_offset: Some(41),
            entries: vec![(ConversationId::from("quiet"), Some(cp))],
            raw_low_watermark: 100,
            raw_read_end: 103,
        };
        let records = snapshot_records(3, &snap);
        let (key, value) = &records[0];
        let Ok(changelog::ChangelogRecord::Conversation(id, entry)) =
            changelog::decode(key.as_bytes(), value.as_deref())
        else {
            panic!("not a conversation record: {records:?}");
        };
        assert_eq!((id.as_str(), entry.abandoned), ("quiet", true));
        let mut core: PartitionSequencer<()> = PartitionSequencer::new(SequencerConfig::default());
        let now = Timestamp(10_000);
        core.restore_since(&id, ConversationCheckpoint::from(entry), now, now);
        core.restored_raw_end(103);
        let mut out = Vec::new();
        let state = |sequence_number| crate::sequencer::IncomingState {
            sequence_number,
            fingerprint: sequence_number,
            is_ending: false,
            origin: Origin::Webhook,
            raw_offset: Some(103),
            payload: (),
        };
        core.on_state(&id, state(3), now, &mut out);
        core.on_state(&id, state(4), now, &mut out);
        assert!(
            matches!(
                &out[..],
                [crate::sequencer::Action::DeadLetter {
                    sequence_number: 4,
                    reason: crate::sequencer::DeadLetterReason::AfterAbandonment,
                    ..
                }]
            ),
            "{out:?}"
        );
    }

    /// Drains what would be written now (every output acknowledged), as `write_ready_snapshots`.
    fn written(part: &mut OwnedPartition) -> usize {
        std::iter::from_fn(|| part.next_snapshot_to_write()).count()
    }

    #[test]
    fn an_idle_partition_writes_no_progress_records() {
        let mut part = partition();
        part.snapshot();
        assert_eq!(written(&mut part), 1, "the first progress record");
        for _ in 0..5 {
            part.snapshot();
            assert!(part.pending.is_empty(), "idle, and a snapshot was queued");
            assert_eq!(written(&mut part), 0);
        }
        // Raw read further: the resume point moved.
        part.next_raw = 101;
        part.snapshot();
        assert_eq!(written(&mut part), 1);
        part.snapshot();
        assert_eq!(written(&mut part), 0);
        // An output acknowledged: the ordered offset moved.
        part.ordered_acked = 42;
        part.snapshot();
        assert_eq!(written(&mut part), 1);
        // A changed checkpoint is written even with the progress unchanged.
        let mut out = Vec::new();
        part.core.on_state(
            "c",
            crate::sequencer::IncomingState {
                sequence_number: 1,
                fingerprint: 1,
                is_ending: false,
                origin: Origin::Webhook,
                raw_offset: None,
                payload: Arc::new(StatePayload::render(
                    "c",
                    1,
                    Origin::Webhook,
                    (
                        &RawValue::from_string("{}".into()).unwrap(),
                        &RawValue::from_string("{}".into()).unwrap(),
                    ),
                    None,
                    None,
                )),
            },
            Timestamp(0),
            &mut out,
        );
        part.snapshot();
        assert_eq!(written(&mut part), 1);
        part.snapshot();
        assert_eq!(written(&mut part), 0);
    }

    #[test]
    fn a_snapshot_whose_outputs_moved_nothing_is_not_written() {
        // Queued while a changelog record was in flight (its ordered offset unknown until the
        // acknowledgement), it turns out to say what the last one said.
        let mut part = partition();
        part.snapshot();
        assert_eq!(written(&mut part), 1);
        part.sent = 1; // the progress record itself, in flight
        part.snapshot();
        assert_eq!(part.pending.len(), 1);
        part.acked = 1;
        if let Some(s) = part.pending.front_mut() {
            s.ordered_offset = Some(part.ordered_acked);
        }
        assert_eq!(written(&mut part), 0);
    }
}
