//! The rules for one conversation: publish in order, hold what is early, ask for what is
//! missing, decide when a missing state is gone, close after ENDING.
//!
//! Kept small on purpose (a partition may hold hundreds of thousands of open calls): with
//! nothing held and no request out, a conversation is this 104-byte struct and nothing else; the
//! held states and the back-fill bookkeeping live in a boxed [`Trouble`] that exists only while
//! a gap is open. That bookkeeping (`tries`, `failures`, `absent`) refers to the *front hole*
//! `next ..= first_held - 1` and resets whenever `next` moves: counting is conservative, so a
//! state is never declared gone after fewer than `confirm_gone_after` answers that covered it and
//! lacked it.
//!
//! A front hole whose back-fill keeps failing is given up (`BackfillFailed`) `gap_timeout +
//! backfill_max_wait` after it became known, at a failure or between attempts; one whose answer
//! has not come yet (the shell's back-fill queue may be long) waits for it, at most until
//! `abandon_after`. Held states pin the raw low watermark, and a closed conversation is only
//! forgotten once that watermark has passed its states (see [`Conversation::on_tick`]), so a
//! takeover resuming there never meets a state of a conversation nobody remembers. An abandoned
//! conversation is closed the same way (without a completion record) and waits for the
//! watermark too: another call's answer can be queued for longer than `abandon_after`. It is
//! also kept until it has been quiet for another `abandon_after`: GoTo may still list it as
//! active, and each catch-up then writes a copy of its last state, which must meet a call that
//! is remembered (forgotten, the copy would start it afresh and publish it again).

use std::collections::BTreeMap;
use std::time::Duration;

use super::stats::Ledger;
use super::types::millis;
use super::window::{fold, Recent, Window};
use super::{
    Action, BackfillOutcome, ConversationCheckpoint, ConversationId, DeadLetterReason, GapReason,
    IncomingState, Origin, SequencerConfig, Timestamp, MAX_SEQUENCE_AHEAD,
};

/// Everything one call into a conversation needs besides the conversation itself.
pub(crate) struct Cx<'a, P> {
    pub(crate) id: &'a ConversationId,
    pub(crate) cfg: &'a SequencerConfig,
    pub(crate) now: Timestamp,
    pub(crate) ledger: &'a mut Ledger,
    pub(crate) out: &'a mut Vec<Action<P>>,
}

impl<P> Cx<'_, P> {
    fn dead_letter(&mut self, s: IncomingState<P>, reason: DeadLetterReason) {
        let counters = &mut self.ledger.counters;
        match reason {
            DeadLetterReason::ConflictingDuplicate => counters.conflicts += 1,
            DeadLetterReason::AfterEnding => counters.after_ending += 1,
            DeadLetterReason::InvalidSequence => counters.invalid_sequence += 1,
            DeadLetterReason::ImplausibleSequence => counters.implausible_sequence += 1,
            DeadLetterReason::InsideDeclaredGap => counters.inside_declared_gap += 1,
            DeadLetterReason::AfterAbandonment => counters.after_abandonment += 1,
        }
        self.out.push(Action::DeadLetter {
            conversation: self.id.clone(),
            sequence_number: s.sequence_number,
            reason,
            payload: s.payload,
        });
    }

    fn duplicate(&mut self, origin: Origin) {
        match origin {
            Origin::Backfill => self.ledger.counters.backfill_overlap += 1,
            Origin::Webhook | Origin::WebSocket => self.ledger.counters.duplicates_dropped += 1,
        }
    }

    fn request(&mut self, from: u64, to: Option<u64>) {
        match to {
            Some(_) => self.ledger.counters.backfills_requested += 1,
            None => self.ledger.counters.probes_requested += 1,
        }
        self.out.push(Action::RequestBackfill {
            conversation: self.id.clone(),
            from,
            to,
        });
    }
}

/// A state waiting for the sequences below it.
#[derive(Debug)]
struct Held<P> {
    fingerprint: u64,
    is_ending: bool,
    origin: Origin,
    raw_offset: Option<i64>,
    received_at: Timestamp,
    payload: P,
}

/// The back-fill the conversation is waiting on, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flight {
    Idle,
    /// A request for the front hole is out.
    Gap {
        from: u64,
        to: u64,
    },
    /// An open-ended tail probe is out.
    Probe {
        from: u64,
    },
    /// Ask again for the front hole at this time.
    Retry(Timestamp),
}

/// `wake` when the conversation has no queue entry.
pub(crate) const NO_WAKE: Timestamp = Timestamp(u64::MAX);

/// The raw mark of a closed conversation whose states' raw position this core does not know:
/// closed by a takeover (restored, observed, or completed before anything was read).
const RAW_UNKNOWN: u64 = u64::MAX;

