//! All conversations of one raw-topic partition, and the clock that drives them.
//!
//! One owner per raw partition (the consumer group guarantees it), so one
//! `PartitionSequencer` per assigned partition, driven by a single task: no locks. Timers live
//! in one ordered queue holding at most one entry per conversation; an entry may fire early
//! (activity only ever postpones a conversation's real deadline, and rescheduling on every
//! state would churn the queue), in which case the conversation just re-arms.
//!
//! Laid out for a million open calls per process (docs/performance.md, memory): conversations
//! live in fixed-size chunks of slots, so growing never copies them or leaves a freed table
//! behind, and the slack is at most one chunk; the hash index holds only 4-byte slot numbers,
//! so its power-of-two slack costs bytes, not whole entries; the deadline queue names slots,
//! not ids.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::conversation::{Conversation, Cx, Fate, NO_WAKE};
use super::id::IdKey;
use super::stats::{Ledger, SequencerStats};
use super::{
    Action, BackfillOutcome, ConversationCheckpoint, ConversationId, IncomingState,
    SequencerConfig, Timestamp,
};

/// The per-partition sequencer core. Pure: no I/O, no clock, no async. `P` is the opaque
/// payload the shell wants handed back when a state is published or dead-lettered.
///
/// Shell contract:
/// - perform the returned [`Action`]s in order; answer every `RequestBackfill` with exactly
///   one [`PartitionSequencer::on_backfill`] carrying the same `from`/`to`;
/// - call [`PartitionSequencer::on_tick`] when [`PartitionSequencer::next_deadline`] is reached;
/// - write [`PartitionSequencer::take_dirty`] to the changelog only after every action emitted
///   before the call has been acknowledged by Kafka (the changelog is the index, the output is
///   the truth);
/// - never commit the raw partition past [`PartitionSequencer::raw_low_watermark`].
#[derive(Debug)]
pub struct PartitionSequencer<P> {
    config: SequencerConfig,
    slots: Slots<P>,
    /// Occupied slot numbers, found by their id's hash.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    queue: BTreeSet<(Timestamp, u32)>,
    /// Conversations with an idle probe out (`Conversation::probe_counted`).
    probes_in_flight: u32,
    /// Slots due for an idle probe, oldest first, waiting for `probes_in_flight` to drop below
    /// the limit. Entries can be stale (the conversation got a state, or was evicted and its
    /// slot reused): `Conversation::probe_queued` and `wants_probe` are checked when popped.
    probes_waiting: VecDeque<u32>,
    dirty: HashSet<ConversationId>,
    ledger: Ledger,
    /// Latest time seen, for calls that carry none (`observe_*`).
    now: Timestamp,
}

