//! What the sequencer counts, for the shell to export as metrics, and the partition-wide
//! bookkeeping every conversation updates (held raw offsets, the "checkpoint changed" flag).

use std::collections::BTreeMap;

use super::Timestamp;

/// Monotonic counters since the sequencer was created. The shell exports them as counters
/// (or diffs successive snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// States published (any origin).
    pub published: u64,
    /// Live states dropped because their sequence was already published or held with the same
    /// content (or is older than the conflict window).
    pub duplicates_dropped: u64,
    /// Back-filled states that were already published or held (normal overlap).
    pub backfill_overlap: u64,
    /// States dead-lettered as `ConflictingDuplicate`.
    pub conflicts: u64,
    /// States dead-lettered as `AfterEnding`.
    pub after_ending: u64,
    /// States dead-lettered as `InvalidSequence`.
    pub invalid_sequence: u64,
    /// Times a conversation started waiting for a missing state.
    pub gaps_detected: u64,
    /// Gap records published because the states are gone.
    pub gaps_gone: u64,
    /// Gap records published because the back-fill kept failing.
    pub gaps_backfill_failed: u64,
    /// Back-fill requests for a known gap.
    pub backfills_requested: u64,
    /// Open-ended idle probes requested.
    pub probes_requested: u64,
    /// Back-fill answers reported as failed.
    pub backfills_failed: u64,
    /// Completion records published.
    pub completions: u64,
    /// Conversations abandoned (evicted open).
    pub abandoned: u64,
    /// Closed conversations evicted after `closed_retention`.
    pub closed_evicted: u64,
}

/// A snapshot of counters plus gauges. Gauges are computed by walking every conversation, so
/// take snapshots on a metrics interval, not per record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequencerStats {
    /// Monotonic counters.
    pub counters: Counters,
    /// Conversations waiting for a missing state.
    pub open_gaps: usize,
    /// When the oldest of those started waiting.
    pub oldest_open_gap_since: Option<Timestamp>,
    /// States held back behind a gap.
    pub held_states: usize,
    /// Conversations not yet completed.
    pub open_conversations: usize,
    /// Completed conversations still remembered for duplicate detection.
    pub closed_conversations: usize,
    /// Quiet conversations waiting for an idle-probe slot (`idle_probes_in_flight`).
    pub probes_waiting: usize,
}

/// Partition-wide state the per-conversation rules update.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) counters: Counters,
    /// Raw offsets of held live states, as a multiset (offset → count).
    held_offsets: BTreeMap<i64, u32>,
    pub(crate) held_total: usize,
    /// Set when a conversation's checkpoint changed; the partition moves it to the dirty set.
    pub(crate) changed: bool,
}

impl Ledger {
    pub(crate) fn hold(&mut self, raw_offset: Option<i64>) {
        self.held_total += 1;
        if let Some(o) = raw_offset {
            *self.held_offsets.entry(o).or_insert(0) += 1;
        }
    }

    pub(crate) fn release(&mut self, raw_offset: Option<i64>) {
        self.held_total = self.held_total.saturating_sub(1);
        if let Some(o) = raw_offset {
            if let Some(n) = self.held_offsets.get_mut(&o) {
                *n -= 1;
                if *n == 0 {
                    self.held_offsets.remove(&o);
                }
            }
        }
    }

    pub(crate) fn low_watermark(&self) -> Option<i64> {
        self.held_offsets.keys().next().copied()
    }
}
