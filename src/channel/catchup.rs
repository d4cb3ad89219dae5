//! Catch-up after an outage of the notification channel.
//!
//! While a WebSocket is down or a webhook channel is gone, GoTo delivers nothing. A call that had
//! at least one state delivered before or after the outage heals by itself (the sequencer sees
//! the gap and back-fills it); a call whose every state so far fell into the outage would be
//! invisible. So after every (re)connect and every channel recreation, callbridge lists the
//! active calls of its accounts and writes each one's last state into the raw topic like a
//! received notification: the sequencer then treats it as "first seen at k" and back-fills 1..k-1.
//! Duplicates of what was already seen are dropped by the sequencer as usual.
//!
//! A call that started AND ended entirely inside an outage is no longer active: the report sweep
//! ([`super::sweep`]) finds those.
//!
//! The WebSocket session asks for a catch-up at every connect, and a socket can drop every few
//! seconds: [`CatchUps`] runs them one at a time (see there why one more, not a restart).

use super::activity::DiscoveryActivity;
use crate::goto::GotoClient;
use crate::ingest::{Accepted, Ingest, Transport};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Attempts per step of a catch-up or sweep (listing, one call's states, one raw write): a
/// catch-up that gives up on the first 429 or revoked token leaves a call that nobody else knows
/// about invisible for good (a CI run of the WebSocket fault suite lost two whole calls that way).
const ATTEMPTS: u32 = 6;
/// First pause between attempts; doubles each time (0.5 + 1 + 2 + 4 + 8 s in all).
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// Runs `step` until it succeeds or [`ATTEMPTS`] ran out, pausing with doubling backoff; each
/// failure is logged with `what`. Returns the last error when every attempt failed.
pub(super) async fn retried<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    what: &str,
    mut step: impl FnMut() -> F,
) -> Result<T, E> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// Writes one catch-up or sweep body to raw, retried (Kafka may be restarting).
pub(super) async fn write_raw(ingest: &Ingest, body: &[u8], what: &str) -> bool {
    match retried(what, || ingest.accept(body, Transport::Catchup)).await {
        Ok(Accepted::Raw) => true,
        Ok(other) => {
            tracing::debug!(?other, "{what}: not routed to raw");
            false
        }
        Err(e) => {
            metrics::counter!("callbridge_catchup_failures_total").increment(1);
            tracing::error!(error = %e, "{what} failed for good; back-fill is the only way left");
            false
        }
    }
}

/// Lists the active calls of `account_keys` and writes their last states to the raw topic.
/// Returns how many were written. Each step is retried a few times; what still fails is logged
/// and counted (`callbridge_catchup_failures_total`): catch-up sits on top of back-fill.
pub async fn catch_up(client: &GotoClient, ingest: &Ingest, account_keys: &[String]) -> usize {
    let items = match retried("catch-up: listing active calls", || {
        client.active_conversations(account_keys)
    })
    .await
    {
        Ok(items) => items,
        Err(e) => {
            metrics::counter!("callbridge_catchup_failures_total").increment(1);
            tracing::error!(error = %e, "catch-up: listing active calls failed for good");
            return 0;
        }
    };
    let mut written = 0;
    for item in items {
        if write_raw(
            ingest,
            item.get().as_bytes(),
            "catch-up: writing an active call",
        )
        .await
        {
            written += 1;
        }
    }
    metrics::counter!("callbridge_catchup_states_total").increment(written as u64);
    tracing::info!(active_calls = written, "catch-up after (re)connect");
    written
}

/// Catch-ups run one at a time, in a task of their own: asked for while one runs, one more runs
/// once it ends, however many were asked for meanwhile.
///
/// The next run lists the calls active when it starts, after every reconnect asked for, so
/// nothing is missed by waiting (a call that ended meanwhile is in the report sweep's window).
/// Restarting instead (cancelling the running catch-up for a new one) would not keep GoTo at
/// one listing at a time (it still answers a request whose client went away, and spends the
/// rate budget back-fill shares on it), and while reconnects came faster than a catch-up
/// lasts, none would ever finish.
pub struct CatchUps {
    asked: Arc<Notify>,
    /// Asks not yet covered by a run that started after them (shown in `activity`).
    unstarted: Arc<AtomicU64>,
    activity: DiscoveryActivity,
    task: tokio::task::JoinHandle<()>,
}

impl CatchUps {
    /// The runner, idle until [`CatchUps::ask`]. It ends at `shutdown` (the next owner catches
    /// up on connecting) or when dropped.
    pub fn spawn(
        client: GotoClient,
        ingest: Ingest,
        account_keys: Vec<String>,
        activity: DiscoveryActivity,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let asked = Arc::new(Notify::new());
        let unstarted = Arc::new(AtomicU64::new(0));
        let (waiting, covered, counts) = (asked.clone(), unstarted.clone(), activity.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = waiting.notified() => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                // Counted as running before the asks it covers are settled, so the activity
                // never reads idle in between.
                let _running = counts.catchup_running();
                counts.catchups_settled(covered.swap(0, SeqCst));
                tokio::select! {
                    _ = catch_up(&client, &ingest, &account_keys) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        });
        Self {
            asked,
            unstarted,
            activity,
            task,
        }
    }

    /// Asks for a catch-up: now if none is running, else once the running one ends.
    pub fn ask(&self) {
        // Counted before the runner can see it, so settling it never runs ahead of the count.
        self.activity.catchups_asked(1);
        self.unstarted.fetch_add(1, SeqCst);
        // One stored permit at most: asks made while one runs add up to one more run.
        self.asked.notify_one();
    }
}

impl Drop for CatchUps {
    fn drop(&mut self) {
        self.task.abort();
        self.activity
            .catchups_settled(self.unstarted.swap(0, SeqCst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn steps_are_retried_with_backoff_then_given_up() {
        let calls = std::cell::Cell::new(0u32);
        let started = tokio::time::Instant::now();
        let r: Result<u32, String> = retried("flaky", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(format!("failure {n}"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(started.elapsed(), FIRST_PAUSE * 3, "0.5 s then 1 s");

        calls.set(0);
        let r: Result<(), String> = retried("broken", || {
            calls.set(calls.get() + 1);
            async { Err("down".to_string()) }
        })
        .await;
        assert_eq!(r, Err("down".into()));
        assert_eq!(calls.get(), ATTEMPTS);
    }
}