/// How often a closed conversation kept for the raw low watermark looks again.
const WATERMARK_RECHECK: Duration = Duration::from_secs(5);

/// What the partition must do with a conversation after its timers fired.
pub(crate) enum Fate {
    Keep,
    /// Kept, with nothing due before this time (a closed conversation waiting for the raw low
    /// watermark: its own retention clock is over).
    LookAgain(Timestamp),
    Evict,
    /// Quiet long enough for an idle probe: the partition starts it or queues it (probes are
    /// rationed per partition, see [`SequencerConfig::idle_probes_in_flight`]).
    ProbeDue,
}

#[derive(Debug)]
pub(crate) struct Conversation<P> {
    next: u64,
    /// Last state received; for a closed (or abandoned) conversation, when it closed.
    last_activity: Timestamp,
    /// Open: the idle-probe clock in ms (`last_activity`, or the last probe answer if later).
    /// Closed: the *raw mark*, one past the highest raw offset read when it closed or when a
    /// live state of it last came in (every raw record of it lies below), or [`RAW_UNKNOWN`].
    /// One field for both keeps an idle conversation at 104 bytes.
    quiet_or_raw: u64,
    /// This conversation's entry in the partition's deadline queue ([`NO_WAKE`]: none). Not an
    /// `Option`, to save 8 bytes per conversation.
    pub(crate) wake: Timestamp,
    /// Held states and back-fill bookkeeping; `None` while nothing is held and no request is
    /// out, which is most conversations most of the time (see [`Trouble`]).
    trouble: Option<Box<Trouble<P>>>,
    gap_count: u32,
    /// Closed: takes no state any more (completed, or abandoned).
    ended: bool,
    /// Closed by abandonment, not by ENDING: its checkpoint says so (`ended` stays false: the
    /// ordered topic has no completion record for it), a state at or above `next` is
    /// `AfterAbandonment`, and it is kept `abandon_after` after its last activity (any state of
    /// it), not `closed_retention`. Fits in padding.
    abandoned: bool,
    /// Waiting in the partition's probe queue for a free probe slot (no timer of its own for
    /// the probe meanwhile; fits in padding, so idle conversations stay 104 bytes).
    pub(crate) probe_queued: bool,
    /// Counted in the partition's probes in flight (kept in step by `settle` and eviction, so
    /// every way a probe ends, answered or not, gives its slot back).
    pub(crate) probe_counted: bool,
    recent: Window,
}

/// What a conversation needs only while a state waits behind a gap or a back-fill request is
/// out. Boxed, because a million idle conversations would otherwise each carry its 60-odd
/// bytes (docs/performance.md, memory per open conversation).
#[derive(Debug)]
struct Trouble<P> {
    /// Front-hole start that `tries`/`failures`/`absent` refer to.
    hole_start: u64,
    flight: Flight,
    held: BTreeMap<u64, Held<P>>,
    failures: u32,
    /// Answers without the hole's first state (wide enough for any `confirm_gone_after`).
    absent: u32,
    tries: u16,
}

impl<P> Default for Trouble<P> {
    fn default() -> Self {
        Trouble {
            hole_start: 0,
            flight: Flight::Idle,
            held: BTreeMap::new(),
            failures: 0,
            absent: 0,
            tries: 0,
        }
    }
}

impl<P> Conversation<P> {
    pub(crate) fn new(now: Timestamp) -> Self {
        Conversation {
            next: 1,
            last_activity: now,
            quiet_or_raw: now.0,
            wake: NO_WAKE,
            trouble: None,
            gap_count: 0,
            ended: false,
            abandoned: false,
            probe_queued: false,
            probe_counted: false,
            recent: Window::default(),
        }
    }

    /// The idle-probe clock (open conversations only).
    fn quiet_since(&self) -> Timestamp {
        Timestamp(self.quiet_or_raw)
    }

    /// Moves the idle-probe clock to `t` if later; a closed conversation keeps its raw mark.
    fn quiet_at_least(&mut self, t: Timestamp) {
        if !self.ended {
            self.quiet_or_raw = self.quiet_or_raw.max(t.0);
        }
    }

    // ---- the boxed part ---------------------------------------------------------------------

    fn trouble_mut(&mut self) -> &mut Trouble<P> {
        self.trouble.get_or_insert_with(Box::default)
    }

    fn flight(&self) -> Flight {
        self.trouble.as_ref().map_or(Flight::Idle, |t| t.flight)
    }

    fn set_flight(&mut self, flight: Flight) {
        match (&mut self.trouble, flight) {
            (None, Flight::Idle) => {}
            _ => self.trouble_mut().flight = flight,
        }
    }

