//! Fingerprints of the last few published states of one conversation, to tell a harmless late
//! duplicate from a conflicting one (same sequence number, different content).
//!
//! Keeping every fingerprint would cost 8 bytes per state for as long as the conversation is
//! remembered; duplicates arrive close to the original (webhook retries, WebSocket + webhook,
//! overlapping back-fill answers), so a fixed ring is enough. Bound: the [`CONFLICT_WINDOW`]
//! sequences just below `next` are checked; older duplicates and anything from before a restore
//! are dropped as plain duplicates. The ring stores 32-bit folds of the 64-bit fingerprints: a
//! fold can only collide (missing a conflict, ~2^-32), never invent one.
//!
//! The same window also knows which of those sequences were declared a gap (a bit per slot, in
//! what was padding), so a state arriving for one of them is told from a harmless duplicate.

/// How many sequence numbers below `next` are checked for conflicting duplicates.
pub const CONFLICT_WINDOW: u64 = 12;

#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    folds: [u32; CONFLICT_WINDOW as usize],
    /// Bit `seq % CONFLICT_WINDOW` set: that slot holds the fold of the published state at the
    /// one sequence in `next - CONFLICT_WINDOW .. next` with that residue.
    known: u16,
    /// Bit `seq % CONFLICT_WINDOW` set: that sequence (as for `known`) lies in a gap record.
    gap: u16,
}

/// What the window knows of a sequence below `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recent {
    /// Published with this fingerprint fold.
    Published(u32),
    /// Declared a gap.
    Gap,
    /// Outside the window, or passed without either (restore, observed output).
    Unknown,
}

impl Window {
    /// `seq` was published with `fingerprint` (and `next` becomes `seq + 1`).
    pub(crate) fn record(&mut self, seq: u64, fingerprint: u64) {
        let i = slot(seq);
        self.folds[i] = fold(fingerprint);
        self.known |= 1 << i;
        self.gap &= !(1 << i);
    }

    /// `next` moved over `from..=to` without a fingerprint (observed output, restore).
    pub(crate) fn forget(&mut self, from: u64, to: u64) {
        let bits = span(from, to);
        self.known &= !bits;
        self.gap &= !bits;
    }

    /// `next` moved over `from..=to` by a gap record.
    pub(crate) fn mark_gap(&mut self, from: u64, to: u64) {
        let bits = span(from, to);
        self.known &= !bits;
        self.gap |= bits;
    }

    /// What is known of `seq`, if inside the window below `next`.
    pub(crate) fn lookup(&self, seq: u64, next: u64) -> Recent {
        if seq >= next || next - seq > CONFLICT_WINDOW {
            return Recent::Unknown;
        }
        let i = slot(seq);
        if self.known & (1 << i) != 0 {
            Recent::Published(self.folds[i])
        } else if self.gap & (1 << i) != 0 {
            Recent::Gap
        } else {
            Recent::Unknown
        }
    }
}

/// The slot bits of `from..=to` (all of them once the range covers the window).
fn span(from: u64, to: u64) -> u16 {
    if to < from {
        return 0;
    }
    if to - from >= CONFLICT_WINDOW - 1 {
        return (1 << CONFLICT_WINDOW) - 1;
    }
    (from..=to).fold(0, |bits, seq| bits | 1 << slot(seq))
}

pub(crate) fn fold(fingerprint: u64) -> u32 {
    // Truncation is the point: both halves mixed into 32 bits.
    (fingerprint ^ (fingerprint >> 32)) as u32
}

fn slot(seq: u64) -> usize {
    // Always < CONFLICT_WINDOW (16), so the cast is lossless.
    (seq % CONFLICT_WINDOW) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exactly_the_window_below_next() {
        let mut w = Window::default();
        for seq in 1..=40 {
            w.record(seq, seq * 1000);
        }
        let next = 41;
        assert_eq!(w.lookup(40, next), Recent::Published(fold(40_000)));
        let oldest = next - CONFLICT_WINDOW;
        assert_eq!(
            w.lookup(oldest, next),
            Recent::Published(fold(oldest * 1000))
        );
        assert_eq!(
            w.lookup(oldest - 1, next),
            Recent::Unknown,
            "outside the window"
        );
        assert_eq!(w.lookup(41, next), Recent::Unknown, "not published yet");
    }

    #[test]
    fn forgotten_ranges_are_unknown() {
        let mut w = Window::default();
        for seq in 1..=5 {
            w.record(seq, seq);
        }
        w.forget(6, 8);
        w.record(9, 9);
        assert_eq!(w.lookup(7, 10), Recent::Unknown);
        assert_eq!(w.lookup(5, 10), Recent::Published(fold(5)));
        w.forget(10, 100);
        assert_eq!(w.lookup(9, 101), Recent::Unknown);
    }

    #[test]
    fn gap_sequences_are_told_from_published_and_unknown_ones() {
        let mut w = Window::default();
        w.record(1, 1);
        w.mark_gap(2, 4);
        w.record(5, 5);
        assert_eq!(w.lookup(1, 6), Recent::Published(fold(1)));
        assert_eq!(w.lookup(3, 6), Recent::Gap);
        assert_eq!(w.lookup(5, 6), Recent::Published(fold(5)));
        // A slot reused by a later publication is that publication's.
        for seq in 6..=15 {
            w.record(seq, seq);
        }
        assert_eq!(w.lookup(3, 16), Recent::Unknown, "outside the window");
        assert_eq!(w.lookup(14, 16), Recent::Published(fold(14)));
        // A long gap marks the whole window; a forgotten range is unknown again.
        w.mark_gap(16, 1_000);
        assert_eq!(w.lookup(990, 1_001), Recent::Gap);
        assert_eq!(w.lookup(1_000, 1_001), Recent::Gap);
        w.forget(1_001, 1_002);
        assert_eq!(w.lookup(1_001, 1_003), Recent::Unknown);
        assert_eq!(w.lookup(995, 1_003), Recent::Gap);
    }

    #[test]
    fn the_gap_bits_cost_no_memory() {
        assert_eq!(std::mem::size_of::<Window>(), 52);
    }
}
