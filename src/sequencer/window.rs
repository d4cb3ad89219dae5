//! Fingerprints of the last few published states of one conversation, to tell a harmless late
//! duplicate from a conflicting one (same sequence number, different content).
//!
//! Keeping every fingerprint would cost 8 bytes per state for as long as the conversation is
//! remembered; duplicates arrive close to the original (webhook retries, WebSocket + webhook,
//! overlapping back-fill answers), so a fixed ring is enough. Bound: the [`CONFLICT_WINDOW`]
//! sequences just below `next` are checked; older duplicates, gap sequences and anything from
//! before a restore are dropped as plain duplicates. The ring stores 32-bit folds of the 64-bit
//! fingerprints: a fold can only collide (missing a conflict, ~2^-32), never invent one.

/// How many sequence numbers below `next` are checked for conflicting duplicates.
pub const CONFLICT_WINDOW: u64 = 12;

#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    folds: [u32; CONFLICT_WINDOW as usize],
    /// Bit `seq % CONFLICT_WINDOW` set: that slot holds the fold of the published state at the
    /// one sequence in `next - CONFLICT_WINDOW .. next` with that residue.
    known: u16,
}

impl Window {
    /// `seq` was published with `fingerprint` (and `next` becomes `seq + 1`).
    pub(crate) fn record(&mut self, seq: u64, fingerprint: u64) {
        let i = slot(seq);
        self.folds[i] = fold(fingerprint);
        self.known |= 1 << i;
    }

    /// `next` moved over `from..=to` without a fingerprint (gap, observed output).
    pub(crate) fn forget(&mut self, from: u64, to: u64) {
        if to < from {
            return;
        }
        if to - from >= CONFLICT_WINDOW - 1 {
            self.known = 0;
            return;
        }
        for seq in from..=to {
            self.known &= !(1 << slot(seq));
        }
    }

    /// The fold recorded for `seq`, if `seq` is inside the window below `next`.
    pub(crate) fn lookup(&self, seq: u64, next: u64) -> Option<u32> {
        if seq >= next || next - seq > CONFLICT_WINDOW {
            return None;
        }
        let i = slot(seq);
        (self.known & (1 << i) != 0).then_some(self.folds[i])
    }
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
        assert_eq!(w.lookup(40, next), Some(fold(40_000)));
        let oldest = next - CONFLICT_WINDOW;
        assert_eq!(w.lookup(oldest, next), Some(fold(oldest * 1000)));
        assert_eq!(w.lookup(oldest - 1, next), None, "outside the window");
        assert_eq!(w.lookup(41, next), None, "not published yet");
    }

    #[test]
    fn forgotten_ranges_are_unknown() {
        let mut w = Window::default();
        for seq in 1..=5 {
            w.record(seq, seq);
        }
        w.forget(6, 8);
        w.record(9, 9);
        assert_eq!(w.lookup(7, 10), None);
        assert_eq!(w.lookup(5, 10), Some(fold(5)));
        w.forget(10, 100);
        assert_eq!(w.lookup(9, 101), None);
    }
}
