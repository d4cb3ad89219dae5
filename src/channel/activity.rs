//! What this bridge's discovery has running or waiting: catch-ups of active calls and report
//! sweeps of outage windows.
//!
//! Both find calls GoTo never delivered a word of, so while either is busy the ordered stream is
//! not final: a call may still be found and published. Operators see the counts as gauges
//! (`callbridge_catchups_pending`, `callbridge_report_sweep_windows_pending`: a sweep window
//! waits `channel.report_sweep_delay` for GoTo's reports, so a few pending are normal after an
//! outage, a growing number is not). Whoever needs the stream final, the demo and the tests,
//! waits for [`DiscoveryActivity::idle`]; a gauge would not do there, since every bridge of a
//! test process writes to the same metrics recorder.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Shared counts of discovery work; cheap to clone (one `Arc`).
#[derive(Clone, Debug, Default)]
pub struct DiscoveryActivity(Arc<Counts>);

#[derive(Debug)]
struct Counts {
    /// Catch-ups running.
    catchups_running: AtomicU64,
    /// Catch-ups asked for and not started yet.
    catchups_asked: AtomicU64,
    /// Report sweep windows being swept.
    sweeps_running: AtomicU64,
    /// Report sweep windows waiting for their due time.
    sweeps_waiting: AtomicU64,
    /// Bumped at every change, for [`DiscoveryActivity::wait_idle`] and
    /// [`DiscoveryActivity::changes`].
    changes: watch::Sender<u64>,
    /// Held while the gauges are set, so a stale value is never written after a fresh one.
    export: Mutex<()>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            catchups_running: AtomicU64::new(0),
            catchups_asked: AtomicU64::new(0),
            sweeps_running: AtomicU64::new(0),
            sweeps_waiting: AtomicU64::new(0),
            changes: watch::channel(0).0,
            export: Mutex::new(()),
        }
    }
}

impl DiscoveryActivity {
    /// Counts a catch-up as running until the guard is dropped (also when its task is cancelled).
    pub fn catchup_running(&self) -> CatchupRunning {
        self.0.catchups_running.fetch_add(1, SeqCst);
        self.export_catchups();
        CatchupRunning(self.clone())
    }

    /// `n` more catch-ups asked for and not started yet.
    pub fn catchups_asked(&self, n: u64) {
        self.0.catchups_asked.fetch_add(n, SeqCst);
        self.export_catchups();
    }

    /// `n` of the catch-ups asked for started, or will not: a runner that starts one takes
    /// [`catchup_running`](Self::catchup_running) before it settles the asks it covers.
    pub fn catchups_settled(&self, n: u64) {
        self.0.catchups_asked.fetch_sub(n, SeqCst);
        self.export_catchups();
    }

    /// The sweeper's windows not due yet.
    pub fn sweep_windows_waiting(&self, waiting: u64) {
        self.0.sweeps_waiting.store(waiting, SeqCst);
        self.export_sweeps();
    }

    /// The sweeper's windows: `running` being swept, `waiting` not due yet. Stored running first,
    /// so that a window moving from waiting to running is never seen as neither by
    /// [`idle`](Self::idle), which reads waiting first.
    pub fn sweep_windows(&self, running: u64, waiting: u64) {
        self.0.sweeps_running.store(running, SeqCst);
        self.0.sweeps_waiting.store(waiting, SeqCst);
        self.export_sweeps();
    }

    /// Catch-ups running or asked for.
    pub fn catchups(&self) -> u64 {
        self.0.catchups_asked.load(SeqCst) + self.0.catchups_running.load(SeqCst)
    }

    /// Report sweep windows waiting or being swept.
    pub fn sweep_windows_pending(&self) -> u64 {
        self.0.sweeps_waiting.load(SeqCst) + self.0.sweeps_running.load(SeqCst)
    }

    /// Nothing running or waiting. Each count is read in the order its writer hands work on
    /// (asked before running, waiting before running), so work moving from one to the next is
    /// never missed in between.
    pub fn idle(&self) -> bool {
        self.catchups() == 0 && self.sweep_windows_pending() == 0
    }

    /// How many times the counts changed: work that came and went between two looks at
    /// [`idle`](Self::idle) still shows here.
    pub fn changes(&self) -> u64 {
        *self.0.changes.borrow()
    }

    /// Returns once nothing is running or waiting.
    pub async fn wait_idle(&self) {
        // Subscribed before each check, so a change after it is never missed.
        let mut changes = self.0.changes.subscribe();
        while !self.idle() {
            if changes.changed().await.is_err() {
                return; // not reachable: `self` holds the sender
            }
        }
    }

    fn export_sweeps(&self) {
        let _one_at_a_time = self.0.export.lock().unwrap_or_else(PoisonError::into_inner);
        metrics::gauge!("callbridge_report_sweep_windows_pending")
            .set(self.sweep_windows_pending() as f64);
        self.0.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn export_catchups(&self) {
        let _one_at_a_time = self.0.export.lock().unwrap_or_else(PoisonError::into_inner);
        metrics::gauge!("callbridge_catchups_pending").set(self.catchups() as f64);
        self.0.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A running catch-up, counted until dropped.
#[derive(Debug)]
pub struct CatchupRunning(DiscoveryActivity);

impl Drop for CatchupRunning {
    fn drop(&mut self) {
        (self.0).0.catchups_running.fetch_sub(1, SeqCst);
        self.0.export_catchups();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_counted_until_it_ends() {
        let a = DiscoveryActivity::default();
        assert!(a.idle());
        a.catchups_asked(2);
        assert_eq!(a.catchups(), 2);
        let running = a.catchup_running();
        a.catchups_settled(2);
        assert_eq!(a.catchups(), 1);
        assert!(!a.idle());
        drop(running);
        assert!(a.idle());

        a.sweep_windows_waiting(3);
        assert_eq!(a.sweep_windows_pending(), 3);
        a.sweep_windows(1, 0);
        assert!(!a.idle(), "a window being swept");
        let before = a.changes();
        a.sweep_windows(0, 0);
        assert!(a.idle());
        assert!(a.changes() > before, "every change is counted");
    }

    #[tokio::test]
    async fn waiting_for_idle_returns_when_the_last_work_ends() {
        let a = DiscoveryActivity::default();
        a.wait_idle().await; // idle already
        let running = a.catchup_running();
        a.sweep_windows_waiting(1);
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.wait_idle().await }
        });
        drop(running);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a sweep window still waits");
        a.sweep_windows(0, 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle once the window is swept")
            .unwrap();
    }

    #[test]
    fn clones_share_the_counts() {
        let a = DiscoveryActivity::default();
        let b = a.clone();
        let _running = b.catchup_running();
        assert!(!a.idle());
    }
}