    fn held(&self) -> Option<&BTreeMap<u64, Held<P>>> {
        self.trouble.as_ref().map(|t| &t.held)
    }

    fn first_held(&self) -> Option<u64> {
        self.held().and_then(|h| h.keys().next().copied())
    }

    fn take_held(&mut self) -> BTreeMap<u64, Held<P>> {
        self.trouble
            .as_mut()
            .map(|t| std::mem::take(&mut t.held))
            .unwrap_or_default()
    }

    /// Drops the boxed part once nothing is held and no request is out. Its counters only ever
    /// matter for the hole they were counted on (`sync_hole` resets them otherwise), so nothing
    /// is lost. Called by the partition after every call into the conversation.
    pub(crate) fn tidy(&mut self) {
        if self
            .trouble
            .as_ref()
            .is_some_and(|t| t.flight == Flight::Idle && t.held.is_empty())
        {
            self.trouble = None;
        }
    }

    pub(crate) fn checkpoint(&self) -> ConversationCheckpoint {
        ConversationCheckpoint {
            next_sequence: self.next,
            // An abandoned call has no completion record; the flag of its own lets a new owner
            // restore it abandoned, and lets a binary that predates the flag (which ignores it)
            // restore it open, as it always did.
            ended: self.ended && !self.abandoned,
            gap_count: self.gap_count,
            abandoned: self.abandoned,
        }
    }

    /// As [`Self::new`] left it but for its clocks: nothing published, held, asked for or
    /// declared a gap, and not closed. Its checkpoint is a new call's, so forgetting it changes
    /// nothing a later state of it would meet (see `PartitionSequencer::on_state`).
    pub(crate) fn is_untouched(&self) -> bool {
        self.next == 1 && self.trouble.is_none() && self.gap_count == 0 && !self.ended
    }

    /// Completed or abandoned: takes no state any more.
    pub(crate) fn is_closed(&self) -> bool {
        self.ended
    }

    pub(crate) fn held_len(&self) -> usize {
        self.held().map_or(0, BTreeMap::len)
    }

    /// When the current front hole became known: the arrival of the oldest held state.
    pub(crate) fn blocked_since(&self) -> Option<Timestamp> {
        self.held()?.values().map(|h| h.received_at).min()
    }

    /// When the front hole is given up unless an answer is awaited: `backfill_max_wait` after
    /// its request was first due. While a request is out (queued in the shell behind GoTo's 10
    /// requests a second, possibly for long after an outage) the hole waits for its answer: GoTo
    /// may still have the states, and a gap is declared only when the API cannot fill it. An
    /// answer that never comes ends at `abandon_after`, which publishes what is held behind gap
    /// records. Holding long is safe for exactly-once: a closed call is kept until the raw low
    /// watermark has passed it ([`Self::closed_tick`]).
    fn give_up_at(&self, cfg: &SequencerConfig) -> Option<Timestamp> {
        let since = self.blocked_since()?;
        Some(since.plus(cfg.gap_timeout).plus(cfg.backfill_max_wait))
    }

    /// The earliest time something may be due for this conversation. Always defined: an open
    /// conversation can always be abandoned, a closed one always evicted.
    pub(crate) fn next_due(&self, cfg: &SequencerConfig) -> Timestamp {
        if self.ended {
            return self.last_activity.plus(self.retention(cfg));
        }
        let abandon = self.last_activity.plus(cfg.abandon_after);
        let give_up = self.give_up_at(cfg).unwrap_or(abandon);
        let due = match self.flight() {
            // Waiting for an answer: nothing is due before it but abandonment.
            Flight::Gap { .. } | Flight::Probe { .. } => return abandon,
            Flight::Retry(at) => at,
            Flight::Idle => match self.blocked_since() {
                Some(since) => since.plus(cfg.gap_timeout),
                // Queued for a probe (the partition wakes it when a slot frees), probes off, or
                // nothing a probe could find.
                None if self.probe_queued
                    || cfg.idle_probes_in_flight == 0
                    || !self.can_take_more() =>
                {
                    abandon
                }
                None => self.quiet_since().plus(cfg.idle_probe_after),
            },
        };
        due.min(give_up).min(abandon)
    }

    // ---- input ------------------------------------------------------------------------------