impl<P> PartitionSequencer<P> {
    /// An empty sequencer (a partition just assigned, before any restore).
    pub fn new(config: SequencerConfig) -> Self {
        PartitionSequencer {
            config,
            slots: Slots::default(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            queue: BTreeSet::new(),
            probes_in_flight: 0,
            probes_waiting: VecDeque::new(),
            dirty: HashSet::new(),
            ledger: Ledger::default(),
            now: Timestamp(0),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &SequencerConfig {
        &self.config
    }

    /// A state for `conv` (live, or back-filled outside a request). Publishes it and whatever it
    /// unblocks, holds it if early, drops or dead-letters it if already seen.
    ///
    /// A state that leaves a conversation this core did not know untouched (dead-lettered at
    /// once: sequence 0 or `u64::MAX`, or implausibly far ahead of 1) opens none. Remembered, a
    /// call that never had a valid state would be idle-probed (GoTo requests competing with real
    /// probes for the API's budget) until abandoned, and its abandoned checkpoint would set
    /// aside a real call of that id as `AfterAbandonment` for another `abandon_after`. Forgotten
    /// at once, a later valid state of it starts the call exactly as if the bad one never came.
    pub fn on_state(
        &mut self,
        conv: &str,
        state: IncomingState<P>,
        now: Timestamp,
        out: &mut Vec<Action<P>>,
    ) {
        self.now = self.now.max(now);
        self.ledger.read_raw(state.raw_offset);
        let (s, created) = self.intern_new(conv, now);
        if let Some(slot) = self.slots.get_mut(s) {
            let mut cx = Cx {
                id: &slot.id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            slot.conversation.on_state(&mut cx, state);
            if created && slot.conversation.is_untouched() {
                // Only a dead letter leaves a new conversation so (every valid sequence is at or
                // above its `next` of 1, and is published or held). Nothing was queued or made
                // dirty for it yet (`settle` does that), so it leaves no timer, no probe and no
                // changelog entry; a tombstone owed for an earlier incarnation is still written.
                debug_assert!(matches!(out.last(), Some(Action::DeadLetter { .. })));
                self.remove(s);
                self.ledger.changed = false;
                return;
            }
        }
        self.settle(s);
    }

    /// The outcome of a `RequestBackfill{conv, from, to}`. Returned states go through the same
    /// rules as live ones (origin `Backfill`); an answer for an evicted conversation is ignored.
    pub fn on_backfill(
        &mut self,
        conv: &str,
        from: u64,
        to: Option<u64>,
        outcome: BackfillOutcome<P>,
        now: Timestamp,
        out: &mut Vec<Action<P>>,
    ) {
        self.now = self.now.max(now);
        let Some(s) = self.find(IdKey::parse(conv)) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(s) {
            let mut cx = Cx {
                id: &slot.id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            slot.conversation.on_backfill(&mut cx, from, to, outcome);
        }
        self.settle(s);
    }

    /// Fires every timer due at `now`: back-fill requests for gaps, retries, idle probes,
    /// abandonment and eviction of closed conversations.
    pub fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Action<P>>) {
        self.now = self.now.max(now);
        self.start_waiting_probes(now, out);
        // Collect first: a conversation re-armed for `<= now` waits for the next tick instead
        // of looping here.
        let mut due = Vec::new();
        while let Some(first) = self.queue.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, s)) = self.queue.pop_first() {
                due.push(s);
            }
        }
        for s in due {
            let Some(slot) = self.slots.get_mut(s) else {
                continue;
            };
            slot.conversation.wake = NO_WAKE;
            let mut cx = Cx {
                id: &slot.id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            match slot.conversation.on_tick(&mut cx) {
                Fate::Keep => self.settle(s),
                Fate::LookAgain(at) => {
                    self.settle(s);
                    self.postpone(s, at);
                }
                Fate::ProbeDue => {
                    // Only with probes on (`wants_probe`): a queued conversation always has a
                    // slot to wait for, and `stats().probes_waiting` counts no quiet call then.
                    if self.probes_in_flight < self.config.idle_probes_in_flight {
                        slot.conversation.start_probe(&mut cx); // counted by `settle`
                    } else {
                        slot.conversation.probe_queued = true;
                        self.probes_waiting.push_back(s);
                    }
                    self.settle(s);
                }
                Fate::Evict => {
                    if let Some(id) = self.remove(s) {
                        self.dirty.insert(id);
                    }
                    self.ledger.changed = false;
                }
            }
        }
    }

    /// When `on_tick` next has work (or may have: entries can be early). `None`: nothing known.
    /// At once (the latest time seen) when a probe slot is free and conversations wait for one.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let timer = self.queue.first().map(|(t, _)| *t);
        if !self.probes_waiting.is_empty()
            && self.probes_in_flight < self.config.idle_probes_in_flight
        {
            return Some(timer.map_or(self.now, |t| t.min(self.now)));
        }
        timer
    }

    /// Conversations waiting for a probe, oldest first, while slots are free.
    fn start_waiting_probes(&mut self, now: Timestamp, out: &mut Vec<Action<P>>) {
        while self.probes_in_flight < self.config.idle_probes_in_flight {
            let Some(s) = self.probes_waiting.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(s) else {
                continue;
            };
            if !std::mem::take(&mut slot.conversation.probe_queued) {
                continue; // stale: not this conversation's turn any more
            }
            if slot.conversation.wants_probe(&self.config, now) {
                let mut cx = Cx {
                    id: &slot.id,
                    cfg: &self.config,
                    now,
                    ledger: &mut self.ledger,
                    out,
                };
                slot.conversation.start_probe(&mut cx);
            }
            // Counts the probe if one started; either way its timers run from its own state.
            self.settle(s);
        }
    }

    /// Moves slot `s`'s timer entry to `at` (a conversation that just re-armed for a deadline
    /// already passed, to be looked at again later).
    fn postpone(&mut self, s: u32, at: Timestamp) {
        let Some(slot) = self.slots.get_mut(s) else {
            return;
        };
        let c = &mut slot.conversation;
        if c.wake != NO_WAKE && c.wake < at {
            self.queue.remove(&(c.wake, s));
            self.queue.insert((at, s));
            c.wake = at;
        }
    }

    /// What the changelog should hold for `conv` now.
    pub fn checkpoint(&self, conv: &str) -> Option<ConversationCheckpoint> {
        let s = self.find(IdKey::parse(conv))?;
        self.slots.get(s).map(|slot| slot.conversation.checkpoint())
    }

    /// Conversations whose checkpoint changed since the last call; `None` means evicted (write
    /// a tombstone).
    pub fn take_dirty(&mut self) -> Vec<(ConversationId, Option<ConversationCheckpoint>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|id| {
                let cp = self
                    .find(id.key())
                    .and_then(|s| self.slots.get(s))
                    .map(|slot| slot.conversation.checkpoint());
                (id, cp)
            })
            .collect()
    }

