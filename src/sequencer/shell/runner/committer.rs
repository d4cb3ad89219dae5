//! Raw offset commits, one at a time, on a thread of their own.
//!
//! librdkafka starts fetching a newly assigned partition, and completes a rebalance, only at a
//! moment when none of the member's offset commits is outstanding (it may need the committed
//! offsets as start positions). Asynchronous commits sent whenever a partition had one ready
//! could overlap without end on a slow coordinator, and a partition assigned then was never
//! fetched. rust-rdkafka reports no completion of an asynchronous commit (librdkafka posts it
//! only to an `offset_commit_cb`, which rust-rdkafka does not set), so the commit is synchronous,
//! on this thread: the consumer loop never waits for the coordinator, and every answer leaves
//! librdkafka its moment before the next commit goes out.

use super::ShellContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

/// The committing thread and what it is doing.
pub(super) struct RawCommitter {
    tx: Option<SyncSender<TopicPartitionList>>,
    in_flight: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawCommitter {
    /// Starts the thread. It holds the consumer until [`RawCommitter::stop`]: stop it before the
    /// consumer is dropped, or the consumer outlives the run (and stays in the group).
    pub(super) fn start(consumer: Arc<BaseConsumer<ShellContext>>) -> RawCommitter {
        let (tx, rx) = std::sync::mpsc::sync_channel::<TopicPartitionList>(1);
        let in_flight = Arc::new(AtomicBool::new(false));
        let done = in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("raw-commits".into())
            .spawn(move || {
                for tpl in rx {
                    // A refused commit only delays lag reporting; resume uses the changelog.
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                        tracing::debug!(error = %e, "raw offset commit failed");
                    }
                    done.store(false, Ordering::SeqCst);
                }
            })
            .ok();
        RawCommitter {
            tx: thread.is_some().then_some(tx),
            in_flight,
            thread,
        }
    }

    /// Whether a commit may be handed over now (none is outstanding).
    pub(super) fn idle(&self) -> bool {
        self.tx.is_some() && !self.in_flight.load(Ordering::SeqCst)
    }

    /// Hands `tpl` to the thread; call only when [`RawCommitter::idle`].
    pub(super) fn commit(&self, tpl: TopicPartitionList) {
        let Some(tx) = &self.tx else {
            return;
        };
        self.in_flight.store(true, Ordering::SeqCst);
        if tx.try_send(tpl).is_err() {
            // Not reachable while `idle` is checked first; the commit is simply skipped.
            self.in_flight.store(false, Ordering::SeqCst);
        }
    }

    /// Lets the outstanding commit finish, and ends the thread.
    pub(super) fn stop(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