    /// A state, live or back-filled. The heart of the ordering rules.
    pub(crate) fn on_state(&mut self, cx: &mut Cx<'_, P>, s: IncomingState<P>) {
        let seq = s.sequence_number;
        if self.abandoned {
            // Any state of an abandoned call, even one set aside, is activity: GoTo may still
            // list the call as active (often why its ENDING never came), and every catch-up
            // then writes a copy of its last state. Forgotten while that goes on, the next copy
            // would start the call afresh, back-fill its first states and publish it again.
            self.touch(cx);
        }
        if seq == 0 || seq == u64::MAX {
            cx.dead_letter(s, DeadLetterReason::InvalidSequence);
            return;
        }
        if self.ended {
            // A raw record of it read now must be below the raw mark too.
            if s.raw_offset.is_some() && self.quiet_or_raw != RAW_UNKNOWN {
                self.quiet_or_raw = self.quiet_or_raw.max(cx.ledger.raw_end);
            }
            // Closed: at or below ENDING it is a late duplicate, above it an anomaly. Abandoned:
            // below `next` a late duplicate too; at or above it a state the stream was given
            // up before, which cannot follow the abandonment (see `AfterAbandonment`).
            if seq < self.next {
                self.duplicate_of_published(cx, s);
            } else if self.abandoned {
                cx.dead_letter(s, DeadLetterReason::AfterAbandonment);
            } else {
                cx.dead_letter(s, DeadLetterReason::AfterEnding);
            }
            return;
        }
        self.touch(cx);
        self.quiet_at_least(cx.now);

        if seq < self.next {
            self.duplicate_of_published(cx, s);
            return;
        }
        if let Some(h) = self
            .trouble
            .as_mut()
            .and_then(|trouble| trouble.held.get_mut(&seq))
        {
            if h.fingerprint == s.fingerprint {
                // Held from a back-fill answer, which no raw record stands for: a crash would
                // forget it, and only another back-fill or an idle probe would find it again
                // (none, for a call's last state with probes off). Its live copy's record pins
                // the raw watermark instead, so the next owner reads it again.
                if let (None, Some(offset)) = (h.raw_offset, s.raw_offset) {
                    h.raw_offset = Some(offset);
                    cx.ledger.pin(offset);
                }
                cx.duplicate(s.origin);
            } else {
                cx.dead_letter(s, DeadLetterReason::ConflictingDuplicate);
            }
            return;
        }
        if self
            .held()
            .is_some_and(|held| held.range(..seq).any(|(_, h)| h.is_ending))
        {
            cx.dead_letter(s, DeadLetterReason::AfterEnding);
            return;
        }
        if seq == self.next {
            let held = Held {
                fingerprint: s.fingerprint,
                is_ending: s.is_ending,
                origin: s.origin,
                raw_offset: None,
                received_at: cx.now,
                payload: s.payload,
            };
            self.publish(cx, seq, held);
            self.drain(cx);
            return;
        }
        if seq - self.next > MAX_SEQUENCE_AHEAD {
            // No call has that many states: a corrupt number. Held, it would make the hole
            // below it a gap and every real state after it a duplicate.
            cx.dead_letter(s, DeadLetterReason::ImplausibleSequence);
            return;
        }
        // Early: hold it. The first held state starts a gap (its timer is `next_due`).
        if self.held_len() == 0 {
            cx.ledger.counters.gaps_detected += 1;
        }
        cx.ledger.hold(s.raw_offset);
        self.trouble_mut().held.insert(
            seq,
            Held {
                fingerprint: s.fingerprint,
                is_ending: s.is_ending,
                origin: s.origin,
                raw_offset: s.raw_offset,
                received_at: cx.now,
                payload: s.payload,
            },
        );
    }

    /// A state came: the abandon clock (for an abandoned call, the clock that forgets it) starts
    /// again.
    fn touch(&mut self, cx: &mut Cx<'_, P>) {
        // The changelog is written when the checkpoint changes, and a new owner restores these
        // clocks from that record's time. A state that changes nothing (a catch-up's copy of the
        // last state of a call still active, say) keeps the call here but would not there: the
        // first state in each new eighth of `abandon_after` (on the core's clock) writes its
        // checkpoint again, so a takeover does not give up or forget a call this owner still
        // keeps (at most an eighth early). Measured from the last state instead, copies each
        // closer than an eighth to the one before never wrote it, however long they went on.
        let eighth = millis(cx.cfg.abandon_after / 8).max(1);
        if cx.now.0 / eighth != self.last_activity.0 / eighth {
            cx.ledger.changed = true;
        }
        self.last_activity = self.last_activity.max(cx.now);
    }

