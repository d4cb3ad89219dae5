//! The vocabulary shared by the sequencer core and the async shell that drives it.
//!
//! The core never performs I/O: the shell hands it [`IncomingState`]s and back-fill outcomes,
//! and carries out the [`Action`]s it returns, in order. Everything here is plain data so the
//! shell can be written (and tested) against it without knowing the rules.

use std::time::Duration;

pub use super::id::ConversationId;

/// Milliseconds since an arbitrary monotonic origin chosen by the shell. Injected so the core
/// never reads a clock and tests can drive time exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(d)))
    }

    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a state reached the sequencer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A webhook POST (via the raw topic).
    Webhook,
    /// A WebSocket frame (via the raw topic).
    WebSocket,
    /// An answer of the REST back-fill the core asked for.
    Backfill,
}

/// One call state, reduced to what ordering needs. `payload` is opaque to the core (the shell
/// uses the raw bytes) and is handed back unchanged in the action that publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingState<P> {
    /// `state.sequenceNumber` (1-based, +1 per state).
    pub sequence_number: u64,
    /// `notification::state_fingerprint` of the state: equal for the same state, whichever way
    /// it came.
    pub fingerprint: u64,
    /// The state's type is ENDING: the conversation's last state.
    pub is_ending: bool,
    /// Where it came from.
    pub origin: Origin,
    /// Offset of the raw-topic record it came from (live states). The raw consumer must not
    /// commit past a held state's offset, see [`super::PartitionSequencer::raw_low_watermark`].
    pub raw_offset: Option<i64>,
    /// Opaque to the core.
    pub payload: P,
}

/// Something the shell must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Append this state to the ordered topic: the next one of its conversation.
    Publish {
        conversation: ConversationId,
        sequence_number: u64,
        origin: Origin,
        payload: P,
    },
    /// Append a gap record: states `from..=to` will never be published.
    PublishGap {
        conversation: ConversationId,
        from: u64,
        to: u64,
        reason: GapReason,
    },
    /// Append a completion record: the ENDING state (`last_sequence`) was published and every
    /// earlier sequence was published or declared a gap.
    PublishCompletion {
        conversation: ConversationId,
        last_sequence: u64,
        gap_count: u32,
    },
    /// Fetch states `from..=to` (`to: None`: every state from `from` on, an idle tail probe)
    /// and report with `on_backfill(conversation, from, to, …)`. Never two in flight for one
    /// conversation; the shell owes exactly one answer per request, however late (a gap whose
    /// answer has not come `backfill_max_wait` after it was due is given up meanwhile; the late
    /// answer is absorbed).
    RequestBackfill {
        conversation: ConversationId,
        from: u64,
        to: Option<u64>,
    },
    /// A state that cannot be published; send it to the dead-letter topic.
    DeadLetter {
        conversation: ConversationId,
        sequence_number: u64,
        reason: DeadLetterReason,
        payload: P,
    },
    /// An open conversation had no activity for `abandon_after` and was given up without a
    /// completion. `next_sequence` is the first sequence that was never resolved. States it
    /// still held were published first, behind `BackfillFailed` gap records for the holes.
    /// It takes no state after this ([`DeadLetterReason::AfterAbandonment`]) and is forgotten
    /// once it has been quiet for another `abandon_after` (every state of it counts as activity)
    /// and the raw low watermark has passed its raw records.
    Abandoned {
        conversation: ConversationId,
        next_sequence: u64,
    },
}

/// Why a gap record was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The back-fill answered, `confirm_gone_after` times in a row, without these states.
    Gone,
    /// The back-fill did not bring these states within `backfill_max_wait` of its first request
    /// (failing, or unanswered: the shell's queue may be long), or failed non-retryably, or the
    /// conversation was abandoned with states held behind them.
    BackfillFailed {
        /// Requests for this gap that failed or were still unanswered (0: none could be sent
        /// in time, another request of the conversation being still out).
        attempts: u32,
    },
}

