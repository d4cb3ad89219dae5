//! The report sweep: finds the calls that started AND ended while nobody received GoTo's
//! notifications (a WebSocket down, a webhook channel gone, a new owner that cannot know when
//! its predecessor stopped, notifications Kafka would not take). Such a call is no longer active
//! when the channel is back, so catch-up cannot see it and nothing in raw names it.
//!
//! Reports appear only once a call has ended (GoTo: minutes later), so a window is swept
//! `channel.report_sweep_delay` after it is requested: the sweep lists the report summaries of
//! calls created in it, fetches each call's states from the back-fill endpoint and writes them
//! to raw, where the sequencer drops what it already has.
//!
//! One sweeper per process, because windows come in bursts: a socket cut every few seconds asks
//! for a window at every reconnect, each overlapping the last by its margins. Swept by a task
//! each, they ran side by side, listed the calls of every overlap again and fetched each one
//! again, all in the queue of GoTo's 10 requests/s that back-fill shares (reliability.md,
//! finding 14). So:
//! - windows that are due together and overlap are swept as one ([`PendingWindows`]);
//! - a call whose states were all fetched and written is not fetched again ([`SweptCalls`]):
//!   a call listed in the reports has ended, so its states no longer change.

use super::catchup::{retried, write_raw};
use crate::goto::{ConversationEvents, GotoClient};
use crate::ingest::Ingest;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Margin around an outage window: clocks differ, and GoTo stamps `callCreated` itself.
pub const SWEEP_MARGIN: Duration = Duration::from_secs(10);
/// How long a swept call is remembered. Overlapping windows are requested seconds or minutes
/// apart (their margins, a new owner's look-back); a call listed again after longer than this
/// is fetched again, which costs a request, nothing else.
const REMEMBER_FOR: Duration = Duration::from_secs(15 * 60);
/// The most swept calls remembered (~100 bytes each). Forgetting one early costs one request.
const REMEMBER_AT_MOST: usize = 50_000;

/// A span of wall-clock time in which calls may have gone unseen.
pub type Window = (SystemTime, SystemTime);

/// Windows waiting for their sweep, each with the time it is due.
#[derive(Debug, Default)]
pub struct PendingWindows {
    windows: Vec<(Window, Instant)>,
}

impl PendingWindows {
    /// Adds `window`, widened by [`SWEEP_MARGIN`] on both sides, to be swept at `due`.
    pub fn add(&mut self, (from, to): Window, due: Instant) {
        let from = from.checked_sub(SWEEP_MARGIN).unwrap_or(from);
        self.windows.push(((from, to + SWEEP_MARGIN), due));
    }

    /// When the next window is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.windows.iter().map(|(_, due)| *due).min()
    }

    /// Takes the windows due by `now`, overlapping ones merged, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Window> {
        let (mut due, later): (Vec<_>, Vec<_>) =
            self.windows.drain(..).partition(|(_, at)| *at <= now);
        self.windows = later;
        due.sort_by_key(|((from, _), _)| *from);
        let mut merged: Vec<Window> = Vec::with_capacity(due.len());
        for ((from, to), _) in due {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        merged
    }
}

/// The calls a sweep fetched and wrote in full, remembered for [`REMEMBER_FOR`] (at most
/// [`REMEMBER_AT_MOST`] of them, oldest forgotten first).
#[derive(Debug, Default)]
pub struct SweptCalls {
    order: VecDeque<(Instant, Arc<str>)>,
    ids: HashSet<Arc<str>>,
}