    /// The outcome of a back-fill request.
    pub(crate) fn on_backfill(
        &mut self,
        cx: &mut Cx<'_, P>,
        from: u64,
        to: Option<u64>,
        outcome: BackfillOutcome<P>,
    ) {
        // Only the answer to the request in flight moves the gap bookkeeping; anything else
        // (a stale or duplicated answer) still contributes its states, which are truth.
        let flight = self.flight();
        let request = match (flight, to) {
            (Flight::Gap { from: f, to: t }, Some(to)) if f == from && t == to => Some(flight),
            (Flight::Probe { from: f }, None) if f == from => Some(flight),
            _ => None,
        };
        if request.is_some() {
            self.set_flight(Flight::Idle);
        }
        let answered = match outcome {
            BackfillOutcome::Answered(states) => {
                for mut s in states {
                    s.origin = Origin::Backfill;
                    s.raw_offset = None;
                    self.on_state(cx, s);
                }
                true
            }
            BackfillOutcome::NotFound => true,
            BackfillOutcome::Failed { retryable } => {
                cx.ledger.counters.backfills_failed += 1;
                if let Some(Flight::Gap { to, .. }) = request {
                    self.gap_request_failed(cx, to, retryable);
                }
                false
            }
        };
        match request {
            // Absent from a probe means "nothing new", never "gone".
            Some(Flight::Probe { .. }) => self.quiet_at_least(cx.now),
            Some(Flight::Gap { to, .. }) if answered => self.gap_request_answered(cx, to),
            _ => {}
        }
    }

    /// A successful answer for the front hole `..=to`: whatever of it is still missing was
    /// absent from the answer.
    fn gap_request_answered(&mut self, cx: &mut Cx<'_, P>, to: u64) {
        let confirm = cx.cfg.confirm_gone_after.max(1);
        while !self.ended {
            let Some(first_held) = self.first_held() else {
                return;
            };
            if self.next > to {
                // The hole now in front is not one this answer covered; its timer decides.
                return;
            }
            self.sync_hole();
            let count = self.trouble_mut().absent.saturating_add(1);
            if count >= confirm {
                cx.ledger.counters.gaps_gone += 1;
                self.gap(cx, (first_held - 1).min(to), GapReason::Gone);
                self.drain(cx);
            } else {
                self.trouble_mut().absent = count;
                self.retry_later(cx);
                return;
            }
        }
    }

    fn gap_request_failed(&mut self, cx: &mut Cx<'_, P>, to: u64, retryable: bool) {
        if self.ended || self.next > to {
            return;
        }
        let (Some(first_held), Some(give_up)) = (self.first_held(), self.give_up_at(cx.cfg)) else {
            return;
        };
        self.sync_hole();
        let t = self.trouble_mut();
        t.failures = t.failures.saturating_add(1);
        let failures = t.failures;
        if !retryable || cx.now >= give_up {
            cx.ledger.counters.gaps_backfill_failed += 1;
            let reason = GapReason::BackfillFailed { attempts: failures };
            self.gap(cx, (first_held - 1).min(to), reason);
            self.drain(cx);
        } else {
            self.retry_later(cx);
        }
    }

    fn retry_later(&mut self, cx: &mut Cx<'_, P>) {
        let t = self.trouble_mut();
        t.tries = t.tries.saturating_add(1);
        t.flight = Flight::Retry(cx.now.plus(cx.cfg.backoff(u32::from(t.tries))));
    }

    /// Timers due at `cx.now`.
    pub(crate) fn on_tick(&mut self, cx: &mut Cx<'_, P>) -> Fate {
        let (cfg, now) = (cx.cfg, cx.now);
        if self.ended {
            return self.closed_tick(cx);
        }
        if now >= self.last_activity.plus(cfg.abandon_after) {
            // States still held (an answer that never came, or an `abandon_after` shorter than
            // `gap_timeout + backfill_max_wait`) are never dropped silently: the holes become
            // gap records and the states are published (an ENDING among them closes the call
            // instead).
            self.give_up_all(cx);
            if self.ended {
                return Fate::Keep;
            }
            cx.ledger.counters.abandoned += 1;
            cx.out.push(Action::Abandoned {
                conversation: cx.id.clone(),
                next_sequence: self.next,
            });
            self.abandon(cx);
            return self.closed_tick(cx);
        }
        self.give_up_expired(cx);
        if self.ended {
            return Fate::Keep;
        }
        if let Flight::Retry(at) = self.flight() {
            if at > now {
                return Fate::Keep;
            }
            self.set_flight(Flight::Idle);
        }
        if self.flight() != Flight::Idle {
            return Fate::Keep;
        }
        match (self.first_held(), self.blocked_since()) {
            (Some(first_held), Some(since)) => {
                if now >= since.plus(cfg.gap_timeout) {
                    let (from, to) = (self.next, first_held - 1);
                    self.set_flight(Flight::Gap { from, to });
                    cx.request(from, Some(to));
                }
            }
            _ => {
                if !self.probe_queued && self.wants_probe(cfg, now) {
                    return Fate::ProbeDue;
                }
            }
        }
        Fate::Keep
    }