/// Why a state went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Same conversation and sequence number as a state already published or held, different
    /// content (fingerprint). The first one seen wins; this one is set aside.
    ConflictingDuplicate,
    /// A sequence number above the conversation's ENDING state: GoTo promises ENDING is last, so
    /// this is an anomaly worth a human look rather than a silent drop.
    AfterEnding,
    /// Sequence number 0 or `u64::MAX`, which no call state has. The parser rejects 0 but
    /// yields `u64::MAX` (it is a valid u64), so this does happen.
    InvalidSequence,
    /// A sequence number more than [`super::MAX_SEQUENCE_AHEAD`] above the conversation's next
    /// one: no call has that many states (a corrupt number, a timestamp in the field). Held, it
    /// would turn everything below it into a gap record and the call's real later states into
    /// duplicates.
    ImplausibleSequence,
    /// A state for a sequence number the stream already declared a gap (the back-fill gave up
    /// or found it gone, and then it turned up): it cannot be published any more, and it is
    /// not a duplicate. Told only within [`super::CONFLICT_WINDOW`] of the conversation's next
    /// sequence; older ones are dropped as duplicates.
    InsideDeclaredGap,
    /// A state at or above the `next_sequence` of an [`Action::Abandoned`] conversation, while
    /// it is still remembered (see [`Action::Abandoned`]; a new owner restores it abandoned). The
    /// call's stream was given up at that sequence: publishing after it would contradict the
    /// abandonment the operators were told of, and GoTo sending a state after six quiet hours
    /// (or a probe answer bringing one after the call was given up) is worth a human look.
    /// Once the call is forgotten, a later state starts it afresh.
    AfterAbandonment,
}

impl DeadLetterReason {
    /// The dead-letter record's reason header and the metric label: one word an operator can
    /// filter on, spelled like ingest's reasons.
    pub fn code(self) -> &'static str {
        match self {
            DeadLetterReason::ConflictingDuplicate => "conflicting_duplicate",
            DeadLetterReason::AfterEnding => "after_ending",
            DeadLetterReason::InvalidSequence => "invalid_sequence_number",
            DeadLetterReason::ImplausibleSequence => "implausible_sequence_number",
            DeadLetterReason::InsideDeclaredGap => "inside_declared_gap",
            DeadLetterReason::AfterAbandonment => "after_abandonment",
        }
    }

    /// What the dead-letter record's detail header says about state `sequence_number`.
    pub fn detail(self, sequence_number: u64) -> String {
        match self {
            DeadLetterReason::ConflictingDuplicate => {
                format!("sequence {sequence_number} was already seen with different content")
            }
            DeadLetterReason::AfterEnding => format!(
                "sequence {sequence_number} came after the call's ENDING state, which GoTo sends last"
            ),
            DeadLetterReason::InvalidSequence => {
                format!("sequence {sequence_number} is 0 or 2^64-1, which no call state has")
            }
            DeadLetterReason::ImplausibleSequence => format!(
                "sequence {sequence_number} is more than {} above the call's next sequence, more states than any call has",
                super::MAX_SEQUENCE_AHEAD
            ),
            DeadLetterReason::InsideDeclaredGap => format!(
                "sequence {sequence_number} arrived after a gap record had declared it missing"
            ),
            DeadLetterReason::AfterAbandonment => format!(
                "sequence {sequence_number} arrived after the call had been abandoned (quiet for sequencer.abandon_after) before reaching it"
            ),
        }
    }
}

/// Result of a back-fill request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillOutcome<P> {
    /// The API answered; these are the states it returned (any order, any subset; states
    /// outside the requested range are accepted too).
    Answered(Vec<IncomingState<P>>),
    /// The API says the conversation does not exist (any more): counts as "all absent".
    NotFound,
    /// The request failed. `retryable: false` (e.g. a 4xx other than 429) gives up at once.
    Failed { retryable: bool },
}

/// What the changelog stores per conversation: enough to resume after a takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConversationCheckpoint {
    /// The first sequence number not yet published nor declared a gap.
    pub next_sequence: u64,
    /// The completion record was published.
    pub ended: bool,
    /// Gap records published so far.
    pub gap_count: u32,
    /// Given up (`Action::Abandoned`) at `next_sequence`, without a completion record (`ended`
    /// stays false: the ordered topic has none). A new owner restores the call abandoned, so a
    /// state at or above `next_sequence` is dead-lettered there too, not published.
    pub abandoned: bool,
}