    /// Takeover: seed `conv` from the changelog, on a fresh core, before any state of `conv`
    /// arrives (the shell restores, then scans, then reads raw). Merging into a conversation that
    /// already holds states is not supported: a held state landing exactly on the new `next`
    /// would not be released (found by the `sequencer_input` fuzz target; see fuzz/README.md).
    pub fn restore(&mut self, conv: &str, checkpoint: ConversationCheckpoint, now: Timestamp) {
        self.restore_since(conv, checkpoint, now, now);
    }

    /// [`Self::restore`] of a checkpoint written at `written` (its changelog record's time,
    /// mapped onto this core's clock): a call quiet since then is abandoned, or evicted once
    /// closed, as if no takeover had happened.
    pub fn restore_since(
        &mut self,
        conv: &str,
        checkpoint: ConversationCheckpoint,
        now: Timestamp,
        written: Timestamp,
    ) {
        self.now = self.now.max(now);
        self.ledger.seeded(now);
        let s = self.intern(conv, now);
        if let Some(slot) = self.slots.get_mut(s) {
            slot.conversation
                .restore(checkpoint, written.min(now), &mut self.ledger);
        }
        // The changelog already holds this; only observe_* make a restored conversation dirty.
        self.ledger.changed = false;
        self.settle(s);
    }

    /// Takeover: `conv`'s restored checkpoint is newer than what the changelog holds (the scan of
    /// the ordered topic raised it), so it must be written again: otherwise the next progress
    /// record moves past the outputs that raised it, and the takeover after that would resume
    /// from the stale changelog entry and publish them twice.
    pub fn mark_dirty(&mut self, conv: &str) {
        if let Some(slot) = self
            .find(IdKey::parse(conv))
            .and_then(|s| self.slots.get(s))
        {
            self.dirty.insert(slot.id.clone());
        }
    }

    /// Takeover scan: the ordered topic holds state `seq` of `conv` beyond the checkpoint.
    pub fn observe_published(&mut self, conv: &str, seq: u64) {
        self.observe(conv, |c, ledger| c.observe_published(seq, ledger));
    }

    /// Takeover scan: the ordered topic holds a gap record `from..=to` of `conv`.
    pub fn observe_gap(&mut self, conv: &str, from: u64, to: u64) {
        let _ = from;
        self.observe(conv, |c, ledger| c.observe_gap(to, ledger));
    }

    /// Applies one observation of the takeover scan to `conv`. A conversation the observation
    /// created and left untouched (a record at sequence 0 or `u64::MAX`, which only a corrupt
    /// or foreign record carries) is forgotten again, as a dead-lettered first state is: kept,
    /// it would be probed for six hours and then abandoned, for a call that never was.
    fn observe(&mut self, conv: &str, apply: impl FnOnce(&mut Conversation<P>, &mut Ledger)) {
        self.ledger.seeded(self.now);
        let (s, created) = self.intern_new(conv, self.now);
        if let Some(slot) = self.slots.get_mut(s) {
            apply(&mut slot.conversation, &mut self.ledger);
            if created && slot.conversation.is_untouched() {
                self.remove(s);
                return;
            }
        }
        self.settle(s);
    }

    /// Takeover scan: the ordered topic holds the completion record of `conv`.
    pub fn observe_completion(&mut self, conv: &str) {
        let now = self.now;
        self.ledger.seeded(now);
        let s = self.intern(conv, now);
        if let Some(slot) = self.slots.get_mut(s) {
            slot.conversation.observe_completion(now, &mut self.ledger);
        }
        self.settle(s);
    }

