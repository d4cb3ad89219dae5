//! The outputs of the shell: records to the ordered and dead-letter topics, in decision order,
//! with backpressure when librdkafka's queue is full.

use super::*;

impl RunState {
    /// Carries out the core's decisions for partition `p`, in order.
    pub(super) fn execute(&mut self, p: i32) -> Result<(), ShellError> {
        let mut actions = std::mem::take(&mut self.actions);
        let result = self.perform(p, actions.drain(..));
        // The emptied buffer goes back for the next record (a new one was an allocation per
        // state), unless carrying out these actions queued new ones.
        if self.actions.is_empty() {
            self.actions = actions;
        }
        result
    }

    fn perform(
        &mut self,
        p: i32,
        actions: impl Iterator<Item = Action<Payload>>,
    ) -> Result<(), ShellError> {
        let Some(epoch) = self.partitions.get(&p).map(|x| x.epoch) else {
            return Ok(());
        };
        for action in actions {
            match action {
                Action::Publish {
                    conversation,
                    sequence_number,
                    origin,
                    payload,
                } => {
                    let origin = record_origin(origin);
                    let conversation = conversation.as_text();
                    let value = payload.value_for(&conversation, sequence_number, origin);
                    let headers = record::state_headers(
                        &conversation,
                        sequence_number,
                        origin,
                        payload.timestamp.as_deref(),
                        epoch,
                    );
                    self.send_parts(p, &conversation, &value, &headers)?;
                    self.stats.states_published.fetch_add(1, Ordering::Relaxed);
                    if origin == RecordOrigin::Backfill {
                        self.stats.states_backfilled.fetch_add(1, Ordering::Relaxed);
                    }
                    self.per_state.published(origin).increment(1);
                    if let Some(at) = payload.received_at_ms {
                        let latency = epoch_ms().saturating_sub(at) as f64 / 1000.0;
                        self.per_state.end_to_end.record(latency);
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
                    let r = record::gap_record(&conversation.as_text(), from, to, cause, epoch);
                    self.send(p, r)?;
                    self.stats.gaps_published.fetch_add(1, Ordering::Relaxed);
                }
                Action::PublishCompletion {
                    conversation,
                    last_sequence,
                    gap_count,
                } => {
                    let r = record::completion_record(
                        &conversation.as_text(),
                        last_sequence,
                        gap_count,
                        epoch,
                    );
                    self.send(p, r)?;
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
                    reason,
                    payload,
                } => {
                    // GoTo's objects as a notification would carry them; the value as it is
                    // should it not be one the shell rendered (it always is).
                    let body = match record::state_value_parts(&payload.value) {
                        Some((metadata, state)) => notification_body(metadata, state),
                        None => String::from_utf8_lossy(&payload.value).into_owned(),
                    };
                    let detail = reason.detail(sequence_number);
                    tracing::warn!(conversation = %conversation, partition = p, sequence_number, reason = reason.code(), "state dead-lettered");
                    self.dead_letter(
                        p,
                        Some(conversation.as_text().as_bytes()),
                        body.as_bytes(),
                        reason.code(),
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

    pub(super) fn dead_letter(
        &mut self,
        p: i32,
        key: Option<&[u8]>,
        body: &[u8],
        reason: &'static str,
        detail: &str,
    ) -> Result<(), ShellError> {
        use crate::ingest::raw_writer::{cut_for_dead_letter, headers as h};
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: h::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: h::DEAD_LETTER_DETAIL,
                value: Some(detail),
            });
        let (body, headers) = cut_for_dead_letter(body, headers);
        let topic = self.config.kafka.topics.dead_letter.clone();
        let mut rec = FutureRecord::to(&topic).payload(body).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("callbridge_sequencer_dead_letters_total", "reason" => reason)
            .increment(1);
        let fut = self.enqueue(rec, &topic)?;
        self.track(p, fut, false);
        Ok(())
    }

    /// Sends `r` to `ordered[p]` (the topic's name borrowed from the configuration, not copied
    /// per record).
    pub(super) fn send(&mut self, p: i32, r: OrderedRecord) -> Result<(), ShellError> {
        self.send_parts(p, &r.key, &r.value, &r.headers)
    }

    /// [`send`](Self::send) from borrowed parts: a state's value is sent from where it was
    /// rendered, not moved into an [`OrderedRecord`] first.
    pub(super) fn send_parts(
        &mut self,
        p: i32,
        key: &str,
        value: &[u8],
        headers: &[(&'static str, record::HeaderValue)],
    ) -> Result<(), ShellError> {
        let topic = self.config.kafka.topics.ordered.as_str();
        let headers = crate::kafka::producer::owned_headers(headers);
        let rec = FutureRecord::to(topic)
            .partition(p)
            .key(key)
            .payload(value)
            .headers(headers);
        let fut = self.enqueue(rec, topic)?;
        self.track(p, fut, true);
        crate::failpoint::hit(crate::failpoint::SEQUENCER_AFTER_OUTPUT_SENT);
        Ok(())
    }

    /// Enqueues a record, waiting while librdkafka's queue is full: the consumer thread stops
    /// reading raw until Kafka catches up (backpressure, not an unbounded buffer).
    ///
    /// The wait is bounded: the thread polls no consumer meanwhile, and a member that does not
    /// poll for `max.poll.interval.ms` is put out of the group while its queued outputs may
    /// still land after the next owner's marker (a zombie writer). Once the loop has not turned
    /// for [`queue_full_bound`] (the heartbeat, also moved by each release of a hand-over, is the
    /// clock; a monotonic per-call clock as well, should the wall clock step back) the run
    /// fails: a failed run forgets its partitions without a `released` marker, so their next
    /// owner waits out whatever this producer still sends before it scans, and re-derives the
    /// rest from raw. The heartbeat is left as it is: it honestly shows when the loop last
    /// turned, and the bound keeps that below what `/healthz` calls stuck.
    pub(super) fn enqueue<K, V>(
        &self,
        mut rec: FutureRecord<'_, K, V>,
        topic: &str,
    ) -> Result<DeliveryFuture, ShellError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        V: rdkafka::message::ToBytes + ?Sized,
    {
        let bound = queue_full_bound(&self.config);
        let started = Instant::now();
        loop {
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    let since_turn = Duration::from_millis(
                        epoch_ms().saturating_sub(self.stats.heartbeat_ms.load(Ordering::Relaxed)),
                    );
                    if since_turn.max(started.elapsed()) >= bound {
                        return Err(ShellError::Kafka {
                            action: format!(
                                "producing to {topic}: the output queue stayed full for {bound:?} \
                                 (sequencer_io.takeover_timeout); giving the partitions up"
                            ),
                            source: KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull,
                            ),
                        });
                    }
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

    pub(super) fn track(&mut self, p: i32, fut: DeliveryFuture, is_ordered: bool) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.sent += 1;
            part.inflight.push_back((part.sent, fut, is_ordered));
        }
    }
}

/// How long the consumer loop may wait for room in a full output queue before the run fails:
/// `sequencer_io.takeover_timeout` (30 s by default), capped at 60 s so it stays well below
/// librdkafka's `max.poll.interval.ms` (300 s) and `/healthz`'s 90 s.
pub(super) fn queue_full_bound(config: &ShellConfig) -> Duration {
    config.takeover_timeout.min(QUEUE_FULL_MAX_WAIT)
}

/// The cap of [`queue_full_bound`].
const QUEUE_FULL_MAX_WAIT: Duration = Duration::from_secs(60);
