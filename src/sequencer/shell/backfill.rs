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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

/// Starts the worker on `runtime`; jobs go in through the returned sender, answers come out
/// through `done`. At most `concurrency` requests run at once (the client rate-limits further).
pub fn spawn_worker(
    runtime: &tokio::runtime::Handle,
    source: Arc<dyn BackfillSource>,
    concurrency: usize,
    done: std::sync::mpsc::Sender<BackfillDone>,
) -> tokio::sync::mpsc::UnboundedSender<BackfillJob> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BackfillJob>();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    runtime.spawn(async move {
        let queued = metrics::gauge!("callbridge_backfill_queued");
        while let Some(job) = rx.recv().await {
            queued.set(rx.len() as f64);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            // The wait for a permit is where the time goes: what arrived meanwhile counts too.
            queued.set(rx.len() as f64);
            let source = source.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let fetched = source
                    .fetch(&job.conversation.as_text(), job.from, job.to)
                    .await;
                drop(permit);
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
                // The consumer thread may be gone (shutdown); nothing to do then.
                let _ = done.send(BackfillDone { job, fetched });
            });
        }
    });
    tx
}