    /// Takeover scan: the ordered topic holds `conv`'s ENDING state `last_sequence` and no
    /// completion record after it (the previous owner died between the two writes). Publishes
    /// the completion, once; returns whether it did (false when the restored state disagrees:
    /// already closed, or something other than ENDING was published last).
    pub fn complete_found_ending(
        &mut self,
        conv: &str,
        last_sequence: u64,
        now: Timestamp,
        out: &mut Vec<Action<P>>,
    ) -> bool {
        self.now = self.now.max(now);
        self.ledger.seeded(now);
        let Some(s) = self.find(IdKey::parse(conv)) else {
            return false;
        };
        let mut completed = false;
        if let Some(slot) = self.slots.get_mut(s) {
            let mut cx = Cx {
                id: &slot.id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            completed = slot
                .conversation
                .complete_found_ending(&mut cx, last_sequence);
        }
        self.settle(s);
        completed
    }

    /// Takeover: the previous owner cannot have read raw at or past `end` (raw's high watermark,
    /// read after the fence, or the newest progress record's `raw_read_end` if further). Call
    /// after the restores, before reading raw. A conversation the takeover restored closed may
    /// have states anywhere the previous owner had read; it is forgotten only once this core has
    /// read raw that far ([`Self::raw_read_to`]) and the raw low watermark has passed it. Without it, the core waits `gap_timeout + backfill_max_wait` after the
    /// takeover (for the re-read to catch up) and takes how far it has read by then.
    pub fn restored_raw_end(&mut self, end: i64) {
        self.ledger.announce_raw_end(end);
    }

    /// The shell has read raw up to `next` (exclusive): call it for every raw record consumed,
    /// whatever it was (a state, a record dead-lettered before it reached the core, a
    /// notification with nothing to sequence), and once at takeover with the offset reading
    /// resumes at (everything below it is resolved). A closed conversation is forgotten only
    /// once raw has been read up to its raw mark: with nothing held, the low watermark alone
    /// says nothing about records not read yet (after a takeover, those of the calls it
    /// restored). A core driven without it counts only the raw offsets of its states.
    pub fn raw_read_to(&mut self, next: i64) {
        if let Ok(next) = u64::try_from(next) {
            self.ledger.read_to(next);
        }
    }

    /// One past the highest raw offset this partition's owners may have read: this core's own
    /// reading and the previous owner's end announced with [`Self::restored_raw_end`]. The shell
    /// writes it into its progress records, so the next takeover's announcement covers
    /// everything read before, whatever the broker reports as raw's end.
    pub fn raw_end(&self) -> i64 {
        i64::try_from(self.ledger.raw_end).unwrap_or(i64::MAX)
    }

    /// The smallest raw offset of a held (unpublished) live state. The raw consumer may commit
    /// up to (not past) it; `None`: nothing held, commit freely.
    pub fn raw_low_watermark(&self) -> Option<i64> {
        self.ledger.low_watermark()
    }

    /// Counters plus gauges (walks every conversation: call on a metrics interval).
    pub fn stats(&self) -> SequencerStats {
        let mut stats = SequencerStats {
            counters: self.ledger.counters.clone(),
            held_states: self.ledger.held_total,
            ..SequencerStats::default()
        };
        for c in self.slots.conversations() {
            if c.is_closed() {
                stats.closed_conversations += 1;
                continue;
            }
            stats.open_conversations += 1;
            stats.probes_waiting += usize::from(c.probe_queued);
            if let Some(since) = c.blocked_since() {
                stats.open_gaps += 1;
                stats.oldest_open_gap_since =
                    Some(stats.oldest_open_gap_since.map_or(since, |o| o.min(since)));
            }
        }
        debug_assert_eq!(
            stats.held_states,
            self.slots
                .conversations()
                .map(Conversation::held_len)
                .sum::<usize>()
        );
        stats
    }

    /// Conversations currently remembered (open and closed).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No conversation remembered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of the conversation with this id, if remembered.
    fn find(&self, key: IdKey<'_>) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.index
            .find(hash, |&s| {
                slots.get(s).is_some_and(|slot| slot.id.key() == key)
            })
            .copied()
    }

    /// The slot for `conv`, creating the conversation if new.
    fn intern(&mut self, conv: &str, now: Timestamp) -> u32 {
        self.intern_new(conv, now).0
    }

    /// [`Self::intern`], and whether the conversation was created by it.
    fn intern_new(&mut self, conv: &str, now: Timestamp) -> (u32, bool) {
        let key = IdKey::parse(conv);
        if let Some(s) = self.find(key) {
            return (s, false);
        }
        let s = self.slots.insert(Slot {
            id: ConversationId::from_key(key),
            conversation: Conversation::new(now),
        });
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(key), s, |&x| slot_hash(slots, hasher, x));
        (s, true)
    }

