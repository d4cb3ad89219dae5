//! Back-fill requests, run off the consumer thread.
//!
//! The core asks for ranges; this worker fetches them from GoTo (through a [`BackfillSource`],
//! normally the API client with its rate limiter) with bounded concurrency, and hands the answers
//! back over a channel the consumer thread drains. Running them here keeps the consumer polling
//! (heartbeats, rebalance callbacks) while GoTo is slow.
//!
//! The job queue has no fixed bound, on purpose: it is the backlog of REST requests the open gaps
//! need (GoTo allows 10 a second) plus the rationed idle probes, so it is bounded by the gaps the
//! core holds open. A fixed bound would only move that backlog into the core.
//! `callbridge_backfill_queued` shows it.

use serde_json::value::RawValue;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One state returned by GoTo's back-fill endpoint, bytes untouched.
#[derive(Debug)]
pub struct FetchedState {
    /// `state.sequenceNumber`.
    pub sequence_number: u64,
    /// The `metadata` object when the response carried one.
    pub metadata: Option<Box<RawValue>>,
    /// The `state` object.
    pub state: Box<RawValue>,
}

/// What a fetch returned.
#[derive(Debug)]
pub enum Fetched {
    /// The API answered (possibly without some requested states).
    States(Vec<FetchedState>),
    /// The API does not know the conversation (or no longer).
    NotFound,
    /// The request failed; `retryable` is false for errors that will not heal (403, 400).
    Failed {
        /// Worth retrying.
        retryable: bool,
        /// What failed (endpoint, status, errorCode; never a token).
        error: String,
    },
}

/// Where back-filled states come from.
pub trait BackfillSource: Send + Sync + 'static {
    /// Fetches `from..=to` (`to` = `None`: everything from `from`) of one conversation.
    fn fetch<'a>(
        &'a self,
        conversation: &'a str,
        from: u64,
        to: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>>;
}

/// A request from the core.
#[derive(Debug, Clone)]
pub struct BackfillJob {
    /// Raw partition of the conversation.
    pub partition: i32,
    /// Takeover epoch of that partition when the job was issued (stale answers are ignored).
    pub epoch: u64,
    /// Conversation.
    pub conversation: crate::sequencer::ConversationId,
    /// First sequence.
    pub from: u64,
    /// Last sequence, `None` for an open-ended probe.
    pub to: Option<u64>,
}

/// A finished job.
#[derive(Debug)]
pub struct BackfillDone {
    /// The request.
    pub job: BackfillJob,
    /// The answer.
    pub fetched: Fetched,
}

/// Which queued jobs still have a reader, shared by the run's consumer thread and its worker.
///
/// A partition revoked by a cooperative rebalance leaves the run going on with the others, so
/// the worker would still fetch every job queued for it, whose answers the run then discards
/// (their epoch is no longer owned), spending GoTo's shared 10 requests a second while the new
/// owner asks for the same ranges again. The revoke marks the partition's epoch ended, and the
/// worker skips the jobs of an ended epoch right before their request. Epochs only grow per
/// partition (each takeover writes the next one), so a later takeover of the same partition,
/// in this run or another, issues jobs that stay live.
#[derive(Clone, Debug, Default)]
pub struct LiveJobs {
    /// Per partition, the newest epoch whose jobs have no reader any more.
    ended: Arc<Mutex<HashMap<i32, u64>>>,
}

impl LiveJobs {
    /// The jobs of `partition` up to `epoch` (its owner's, now revoked) are no longer read.
    pub fn end(&self, partition: i32, epoch: u64) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let newest = ended.entry(partition).or_insert(epoch);
        *newest = (*newest).max(epoch);
    }

    /// Whether the answer to `job` would still be read.
    pub fn is_live(&self, job: &BackfillJob) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.get(&job.partition).is_none_or(|e| job.epoch > *e)
    }
}