    /// A closed conversation's timer: evicted after its retention ([`Self::retention`]), but
    /// only once the raw low watermark has passed every raw record of it. Forgotten earlier, a
    /// takeover resuming at that watermark would read its states again for a conversation
    /// nobody remembers and publish the call a second time.
    fn closed_tick(&mut self, cx: &mut Cx<'_, P>) -> Fate {
        let (cfg, now) = (cx.cfg, cx.now);
        if now < self.last_activity.plus(self.retention(cfg)) {
            return Fate::Keep;
        }
        if self.quiet_or_raw == RAW_UNKNOWN {
            match cx.ledger.unknown_raw_mark(cfg, now) {
                Ok(mark) => self.quiet_or_raw = mark,
                Err(settled) => return Fate::LookAgain(settled),
            }
        }
        if !cx.ledger.watermark_passed(self.quiet_or_raw) {
            return Fate::LookAgain(now.plus(WATERMARK_RECHECK));
        }
        if !self.abandoned {
            cx.ledger.counters.closed_evicted += 1; // abandoned ones were counted as such
        }
        Fate::Evict
    }

    /// How long a closed conversation is kept for late duplicates after its `last_activity`.
    /// A completed call: `closed_retention` from its completion. An abandoned one: another
    /// `abandon_after` from its abandonment or its last state since, whichever is later. GoTo
    /// may still list a call whose ENDING never came as active, and a catch-up copy of its
    /// last state after it was forgotten would publish the whole call again; a call quiet that
    /// long is forgotten, so the memory stays bounded (abandoned calls are rare).
    fn retention(&self, cfg: &SequencerConfig) -> Duration {
        if self.abandoned {
            cfg.abandon_after
        } else {
            cfg.closed_retention
        }
    }

    /// Gives the call up (everything held is resolved already): closed like a completed call,
    /// so that a takeover re-reading raw from the low watermark still finds it remembered.
    fn abandon(&mut self, cx: &mut Cx<'_, P>) {
        self.ended = true;
        self.abandoned = true;
        self.last_activity = cx.now;
        // The checkpoint now says abandoned: written, it makes a new owner restore the call as
        // such instead of open (publishing what this owner dead-letters).
        cx.ledger.changed = true;
        self.take_raw_mark(cx.ledger);
        // A request still out is owed its answer by the shell, which then only brings
        // duplicates and `AfterAbandonment` states; a probe's slot is free again (`settle`).
        self.set_flight(Flight::Idle);
        self.probe_queued = false;
    }

    /// Gives up every front hole whose time is over ([`Self::give_up_at`]), unless an answer
    /// is awaited.
    fn give_up_expired(&mut self, cx: &mut Cx<'_, P>) {
        while !self.ended {
            if matches!(self.flight(), Flight::Gap { .. } | Flight::Probe { .. }) {
                return;
            }
            match (self.first_held(), self.give_up_at(cx.cfg)) {
                (Some(first_held), Some(at)) if cx.now >= at => self.give_up_front(cx, first_held),
                _ => return,
            }
        }
    }

    /// Gives up every hole below a held state (abandonment).
    fn give_up_all(&mut self, cx: &mut Cx<'_, P>) {
        while !self.ended {
            let Some(first_held) = self.first_held() else {
                return;
            };
            self.give_up_front(cx, first_held);
        }
    }

    /// Declares the front hole `next ..= first_held - 1` a `BackfillFailed` gap and publishes
    /// what it unblocks. A request still out for it stays owed (one per conversation): its
    /// answer finds `next` past its range and only contributes its states, those inside the gap
    /// going to the dead letters ([`DeadLetterReason::InsideDeclaredGap`]).
    fn give_up_front(&mut self, cx: &mut Cx<'_, P>, first_held: u64) {
        self.sync_hole();
        let next = self.next;
        let t = self.trouble_mut();
        let unanswered = matches!(t.flight, Flight::Gap { from, to } if from <= next && next <= to);
        let attempts = t.failures.saturating_add(u32::from(unanswered));
        if matches!(t.flight, Flight::Retry(_)) {
            t.flight = Flight::Idle;
        }
        cx.ledger.counters.gaps_backfill_failed += 1;
        self.gap(cx, first_held - 1, GapReason::BackfillFailed { attempts });
        self.drain(cx);
    }

    /// Probes on, open and not due for abandonment, nothing held, no request out, a state still
    /// possible, and quiet for `idle_probe_after`.
    pub(crate) fn wants_probe(&self, cfg: &SequencerConfig, now: Timestamp) -> bool {
        cfg.idle_probes_in_flight > 0
            && !self.ended
            && self.can_take_more()
            && self.flight() == Flight::Idle
            && self.first_held().is_none()
            && now >= self.quiet_since().plus(cfg.idle_probe_after)
            && now < self.last_activity.plus(cfg.abandon_after)
    }

