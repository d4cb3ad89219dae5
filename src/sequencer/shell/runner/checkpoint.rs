//! Acknowledgements and the resume index: outputs acknowledged in order, changelog snapshots
//! written only for acknowledged outputs, raw offsets committed after their snapshot, and the
//! clean hand-over of a partition.

use super::*;

impl RunState {
    /// Acknowledgements, snapshots, changelog writes and raw commits for every partition.
    pub(super) fn housekeeping(
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

    pub(super) fn snapshot(&mut self, p: i32) {
        let Some(part) = self.partitions.get_mut(&p) else {
            return;
        };
        part.last_snapshot = Instant::now();
        let entries = part.core.take_dirty();
        let lwm = part.raw_low_watermark();
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

    pub(super) fn write_ready_snapshots(&mut self, p: i32) -> Result<(), ShellError> {
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
            crate::failpoint::hit(crate::failpoint::SEQUENCER_BEFORE_CHANGELOG);
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
                let key = conv.as_text();
                let mut rec = FutureRecord::to(&changelog_topic)
                    .partition(p)
                    .key(key.as_bytes());
                if let Some(v) = &value {
                    rec = rec.payload(v.as_slice());
                }
                let fut = self.enqueue(rec, &changelog_topic)?;
                self.track(p, fut, false);
            }
            self.write_progress(
                p,
                &Progress {
                    epoch,
                    ordered_offset: snap.ordered_offset.unwrap_or(-1),
                    raw_low_watermark: snap.raw_low_watermark,
                    released: false,
                },
            )?;
            if let Some(part) = self.partitions.get_mut(&p) {
                let seq = part.sent;
                part.commit_after.push_back((seq, snap.raw_low_watermark));
            }
        }
    }

    pub(super) fn commit_ready(
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
        self.stats.partitions_owned.fetch_sub(n, Ordering::Relaxed);
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
        self.commit_ready(p, commit, &raw_topic)?;
        self.export_metrics();
        self.partitions.remove(&p);
        self.stats.partitions_owned.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(partition = p, "partition released");
        Ok(())
    }
}
