//! Raw offset commits, one at a time, on a thread of their own.
//!
//! librdkafka starts fetching a newly assigned partition, and completes a rebalance, only at a
//! moment when none of the member's offset commits is outstanding (it may need the committed
//! offsets as start positions). Asynchronous commits sent whenever a partition had one ready
//! could overlap without end on a slow coordinator, and a partition assigned then was never
//! fetched. rust-rdkafka reports no completion of an asynchronous commit (librdkafka posts it
//! only to an `offset_commit_cb`, which rust-rdkafka does not set), so the commit is synchronous,
//! on this thread: the consumer loop never waits for the coordinator, and every answer leaves
//! librdkafka its moment before the next commit goes out. A hand-over's own commit, on the loop
//! thread, first waits for the one outstanding here ([`CommitGate::wait_idle`]), so a partition's
//! committed offset never goes back.

use super::{kafka_err, ShellContext, ShellError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Whether a commit is outstanding on the committing thread; shared with the loop's state.
#[derive(Debug, Default)]
pub(super) struct CommitGate {
    in_flight: Mutex<bool>,
    done: Condvar,
}

impl CommitGate {
    fn set(&self, in_flight: bool) {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *f = in_flight;
        if !in_flight {
            self.done.notify_all();
        }
    }

    fn in_flight(&self) -> bool {
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `bound` for the outstanding commit, if any, to be answered; false if it was
    /// not (a commit made now then follows it at the coordinator: librdkafka sends them in the
    /// order they were made).
    pub(super) fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *f {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            f = match self.done.wait_timeout(f, left) {
                Ok((f, _)) => f,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

/// The committing thread. Dropping it lets the outstanding commit finish and ends the thread,
/// which holds the consumer: drop it before the consumer, or the consumer outlives the run (and
/// stays in the group).
pub(super) struct RawCommitter {
    tx: Option<SyncSender<TopicPartitionList>>,
    gate: Arc<CommitGate>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawCommitter {
    /// Starts the thread.
    pub(super) fn start(
        consumer: Arc<BaseConsumer<ShellContext>>,
        gate: Arc<CommitGate>,
    ) -> Result<RawCommitter, ShellError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<TopicPartitionList>(1);
        let answered = gate.clone();
        let thread = std::thread::Builder::new()
            .name("raw-commits".into())
            .spawn(move || {
                for tpl in rx {
                    // A refused commit only delays lag reporting; resume uses the changelog.
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                        tracing::debug!(error = %e, "raw offset commit failed");
                    }
                    answered.set(false);
                }
            })
            .map_err(|e| {
                kafka_err("starting the raw offset committer")(KafkaError::ClientCreation(
                    e.to_string(),
                ))
            })?;
        Ok(RawCommitter {
            tx: Some(tx),
            gate,
            thread: Some(thread),
        })
    }

    /// Whether a commit may be handed over now (none is outstanding).
    pub(super) fn idle(&self) -> bool {
        !self.gate.in_flight()
    }

    /// Hands `tpl` to the thread; call only when [`RawCommitter::idle`].
    pub(super) fn commit(&self, tpl: TopicPartitionList) {
        let Some(tx) = &self.tx else {
            return;
        };
        self.gate.set(true);
        if tx.try_send(tpl).is_err() {
            // Not reachable while `idle` is checked first; the commit is simply skipped.
            self.gate.set(false);
        }
    }
}

impl Drop for RawCommitter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