    /// Some sequence at or above `next` is still valid. At `next == u64::MAX` (restored or
    /// observed from a corrupt number: publishing stops at `u64::MAX - 1`) every state is a
    /// duplicate or `InvalidSequence`, so a probe, which asks for `next..`, can only come back
    /// empty: probing it every `idle_probe_after` until `abandon_after` would spend hundreds of
    /// GoTo requests and a rationed probe slot on nothing.
    fn can_take_more(&self) -> bool {
        self.next < u64::MAX
    }

    /// An idle probe is out.
    pub(crate) fn is_probing(&self) -> bool {
        matches!(self.flight(), Flight::Probe { .. })
    }

    /// Sends the open-ended probe (the partition checked [`Self::wants_probe`] and has a slot).
    pub(crate) fn start_probe(&mut self, cx: &mut Cx<'_, P>) {
        self.probe_queued = false;
        self.set_flight(Flight::Probe { from: self.next });
        cx.request(self.next, None);
    }

    // ---- takeover ---------------------------------------------------------------------------

    /// Merge a changelog checkpoint (max wins: the changelog may lag the output).
    pub(crate) fn restore(
        &mut self,
        cp: ConversationCheckpoint,
        last_activity: Timestamp,
        ledger: &mut Ledger,
    ) {
        // The abandon and closed-retention clocks go on from the checkpoint's time instead of
        // starting again at every takeover (which, with takeovers more often than
        // `abandon_after`, would keep a call whose ENDING never comes forever). The idle-probe
        // clock does start again: a new owner has no probe history.
        self.last_activity = self.last_activity.min(last_activity);
        let next = cp.next_sequence.max(1);
        if next > self.next {
            self.skip_to(next, ledger);
        }
        self.gap_count = self.gap_count.max(cp.gap_count);
        // An abandoned call the changelog knows completed was completed.
        if cp.ended && (!self.ended || self.abandoned) {
            self.close_quietly(ledger);
        } else if cp.abandoned && !self.ended {
            // The previous owner gave it up: a state at or above `next` was dead-lettered
            // there, so it is here too, and the call is kept as long as it would have been
            // there (its clock from the record's time, above).
            self.close_quietly(ledger);
            self.abandoned = true;
        }
    }

    /// The ordered topic holds `seq` for this conversation.
    pub(crate) fn observe_published(&mut self, seq: u64, ledger: &mut Ledger) {
        if seq >= self.next && seq < u64::MAX {
            self.skip_to(seq + 1, ledger);
            ledger.changed = true;
        }
    }

    /// The ordered topic holds a gap record ending at `to`. Like observed states, its
    /// sequences are not remembered as a gap: a state of it re-read from raw was dead-lettered
    /// by the previous owner already (or arrived after the window), and is dropped.
    pub(crate) fn observe_gap(&mut self, to: u64, ledger: &mut Ledger) {
        if to >= self.next && to < u64::MAX {
            self.skip_to(to + 1, ledger);
            self.gap_count = self.gap_count.saturating_add(1);
            ledger.changed = true;
        }
    }

    /// The ordered topic holds this conversation's completion record.
    pub(crate) fn observe_completion(&mut self, now: Timestamp, ledger: &mut Ledger) {
        if !self.ended || self.abandoned {
            self.close_quietly(ledger);
            self.last_activity = now;
            ledger.changed = true;
        }
    }

    /// The ordered topic holds ENDING (`seq`) but no completion record after it: the previous
    /// owner died between the two writes. Nothing else would ever close the call (its ENDING is
    /// below `next`, so a re-read or a probe only finds duplicates), so the completion is written
    /// now. Only when ENDING is exactly the last thing published: a restore that disagrees is
    /// left alone rather than guessed at.
    pub(crate) fn complete_found_ending(&mut self, cx: &mut Cx<'_, P>, seq: u64) -> bool {
        if self.ended || seq == u64::MAX || self.next != seq + 1 {
            return false;
        }
        self.close(cx, seq);
        cx.ledger.changed = true;
        true
    }

    // ---- internals --------------------------------------------------------------------------

    /// Publishes held states while they are contiguous with `next`.
    fn drain(&mut self, cx: &mut Cx<'_, P>) {
        while !self.ended {
            let next = self.next;
            let Some(held) = self.trouble.as_mut().map(|t| &mut t.held) else {
                return;
            };
            let Some(entry) = held.first_entry() else {
                return;
            };
            if *entry.key() != next {
                return;
            }
            let (seq, h) = entry.remove_entry();
            cx.ledger.release(h.raw_offset);
            self.publish(cx, seq, h);
        }
    }

