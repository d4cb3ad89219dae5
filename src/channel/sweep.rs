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
//!
//! Back-fill's retention and how it answers past it are undocumented (GoTo unknown #7): a 404, or
//! a 200 with no states or only the newer ones. So back-fill's answer counts as the call only when
//! it is the whole ended call (sequence 1 to n, the last an `ENDING`); otherwise the call's report,
//! which keeps every state, fills in what it lacks. A call neither has a state of is counted as a
//! catch-up failure and not remembered as swept.
//!
//! Windows are this host's time while GoTo lists calls by its own `callCreated`: besides
//! [`SWEEP_MARGIN`], each window is widened by the clock skew measured from GoTo's `Date` headers.

use super::activity::DiscoveryActivity;
use super::catchup::{retried, write_raw};
use crate::goto::{BackfilledState, ConversationEvents, GotoClient, GotoError};
use crate::ingest::Ingest;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Margin around an outage window: clocks differ, and GoTo stamps `callCreated` itself. A window
/// is widened further, when it is swept, by the skew between this host's clock and GoTo's as
/// measured from GoTo's `Date` headers ([`GotoClient::goto_clock_skew`]).
pub const SWEEP_MARGIN: Duration = Duration::from_secs(10);
/// The most a window is widened for clock skew: a larger one is a broken clock or `Date` header
/// (logged by the transport), and a window far wider lists more calls than it can be worth.
const MAX_SKEW_WIDENING: Duration = Duration::from_secs(3600);
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

    /// How many windows wait.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no window waits.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
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
    activity: DiscoveryActivity,
    retention: OnceLock<Duration>,
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
            activity: DiscoveryActivity::default(),
            retention: OnceLock::new(),
        });
        let sweeper = ReportSweeper { shared };
        let task = sweeper.clone();
        tokio::spawn(async move { task.run(client, ingest, account_keys, stop).await });
        sweeper
    }

    /// Sweeps `window` (widened by [`SWEEP_MARGIN`]) once `channel.report_sweep_delay` has passed.
    pub fn request(&self, window: Window) {
        let due = Instant::now() + self.shared.delay;
        let mut pending = self.pending();
        pending.add(window, due);
        self.shared
            .activity
            .sweep_windows_waiting(pending.len() as u64);
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// How long the sequencer remembers a completed call (`sequencer.closed_retention`; set
    /// once, later calls are ignored). A sweep that writes a call while its window reaches
    /// further back than this may hand the sequencer a completed call it has already forgotten,
    /// which it would publish again: such a sweep is logged as a warning and counted in
    /// `callbridge_report_sweeps_past_retention_total`. Configuration checks keep the lookback
    /// and delay within half of it; what they cannot bound is a sweep that runs late, queued
    /// behind others at GoTo's 10 requests/s, or a window that starts far back (a long outage,
    /// a large clock skew).
    pub fn set_sequencer_retention(&self, retention: Duration) {
        let _ = self.shared.retention.set(retention);
    }

    /// The process's discovery activity: this sweeper's windows, and the catch-ups, which count
    /// themselves in it (every part of discovery holds the sweeper already).
    pub fn activity(&self) -> DiscoveryActivity {
        self.shared.activity.clone()
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
            let due = {
                let mut pending = self.pending();
                let due = pending.take_due(Instant::now());
                self.shared
                    .activity
                    .sweep_windows(due.len() as u64, pending.len() as u64);
                due
            };
            let mut running = due.len() as u64;
            for window in due {
                // A sweep cut short by shutdown ends with the process anyway; stopping here also
                // lets the producer it holds go when the bridge stops inside a longer-lived
                // process (demo).
                let retention = self.shared.retention.get().copied();
                tokio::select! {
                    _ = sweep(&client, &ingest, &account_keys, window, retention, &mut swept) => {}
                    _ = stop.changed() => return,
                }
                // Counted as swept before it stops counting as pending: whoever sees the
                // activity idle sees the count too.
                self.shared.windows_swept.send_modify(|n| *n += 1);
                running -= 1;
                let pending = self.pending();
                self.shared
                    .activity
                    .sweep_windows(running, pending.len() as u64);
            }
        }
    }
}