    /// Forgets the conversation in slot `s` (its queue entry must be gone); returns its id.
    fn remove(&mut self, s: u32) -> Option<ConversationId> {
        let hash = slot_hash(&self.slots, &self.hasher, s);
        if let Ok(entry) = self.index.find_entry(hash, |&x| x == s) {
            entry.remove();
        }
        let slot = self.slots.remove(s)?;
        if self.index.is_empty() {
            // Only stale entries can be left; they would make `next_deadline` fire for nobody.
            self.probes_waiting.clear();
        }
        if slot.conversation.probe_counted {
            // Its answer, if it ever comes, finds no conversation: the slot is free now.
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
        Some(slot.id)
    }

    /// After any change to slot `s`: record a changed checkpoint and make sure a timer entry
    /// exists no later than the conversation's next deadline.
    fn settle(&mut self, s: u32) {
        let Some(slot) = self.slots.get_mut(s) else {
            return;
        };
        if std::mem::take(&mut self.ledger.changed) {
            self.dirty.insert(slot.id.clone());
        }
        let c = &mut slot.conversation;
        if c.is_probing() != c.probe_counted {
            c.probe_counted = !c.probe_counted;
            if c.probe_counted {
                self.probes_in_flight += 1;
            } else {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            }
        }
        c.tidy();
        let due = c.next_due(&self.config);
        if c.wake == NO_WAKE {
            self.queue.insert((due, s));
            c.wake = due;
        } else if due < c.wake {
            self.queue.remove(&(c.wake, s));
            self.queue.insert((due, s));
            c.wake = due;
        }
    }
}

fn slot_hash<P>(slots: &Slots<P>, hasher: &DefaultHashBuilder, s: u32) -> u64 {
    // Only occupied slots are indexed; the fallback is never taken.
    slots
        .get(s)
        .map_or(0, |slot| hasher.hash_one(slot.id.key()))
}

/// One remembered conversation.
#[derive(Debug)]
struct Slot<P> {
    id: ConversationId,
    conversation: Conversation<P>,
}

/// Slots per chunk: 4096 × ~128 bytes, half a megabyte.
const CHUNK: usize = 4096;

/// Conversations in fixed-size chunks, addressed by slot number; freed slots are reused first.
#[derive(Debug)]
struct Slots<P> {
    chunks: Vec<Box<[Option<Slot<P>>]>>,
    free: Vec<u32>,
    /// Slots ever handed out (the next new slot number).
    high: u32,
}

impl<P> Default for Slots<P> {
    fn default() -> Self {
        Slots {
            chunks: Vec::new(),
            free: Vec::new(),
            high: 0,
        }
    }
}

impl<P> Slots<P> {
    fn get(&self, s: u32) -> Option<&Slot<P>> {
        let s = s as usize;
        self.chunks.get(s / CHUNK)?.get(s % CHUNK)?.as_ref()
    }

    fn get_mut(&mut self, s: u32) -> Option<&mut Slot<P>> {
        let s = s as usize;
        self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK)?.as_mut()
    }

    fn insert(&mut self, slot: Slot<P>) -> u32 {
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.high;
                self.high += 1;
                if s as usize / CHUNK == self.chunks.len() {
                    self.chunks
                        .push(std::iter::repeat_with(|| None).take(CHUNK).collect());
                }
                s
            }
        };
        let s_us = s as usize;
        if let Some(cell) = self
            .chunks
            .get_mut(s_us / CHUNK)
            .and_then(|c| c.get_mut(s_us % CHUNK))
        {
            *cell = Some(slot);
        }
        s
    }

    fn remove(&mut self, s: u32) -> Option<Slot<P>> {
        let s_us = s as usize;
        let slot = self
            .chunks
            .get_mut(s_us / CHUNK)?
            .get_mut(s_us % CHUNK)?
            .take();
        if slot.is_some() {
            self.free.push(s);
        }
        slot
    }

    fn conversations(&self) -> impl Iterator<Item = &Conversation<P>> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .flatten()
            .map(|slot| &slot.conversation)
    }
}