    fn publish(&mut self, cx: &mut Cx<'_, P>, seq: u64, h: Held<P>) {
        cx.out.push(Action::Publish {
            conversation: cx.id.clone(),
            sequence_number: seq,
            origin: h.origin,
            payload: h.payload,
        });
        cx.ledger.counters.published += 1;
        cx.ledger.changed = true;
        self.recent.record(seq, h.fingerprint);
        self.next = seq + 1;
        if h.is_ending {
            self.close(cx, seq);
        }
    }

    /// ENDING was published with everything before it resolved.
    fn close(&mut self, cx: &mut Cx<'_, P>, seq: u64) {
        cx.out.push(Action::PublishCompletion {
            conversation: cx.id.clone(),
            last_sequence: seq,
            gap_count: self.gap_count,
        });
        cx.ledger.counters.completions += 1;
        self.ended = true;
        self.last_activity = cx.now;
        self.take_raw_mark(cx.ledger);
        self.set_flight(Flight::Idle);
        // Anything held above ENDING cannot be published after it.
        for (seq, h) in self.take_held() {
            cx.ledger.release(h.raw_offset);
            let s = IncomingState {
                sequence_number: seq,
                fingerprint: h.fingerprint,
                is_ending: h.is_ending,
                origin: h.origin,
                raw_offset: h.raw_offset,
                payload: h.payload,
            };
            cx.dead_letter(s, DeadLetterReason::AfterEnding);
        }
    }

    /// Closing now: every raw record of it read so far lies below how far raw has been read.
    fn take_raw_mark(&mut self, ledger: &Ledger) {
        // Nothing read yet (a takeover completing a found ENDING, or abandoning a restored
        // call): its states may still be ahead in raw.
        self.quiet_or_raw = match ledger.raw_end {
            0 => RAW_UNKNOWN,
            end => end,
        };
    }

    /// Closed by a checkpoint or an observed completion record: nothing to emit.
    fn close_quietly(&mut self, ledger: &mut Ledger) {
        self.ended = true;
        self.abandoned = false;
        self.quiet_or_raw = RAW_UNKNOWN;
        self.set_flight(Flight::Idle);
        self.release_all(ledger);
    }

    /// Declares `next..=to` a gap.
    fn gap(&mut self, cx: &mut Cx<'_, P>, to: u64, reason: GapReason) {
        let from = self.next;
        cx.out.push(Action::PublishGap {
            conversation: cx.id.clone(),
            from,
            to,
            reason,
        });
        self.gap_count = self.gap_count.saturating_add(1);
        self.recent.mark_gap(from, to);
        self.next = to + 1;
        cx.ledger.changed = true;
    }

    /// Moves `next` forward without publishing (takeover): held states below it are already
    /// in the output.
    fn skip_to(&mut self, next: u64, ledger: &mut Ledger) {
        self.recent.forget(self.next, next - 1);
        self.next = next;
        let Some(held) = self.trouble.as_mut().map(|t| &mut t.held) else {
            return;
        };
        while let Some(entry) = held.first_entry() {
            if *entry.key() >= next {
                break;
            }
            ledger.release(entry.remove().raw_offset);
        }
    }

    fn release_all(&mut self, ledger: &mut Ledger) {
        for (_, h) in self.take_held() {
            ledger.release(h.raw_offset);
        }
    }

    /// Resets the per-hole counters when the front hole changed since they were counted.
    fn sync_hole(&mut self) {
        let next = self.next;
        let t = self.trouble_mut();
        if t.hole_start != next {
            t.hole_start = next;
            t.tries = 0;
            t.failures = 0;
            t.absent = 0;
        }
    }

    fn duplicate_of_published(&mut self, cx: &mut Cx<'_, P>, s: IncomingState<P>) {
        match self.recent.lookup(s.sequence_number, self.next) {
            Recent::Published(known) if known != fold(s.fingerprint) => {
                cx.dead_letter(s, DeadLetterReason::ConflictingDuplicate)
            }
            // A state the stream already declared gone: set aside, not dropped silently.
            Recent::Gap => cx.dead_letter(s, DeadLetterReason::InsideDeclaredGap),
            _ => cx.duplicate(s.origin),
        }
    }
}

#[cfg(test)]
mod size {
    /// What one open conversation costs in its partition's map, beside the key. Kept from
    /// creeping back up: a million open calls multiply every byte (docs/performance.md).
    #[test]
    fn an_idle_conversation_stays_small() {
        let size = std::mem::size_of::<super::Conversation<std::sync::Arc<()>>>();
        assert!(size <= 104, "Conversation grew to {size} bytes");
    }
}