/// Starts the worker on `runtime`; jobs go in through the returned sender, answers come out
/// through `done`. At most `concurrency` requests run at once (the client rate-limits further).
/// Jobs of a partition `live` says was revoked are dropped instead of fetched.
///
/// The worker belongs to one sequencer run and stops with it: once the run has ended (its job
/// sender is dropped with its state, or an answer finds its receiver gone) the jobs still queued
/// are dropped, not fetched. `recv` alone would hand out every buffered job first, so an ended
/// run's worker kept spending GoTo's shared 10 requests a second on answers nobody reads, one
/// more copy per restart. Requests already under way (at most `concurrency`) finish; their
/// answers are discarded.
pub fn spawn_worker(
    runtime: &tokio::runtime::Handle,
    source: Arc<dyn BackfillSource>,
    concurrency: usize,
    done: std::sync::mpsc::Sender<BackfillDone>,
    live: LiveJobs,
) -> tokio::sync::mpsc::UnboundedSender<BackfillJob> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BackfillJob>();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    // Set when an answer could not be handed back: the run's receiver is gone.
    let answers_unread = Arc::new(AtomicBool::new(false));
    runtime.spawn(async move {
        let queued = metrics::gauge!("callbridge_backfill_queued");
        while let Some(job) = rx.recv().await {
            queued.set(rx.len() as f64);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            // Checked right before the request: the wait for a permit is where the time goes,
            // and the run may have ended meanwhile.
            if rx.is_closed() || answers_unread.load(Ordering::Acquire) {
                tracing::debug!(
                    dropped = rx.len() + 1,
                    "sequencer run ended: queued back-fill jobs dropped"
                );
                break;
            }
            // What arrived during the wait counts too.
            queued.set(rx.len() as f64);
            if !live.is_live(&job) {
                tracing::debug!(
                    partition = job.partition,
                    epoch = job.epoch,
                    "partition revoked: its queued back-fill job dropped"
                );
                continue;
            }
            let source = source.clone();
            let done = done.clone();
            let answers_unread = answers_unread.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let fetched = source
                    .fetch(&job.conversation.as_text(), job.from, job.to)
                    .await;
                let outcome = match &fetched {
                    Fetched::States(_) => "answered",
                    Fetched::NotFound => "not_found",
                    Fetched::Failed { .. } => "failed",
                };
                metrics::counter!("callbridge_backfill_responses_total", "outcome" => outcome)
                    .increment(1);
                metrics::histogram!("callbridge_backfill_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                if matches!(fetched, Fetched::States(_)) {
                    crate::failpoint::hit(crate::failpoint::SEQUENCER_BACKFILL_ANSWERED);
                }
                // The consumer thread may be gone (its run ended): then the next job must not
                // be fetched, so this is noted before the permit is given back.
                if done.send(BackfillDone { job, fetched }).is_err() {
                    answers_unread.store(true, Ordering::Release);
                }
                drop(permit);
            });
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts requests; each waits until the test lets one through.
    struct Gate {
        requests: AtomicUsize,
        release: tokio::sync::Semaphore,
    }

    impl BackfillSource for Gate {
        fn fetch<'a>(
            &'a self,
            _conversation: &'a str,
            _from: u64,
            _to: Option<u64>,
        ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if let Ok(p) = self.release.acquire().await {
                    p.forget();
                }
                Fetched::NotFound
            })
        }
    }

    fn job(n: u64) -> BackfillJob {
        job_of(0, 1, n)
    }

    fn job_of(partition: i32, epoch: u64, n: u64) -> BackfillJob {
        BackfillJob {
            partition,
            epoch,
            conversation: format!("c-{n}").as_str().into(),
            from: 1,
            to: Some(n),
        }
    }

    /// One request in flight (concurrency 1), two more jobs queued behind it.
    async fn worker_with_queue(
        gate: &Arc<Gate>,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<BackfillJob>,
        std::sync::mpsc::Receiver<BackfillDone>,
    ) {
        worker_with_queue_live(gate, LiveJobs::default()).await
    }

    async fn worker_with_queue_live(
        gate: &Arc<Gate>,
        live: LiveJobs,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<BackfillJob>,
        std::sync::mpsc::Receiver<BackfillDone>,
    ) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let source: Arc<dyn BackfillSource> = gate.clone();
        let jobs = spawn_worker(&tokio::runtime::Handle::current(), source, 1, done_tx, live);
        for n in 1..=3 {
            jobs.send(job(n)).unwrap();
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while gate.requests.load(Ordering::SeqCst) < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "first request never made"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (jobs, done_rx)
    }

    fn gate() -> Arc<Gate> {
        Arc::new(Gate {
            requests: AtomicUsize::new(0),
            release: tokio::sync::Semaphore::new(0),
        })
    }

    async fn settle() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_run_gets_every_job_answered() {
        let gate = gate();
        let (_jobs, done_rx) = worker_with_queue(&gate).await;
        gate.release.add_permits(3);
        settle().await;
        assert_eq!(gate.requests.load(Ordering::SeqCst), 3);
        assert_eq!(done_rx.try_iter().count(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_queued_when_the_run_ends_are_not_fetched() {
        let gate = gate();
        let (jobs, done_rx) = worker_with_queue(&gate).await;
        // The run ends as `runner::run` ends: its state (with the job sender) and its answer
        // receiver are dropped while a request is under way and two jobs are queued.
        drop(jobs);
        drop(done_rx);
        gate.release.add_permits(3);
        settle().await;
        assert_eq!(
            gate.requests.load(Ordering::SeqCst),
            1,
            "only the request already under way; the queued jobs must not reach GoTo"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_queued_when_the_answer_receiver_is_gone_are_not_fetched() {
        let gate = gate();
        let (_jobs, done_rx) = worker_with_queue(&gate).await;
        // Even if a job sender outlived the run, an answer nobody can read ends the worker.
        drop(done_rx);
        gate.release.add_permits(3);
        settle().await;
        assert_eq!(gate.requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_of_a_revoked_partition_are_not_fetched_while_the_run_goes_on() {
        let gate = gate();
        let live = LiveJobs::default();
        // Partition 0 (epoch 1): one request under way, two queued.
        let (jobs, done_rx) = worker_with_queue_live(&gate, live.clone()).await;
        // Partition 1 stays owned; partition 0 is taken over again later in the run (epoch 2).
        jobs.send(job_of(1, 1, 4)).unwrap();
        jobs.send(job_of(0, 2, 5)).unwrap();
        // A cooperative rebalance revokes partition 0; the run and its worker go on.
        live.end(0, 1);
        gate.release.add_permits(5);
        // One request at a time, in queue order: once the last job is answered, every job
        // before it was fetched or dropped.
        let answered: Vec<(i32, u64)> = tokio::task::block_in_place(|| {
            let mut answered = Vec::new();
            while answered.last() != Some(&(0, 2)) {
                let done = done_rx
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .unwrap_or_else(|_| panic!("answers so far: {answered:?}"));
                answered.push((done.job.partition, done.job.epoch));
            }
            answered
        });
        assert_eq!(
            answered,
            vec![(0, 1), (1, 1), (0, 2)],
            "the request already under way, the other partition's job and the new epoch's; \
             not the revoked epoch's queued jobs"
        );
        assert_eq!(gate.requests.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn an_ended_epoch_ends_its_older_jobs_not_a_later_takeovers() {
        let live = LiveJobs::default();
        assert!(live.is_live(&job_of(3, 7, 1)));
        live.end(3, 7);
        live.end(3, 5);
        assert!(!live.is_live(&job_of(3, 7, 1)));
        assert!(!live.is_live(&job_of(3, 6, 1)));
        assert!(live.is_live(&job_of(3, 8, 1)));
        assert!(live.is_live(&job_of(2, 7, 1)));
    }
}
