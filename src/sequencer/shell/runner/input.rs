//! The inputs of the shell: takeovers, raw records, back-fill answers and time.

use super::*;

/// The two fields of a back-filled state the shell needs beyond the fingerprint, each read on
/// its own: a field of another type reads as absent without hiding the other (a numeric
/// `timestamp` once made an ENDING state read as not ending).
#[derive(serde::Deserialize)]
struct StateTimestamp<'a> {
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
}

/// `timestamp` (for `ce_time`) and whether the state is ENDING, by the rule live states follow
/// (`notification::is_ending_type`: any letter case).
fn state_fields(state: &RawValue) -> (Option<String>, bool) {
    match serde_json::from_str::<StateTimestamp<'_>>(state.get()) {
        Ok(s) => (
            s.timestamp
                .and_then(notification::json_string)
                .map(std::borrow::Cow::into_owned),
            notification::is_ending_type(s.kind.and_then(notification::json_string).as_deref()),
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

/// Metadata for a back-filled state whose response carried none (GoTo's `items: [state]` shape).
fn synthesized_metadata(conversation: &str) -> Box<RawValue> {
    let json = serde_json::json!({ "conversationSpaceId": conversation }).to_string();
    RawValue::from_string(json).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// How far the previous owners of a partition may have read raw: raw's high watermark as the
/// broker reports it, or further when the newest progress record says so (a broker may report
/// the high watermark low: tansu 0.6 gives the last batch's base offset + 1).
pub(super) fn previous_raw_end(high_watermark: i64, progress: Option<&Progress>) -> i64 {
    progress
        .and_then(|pr| pr.raw_read_end)
        .map_or(high_watermark, |read| read.max(high_watermark))
}

/// Beyond the session timeout, how long a replaced owner's last produce requests may still take
/// to land: a request is written by the broker on receipt, and an owner that cannot reach the
/// broker for longer than its session timeout learns it lost the partition and destroys its
/// producer before it reconnects.
const STRAGGLER_MARGIN: Duration = Duration::from_secs(5);

/// Seeks raw partition `p` to `offset`: false when librdkafka has not started fetching it yet
/// (or is still stopping an earlier fetcher of it), an error for any other refusal.
fn seek(
    consumer: &BaseConsumer<ShellContext>,
    raw_topic: &str,
    p: i32,
    offset: i64,
) -> Result<bool, ShellError> {
    let action = || format!("seeking raw partition {p} to {offset}");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(raw_topic, p, Offset::Offset(offset))
        .map_err(kafka_err(action()))?;
    let sought = consumer
        .seek_partitions(tpl, Duration::from_secs(10))
        .map_err(kafka_err(action()))?;
    let answer = sought
        .find_partition(raw_topic, p)
        .map_or(Ok(()), |e| e.error());
    match answer {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::State | RDKafkaErrorCode::PreviousInProgress)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(kafka_err(action())(e)),
    }
}

/// What installing a partition reads from Kafka ([`RunState::install_reads`]).
pub(super) struct InstallReads {
    /// Raw's high watermark as the broker reports it.
    high_watermark: i64,
    /// The raw offset to resume from.
    pub(super) resume: i64,
}

impl RunState {
    /// Starts the Kafka part of partition `p`'s takeover on its own thread; the result comes
    /// back through `takeover_tx`.
    pub(super) fn start_takeover(&mut self, p: i32) -> Result<(), ShellError> {
        let base = client_config(&self.config.kafka)?;
        self.next_takeover_token += 1;
        let token = self.next_takeover_token;
        let cancel = Arc::new(AtomicBool::new(false));
        let release_if_given_up = Arc::new(AtomicBool::new(false));
        // Replacing an older takeover of `p` drops it, which cancels it.
        self.pending_takeovers.insert(
            p,
            PendingTakeover {
                token,
                cancel: cancel.clone(),
                release_if_given_up: release_if_given_up.clone(),
            },
        );
        let runtime = self.runtime.clone();
        let config = self.config.clone();
        let tx = self.takeover_tx.clone();
        let own_unused = self
            .takeover_retries
            .get(&p)
            .and_then(|r| r.unused.as_ref())
            .map(|u| u.fence.clone());
        std::thread::Builder::new()
            .name(format!("takeover-{p}"))
            .spawn(move || {
                // The fence gets a producer of its own: a takeover that waits out a previous
                // owner must not keep the run's output producer (and what it queues) alive.
                let producer: FutureProducer = match base
                    .clone()
                    .set("enable.idempotence", "false")
                    .set("acks", "all")
                    .set(
                        "message.timeout.ms",
                        config.takeover_timeout.as_millis().max(1).to_string(),
                    )
                    .create()
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(TakeoverDone {
                            partition: p,
                            token,
                            result: Err(crate::sequencer::shell::takeover::TakeoverError::Kafka {
                                partition: p,
                                action: "creating the fence producer",
                                source: e,
                            }),
                        });
                        return;
                    }
                };
                let topics = &config.kafka.topics;
                let ctx = TakeoverContext {
                    client_config: base,
                    producer: &producer,
                    runtime: &runtime,
                    changelog_topic: &topics.changelog,
                    ordered_topic: &topics.ordered,
                    member: &config.member,
                    timeout: config.takeover_timeout,
                    unclean_wait: config.session_timeout + STRAGGLER_MARGIN,
                    cancelled: &cancel,
                    release_if_given_up: &release_if_given_up,
                    own_unused_fence: own_unused.as_ref(),
                };
                let result = take_over(&ctx, p);
                if let Err(e @ TakeoverError::Cancelled { .. }) = &result {
                    tracing::info!(partition = p, "{e}");
                }
                // The run may be over (its receiver gone); the result is moot then.
                let _ = tx.send(TakeoverDone {
                    partition: p,
                    token,
                    result,
                });
            })
            .map_err(|e| ShellError::Kafka {
                action: format!("starting the takeover of partition {p}: {e}"),
                source: KafkaError::Canceled,
            })?;
        Ok(())
    }

    /// Partitions whose failed takeover is due for another attempt (marked as running).
    pub(super) fn due_takeover_retries(&mut self, now: Instant) -> Vec<i32> {
        let mut due = Vec::new();
        for (&p, retry) in self.takeover_retries.iter_mut() {
            if retry.at.is_some_and(|at| at <= now) {
                retry.at = None;
                due.push(p);
            }
        }
        due
    }

    /// Partition `p`'s takeover (or what its installation reads) failed: it is not installed,
    /// so nothing of it is written, and it is taken over again from scratch (a new reader, the
    /// changelog read again, a new fence and epoch) after a backoff, unless it is revoked first.
    ///
    /// `finished` is the takeover's result when the takeover itself succeeded and what came
    /// after it failed (the installation's reads, the seek). Its epoch wrote nothing, but as the
    /// changelog's last, unreleased fence it made the retry wait out this very run as an unclean
    /// previous owner (session timeout + 5 s). Releasing it here would block this loop on a Kafka
    /// that just failed; the retry is told instead that the fence is ours and unused
    /// ([`crate::sequencer::shell::takeover::TakeoverContext::own_unused_fence`]), and does not
    /// wait for it while the changelog holds nothing after it (another fence of its epoch, by a
    /// takeover that ran beside the failed one, or anything of a later epoch makes it wait as
    /// before).
    /// Not remembered when a rival chose the same epoch. The same holds for a takeover that
    /// failed after its fence with nothing of its epoch in flight
    /// ([`crate::sequencer::shell::takeover::TakeoverError::AfterFence`]: the output's
    /// watermarks or its scan failed). Any other failure leaves the older unused
    /// fence remembered: its own fence, if written, then comes after it, and the next attempt
    /// waits.
    pub(super) fn takeover_failed(
        &mut self,
        p: i32,
        error: &ShellError,
        finished: Option<&crate::sequencer::shell::takeover::Recovered>,
    ) {
        let wait = self
            .takeover_retries
            .get(&p)
            .map_or(TAKEOVER_RETRY_BASE, |r| r.next_wait);
        let unused = finished
            .filter(|r| !r.rival_fence)
            .map(|r| UnusedEpoch {
                fence: crate::sequencer::shell::takeover::OwnUnusedFence {
                    epoch: r.epoch,
                    token: r.fence_token.clone(),
                },
                previous: r.progress,
            })
            .or_else(|| match error {
                ShellError::Takeover(e) => e.unused_fence().map(|(fence, previous)| UnusedEpoch {
                    fence: fence.clone(),
                    previous,
                }),
                _ => None,
            })
            .or_else(|| self.takeover_retries.get(&p).and_then(|r| r.unused.clone()));
        self.takeover_retries.insert(
            p,
            TakeoverRetry {
                at: Some(Instant::now() + wait),
                next_wait: (wait * 2).min(TAKEOVER_RETRY_MAX),
                unused,
            },
        );
        metrics::counter!("callbridge_takeover_failures_total").increment(1);
        self.stats.takeover_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(partition = p, %error, retry_in = ?wait, "takeover failed; the partition is taken over again after a backoff, the others go on");
    }

    /// What installing partition `p` reads from Kafka, before anything of it is decided or
    /// written: raw's end (for the restored closed calls) and where to resume raw. A failure
    /// here is the partition's alone (the caller retries its takeover).
    pub(super) fn install_reads(
        &self,
        p: i32,
        recovered: &crate::sequencer::shell::takeover::Recovered,
        consumer: &BaseConsumer<ShellContext>,
    ) -> Result<InstallReads, ShellError> {
        let topics = &self.config.kafka.topics;
        // The previous owner has stopped, so it read raw no further than raw's end now (see
        // `install`).
        let (_, high_watermark) = consumer
            .fetch_watermarks(&topics.raw, p, Duration::from_secs(10))
            .map_err(kafka_err(format!("reading the end of raw {p}")))?;
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
        Ok(InstallReads {
            high_watermark,
            resume,
        })
    }

    /// Installs every taken-over partition whose raw fetcher librdkafka has started: seeks it to
    /// its resume offset, builds its core and resumes it.
    ///
    /// librdkafka starts fetching an assigned partition only once it has read the group's
    /// committed offset for it, and refuses a seek until then (`Local: Erroneous state`). A
    /// takeover can end first (an empty changelog, a slow coordinator): that seek used to fail the
    /// takeover, whose retry then waited out its own fence. The seek is now tried again, every
    /// [`SEEK_RETRY`], for up to `takeover_timeout`; librdkafka may also never start a partition
    /// whose committed offset it failed to read (until it is assigned again), so past that bound
    /// the run ends ([`ShellError::FetcherNotStarted`]) to hand over and rejoin.
    pub(super) fn install_fetching(
        &mut self,
        consumer: &BaseConsumer<ShellContext>,
    ) -> Result<(), ShellError> {
        if self.awaiting_fetch.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let due: Vec<i32> = self
            .awaiting_fetch
            .iter()
            .filter(|(_, w)| w.next_seek <= now)
            .map(|(&p, _)| p)
            .collect();
        let raw_topic = self.config.kafka.topics.raw.clone();
        for p in due {
            let Some(waiting) = self.awaiting_fetch.get_mut(&p) else {
                continue;
            };
            let resume = waiting.reads.resume;
            match seek(consumer, &raw_topic, p, resume) {
                Ok(true) => {}
                Ok(false) => {
                    if !waiting.refused {
                        waiting.refused = true;
                        self.stats.fetcher_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    let waited = waiting.since.elapsed();
                    if waited >= self.config.takeover_timeout {
                        return Err(ShellError::FetcherNotStarted {
                            partition: p,
                            waited,
                        });
                    }
                    waiting.next_seek = Instant::now() + SEEK_RETRY;
                    continue;
                }
                Err(e) => {
                    // The retry does not wait its epoch out (see `takeover_failed`).
                    if let Some(waiting) = self.awaiting_fetch.remove(&p) {
                        self.takeover_failed(p, &e, Some(&waiting.recovered));
                    }
                    continue;
                }
            }
            let Some(waiting) = self.awaiting_fetch.remove(&p) else {
                continue;
            };
            if waiting.refused {
                tracing::info!(partition = p, waited = ?waiting.since.elapsed(), "librdkafka started fetching the partition after its takeover had ended");
            }
            // From here on, failures are the run's (its producer, its consumer).
            self.install(p, waiting.recovered, waiting.reads)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&raw_topic, p);
            consumer
                .resume(&tpl)
                .map_err(kafka_err(format!("resuming raw partition {p}")))?;
        }
        Ok(())
    }

    /// Builds partition `p`'s core from what the takeover recovered and what
    /// [`Self::install_reads`] read; returns the raw offset to resume from.
    pub(super) fn install(
        &mut self,
        p: i32,
        recovered: crate::sequencer::shell::takeover::Recovered,
        reads: InstallReads,
    ) -> Result<i64, ShellError> {
        let now = now_ms(self.origin);
        let wall_now = epoch_ms();
        let mut core = PartitionSequencer::new(self.config.sequencer.clone());
        for (conv, entry) in &recovered.conversations {
            // The checkpoint's age, on this core's clock (a conversation the scan moved had
            // outputs just now, and one without a timestamp counts as active now).
            let written = match recovered.written_at_ms.get(conv) {
                Some(&at) if !recovered.raised_by_scan.contains(conv) => {
                    RunClock::at_wall(now, wall_now, at)
                }
                _ => now,
            };
            core.restore_since(conv, ConversationCheckpoint::from(*entry), now, written);
        }
        for conv in &recovered.raised_by_scan {
            core.mark_dirty(conv);
        }
        // The previous owner has stopped, so it read raw no further than raw's end now. The core
        // keeps every restored closed call until it has read raw that far and its raw low
        // watermark has passed that point: forgotten earlier, a call whose states the re-read
        // has not reached yet would be read as a new one and published again. The broker's high
        // watermark can lie low (tansu 0.6 reports the last batch's base offset + 1), so the
        // end is also at least what the previous owner's last progress record says it had read.
        core.restored_raw_end(previous_raw_end(
            reads.high_watermark,
            recovered.progress.as_ref(),
        ));
        // Decided here, carried out once the partition is installed (below).
        let mut completions = 0usize;
        for (conv, &last) in &recovered.ending_without_completion {
            if core.complete_found_ending(conv, last, now, &mut self.actions) {
                completions += 1;
                tracing::warn!(
                    conversation = %conv,
                    partition = p,
                    last_sequence = last,
                    "ENDING found in the ordered topic without its completion record (the previous owner stopped between the two); completing the call"
                );
            }
        }
        let resume = reads.resume;
        // Everything below the resume point is resolved (published, or deliberately dropped):
        // the core counts it as read, so a restored call has to wait only for the re-read above.
        core.raw_read_to(resume);
        metrics::counter!("callbridge_takeover_completions_total").increment(completions as u64);
        tracing::info!(
            partition = p,
            epoch = recovered.epoch,
            conversations = recovered.conversations.len(),
            scanned = recovered.scanned,
            scan_from = recovered.scan_from,
            scan_high_watermark = recovered.scan_high_watermark,
            ordered_end = recovered.ordered_end,
            progress_epoch = ?recovered.progress.map(|pr| pr.epoch),
            waited = recovered.waited_for_previous_owner,
            completions,
            resume,
            "partition taken over"
        );
        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        if recovered.waited_for_previous_owner {
            self.stats.unclean_takeovers.fetch_add(1, Ordering::Relaxed);
        }
        self.takeover_retries.remove(&p);
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
                ordered_resync_after: None,
                next_raw: resume,
                pending: VecDeque::new(),
                commit_after: VecDeque::new(),
                last_snapshot: Instant::now(),
                last_progress: None,
            },
        );
        self.execute(p)?;
        Ok(resume)
    }

    pub(super) fn on_raw(
        &mut self,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(), ShellError> {
        let p = m.partition();
        let now = now_ms(self.origin);
        let Some(part) = self.partitions.get_mut(&p) else {
            return Ok(()); // not taken over (yet): it will be re-read after the seek
        };
        if m.offset() < part.next_raw {
            return Ok(());
        }
        part.next_raw = m.offset() + 1;
        // Every record counts, state or not: a closed call is forgotten only once raw has been
        // read past its raw mark (after a takeover, the previous owner's end).
        part.core.raw_read_to(part.next_raw);
        let body = m.payload().unwrap_or_default();
        match notification::parse(body) {
            Ok(Notification::CallState(cs)) => {
                let fingerprint = match cs.fingerprint() {
                    Ok(f) => f,
                    Err(e) => {
                        let detail = e.to_string();
                        self.dead_letter(p, m.key(), body, e.reason_code(), &detail)?;
                        return self.execute(p);
                    }
                };
                // Read by ingest's parse above: no third pass over the state.
                let timestamp = cs.timestamp().map(std::borrow::Cow::into_owned);
                let origin = origin_of(m);
                let payload = Arc::new(StatePayload::render(
                    &cs.conversation_space_id,
                    cs.sequence_number,
                    origin,
                    (cs.metadata, cs.state),
                    timestamp,
                    received_at(m),
                ));
                let _span = tracing::debug_span!("state", conversation = %cs.conversation_space_id, partition = p).entered();
                let incoming = IncomingState {
                    sequence_number: cs.sequence_number,
                    fingerprint,
                    is_ending: cs.is_ending(),
                    origin,
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

    pub(super) fn on_backfill(&mut self, done: BackfillDone) -> Result<(), ShellError> {
        let p = done.job.partition;
        let now = now_ms(self.origin);
        let Some(part) = self.partitions.get_mut(&p) else {
            return Ok(());
        };
        if part.epoch != done.job.epoch {
            return Ok(()); // issued before a re-takeover: the new core asks again if needed
        }
        let conv = done.job.conversation.as_text();
        // States GoTo returned that cannot be published: dead-lettered below, left out of the
        // answer, so the core treats them as not returned (and declares them a gap once
        // back-fill gives up) instead of an output Kafka refuses stopping the partition.
        let mut unusable: Vec<(u64, String, &'static str, String)> = Vec::new();
        let outcome = match done.fetched {
            Fetched::States(states) => BackfillOutcome::Answered(
                states
                    .into_iter()
                    .filter_map(|fs| {
                        let metadata = fs.metadata.unwrap_or_else(|| synthesized_metadata(&conv));
                        let seq = fs.sequence_number;
                        let body = || notification_body(&metadata, &fs.state);
                        let fingerprint = match notification::state_fingerprint(&fs.state) {
                            Ok(f) => f,
                            Err(e) => {
                                unusable.push((seq, body(), "invalid_json", e.to_string()));
                                return None;
                            }
                        };
                        let (timestamp, is_ending) = state_fields(&fs.state);
                        let needed = crate::ingest::route::record_bytes(
                            metadata.get().len() + fs.state.get().len(),
                            conv.len(),
                            timestamp.as_ref().map_or(0, String::len),
                        );
                        if needed > crate::kafka::producer::MAX_RECORD_BYTES {
                            let detail = format!(
                                "back-filled state {seq}: its ordered record could need {needed} bytes, over Kafka's {} byte limit",
                                crate::kafka::producer::MAX_RECORD_BYTES
                            );
                            unusable.push((seq, body(), "oversize", detail));
                            return None;
                        }
                        Some(IncomingState {
                            sequence_number: fs.sequence_number,
                            fingerprint,
                            is_ending,
                            origin: Origin::Backfill,
                            raw_offset: None,
                            payload: Arc::new(StatePayload::render(
                                &conv,
                                seq,
                                Origin::Backfill,
                                (&metadata, &fs.state),
                                timestamp,
                                None,
                            )),
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
            &conv,
            done.job.from,
            done.job.to,
            outcome,
            now,
            &mut self.actions,
        );
        for (seq, body, reason, detail) in unusable {
            tracing::warn!(conversation = %conv, partition = p, sequence_number = seq, reason, %detail, "back-filled state dead-lettered");
            self.dead_letter(p, Some(conv.as_bytes()), body.as_bytes(), reason, &detail)?;
        }
        self.execute(p)
    }

    pub(super) fn tick(&mut self) -> Result<(), ShellError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_filled_state_reads_ending_in_any_case_and_each_field_on_its_own() {
        let fields = |json: &str| state_fields(&RawValue::from_string(json.to_owned()).unwrap());
        assert_eq!(
            fields(r#"{"type":"ENDING","timestamp":"2026-01-01T00:00:00Z"}"#),
            (Some("2026-01-01T00:00:00Z".to_owned()), true)
        );
        // Live states are ENDING in any letter case (`notification::is_ending_type`).
        assert_eq!(fields(r#"{"type":"Ending"}"#), (None, true));
        // A field of another type reads as absent without hiding the other.
        assert_eq!(fields(r#"{"type":"ENDING","timestamp":5}"#), (None, true));
        assert_eq!(
            fields(r#"{"type":7,"timestamp":"t\u0031"}"#),
            (Some("t1".to_owned()), false)
        );
        assert_eq!(fields(r#"{"type":"ACTIVE"}"#), (None, false));
    }

    #[test]
    fn the_previous_raw_end_is_the_furthest_of_high_watermark_and_progress() {
        let progress = |raw_read_end| Progress {
            epoch: 1,
            ordered_offset: 5,
            raw_low_watermark: 100,
            raw_read_end,
            released: false,
        };
        // tansu reported the last batch's base offset + 1: the owner had read further.
        assert_eq!(previous_raw_end(101, Some(&progress(Some(103)))), 103);
        assert_eq!(previous_raw_end(110, Some(&progress(Some(103)))), 110);
        assert_eq!(previous_raw_end(101, Some(&progress(None))), 101);
        assert_eq!(previous_raw_end(101, None), 101);
    }

    #[test]
    fn a_new_run_restores_a_checkpoints_age_and_abandons_a_call_quiet_for_abandon_after() {
        // A run that has just started (a pod restart, a failed run started again) restores an
        // open call whose checkpoint was written 7 h ago: quiet for longer than `abandon_after`
        // (6 h), it is abandoned at the first tick instead of starting its clock again.
        let cfg = SequencerConfig::default();
        let clock = RunClock::start();
        let (now, wall_now) = (clock.now(), epoch_ms());
        let written = RunClock::at_wall(now, wall_now, wall_now - 7 * 3_600_000);
        assert_eq!(now.since(written), Duration::from_secs(7 * 3_600));
        let mut core: PartitionSequencer<()> = PartitionSequencer::new(cfg);
        let open = ConversationCheckpoint {
            next_sequence: 4,
            ended: false,
            gap_count: 0,
            abandoned: false,
        };
        core.restore_since("quiet", open, now, written);
        core.restored_raw_end(0);
        let mut out = Vec::new();
        core.on_tick(clock.now(), &mut out);
        assert_eq!(
            out,
            vec![Action::Abandoned {
                conversation: "quiet".into(),
                next_sequence: 4,
            }]
        );
    }
}