impl SweptCalls {
    /// Whether `id` was swept (and is still remembered).
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id` as swept at `now`, forgetting what is too old or too many.
    pub fn remember(&mut self, id: &str, now: Instant) {
        if self.ids.contains(id) {
            return;
        }
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < REMEMBER_FOR && self.order.len() < REMEMBER_AT_MOST {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(id.clone());
        self.order.push_back((now, id));
    }

    /// How many calls are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

struct Shared {
    pending: Mutex<PendingWindows>,
    wake: Notify,
    delay: Duration,
    windows_swept: watch::Sender<u64>,
}

/// The handle every part of the bridge requests sweeps through; the sweeping runs on one task
/// until the process stops.
#[derive(Clone)]
pub struct ReportSweeper {
    shared: Arc<Shared>,
}

impl ReportSweeper {
    /// Starts the sweeper: each requested window is swept `delay` after its request.
    pub fn spawn(
        client: GotoClient,
        ingest: Ingest,
        account_keys: Vec<String>,
        delay: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(PendingWindows::default()),
            wake: Notify::new(),
            delay,
            windows_swept: watch::channel(0).0,
        });
        let sweeper = ReportSweeper { shared };
        let task = sweeper.clone();
        tokio::spawn(async move { task.run(client, ingest, account_keys, stop).await });
        sweeper
    }

    /// Sweeps `window` (widened by [`SWEEP_MARGIN`]) once `channel.report_sweep_delay` has passed.
    pub fn request(&self, window: Window) {
        let due = Instant::now() + self.shared.delay;
        self.pending().add(window, due);
        self.shared.wake.notify_one();
    }

    /// How many (merged) windows have been swept so far.
    pub fn windows_swept(&self) -> watch::Receiver<u64> {
        self.shared.windows_swept.subscribe()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingWindows> {
        // Nothing panics while holding it; a poisoned list is still a list.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(
        &self,
        client: GotoClient,
        ingest: Ingest,
        account_keys: Vec<String>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut swept = SweptCalls::default();
        loop {
            let next = self.pending().next_due();
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.shared.wake.notified() => continue,
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            }
            let due = self.pending().take_due(Instant::now());
            for window in due {
                // A sweep cut short by shutdown ends with the process anyway; stopping here also
                // lets the producer it holds go when the bridge stops inside a longer-lived
                // process (demo).
                tokio::select! {
                    _ = sweep(&client, &ingest, &account_keys, window, &mut swept) => {}
                    _ = stop.changed() => return,
                }
                self.shared.windows_swept.send_modify(|n| *n += 1);
            }
        }
    }
}

/// Writes every state of every call created in `window` (and ended by now) that `swept` does not
/// hold to raw, from the report summaries and the back-fill endpoint, and remembers the calls
/// written in full. Every step is retried like catch-up's.
async fn sweep(
    client: &GotoClient,
    ingest: &Ingest,
    account_keys: &[String],
    (from, to): Window,
    swept: &mut SweptCalls,
) {
    let (mut calls, mut already_swept, mut written) = (0usize, 0usize, 0u64);
    for account in account_keys {
        let summaries = match retried("report sweep: listing report summaries", || {
            client.report_summaries(account, from, to)
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("callbridge_catchup_failures_total").increment(1);
                tracing::error!(error = %e, account = %account, "report sweep: listing report summaries failed for good");
                continue;
            }
        };
        for summary in summaries {
            let Some(id) = conversation_id(summary.get()) else {
                continue;
            };
            calls += 1;
            if swept.contains(&id) {
                already_swept += 1;
                continue;
            }
            let fetched = match retried("report sweep: fetching a call's states", || {
                client.conversation_events(&id, None, None)
            })
            .await
            {
                // Past back-fill's retention: the call's report keeps every state.
                Ok(ConversationEvents::NotFound) => {
                    retried("report sweep: reading a call's report", || {
                        client.report_states(&id)
                    })
                    .await
                    .map(|states| {
                        states.map_or(ConversationEvents::NotFound, ConversationEvents::Found)
                    })
                }
                other => other,
            };
            match fetched {
                Ok(ConversationEvents::Found(states)) => {
                    let mut complete = true;
                    for s in states {
                        let body = notification(&id, s.metadata.as_deref(), &s.state);
                        if write_raw(ingest, body.as_bytes(), "report sweep: writing a state").await
                        {
                            written += 1;
                        } else {
                            complete = false;
                        }
                    }
                    tracing::debug!(conversation = %id, complete, "report sweep: a call's states written");
                    if complete {
                        swept.remember(&id, Instant::now());
                    }
                }
                Ok(ConversationEvents::NotFound) => {}
                Err(e) => {
                    metrics::counter!("callbridge_catchup_failures_total").increment(1);
                    tracing::error!(error = %e, conversation = %id, "report sweep: fetching a call's states failed for good")
                }
            }
        }
    }
    metrics::counter!("callbridge_report_sweep_states_total").increment(written);
    metrics::counter!("callbridge_report_sweep_calls_skipped_total")
        .increment(already_swept as u64);
    tracing::info!(
        window_secs = to.duration_since(from).unwrap_or_default().as_secs(),
        calls,
        already_swept,
        states = written,
        "report sweep of an outage window"
    );
}

fn conversation_id(summary: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Summary {
        conversation_space_id: String,
    }
    serde_json::from_str::<Summary>(summary)
        .ok()
        .map(|s| s.conversation_space_id)
        .filter(|id| !id.is_empty())
}

/// A back-filled state as the notification GoTo would have sent (metadata synthesised from the
/// id when the back-fill answer carried none).
fn notification(
    id: &str,
    metadata: Option<&serde_json::value::RawValue>,
    state: &serde_json::value::RawValue,
) -> String {
    let metadata = match metadata {
        Some(m) => m.get().to_string(),
        None => serde_json::json!({ "conversationSpaceId": id }).to_string(),
    };
    format!(
        r#"{{"source":"call-events","type":"call-state","content":{{"metadata":{metadata},"state":{}}}}}"#,
        state.get()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn windows_due_together_are_merged_where_they_overlap() {
        let now = Instant::now();
        let mut p = PendingWindows::default();
        // Reconnects 2 s apart: their margins overlap.
        p.add((at(100), at(101)), now);
        p.add((at(102), at(103)), now);
        // An hour later: its own window.
        p.add((at(3_700), at(3_701)), now);
        // Not due yet.
        p.add((at(104), at(105)), now + Duration::from_secs(2));
        assert_eq!(p.next_due(), Some(now));
        let due = p.take_due(now);
        assert_eq!(due, vec![(at(90), at(113)), (at(3_690), at(3_711))]);
        assert_eq!(p.next_due(), Some(now + Duration::from_secs(2)));
        assert!(p.take_due(now).is_empty(), "taken once");
        assert_eq!(
            p.take_due(now + Duration::from_secs(2)),
            vec![(at(94), at(115))]
        );
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn a_window_contained_in_another_does_not_shrink_it() {
        let now = Instant::now();
        let mut p = PendingWindows::default();
        p.add((at(100), at(200)), now);
        p.add((at(150), at(160)), now);
        assert_eq!(p.take_due(now), vec![(at(90), at(210))]);
    }

    #[test]
    fn swept_calls_are_forgotten_when_old_or_too_many() {
        let t0 = Instant::now();
        let mut s = SweptCalls::default();
        s.remember("a", t0);
        s.remember("a", t0);
        assert_eq!(s.len(), 1, "remembered once");
        s.remember("b", t0 + Duration::from_secs(60));
        assert!(s.contains("a") && s.contains("b"));
        // "a" is too old once "c" comes; "b" is not.
        s.remember("c", t0 + REMEMBER_FOR);
        assert!(!s.contains("a"));
        assert!(s.contains("b") && s.contains("c"));

        let mut s = SweptCalls::default();
        for i in 0..REMEMBER_AT_MOST + 10 {
            s.remember(&format!("call-{i}"), t0);
        }
        assert_eq!(s.len(), REMEMBER_AT_MOST);
        assert!(!s.contains("call-9"), "oldest forgotten first");
        assert!(s.contains("call-10") && s.contains(&format!("call-{}", REMEMBER_AT_MOST + 9)));
    }

    #[test]
    fn swept_states_are_routable_notifications() {
        let state = serde_json::value::RawValue::from_string(
            r#"{"sequenceNumber":4,"type":"ENDING","extra":{"kept":true}}"#.into(),
        )
        .unwrap();
        let body = notification("c-9", None, &state);
        match crate::ingest::route::route(body.as_bytes()) {
            crate::ingest::route::Disposition::Raw {
                conversation_space_id,
            } => assert_eq!(conversation_space_id, "c-9"),
            other => panic!("not routable: {other:?}"),
        }
        assert!(
            body.contains(r#""extra":{"kept":true}"#),
            "unknown fields must survive"
        );
        assert_eq!(
            conversation_id(r#"{"conversationSpaceId":"c-9","callEnded":"x"}"#).as_deref(),
            Some("c-9")
        );
        assert_eq!(conversation_id(r#"{"conversationSpaceId":""}"#), None);
    }
}
