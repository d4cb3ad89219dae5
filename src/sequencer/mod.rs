//! The pure heart of the sequencer: per conversation, turn an at-least-once, unordered stream
//! of call states into an exactly-once, ordered one, with explicit gap records.
//!
//! The async shell (Kafka consumer/producer, REST back-fill, changelog) feeds a
//! [`PartitionSequencer`] and carries out the [`Action`]s it returns. Keeping the rules free of
//! I/O and wall-clock time means they can be tested exhaustively and fuzzed
//! (`tests/sequencer_properties.rs`).
//!
//! # Rules, per conversation (`next` = first sequence not yet resolved, starting at 1)
//! - `seq < next`: duplicate, dropped; if its fingerprint differs from the published one (and
//!   `seq` is within [`CONFLICT_WINDOW`] of `next`): `DeadLetter{ConflictingDuplicate}`; if
//!   `seq` was declared a gap (same window): `DeadLetter{InsideDeclaredGap}`.
//! - `seq == next`: published, then every held state contiguous with it.
//! - `seq > next + MAX_SEQUENCE_AHEAD`: `DeadLetter{ImplausibleSequence}` (no call has that
//!   many states; held, it would turn the rest of the call into a gap and duplicates).
//! - `seq` 0 or `u64::MAX`: `DeadLetter{InvalidSequence}`, whatever the conversation's state.
//!   A state dead-lettered for a conversation the core does not know (these two reasons are
//!   the only ones possible there) opens none: no timer, probe, abandonment or checkpoint for
//!   a call that never had a valid state, and a later valid state of it starts the call as if
//!   the bad one had never come.
//! - `seq > next`: held (a held duplicate with another fingerprint is dead-lettered). The first
//!   held state starts a gap; after `gap_timeout` the core asks for `next ..= first_held-1`.
//!   A conversation first seen at `k > 1` treats `1..k-1` as such a gap.
//! - Back-fill answers feed the same rules. A state still missing after `confirm_gone_after`
//!   consecutive successful answers is declared gone (`PublishGap{Gone}`, consecutive missing
//!   sequences merged into one range); failures retry with exponential backoff. A front hole
//!   still failing `backfill_max_wait` after its request was due (`gap_timeout +
//!   backfill_max_wait` after it became known) is given up, `PublishGap{BackfillFailed}`, at a
//!   failure or between attempts. A request not answered yet is waited for (the shell's queue
//!   may be long, and GoTo may still have the states), at most until `abandon_after`.
//! - Publishing ENDING publishes `PublishCompletion` and closes the conversation. Afterwards,
//!   states at or below ENDING are duplicates (conflict-checked as above); states above it —
//!   and any held above it when it is published, or arriving above a held ENDING — go to
//!   `DeadLetter{AfterEnding}`: GoTo says ENDING is last, so this is an anomaly for a human,
//!   and it cannot be published after the completion record.
//! - An open conversation quiet for `idle_probe_after` is probed with an open-ended back-fill
//!   (to catch a lost ENDING); absent there means "nothing new". At most
//!   `idle_probes_in_flight` probes per partition are out; the other quiet conversations wait
//!   their turn, oldest first (gap back-fills are never rationed; 0 turns probes off). No state
//!   for `abandon_after`: the holes below anything still held become `BackfillFailed` gaps and
//!   the held states are published, then `Abandoned`: it takes no new state (one at or above
//!   where it stopped is dead-lettered, `AfterAbandonment`; its checkpoint says `abandoned`, so
//!   a new owner does the same) and is evicted once it has been quiet for another
//!   `abandon_after` (any state of it counts) and the raw low watermark has passed it.
//! - A closed conversation is evicted after `closed_retention`, and only once the raw low
//!   watermark has passed every raw record of it (its *raw mark*: how far raw had been read when
//!   it closed or a state of it last came in): a takeover resuming at the watermark must not
//!   read a state of a call nobody remembers. A conversation closed by a takeover (restored,
//!   observed) gets its mark from the previous owner's raw end, which the shell announces at
//!   every takeover (`restored_raw_end`: the larger of raw's high watermark and the
//!   `raw_read_end` of the previous owner's last progress record); a core driven without that
//!   guesses, taking how far it has read `gap_timeout + backfill_max_wait` after the takeover.
//!   Passing the watermark also takes having read raw up to the mark oneself (the shell reports
//!   every record it reads, `raw_read_to`): right after a takeover nothing is held, and the
//!   watermark alone would look passed before the calls' records were read again.
//!
//! # Checkpoints (design D1 of `exactly-once-notes.md`)
//! The ordered topic is the truth; the changelog is an index of [`ConversationCheckpoint`]s.
//! `take_dirty` yields changed checkpoints (and tombstones for evicted conversations); on
//! takeover, `restore` seeds them and `observe_*` replays whatever the ordered topic holds
//! beyond them. A conversation evicted (tombstoned) and then seen again starts from scratch:
//! its old states would be back-filled and published again, which is why `closed_retention`
//! must outlast GoTo's redelivery horizon.
//!
//! # Memory
//! An open conversation with nothing held is one slot: its id (24 bytes, a UUID packed inline,
//! see `id.rs`) and its `Conversation` (104 bytes, pinned by a size test), in fixed-size
//! chunks; plus a 4-byte slot number in the hash index (with the table's slack) and one
//! deadline-queue entry. `cargo bench --bench sequencer_memory` measures the whole at ~175 bytes
//! of heap per conversation. Held states cost a B-tree entry plus the payload each; nothing else
//! allocates per conversation. A closed conversation's raw mark reuses the idle-probe clock's
//! field, and the window's gap bits its padding: neither costs a byte.

mod config;
mod conversation;
mod id;
mod partition;
mod stats;
mod types;
mod window;

pub mod shell;

#[cfg(test)]
mod tests;

pub use config::SequencerConfig;
pub use id::IdText;
pub use partition::PartitionSequencer;
pub use stats::{Counters, SequencerStats};
pub use types::{
    Action, BackfillOutcome, ConversationCheckpoint, ConversationId, DeadLetterReason, GapReason,
    IncomingState, Origin, Timestamp,
};
pub use window::CONFLICT_WINDOW;

/// How far above a conversation's next sequence a state may be (a conversation first seen at
/// `k` has next 1). Further is dead-lettered as
/// [`DeadLetterReason::ImplausibleSequence`]: a GoTo call has a few dozen states, never this
/// many.
pub const MAX_SEQUENCE_AHEAD: u64 = 100_000;
