//! The bound on states answered before Kafka has them (`webhook.answer = "on_receipt"`).
//!
//! A state answered on receipt and lost in a crash can only come back by back-fill, one GoTo
//! request per state at 10 a second, so how many may be in that window at once is bounded: each
//! takes a [`Reservation`] until Kafka acknowledges it, and when none is left the answer waits
//! for Kafka as it does by default. A slow or absent Kafka therefore fills the window and turns
//! answering on receipt back into answering after Kafka, instead of growing what a crash loses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The states answered on receipt that Kafka has not acknowledged yet, and their bound.
pub(super) struct OnReceipt {
    limit: usize,
    waiting: AtomicUsize,
}

impl OnReceipt {
    /// At most `limit` states at once.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Takes one of the `limit` places, or `None` when all are taken.
    pub(super) fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(Reservation(self.clone()))
    }

    /// Places taken now.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// One place among the states answered on receipt; released when dropped.
pub(super) struct Reservation(Arc<OnReceipt>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_run_out_at_the_limit_and_come_back_when_released() {
        let bound = Arc::new(OnReceipt::new(2));
        let a = bound.reserve().expect("first place");
        let b = bound.reserve().expect("second place");
        assert!(bound.reserve().is_none(), "no third place");
        assert_eq!(bound.waiting(), 2);
        drop(a);
        assert_eq!(bound.waiting(), 1);
        let c = bound.reserve().expect("a released place is free again");
        drop((b, c));
        assert_eq!(bound.waiting(), 0);
    }
}
