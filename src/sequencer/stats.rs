//! What the sequencer counts, for the shell to export as metrics, and the partition-wide
//! bookkeeping every conversation updates (held raw offsets, the "checkpoint changed" flag).

use std::collections::BTreeMap;

use super::{SequencerConfig, Timestamp};

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
    /// States dead-lettered as `ImplausibleSequence`.
    pub implausible_sequence: u64,
    /// States dead-lettered as `InsideDeclaredGap`.
    pub inside_declared_gap: u64,
    /// States dead-lettered as `AfterAbandonment`.
    pub after_abandonment: u64,
    /// Times a conversation started waiting for a missing state.
    pub gaps_detected: u64,
    /// Gap records published because the states are gone.
    pub gaps_gone: u64,
    /// Gap records published because the back-fill kept failing, went unanswered until
    /// `backfill_max_wait`, or the conversation was abandoned with states held.
    pub gaps_backfill_failed: u64,
    /// Back-fill requests for a known gap.
    pub backfills_requested: u64,
    /// Open-ended idle probes requested.
    pub probes_requested: u64,
    /// Back-fill answers reported as failed.
    pub backfills_failed: u64,
    /// Completion records published.
    pub completions: u64,
    /// Conversations abandoned (given up open; forgotten once quiet for another
    /// `abandon_after` and the raw low watermark passed their states, not counted in
    /// `closed_evicted`).
    pub abandoned: u64,
    /// Completed conversations evicted after `closed_retention` (and once the raw low
    /// watermark passed their states).
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
    /// Completed conversations still remembered for duplicate detection, and abandoned ones
    /// still remembered for the raw low watermark.
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
    /// One past the highest raw offset read (or announced as the previous owner's end); 0:
    /// none. A conversation closing takes it as its raw mark.
    pub(crate) raw_end: u64,
    /// One past the highest raw offset this core has read itself (live states, and every
    /// record the shell reports with `PartitionSequencer::raw_read_to`); 0: none. Unlike
    /// `raw_end` never raised by an announcement: a closed conversation is forgotten only once
    /// this has reached its raw mark.
    read_to: u64,
    /// The previous owner's raw end was announced (`PartitionSequencer::restored_raw_end`).
    raw_end_announced: bool,
    /// When this core was seeded by a takeover (restore, scan), if it was.
    seeded_at: Option<Timestamp>,
}

impl Ledger {
    pub(crate) fn hold(&mut self, raw_offset: Option<i64>) {
        self.held_total += 1;
        if let Some(o) = raw_offset {
            *self.held_offsets.entry(o).or_insert(0) += 1;
        }
    }

    /// Gives a state already held without a raw record (back-filled) the record of its live
    /// copy: released with it by [`Self::release`].
    pub(crate) fn pin(&mut self, raw_offset: i64) {
        *self.held_offsets.entry(raw_offset).or_insert(0) += 1;
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

    /// A live state from raw offset `raw_offset` was read.
    pub(crate) fn read_raw(&mut self, raw_offset: Option<i64>) {
        if let Some(o) = raw_offset.and_then(|o| u64::try_from(o).ok()) {
            self.read_to(o.saturating_add(1));
        }
    }

    /// Raw has been read up to `next` (exclusive), whatever the records were.
    pub(crate) fn read_to(&mut self, next: u64) {
        self.read_to = self.read_to.max(next);
        self.raw_end = self.raw_end.max(next);
    }

    /// The previous owner read raw no further than `end` (exclusive).
    pub(crate) fn announce_raw_end(&mut self, end: i64) {
        self.raw_end_announced = true;
        self.raw_end = self.raw_end.max(u64::try_from(end).unwrap_or(0));
    }

    /// This core is being seeded by a takeover (the latest such call counts).
    pub(crate) fn seeded(&mut self, now: Timestamp) {
        self.seeded_at = Some(self.seeded_at.map_or(now, |t| t.max(now)));
    }

    /// This core has read raw up to raw mark `mark` and no held live state lies below it: a
    /// takeover resuming at the raw low watermark reads nothing below it again. Both are needed:
    /// right after a takeover nothing is held, yet the re-read has not reached the records of
    /// the calls it restored (their mark is the previous owner's announced end).
    pub(crate) fn watermark_passed(&self, mark: u64) -> bool {
        self.read_to >= mark
            && self
                .low_watermark()
                .is_none_or(|w| u64::try_from(w).is_ok_and(|w| w >= mark))
    }

    /// The raw mark of a conversation closed by a takeover, whose records may lie anywhere the
    /// previous owner had read: `Ok` once this core has read that far, as far as it can tell;
    /// `Err(t)`: ask again at `t`. Announced (the shell announces the previous owner's raw end at
    /// every takeover), the previous owner's end settles it exactly; otherwise the takeover's re-read
    /// is given `gap_timeout + backfill_max_wait` to catch up first, a guess only a core driven
    /// without the shell relies on.
    pub(crate) fn unknown_raw_mark(
        &self,
        cfg: &SequencerConfig,
        now: Timestamp,
    ) -> Result<u64, Timestamp> {
        match self.seeded_at {
            Some(t) if !self.raw_end_announced => {
                let settled = t.plus(cfg.gap_timeout).plus(cfg.backfill_max_wait);
                if now < settled {
                    return Err(settled);
                }
                Ok(self.raw_end)
            }
            _ => Ok(self.raw_end),
        }
    }
}
