//! All conversations of one raw-topic partition, and the clock that drives them.
//!
//! One owner per raw partition (the consumer group guarantees it), so one
//! `PartitionSequencer` per assigned partition, driven by a single task: no locks. Timers live
//! in one ordered queue holding at most one entry per conversation; an entry may fire early
//! (activity only ever postpones a conversation's real deadline, and rescheduling on every
//! state would churn the queue), in which case the conversation just re-arms.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::conversation::{Conversation, Cx, Fate, NO_WAKE};
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
    conversations: HashMap<ConversationId, Conversation<P>>,
    queue: BTreeSet<(Timestamp, ConversationId)>,
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
            conversations: HashMap::new(),
            queue: BTreeSet::new(),
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
    pub fn on_state(
        &mut self,
        conv: &str,
        state: IncomingState<P>,
        now: Timestamp,
        out: &mut Vec<Action<P>>,
    ) {
        self.now = self.now.max(now);
        let id = self.intern(conv, now);
        if let Some(c) = self.conversations.get_mut(&id) {
            let mut cx = Cx {
                id: &id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            c.on_state(&mut cx, state);
        }
        self.settle(&id);
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
        let Some((id, _)) = self.conversations.get_key_value(conv) else {
            return;
        };
        let id = id.clone();
        if let Some(c) = self.conversations.get_mut(&id) {
            let mut cx = Cx {
                id: &id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            c.on_backfill(&mut cx, from, to, outcome);
        }
        self.settle(&id);
    }

    /// Fires every timer due at `now`: back-fill requests for gaps, retries, idle probes,
    /// abandonment and eviction of closed conversations.
    pub fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Action<P>>) {
        self.now = self.now.max(now);
        // Collect first: a conversation re-armed for `<= now` waits for the next tick instead
        // of looping here.
        let mut due = Vec::new();
        while let Some(first) = self.queue.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, id)) = self.queue.pop_first() {
                due.push(id);
            }
        }
        for id in due {
            let Some(c) = self.conversations.get_mut(&id) else {
                continue;
            };
            c.wake = NO_WAKE;
            let mut cx = Cx {
                id: &id,
                cfg: &self.config,
                now,
                ledger: &mut self.ledger,
                out,
            };
            match c.on_tick(&mut cx) {
                Fate::Keep => self.settle(&id),
                Fate::Evict => {
                    self.conversations.remove(&id);
                    self.dirty.insert(id);
                    self.ledger.changed = false;
                }
            }
        }
    }

    /// When `on_tick` next has work (or may have: entries can be early). `None`: nothing known.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// What the changelog should hold for `conv` now.
    pub fn checkpoint(&self, conv: &str) -> Option<ConversationCheckpoint> {
        self.conversations.get(conv).map(Conversation::checkpoint)
    }

    /// Conversations whose checkpoint changed since the last call; `None` means evicted (write
    /// a tombstone).
    pub fn take_dirty(&mut self) -> Vec<(ConversationId, Option<ConversationCheckpoint>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|id| {
                let cp = self.conversations.get(&id).map(Conversation::checkpoint);
                (id, cp)
            })
            .collect()
    }

    /// Takeover: seed `conv` from the changelog, on a fresh core, before any state of `conv`
    /// arrives (the shell restores, then scans, then reads raw). Merging into a conversation that
    /// already holds states is not supported: a held state landing exactly on the new `next`
    /// would not be released (found by the `sequencer_input` fuzz target; see fuzz/README.md).
    pub fn restore(&mut self, conv: &str, checkpoint: ConversationCheckpoint, now: Timestamp) {
        self.now = self.now.max(now);
        let id = self.intern(conv, now);
        if let Some(c) = self.conversations.get_mut(&id) {
            c.restore(checkpoint, &mut self.ledger);
        }
        // The changelog already holds this; only observe_* make a restored conversation dirty.
        self.ledger.changed = false;
        self.settle(&id);
    }

    /// Takeover: `conv`'s restored checkpoint is newer than what the changelog holds (the scan of
    /// the ordered topic raised it), so it must be written again: otherwise the next progress
    /// record moves past the outputs that raised it, and the takeover after that would resume
    /// from the stale changelog entry and publish them twice.
    pub fn mark_dirty(&mut self, conv: &str) {
        if let Some((id, _)) = self.conversations.get_key_value(conv) {
            self.dirty.insert(id.clone());
        }
    }

    /// Takeover scan: the ordered topic holds state `seq` of `conv` beyond the checkpoint.
    pub fn observe_published(&mut self, conv: &str, seq: u64) {
        let id = self.intern(conv, self.now);
        if let Some(c) = self.conversations.get_mut(&id) {
            c.observe_published(seq, &mut self.ledger);
        }
        self.settle(&id);
    }

    /// Takeover scan: the ordered topic holds a gap record `from..=to` of `conv`.
    pub fn observe_gap(&mut self, conv: &str, from: u64, to: u64) {
        let _ = from;
        let id = self.intern(conv, self.now);
        if let Some(c) = self.conversations.get_mut(&id) {
            c.observe_gap(to, &mut self.ledger);
        }
        self.settle(&id);
    }

    /// Takeover scan: the ordered topic holds the completion record of `conv`.
    pub fn observe_completion(&mut self, conv: &str) {
        let now = self.now;
        let id = self.intern(conv, now);
        if let Some(c) = self.conversations.get_mut(&id) {
            c.observe_completion(now, &mut self.ledger);
        }
        self.settle(&id);
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
        for c in self.conversations.values() {
            if c.is_closed() {
                stats.closed_conversations += 1;
                continue;
            }
            stats.open_conversations += 1;
            if let Some(since) = c.blocked_since() {
                stats.open_gaps += 1;
                stats.oldest_open_gap_since =
                    Some(stats.oldest_open_gap_since.map_or(since, |o| o.min(since)));
            }
        }
        debug_assert_eq!(
            stats.held_states,
            self.conversations
                .values()
                .map(Conversation::held_len)
                .sum::<usize>()
        );
        stats
    }

    /// Conversations currently remembered (open and closed).
    pub fn len(&self) -> usize {
        self.conversations.len()
    }

    /// No conversation remembered.
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }

    /// The shared id for `conv`, creating the conversation if new.
    fn intern(&mut self, conv: &str, now: Timestamp) -> ConversationId {
        if let Some((id, _)) = self.conversations.get_key_value(conv) {
            return id.clone();
        }
        let id: ConversationId = ConversationId::from(conv);
        self.conversations
            .insert(id.clone(), Conversation::new(now));
        id
    }

    /// After any change to `id`: record a changed checkpoint and make sure a timer entry exists
    /// no later than the conversation's next deadline.
    fn settle(&mut self, id: &ConversationId) {
        if std::mem::take(&mut self.ledger.changed) {
            self.dirty.insert(id.clone());
        }
        let Some(c) = self.conversations.get_mut(id) else {
            return;
        };
        c.tidy();
        let due = c.next_due(&self.config);
        if c.wake == NO_WAKE {
            self.queue.insert((due, id.clone()));
            c.wake = due;
        } else if due < c.wake {
            self.queue.remove(&(c.wake, id.clone()));
            self.queue.insert((due, id.clone()));
            c.wake = due;
        }
    }
}