/// Writes every state of every call created in `window` (and ended by now) that `swept` does not
/// hold to raw, from the report summaries and the back-fill endpoint, and remembers the calls
/// written in full. Every step is retried like catch-up's. Says so when it wrote a call while
/// the window reached further back than `retention` (see
/// [`ReportSweeper::set_sequencer_retention`]).
async fn sweep(
    client: &GotoClient,
    ingest: &Ingest,
    account_keys: &[String],
    window: Window,
    retention: Option<Duration>,
    swept: &mut SweptCalls,
) {
    let skew = client.goto_clock_skew();
    let (from, to) = widened_for_skew(window, skew);
    let (mut calls, mut already_swept, mut written) = (0usize, 0usize, 0u64);
    // The oldest call a write could reach was created at `from` by GoTo's clock, which is this
    // host's `from` less the skew when GoTo runs ahead; it ended no earlier. Written after that
    // plus `retention`, it may be one the sequencer has forgotten.
    let oldest = from
        .checked_sub(Duration::from_secs_f64(
            skew.filter(|s| s.is_finite() && *s > 0.0)
                .unwrap_or(0.0)
                .min(MAX_SKEW_WIDENING.as_secs_f64()),
        ))
        .unwrap_or(from);
    let mut past_retention = false;
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
                Ok(ConversationEvents::NotFound) => with_report(client, &id, Vec::new()).await,
                // An answer that is not the whole ended call: GoTo may answer a call past
                // back-fill's retention with 200 and no states rather than 404, or with only the
                // states it still keeps (unknown #7). Taken as whole, an empty answer wrote
                // nothing and the call was remembered as swept: in neither raw, dead-letter nor a
                // gap record, and never fetched again.
                Ok(ConversationEvents::Found(states)) if !whole_call(&states) => {
                    with_report(client, &id, states).await
                }
                Ok(ConversationEvents::Found(states)) => Ok(states),
                Err(e) => Err(e),
            };
            match fetched {
                Ok(states) if states.is_empty() => {
                    // Listed in the reports, so it happened, but neither back-fill nor its report
                    // has a state of it. Counted as a catch-up failure (alerted) and not
                    // remembered, so a later window that lists it fetches it again.
                    metrics::counter!("callbridge_catchup_failures_total").increment(1);
                    tracing::error!(conversation = %id, "report sweep: a call listed in the report summaries has no state in back-fill nor in its report");
                }
                Ok(states) => {
                    let (mut complete, written_before) = (true, written);
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
                    past_retention |= written > written_before
                        && retention.is_some_and(|r| {
                            SystemTime::now()
                                .duration_since(oldest)
                                .is_ok_and(|reach| reach > r)
                        });
                    if complete {
                        swept.remember(&id, Instant::now());
                    }
                }
                Err(e) => {
                    metrics::counter!("callbridge_catchup_failures_total").increment(1);
                    tracing::error!(error = %e, conversation = %id, "report sweep: fetching a call's states failed for good")
                }
            }
        }
    }
    if past_retention {
        metrics::counter!("callbridge_report_sweeps_past_retention_total").increment(1);
        tracing::warn!(
            window_from = %humantime::format_rfc3339_seconds(from),
            window_to = %humantime::format_rfc3339_seconds(to),
            retention = %humantime::format_duration(retention.unwrap_or_default()),
            "report sweep: calls were written while the window reached further back than \
             sequencer.closed_retention; a completed call the sequencer had already forgotten \
             may be published again (check the ordered topic for this window's calls). The sweep ran \
             late (callbridge_report_sweep_windows_pending, GoTo API latency) or the outage was \
             long: raise sequencer.closed_retention"
        );
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

/// `window` widened on both sides by `skew` (GoTo's clock minus this host's, seconds), up to
/// [`MAX_SKEW_WIDENING`]. The window is this host's time and GoTo lists calls by its own
/// `callCreated`, so with GoTo `s` seconds off, a call at a window's edge is stamped `s` seconds
/// outside it: [`SWEEP_MARGIN`] alone covers only 10 s. Widening either way covers a skew of either
/// sign, and what it adds is harmless: calls the sequencer already has are dropped as duplicates.
fn widened_for_skew((from, to): Window, skew: Option<f64>) -> Window {
    let Some(skew) = skew.filter(|s| s.is_finite()) else {
        return (from, to);
    };
    let extra = Duration::from_secs_f64(skew.abs().ceil().min(MAX_SKEW_WIDENING.as_secs_f64()));
    (from.checked_sub(extra).unwrap_or(from), to + extra)
}

/// Whether `states` hold a whole ended call: sequence numbers 1 to n without a hole, the last an
/// `ENDING` (a call listed in the report summaries has ended).
fn whole_call(states: &[BackfilledState]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let seqs: BTreeSet<u64> = states.iter().map(|s| s.sequence_number).collect();
    let Some(&last) = seqs.last() else {
        return false;
    };
    let ends = states
        .iter()
        .filter(|s| s.sequence_number == last)
        .any(|s| {
            serde_json::from_str::<Kind>(s.state.get())
                .is_ok_and(|k| k.kind.is_some_and(|k| k.eq_ignore_ascii_case("ENDING")))
        });
    seqs.first() == Some(&1) && seqs.len() as u64 == last && ends
}

/// `states` (what back-fill answered, possibly nothing) with the states only the call's report
/// still has added, in sequence order. Without a report (404, or it failed for good), `states`
/// as they are, unless they are none: then the report's failure is the answer.
async fn with_report(
    client: &GotoClient,
    id: &str,
    mut states: Vec<BackfilledState>,
) -> Result<Vec<BackfilledState>, GotoError> {
    match retried("report sweep: reading a call's report", || {
        client.report_states(id)
    })
    .await
    {
        Ok(Some(report)) => {
            let have: HashSet<u64> = states.iter().map(|s| s.sequence_number).collect();
            states.extend(
                report
                    .into_iter()
                    .filter(|s| !have.contains(&s.sequence_number)),
            );
            states.sort_by_key(|s| s.sequence_number);
            Ok(states)
        }
        Ok(None) => Ok(states),
        Err(e) if states.is_empty() => Err(e),
        // Back-fill's states are written; the sequencer back-fills what they lack.
        Err(e) => {
            tracing::warn!(error = %e, conversation = %id, "report sweep: reading a call's report failed; writing back-fill's states alone");
            Ok(states)
        }
    }
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
    fn windows_are_widened_by_the_clock_skew_either_way() {
        let w = (at(1_000), at(2_000));
        assert_eq!(widened_for_skew(w, None), w, "no Date seen yet");
        // GoTo 30.2 s behind or ahead: a call at either edge is stamped up to 31 s outside.
        assert_eq!(widened_for_skew(w, Some(-30.2)), (at(969), at(2_031)));
        assert_eq!(widened_for_skew(w, Some(30.2)), (at(969), at(2_031)));
        assert_eq!(
            widened_for_skew(w, Some(1e300)),
            (at(1_000) - MAX_SKEW_WIDENING, at(2_000) + MAX_SKEW_WIDENING),
            "capped"
        );
        assert_eq!(widened_for_skew(w, Some(f64::NAN)), w);
    }

    fn state(seq: u64, kind: &str) -> BackfilledState {
        BackfilledState {
            sequence_number: seq,
            metadata: None,
            state: serde_json::value::RawValue::from_string(format!(
                r#"{{"sequenceNumber":{seq},"type":"{kind}"}}"#
            ))
            .unwrap(),
        }
    }

    #[test]
    fn only_states_1_to_n_ending_in_ending_are_a_whole_call() {
        let whole = [state(2, "ACTIVE"), state(1, "STARTING"), state(3, "ENDING")];
        assert!(whole_call(&whole));
        assert!(!whole_call(&[]), "back-fill answered 200 with no states");
        assert!(!whole_call(&whole[..2]), "no ENDING: the tail is missing");
        assert!(!whole_call(&whole[1..]), "a hole at 2");
        assert!(!whole_call(&whole[..1]), "no sequence 1");
        assert!(whole_call(&[
            state(1, "STARTING"),
            state(1, "STARTING"),
            state(2, "ENDING")
        ]));
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
