//! Crash points for the crash tests: `CALLBRIDGE_FAILPOINT=<name>[:<n>]` makes the process
//! SIGKILL itself the `n`-th time (default 1) execution passes the named point.
//!
//! Random kills from outside (the chaos suite) land wherever the process happens to be; these
//! put a kill exactly inside the windows the exactly-once argument has to cover (output acked
//! but index not written, index written but offset not committed, mid-takeover, mid-back-fill),
//! so each window is exercised on every run instead of by luck. Unarmed, a point costs one
//! relaxed load of an already-initialised `OnceLock`. The variable is an operator-invisible test
//! hook: it is not part of the configuration and never read anywhere else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every crash point, by name.
pub const POINTS: &[&str] = &[
    INGEST_AFTER_RAW_ACK,
    SEQUENCER_AFTER_OUTPUT_SENT,
    SEQUENCER_BEFORE_CHANGELOG,
    SEQUENCER_BEFORE_COMMIT,
    SEQUENCER_DURING_TAKEOVER_SCAN,
    SEQUENCER_BACKFILL_ANSWERED,
];

/// A notification is in the raw topic; GoTo has not been answered yet.
pub const INGEST_AFTER_RAW_ACK: &str = "ingest.after_raw_ack";
/// An output was handed to the producer, not yet acknowledged.
pub const SEQUENCER_AFTER_OUTPUT_SENT: &str = "sequencer.after_output_sent";
/// Outputs are acknowledged; the changelog snapshot covering them is not written yet.
pub const SEQUENCER_BEFORE_CHANGELOG: &str = "sequencer.before_changelog";
/// The changelog is written; the raw offset is not committed yet.
pub const SEQUENCER_BEFORE_COMMIT: &str = "sequencer.before_commit";
/// A takeover has written its fence and is about to scan the ordered topic.
pub const SEQUENCER_DURING_TAKEOVER_SCAN: &str = "sequencer.during_takeover_scan";
/// GoTo answered a back-fill; its states are not published yet.
pub const SEQUENCER_BACKFILL_ANSWERED: &str = "sequencer.backfill_answered";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<(String, u64)> {
    ARMED.get_or_init(|| {
        let spec = std::env::var("CALLBRIDGE_FAILPOINT").ok()?;
        let (name, n) = match spec.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some((name, n.max(1)))
    })
}

/// Passes the point `name`; kills the process when it is the armed point's `n`-th pass.
pub fn hit(name: &'static str) {
    let Some((armed, n)) = armed() else {
        return;
    };
    if armed != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *n {
        eprintln!("failpoint {name}: SIGKILL");
        // kill(1) rather than kill(2): the library forbids `unsafe`. This thread waits for the
        // signal, so the code after the point never runs.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        loop {
            std::thread::park();
        }
    }
}
