//! Fuzzes `callbridge::sequencer::PartitionSequencer` with arbitrary sequences of shell calls and
//! checks, after every call, what the sequencer promises against an oracle kept here.
//!
//! # Input format (hand-decoded, so seeds can be written by hand)
//! Byte 0 picks the timing preset ([`preset`]), byte 1 the ENDING sequence of each of the four
//! conversations (2 bits each: 3, 7, 11 or 15). Then operations, one opcode byte each
//! (`% 16`) followed by its argument bytes (missing bytes read as 0):
//! - `0..=5` state `[conv, seq, flags, dt]`: `seq` byte 255 → 0, 254 → `u64::MAX`,
//!   253 → `u64::MAX - 1`, else `1 + b % 20`; flags bits 0-1 content variant (0/1 the genuine
//!   state, 2/3 a conflicting copy whose ENDING flag is bit 2), bits 3-4 origin, bit 6 reuse an
//!   earlier raw offset, bits 6+7 no offset; time advances by `dt` units first.
//! - `6` tick `[hi, lo]`: advance `(hi << 8 | lo)` units, `on_tick`.
//! - `7`, `15` tick at the next deadline.
//! - `8`, `9` answer a pending back-fill `[which, kind, mask_hi, mask_lo, extra]`.
//! - `10` an unsolicited answer `[conv, from, to, kind, mask, extra]`.
//! - `11` `take_dirty` (write the changelog).
//! - `12` `restore` `[conv, mode, next, flags]` (flags bit 0 ended, bits 1-2 gap count, bit 3
//!   abandoned) and `13` `observe_*` `[conv, kind, seq]`; skipped while the conversation holds
//!   states (see [`merge_with_held`]).
//! - `14` takeover `[lost]`: the owner dies and the last `lost % (n + 1)` of the `n` records
//!   beyond the changelog's index are lost with it (sent, never acknowledged); a new sequencer
//!   is restored from the changelog plus the ordered topic that is left, and completes an
//!   ENDING found there without its completion record, as the shell's takeover does.
//!
//! # Invariants checked
//! Per conversation (an "incarnation" ends when it is evicted):
//! - published sequence numbers and gap records are contiguous from `next` and strictly
//!   increasing; a gap never covers a held state; nothing is published after the completion, and
//!   a completion follows exactly the publication of an ENDING state, with the right gap count;
//! - every published/dead-lettered payload is one that was delivered for that conversation and
//!   sequence, is emitted once, and a held state is the one published (first seen wins);
//! - dead letters have a reason that holds (a conflicting duplicate really differs, an
//!   after-ending state really is above an ENDING, invalid sequences are 0/`u64::MAX`, an
//!   implausible one is more than `MAX_SEQUENCE_AHEAD` above `next`, one inside a declared gap
//!   was declared a gap by this sequencer, within the conflict window); a state dead-lettered
//!   for a conversation the sequencer does not know leaves it unknown (`check` finds no
//!   checkpoint and no timer for it); a late duplicate inside
//!   the conflict window with another fingerprint, or for a sequence declared a gap, is never
//!   silently dropped, nor is a conflicting copy of a held state;
//! - gap records: `Gone` only from a back-fill answer; after a tick, no front hole without an
//!   answer awaited is older than `gap_timeout + backfill_max_wait`;
//! - back-fill requests: never two in flight, `from == next`, a gap request ends just below the
//!   first held state, a probe only when nothing is held, never more than
//!   `idle_probes_in_flight` probes out for open calls;
//! - `checkpoint()` equals the oracle's next/ended/gap count; `stats()` held/open/closed/gap
//!   gauges match; `raw_low_watermark()` is exactly the smallest raw offset of a held live state
//!   (or of the live copy of a held back-filled one);
//! - eviction only as documented (abandon after `abandon_after` of inactivity, closed after
//!   `closed_retention`, abandoned after another `abandon_after` without a state of it), and
//!   `take_dirty` reports every changed conversation (an abandonment too) and every tombstone;
//!   a closed or abandoned conversation is forgotten only once the raw low watermark has passed
//!   every raw record of it this sequencer read (a takeover resumes reading raw there); an
//!   abandoned one takes no state after `Abandoned` (`AfterAbandonment` at or above its `next`),
//!   and a takeover restores a call the changelog says was abandoned as abandoned (unless the
//!   ordered topic shows its completion);
//! - a takeover never republishes: the new owner's `next` is above everything left in the
//!   topic of the conversation's incarnation, and an ENDING left without its completion record
//!   is completed at once (one completion, right last sequence and gap count);
//! - liveness: answering every request and ticking to each deadline empties the sequencer
//!   (nothing held, no watermark, no deadline).

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use callbridge::sequencer::{
    Action, BackfillOutcome, ConversationCheckpoint, ConversationId, DeadLetterReason, GapReason,
    IncomingState, Origin, PartitionSequencer, SequencerConfig, Timestamp, CONFLICT_WINDOW,
    MAX_SEQUENCE_AHEAD,
};
use libfuzzer_sys::fuzz_target;

/// Two plain ids and two canonical UUIDs: the core holds the latter packed (`sequencer/id.rs`),
/// so both forms go through every rule.
const CONVS: [&str; 4] = [
    "conv-a",
    "conv-b",
    "0f8e2c3a-95b1-4c7d-8e6f-a1b2c3d4e5f6",
    "7d444840-9dc0-11d1-b245-5ffdce74fad2",
];
const MAX_OPS: usize = 400;
const DRAIN_STEPS: usize = 100_000;

fuzz_target!(|data: &[u8]| run(data));

/// `SEQUENCER_FUZZ_TRACE=1` prints every call and its actions (for reproducing a crash).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SEQUENCER_FUZZ_TRACE").is_some())
}

/// `restore`/`observe_*` on a conversation that holds states can leave a held state exactly at
/// `next` undrained (the core then asks for the empty range `next..=next-1` at every tick until
/// the conversation is abandoned). The shell only restores a fresh core, before any state, so
/// by default those calls are skipped while the conversation holds something;
/// `SEQUENCER_FUZZ_MERGE_WITH_HELD=1` makes them, to check a fix.
fn merge_with_held() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SEQUENCER_FUZZ_MERGE_WITH_HELD").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

fn run(data: &[u8]) {
    let mut input = Bytes { data, pos: 0 };
    let (config, unit) = preset(&mut input);
    let ends_byte = input.byte();
    let ends: [u64; 4] = std::array::from_fn(|c| 3 + 4 * u64::from((ends_byte >> (2 * c)) & 3));
    let mut h = Harness::new(config, unit, ends);
    let mut ops = 0;
    while !input.done() && ops < MAX_OPS {
        ops += 1;
        let op = input.byte() % 16;
        match op {
            0..=5 => {
                let (c, sb, flags, dt) = (input.byte(), input.byte(), input.byte(), input.byte());
                h.advance(u64::from(dt));
                h.live_state(usize::from(c) % 4, seq_from(sb), flags);
            }
            6 => {
                let units = u64::from(input.byte()) << 8 | u64::from(input.byte());
                h.advance(units);
                h.tick();
            }
            7 | 15 => h.tick_to_deadline(),
            8 | 9 => {
                let (which, kind) = (input.byte(), input.byte());
                let mask = u16::from(input.byte()) << 8 | u16::from(input.byte());
                let extra = input.byte();
                h.answer_pending(usize::from(which), kind, mask, extra);
            }
            10 => {
                let (c, from, to) = (input.byte(), input.byte(), input.byte());
                let (kind, mask, extra) = (input.byte(), input.byte(), input.byte());
                let from = u64::from(from % 22);
                let to = (to != 0).then(|| from + u64::from(to % 6));
                h.answer(usize::from(c) % 4, from, to, kind, u16::from(mask), extra);
            }
            11 => h.take_dirty(),
            12 => {
                let (c, mode, next, flags) =
                    (input.byte(), input.byte(), input.byte(), input.byte());
                h.restore(usize::from(c) % 4, mode, next, flags);
            }
            13 => {
                let (c, kind, sb) = (input.byte(), input.byte(), input.byte());
                h.observe(usize::from(c) % 4, kind, seq_from(sb));
            }
            14 => h.takeover(input.byte()),
            _ => unreachable!(),
        }
    }
    h.drain();
}

fn seq_from(b: u8) -> u64 {
    match b {
        255 => 0,
        254 => u64::MAX,
        253 => u64::MAX - 1,
        b => 1 + u64::from(b % 20),
    }
}

/// Timing rules and the length of one time unit in the input, in milliseconds.
fn preset(input: &mut Bytes<'_>) -> (SequencerConfig, u64) {
    let ms = Duration::from_millis;
    match input.byte() % 5 {
        0 => (SequencerConfig::default(), 100),
        1 => (
            SequencerConfig {
                gap_timeout: ms(10),
                backfill_retry_base: ms(5),
                backfill_retry_max: ms(40),
                backfill_max_wait: ms(200),
                confirm_gone_after: 2,
                idle_probe_after: ms(100),
                // One probe at a time for four conversations: the others queue.
                idle_probes_in_flight: 1,
                abandon_after: ms(2_000),
                closed_retention: ms(500),
            },
            1,
        ),
        // Everything at once: zero timeouts, a single answer declares a state gone.
        2 => (
            SequencerConfig {
                gap_timeout: ms(0),
                backfill_retry_base: ms(0),
                backfill_retry_max: ms(0),
                backfill_max_wait: ms(0),
                confirm_gone_after: 0,
                idle_probe_after: ms(1),
                idle_probes_in_flight: 4,
                abandon_after: ms(50),
                closed_retention: ms(0),
            },
            1,
        ),
        3 => (
            SequencerConfig {
                gap_timeout: ms(50),
                backfill_retry_base: ms(20),
                backfill_retry_max: ms(100),
                backfill_max_wait: ms(10_000),
                confirm_gone_after: 4,
                idle_probe_after: ms(300),
                idle_probes_in_flight: 0,
                abandon_after: ms(5_000),
                closed_retention: ms(2_000),
            },
            5,
        ),
        _ => {
            let mut b = || u64::from(input.byte());
            (
                SequencerConfig {
                    gap_timeout: ms(b() * 10),
                    backfill_retry_base: ms(b() * 5),
                    backfill_retry_max: ms(b() * 20),
                    backfill_max_wait: ms(b() * 100),
                    confirm_gone_after: (b() % 5) as u32,
                    idle_probe_after: ms((b() + 1) * 20),
                    abandon_after: ms((b() + 1) * 200),
                    closed_retention: ms(b() * 50),
                    idle_probes_in_flight: (b() % 4) as u32,
                },
                2,
            )
        }
    }
}

struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

// ---- the oracle -----------------------------------------------------------------------------------

/// One delivered state; its index is the payload handed to the sequencer.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    conv: usize,
    seq: u64,
    fingerprint: u64,
    is_ending: bool,
    origin: Origin,
    /// What the sequencer must count for the watermark (`None` for back-fill answers).
    offset: Option<i64>,
    /// When it was handed to the sequencer.
    at: Timestamp,
}

/// The oracle's view of one conversation incarnation.
#[derive(Debug)]
struct Conv {
    next: u64,
    ended: bool,
    /// Given up (`Abandoned`) and still remembered; its checkpoint says so (not `ended`).
    abandoned: bool,
    /// Highest raw offset of a valid state of it this sequencer read (an invalid sequence
    /// number makes no conversation state, and a re-read one is dead-lettered again).
    max_offset: Option<i64>,
    gap_count: u32,
    /// Lower bound of the sequencer's `last_activity`.
    active_since: Timestamp,
    /// Lower bound of the time it closed (None: unknown); for an abandoned one, of its last
    /// activity since (every state of it counts).
    closed_at: Option<Timestamp>,
    /// Held states: sequence → payload.
    held: BTreeMap<u64, u32>,
    /// Raw offsets of live copies of held back-filled states (sequence → offset): the copy's
    /// record stands for the held state in the watermark. Applies to the held entry it was
    /// recorded for only (a new held entry of that sequence clears it).
    pinned: BTreeMap<u64, i64>,
    /// Fingerprints published in this incarnation by this sequencer (for the conflict window).
    published: BTreeMap<u64, u64>,
    /// Highest sequence published or declared a gap in this incarnation (0: none).
    max_resolved: u64,
    /// Sequences this sequencer declared a gap in this incarnation (the last
    /// `CONFLICT_WINDOW` of each gap record: older ones can never be inside the window).
    gapped: BTreeSet<u64>,
    /// Checkpoint changed since the last `take_dirty`.
    dirty: bool,
}

impl Conv {
    fn new(now: Timestamp) -> Self {
        Conv {
            next: 1,
            ended: false,
            abandoned: false,
            max_offset: None,
            gap_count: 0,
            active_since: now,
            closed_at: None,
            held: BTreeMap::new(),
            pinned: BTreeMap::new(),
            published: BTreeMap::new(),
            max_resolved: 0,
            gapped: BTreeSet::new(),
            dirty: false,
        }
    }

    fn checkpoint(&self) -> ConversationCheckpoint {
        ConversationCheckpoint {
            next_sequence: self.next,
            ended: self.ended,
            gap_count: self.gap_count,
            abandoned: self.abandoned,
        }
    }

    /// `next` moves to `next` without publishing (restore / observed output).
    fn skip_to(&mut self, next: u64) {
        self.next = next;
        self.held.retain(|&s, _| s >= next);
    }

    /// Completed or abandoned: takes no state any more.
    fn closed(&self) -> bool {
        self.ended || self.abandoned
    }

    fn close_quietly(&mut self) {
        self.ended = true;
        self.abandoned = false;
        self.held.clear();
        self.closed_at = Some(self.active_since);
    }
}

/// One record of the ordered topic.
#[derive(Debug, Clone, Copy)]
enum Record {
    /// A state, and whether it is an ENDING.
    Published(u64, bool),
    Gap(u64, u64),
    Completion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    State,
    Backfill,
    Tick,
}

struct Harness {
    seq: PartitionSequencer<u32>,
    config: SequencerConfig,
    unit: u64,
    now: Timestamp,
    /// The sequencer's own clock: the latest time any call gave it (`observe_*` carry none).
    seq_now: Timestamp,
    ends: [u64; 4],
    convs: [Option<Conv>; 4],
    deliveries: Vec<Delivery>,
    emitted: HashSet<u32>,
    /// Back-fill requests not yet answered, oldest first: (conv, from, to).
    pending: Vec<(usize, u64, Option<u64>)>,
    next_offset: i64,
    /// Evicted since the last `take_dirty`: a tombstone is owed.
    tombstones: HashSet<usize>,
    /// The changelog: each conversation's checkpoint and the incarnation it was written for.
    changelog: BTreeMap<usize, (ConversationCheckpoint, u32)>,
    /// The ordered topic: (conversation, its incarnation, record).
    topic: Vec<(usize, u32, Record)>,
    /// Incarnations of each conversation so far (a new one starts when the oracle creates it).
    incarnations: [u32; 4],
    /// Topic length the changelog covers (as of the last `take_dirty`).
    indexed_upto: usize,
    /// Topic length the last takeover read: what a new owner has read is acknowledged, so a
    /// later takeover can only lose records written after it.
    read_upto: usize,
}

impl Harness {
    fn new(config: SequencerConfig, unit: u64, ends: [u64; 4]) -> Self {
        Harness {
            seq: PartitionSequencer::new(config.clone()),
            config,
            unit,
            now: Timestamp(1_000_000),
            seq_now: Timestamp(0),
            ends,
            convs: Default::default(),
            deliveries: Vec::new(),
            emitted: HashSet::new(),
            pending: Vec::new(),
            next_offset: 0,
            tombstones: HashSet::new(),
            changelog: BTreeMap::new(),
            topic: Vec::new(),
            incarnations: [0; 4],
            indexed_upto: 0,
            read_upto: 0,
        }
    }

    fn advance(&mut self, units: u64) {
        self.now = Timestamp(self.now.0.saturating_add(units.saturating_mul(self.unit)));
    }

    fn fingerprint(c: usize, seq: u64, variant: u8, is_ending: bool) -> u64 {
        synthetic_fingerprint(format!("{c}/{seq}/{variant}/{is_ending}").as_bytes())
    }

    /// A state as GoTo has it (variant 0) or a conflicting copy.
    fn state(&mut self, c: usize, seq: u64, variant: u8, ending_bit: bool) -> (u64, bool) {
        let is_ending = if variant == 0 {
            seq == self.ends[c]
        } else {
            ending_bit
        };
        (Self::fingerprint(c, seq, variant, is_ending), is_ending)
    }

    fn deliver(&mut self, d: Delivery, given_offset: Option<i64>) -> IncomingState<u32> {
        let payload = u32::try_from(self.deliveries.len()).expect("few deliveries");
        self.deliveries.push(d);
        IncomingState {
            sequence_number: d.seq,
            fingerprint: d.fingerprint,
            is_ending: d.is_ending,
            origin: d.origin,
            raw_offset: given_offset,
            payload,
        }
    }

    /// Before a call that creates `c` if new; `timed`: the call carries `self.now`.
    fn ensure_conv(&mut self, c: usize, timed: bool) {
        if timed {
            self.seq_now = self.now;
        }
        if self.convs[c].is_none() {
            self.convs[c] = Some(Conv::new(self.seq_now));
            self.incarnations[c] += 1;
        }
    }

    // ---- operations ------------------------------------------------------------------------

    fn live_state(&mut self, c: usize, seq: u64, flags: u8) {
        let v = flags & 3;
        let variant = v.saturating_sub(1);
        let (fingerprint, is_ending) = self.state(c, seq, variant, flags & 4 != 0);
        let origin = match (flags >> 3) & 3 {
            0 | 3 => Origin::Webhook,
            1 => Origin::WebSocket,
            _ => Origin::Backfill,
        };
        let offset = match flags >> 6 {
            3 => None,
            1 if self.next_offset > 0 => {
                Some(self.next_offset - 1 - i64::from(flags & 3).min(self.next_offset - 1))
            }
            _ => {
                self.next_offset += 1;
                Some(self.next_offset - 1)
            }
        };
        let d = Delivery {
            conv: c,
            seq,
            fingerprint,
            is_ending,
            origin,
            offset,
            at: self.now,
        };
        let s = self.deliver(d, offset);
        let payload = s.payload;
        // Dead-lettered before anything else happens to it (invalid, or implausible above
        // `next` = 1), a state opens no conversation the sequencer does not know.
        let valid_at_one = seq != 0 && seq != u64::MAX && seq - 1 <= MAX_SEQUENCE_AHEAD;
        if self.convs[c].is_some() || valid_at_one {
            self.ensure_conv(c, true);
        } else {
            self.seq_now = self.now;
        }
        let valid = offset.filter(|_| seq != 0 && seq != u64::MAX);
        if let (Some(off), Some(o)) = (valid, self.convs[c].as_mut()) {
            o.max_offset = Some(o.max_offset.map_or(off, |m| m.max(off)));
        }
        let next_before = self.convs[c].as_ref().map_or(1, |o| o.next);
        let mut out = Vec::new();
        let now = self.now;
        self.seq.on_state(CONVS[c], s, now, &mut out);
        self.process(Call::State, &[payload], out);

        // A late duplicate inside the conflict window with another fingerprint must have been
        // dead-lettered, not dropped.
        if !self.emitted.contains(&payload)
            && seq < next_before
            && next_before - seq <= CONFLICT_WINDOW
        {
            if let Some(o) = &self.convs[c] {
                if let Some(&published) = o.published.get(&seq) {
                    assert!(
                        fold(published) == fold(fingerprint),
                        "conflicting duplicate of published {c}/{seq} dropped silently (next {next_before})"
                    );
                }
                assert!(
                    !o.gapped.contains(&seq),
                    "state {c}/{seq} inside a declared gap dropped silently (next {next_before})"
                );
            }
        }
        self.check();
    }

    fn tick(&mut self) {
        self.seq_now = self.now;
        let mut out = Vec::new();
        let now = self.now;
        self.seq.on_tick(now, &mut out);
        self.process(Call::Tick, &[], out);
        // Nothing is held past its deadline once the timers due have fired, unless an answer
        // is still awaited (a slow answer may still bring the states; it is waited for).
        let limit = self.config.gap_timeout + self.config.backfill_max_wait;
        for (c, o) in self.convs.iter().enumerate() {
            let Some(o) = o else { continue };
            if self.pending.iter().any(|p| p.0 == c) {
                continue;
            }
            if let Some(since) = o
                .held
                .values()
                .map(|&p| self.deliveries[p as usize].at)
                .min()
            {
                assert!(
                    now < since.plus(limit),
                    "{}: a state held since {since:?} is still held at {now:?}",
                    CONVS[c]
                );
            }
        }
        self.check();
    }

    fn tick_to_deadline(&mut self) {
        if let Some(d) = self.seq.next_deadline() {
            self.now = self.now.max(d);
        }
        self.tick();
    }

    fn answer_pending(&mut self, which: usize, kind: u8, mask: u16, extra: u8) {
        if self.pending.is_empty() {
            return;
        }
        let (c, from, to) = self.pending[which % self.pending.len()];
        self.answer(c, from, to, kind, mask, extra);
    }

    /// Answers `(c, from, to)`: the request in flight if it matches one, else an unsolicited one.
    fn answer(&mut self, c: usize, from: u64, to: Option<u64>, kind: u8, mask: u16, extra: u8) {
        if let Some(i) = self.pending.iter().position(|p| *p == (c, from, to)) {
            self.pending.remove(i);
        }
        let mut payloads = Vec::new();
        let outcome = match kind % 6 {
            0 | 1 => {
                let mut states = Vec::new();
                let last = to
                    .unwrap_or(from.saturating_add(15))
                    .min(from.saturating_add(15));
                let mut seqs: Vec<u64> = (from..=last)
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, s)| s)
                    .collect();
                if extra & 1 != 0 {
                    seqs.push(last.saturating_add(1)); // outside the range
                }
                if extra & 2 != 0 {
                    seqs.reverse();
                }
                for s in seqs {
                    // Mostly the genuine state; bit 2 makes every third one a conflicting copy.
                    let variant = if extra & 4 != 0 && s % 3 == 0 { 1 } else { 0 };
                    let (fingerprint, is_ending) = self.state(c, s, variant, extra & 8 != 0);
                    let d = Delivery {
                        conv: c,
                        seq: s,
                        fingerprint,
                        is_ending,
                        origin: Origin::Backfill,
                        offset: None,
                        at: self.now,
                    };
                    // The shell may pass anything; the sequencer must drop raw offsets here.
                    let st = self.deliver(d, Some(i64::from(extra)));
                    payloads.push(st.payload);
                    states.push(st);
                }
                BackfillOutcome::Answered(states)
            }
            2 => BackfillOutcome::Answered(Vec::new()),
            3 => BackfillOutcome::NotFound,
            4 => BackfillOutcome::Failed { retryable: true },
            _ => BackfillOutcome::Failed { retryable: false },
        };
        let known = self.convs[c].is_some();
        self.seq_now = self.now;
        let mut out = Vec::new();
        let now = self.now;
        self.seq
            .on_backfill(CONVS[c], from, to, outcome, now, &mut out);
        if !known {
            assert!(
                out.is_empty(),
                "answer for an unknown conversation acted: {out:?}"
            );
        }
        self.process(Call::Backfill, &payloads, out);
        self.check();
    }

    fn take_dirty(&mut self) {
        let dirty = self.seq.take_dirty();
        let mut seen = HashSet::new();
        for (id, cp) in &dirty {
            let c = conv_index(id);
            assert!(seen.insert(c), "take_dirty lists {id} twice");
            assert_eq!(
                *cp,
                self.seq.checkpoint(&id.as_text()),
                "take_dirty checkpoint of {id}"
            );
        }
        for c in 0..4 {
            let owed =
                self.tombstones.contains(&c) || self.convs[c].as_ref().is_some_and(|o| o.dirty);
            assert!(!owed || seen.contains(&c), "take_dirty misses {}", CONVS[c]);
        }
        for (id, cp) in dirty {
            let c = conv_index(&id);
            match cp {
                Some(cp) => {
                    self.changelog.insert(c, (cp, self.incarnations[c]));
                }
                None => {
                    self.changelog.remove(&c);
                }
            }
        }
        for o in self.convs.iter_mut().flatten() {
            o.dirty = false;
        }
        self.tombstones.clear();
        self.indexed_upto = self.topic.len();
        self.check();
    }

    /// `restore`/`observe_*` may be made on `c` now (see [`merge_with_held`]).
    fn may_merge(&self, c: usize) -> bool {
        merge_with_held() || self.convs[c].as_ref().is_none_or(|o| o.held.is_empty())
    }

    fn restore(&mut self, c: usize, mode: u8, next: u8, flags: u8) {
        if !self.may_merge(c) {
            return;
        }
        let cp = match self.changelog.get(&c) {
            Some((cp, _)) if mode & 1 == 0 => *cp,
            _ => ConversationCheckpoint {
                next_sequence: u64::from(next % 23),
                ended: flags & 1 != 0,
                gap_count: u32::from(flags >> 1 & 3),
                abandoned: flags & 8 != 0,
            },
        };
        self.ensure_conv(c, true);
        let now = self.now;
        self.seq.restore(CONVS[c], cp, now);
        let o = self.conv_mut(c);
        let next = cp.next_sequence.max(1);
        if next > o.next {
            o.skip_to(next);
        }
        o.gap_count = o.gap_count.max(cp.gap_count);
        if cp.ended && !o.ended {
            o.close_quietly();
        } else if cp.abandoned && !o.closed() {
            // Abandoned by the previous owner; its clock runs from the record's time (now) or
            // the older activity already known, whichever is earlier.
            o.abandoned = true;
            o.held.clear();
            o.closed_at = Some(o.active_since);
        }
        self.check();
    }

    fn observe(&mut self, c: usize, kind: u8, seq: u64) {
        if !self.may_merge(c) {
            return;
        }
        // A record at sequence 0 or `u64::MAX` moves no conversation; one it would have
        // opened is forgotten again (`PartitionSequencer::observe`), as after a dead-lettered
        // first state.
        if self.convs[c].is_none() && kind % 3 != 2 && (seq == 0 || seq == u64::MAX) {
            if kind % 3 == 0 {
                self.seq.observe_published(CONVS[c], seq);
            } else {
                self.seq
                    .observe_gap(CONVS[c], seq.saturating_sub(2).max(1), seq);
            }
            self.check();
            return;
        }
        self.ensure_conv(c, false);
        let now = self.seq_now;
        match kind % 3 {
            0 => {
                self.seq.observe_published(CONVS[c], seq);
                let o = self.conv_mut(c);
                if seq >= o.next && seq < u64::MAX {
                    o.skip_to(seq + 1);
                    o.dirty = true;
                }
            }
            1 => {
                let from = seq.saturating_sub(2).max(1);
                self.seq.observe_gap(CONVS[c], from, seq);
                let o = self.conv_mut(c);
                if seq >= o.next && seq < u64::MAX {
                    o.skip_to(seq + 1);
                    o.gap_count = o.gap_count.saturating_add(1);
                    o.dirty = true;
                }
            }
            _ => {
                self.seq.observe_completion(CONVS[c]);
                let o = self.conv_mut(c);
                if !o.ended {
                    o.close_quietly();
                    o.closed_at = Some(now);
                    o.dirty = true;
                }
            }
        }
        self.check();
    }

    /// The owner dies (held states and requests in flight are lost, and the last `lost % (n+1)`
    /// of the `n` records it sent beyond the index and the last takeover's read); a new one
    /// restores the changelog, then replays the ordered topic beyond what the changelog covers.
    fn takeover(&mut self, lost: u8) {
        let now = self.now;
        let durable = self.indexed_upto.max(self.read_upto);
        let lose = usize::from(lost) % (self.topic.len() - durable + 1);
        self.topic.truncate(self.topic.len() - lose);
        self.read_upto = self.topic.len();
        trace!("takeover: {lose} records lost, {} kept", self.topic.len());
        self.seq = PartitionSequencer::new(self.config.clone());
        self.seq_now = Timestamp(0);
        // The oldest incarnation of each conversation the new owner learns of.
        let mut oldest_known: [Option<u32>; 4] = [None; 4];
        for (c, (cp, inc)) in &self.changelog {
            self.seq.restore(CONVS[*c], *cp, now);
            oldest_known[*c] = Some(*inc);
        }
        // ENDINGs found without their completion record (lost with the owner), and their
        // incarnation.
        let mut endings: BTreeMap<usize, (u64, u32)> = BTreeMap::new();
        for &(c, inc, r) in &self.topic[self.indexed_upto..] {
            oldest_known[c] = Some(oldest_known[c].map_or(inc, |k| k.min(inc)));
            match r {
                Record::Published(s, ending) => {
                    self.seq.observe_published(CONVS[c], s);
                    if ending {
                        endings.insert(c, (s, inc));
                    }
                }
                Record::Gap(from, to) => self.seq.observe_gap(CONVS[c], from, to),
                Record::Completion => {
                    endings.remove(&c);
                    self.seq.observe_completion(CONVS[c]);
                }
            }
        }
        // Calls the changelog says were abandoned must be restored abandoned (a state at or
        // above where they stopped was dead-lettered by the previous owner), unless the output
        // shows them completed.
        for (c, (cp, _)) in &self.changelog {
            let completed = self.topic[self.indexed_upto..]
                .iter()
                .any(|&(rc, _, r)| rc == *c && matches!(r, Record::Completion));
            if cp.abandoned && !completed {
                let restored = self.seq.checkpoint(CONVS[*c]);
                assert!(
                    restored.is_some_and(|r| r.abandoned && !r.ended),
                    "{}: abandoned in the changelog, restored as {restored:?}",
                    CONVS[*c]
                );
            }
        }
        // The new sequencer's clock: `now` once anything was restored, else still 0 (observe
        // calls carry no time).
        if !self.changelog.is_empty() {
            self.seq_now = now;
        }
        let created = self.seq_now;
        self.pending.clear();
        self.tombstones.clear();
        for c in 0..4 {
            let cp = self.seq.checkpoint(CONVS[c]);
            // Highest sequence of this incarnation left in the topic.
            let in_topic = self
                .topic
                .iter()
                .filter(|&&(rc, inc, _)| rc == c && inc == self.incarnations[c])
                .map(|&(_, _, r)| match r {
                    Record::Published(s, _) => s,
                    Record::Gap(_, to) => to,
                    Record::Completion => 0,
                })
                .max()
                .unwrap_or(0);
            let resolved = match &self.convs[c] {
                Some(o) if lose == 0 => o.max_resolved.max(in_topic),
                Some(_) => in_topic,
                None => 0,
            };
            if let Some(cp) = cp {
                assert!(
                    cp.next_sequence > resolved,
                    "takeover would republish {}: next {} but {resolved} already in the topic",
                    CONVS[c],
                    cp.next_sequence,
                );
            }
            assert!(
                cp.is_some() || resolved == 0,
                "takeover forgot {} although the topic has its states",
                CONVS[c]
            );
            self.convs[c] = cp.map(|cp| {
                let mut o = Conv::new(created);
                o.next = cp.next_sequence;
                o.ended = cp.ended;
                o.abandoned = cp.abandoned;
                o.gap_count = cp.gap_count;
                o.closed_at = (cp.ended || cp.abandoned).then_some(created);
                // Restored and observed conversations may or may not be dirty; don't insist.
                o.max_resolved = cp.next_sequence - 1;
                o
            });
        }
        // An ENDING left without its completion: nothing would ever close the call, so the new
        // owner completes it, once, with the restored gap count.
        for (c, (last, inc)) in endings {
            if oldest_known[c] != Some(inc) {
                // The new owner also learnt of an earlier incarnation of this id (evicted after
                // `closed_retention` or abandoned, then seen again before the changelog was
                // rewritten) and holds the merged view, which is not this ENDING's call: it
                // cannot tell, so nothing is owed here (the later incarnation is a replay of an
                // evicted call, the documented limit of `closed_retention`).
                continue;
            }
            self.seq_now = now;
            let mut out = Vec::new();
            let completed = self
                .seq
                .complete_found_ending(CONVS[c], last, now, &mut out);
            trace!(
                "    complete_found_ending {}/{last}: {completed} {out:?}",
                CONVS[c]
            );
            assert!(
                completed,
                "{}: ENDING {last} found without its completion was not completed",
                CONVS[c]
            );
            let o = self.convs[c]
                .as_mut()
                .expect("a conversation with an ENDING in the topic is restored");
            assert!(
                !o.ended && o.next == last + 1,
                "{}: restored as {:?} over an ENDING {last} without completion",
                CONVS[c],
                o.checkpoint()
            );
            match out.as_slice() {
                [Action::PublishCompletion {
                    conversation,
                    last_sequence,
                    gap_count,
                }] => {
                    assert_eq!(conv_index(conversation), c);
                    assert_eq!(*last_sequence, last, "{}: completion's last", CONVS[c]);
                    assert_eq!(*gap_count, o.gap_count, "{}: completion's gaps", CONVS[c]);
                }
                other => panic!("{}: completing a found ENDING did {other:?}", CONVS[c]),
            }
            o.ended = true;
            o.closed_at = Some(now);
            o.dirty = true;
            self.topic
                .push((c, self.incarnations[c], Record::Completion));
        }
        // Whatever the new owner marked dirty is fine to report; start the owed set afresh.
        self.check();
    }

    /// Liveness: answer every request (NotFound) and tick to every deadline until the
    /// sequencer has forgotten everything.
    fn drain(&mut self) {
        for _ in 0..DRAIN_STEPS {
            if let Some(&(c, from, to)) = self.pending.first() {
                self.answer(c, from, to, 3, 0, 0);
                continue;
            }
            let Some(d) = self.seq.next_deadline() else {
                assert!(self.seq.is_empty(), "conversations left without a deadline");
                assert_eq!(self.seq.raw_low_watermark(), None, "watermark after drain");
                assert_eq!(self.seq.stats().held_states, 0, "held after drain");
                return;
            };
            self.now = Timestamp(self.now.0.saturating_add(1).max(d.0));
            self.tick();
        }
        panic!(
            "no quiescence after {DRAIN_STEPS} steps: {} conversations, deadline {:?}",
            self.seq.len(),
            self.seq.next_deadline()
        );
    }

    // ---- checking actions ------------------------------------------------------------------

    fn conv(&self, c: usize) -> &Conv {
        self.convs[c]
            .as_ref()
            .expect("oracle knows the conversation")
    }

    fn conv_mut(&mut self, c: usize) -> &mut Conv {
        self.convs[c]
            .as_mut()
            .expect("oracle knows the conversation")
    }

    /// Checks the actions of one call in order and updates the oracle.
    fn process(&mut self, call: Call, delivered: &[u32], out: Vec<Action<u32>>) {
        let now = self.now;
        trace!(
            "{now:?} {call:?} delivered {:?}",
            delivered
                .iter()
                .map(|&p| self.deliveries[p as usize])
                .collect::<Vec<_>>()
        );
        for a in &out {
            trace!("    {a:?}");
        }
        let mut expect_completion: Option<(usize, u64)> = None;
        let mut abandoned = HashSet::new();
        for a in out {
            if let Some((ec, es)) = expect_completion {
                assert!(
                    matches!(&a, Action::PublishCompletion { conversation, last_sequence, .. }
                        if conv_index(conversation) == ec && *last_sequence == es),
                    "ENDING {}/{es} published without its completion right after: {a:?}",
                    CONVS[ec]
                );
            }
            match a {
                Action::Publish {
                    conversation,
                    sequence_number: seq,
                    origin,
                    payload,
                } => {
                    let c = conv_index(&conversation);
                    let d = self.deliveries[payload as usize];
                    assert!(
                        self.emitted.insert(payload),
                        "payload {payload} emitted twice"
                    );
                    let fresh = delivered.contains(&payload);
                    let o = self.convs[c]
                        .as_mut()
                        .expect("publish for an unknown conversation");
                    assert!(!o.ended, "{conversation}/{seq} published after completion");
                    assert!(
                        !o.abandoned,
                        "{conversation}/{seq} published after abandonment"
                    );
                    assert_eq!(
                        seq, o.next,
                        "{conversation}: published {seq}, expected {}",
                        o.next
                    );
                    assert!(seq < u64::MAX);
                    assert_eq!(
                        (d.conv, d.seq),
                        (c, seq),
                        "published payload of another state"
                    );
                    assert_eq!(origin, d.origin, "published with another origin");
                    match o.held.remove(&seq) {
                        Some(h) => assert_eq!(
                            h, payload,
                            "{conversation}/{seq}: held state not the one published"
                        ),
                        None => assert!(
                            fresh,
                            "{conversation}/{seq}: published a state that was not held"
                        ),
                    }
                    o.next = seq + 1;
                    o.max_resolved = seq;
                    o.published.insert(seq, d.fingerprint);
                    if fresh {
                        o.active_since = now; // arrived now (a drained held state did not)
                    }
                    o.dirty = true;
                    self.topic
                        .push((c, self.incarnations[c], Record::Published(seq, d.is_ending)));
                    if d.is_ending {
                        expect_completion = Some((c, seq));
                    }
                }
                Action::PublishGap {
                    conversation,
                    from,
                    to,
                    reason,
                } => {
                    let c = conv_index(&conversation);
                    // A gap is found gone in an answer; a tick only gives one up.
                    assert!(
                        call == Call::Backfill
                            || (call == Call::Tick
                                && matches!(reason, GapReason::BackfillFailed { .. })),
                        "{conversation}: {reason:?} gap in a {call:?}"
                    );
                    let o = self.convs[c]
                        .as_mut()
                        .expect("gap for an unknown conversation");
                    assert!(
                        !o.closed(),
                        "{conversation}: gap after completion or abandonment"
                    );
                    assert_eq!(
                        from, o.next,
                        "{conversation}: gap {from}..={to}, expected from {}",
                        o.next
                    );
                    assert!(
                        from <= to && to < u64::MAX,
                        "{conversation}: gap {from}..={to}"
                    );
                    let first_held = o.held.keys().next().copied();
                    assert!(
                        first_held.is_some_and(|h| h > to),
                        "{conversation}: gap {from}..={to} without a held state above it ({first_held:?})"
                    );
                    if let (GapReason::BackfillFailed { attempts }, Call::Backfill) = (reason, call)
                    {
                        assert!(attempts >= 1, "BackfillFailed in an answer with 0 attempts");
                    }
                    o.gapped
                        .extend(from.max(to.saturating_sub(CONFLICT_WINDOW))..=to);
                    o.next = to + 1;
                    o.max_resolved = to;
                    o.gap_count = o.gap_count.saturating_add(1);
                    o.dirty = true;
                    self.topic
                        .push((c, self.incarnations[c], Record::Gap(from, to)));
                }
                Action::PublishCompletion {
                    conversation,
                    last_sequence,
                    gap_count,
                } => {
                    let c = conv_index(&conversation);
                    assert_eq!(
                        expect_completion,
                        Some((c, last_sequence)),
                        "completion without ENDING"
                    );
                    expect_completion = None;
                    let o = self.convs[c]
                        .as_mut()
                        .expect("completion for an unknown conversation");
                    assert!(!o.ended, "{conversation}: second completion");
                    assert_eq!(last_sequence + 1, o.next);
                    assert_eq!(
                        gap_count, o.gap_count,
                        "{conversation}: completion gap count"
                    );
                    o.ended = true;
                    o.closed_at = Some(now);
                    o.dirty = true;
                    self.topic
                        .push((c, self.incarnations[c], Record::Completion));
                }
                Action::RequestBackfill {
                    conversation,
                    from,
                    to,
                } => {
                    let c = conv_index(&conversation);
                    assert_eq!(call, Call::Tick, "back-fill requested outside a tick");
                    assert!(
                        !self.pending.iter().any(|p| p.0 == c),
                        "two back-fills in flight for {conversation}"
                    );
                    let o = self.conv(c);
                    assert!(
                        !o.closed(),
                        "{conversation}: back-fill after completion or abandonment"
                    );
                    assert_eq!(from, o.next, "{conversation}: back-fill from {from}");
                    let first_held = o.held.keys().next().copied();
                    match to {
                        Some(to) => assert!(
                            to >= from && first_held == Some(to + 1),
                            "{conversation}: gap request {from}..={to}, first held {first_held:?}"
                        ),
                        None => {
                            assert!(first_held.is_none(), "{conversation}: probe while holding");
                            // A probe of a call that closed or was abandoned meanwhile no
                            // longer counts: the core ignores its answer.
                            let probes = self
                                .pending
                                .iter()
                                .filter(|p| {
                                    p.2.is_none()
                                        && !abandoned.contains(&p.0)
                                        && self.convs[p.0].as_ref().is_some_and(|o| !o.closed())
                                })
                                .count();
                            assert!(
                                probes < self.config.idle_probes_in_flight as usize,
                                "{conversation}: probe beyond idle_probes_in_flight ({probes} out)"
                            );
                        }
                    }
                    self.pending.push((c, from, to));
                }
                Action::DeadLetter {
                    conversation,
                    sequence_number: seq,
                    reason,
                    payload,
                } => {
                    let c = conv_index(&conversation);
                    let d = self.deliveries[payload as usize];
                    assert!(
                        self.emitted.insert(payload),
                        "payload {payload} emitted twice"
                    );
                    assert_eq!(
                        (d.conv, d.seq),
                        (c, seq),
                        "dead-lettered payload of another state"
                    );
                    let fresh = delivered.contains(&payload);
                    let invalid = seq == 0 || seq == u64::MAX;
                    assert_eq!(
                        invalid,
                        reason == DeadLetterReason::InvalidSequence,
                        "{conversation}/{seq} dead-lettered as {reason:?}"
                    );
                    if invalid {
                        assert!(fresh);
                        continue;
                    }
                    let Some(o) = self.convs[c].as_mut() else {
                        assert!(
                            fresh
                                && reason == DeadLetterReason::ImplausibleSequence
                                && seq > 1 + MAX_SEQUENCE_AHEAD,
                            "{conversation}/{seq}: {reason:?} for a conversation the sequencer does not know"
                        );
                        continue;
                    };
                    let was_held = o.held.get(&seq) == Some(&payload);
                    assert!(
                        fresh || was_held,
                        "{conversation}/{seq}: dead-lettered a state neither new nor held"
                    );
                    match reason {
                        DeadLetterReason::ConflictingDuplicate => {
                            assert!(
                                fresh && !was_held,
                                "conflict dead letter of the held original"
                            );
                            let differs_published =
                                o.published.get(&seq).is_some_and(|&f| f != d.fingerprint);
                            // Held before this call, or delivered (and maybe held) in it.
                            let differs_held = o
                                .held
                                .get(&seq)
                                .into_iter()
                                .chain(delivered)
                                .map(|&p| self.deliveries[p as usize])
                                .any(|e| {
                                    e.conv == c && e.seq == seq && e.fingerprint != d.fingerprint
                                });
                            assert!(
                                differs_published || differs_held,
                                "{conversation}/{seq}: dead-lettered as conflicting, but nothing differs"
                            );
                        }
                        DeadLetterReason::AfterEnding => {
                            // Held before this call, or delivered (and maybe held) in it.
                            let ending_below = o
                                .held
                                .range(..seq)
                                .map(|(_, p)| p)
                                .chain(delivered)
                                .map(|&p| self.deliveries[p as usize])
                                .any(|e| e.conv == c && e.seq < seq && e.is_ending);
                            assert!(
                                !o.abandoned && ((o.ended && seq >= o.next) || ending_below),
                                "{conversation}/{seq}: AfterEnding but not above an ENDING (next {}, ended {})",
                                o.next,
                                o.ended
                            );
                        }
                        DeadLetterReason::ImplausibleSequence => {
                            assert!(
                                fresh
                                    && !o.closed()
                                    && seq > o.next.saturating_add(MAX_SEQUENCE_AHEAD),
                                "{conversation}/{seq}: implausible with next {}",
                                o.next
                            );
                        }
                        DeadLetterReason::InsideDeclaredGap => {
                            assert!(
                                fresh
                                    && !was_held
                                    && seq < o.next
                                    && o.next - seq <= CONFLICT_WINDOW
                                    && o.gapped.contains(&seq),
                                "{conversation}/{seq}: not inside a gap declared in the window (next {})",
                                o.next
                            );
                        }
                        DeadLetterReason::AfterAbandonment => {
                            assert!(
                                fresh && !was_held && o.abandoned && seq >= o.next,
                                "{conversation}/{seq}: AfterAbandonment but not at or above an abandoned call's next (next {}, abandoned {})",
                                o.next,
                                o.abandoned
                            );
                        }
                        DeadLetterReason::InvalidSequence => unreachable!(),
                    }
                    if was_held {
                        o.held.remove(&seq);
                    }
                }
                Action::Abandoned {
                    conversation,
                    next_sequence,
                } => {
                    let c = conv_index(&conversation);
                    assert_eq!(call, Call::Tick, "abandoned outside a tick");
                    let abandon_after = self.config.abandon_after;
                    let o = self.conv_mut(c);
                    assert!(
                        !o.closed(),
                        "{conversation}: closed or abandoned conversation abandoned"
                    );
                    assert!(
                        o.held.is_empty(),
                        "{conversation}: abandoned holding states"
                    );
                    assert_eq!(next_sequence, o.next, "{conversation}: abandoned next");
                    assert!(
                        now >= o.active_since.plus(abandon_after),
                        "{conversation} abandoned early: now {now:?}, active at {:?}",
                        o.active_since
                    );
                    o.abandoned = true;
                    o.closed_at = Some(now);
                    // Its checkpoint now says abandoned: a new owner must learn it.
                    o.dirty = true;
                    abandoned.insert(c);
                }
            }
        }
        assert_eq!(
            expect_completion, None,
            "ENDING published without a completion"
        );

        // Every state of an abandoned call is activity that keeps it remembered (GoTo may still
        // list it, and a catch-up copy of a forgotten one would publish it again).
        for &p in delivered {
            let d = self.deliveries[p as usize];
            if let Some(o) = self.convs[d.conv].as_mut().filter(|o| o.abandoned) {
                o.closed_at = Some(now);
            }
        }

        // Delivered states that were neither published nor dead-lettered: held, or dropped as
        // duplicates (never a conflicting copy of a held state).
        for &p in delivered {
            if self.emitted.contains(&p) {
                continue;
            }
            let d = self.deliveries[p as usize];
            // An identical copy of a state that was emitted (a held state dead-lettered when an
            // ENDING below it closed the call, say, while this copy arrived in the same answer)
            // is a duplicate: the state itself is not lost.
            let copy_emitted = self.emitted.iter().any(|&e| {
                let x = self.deliveries[e as usize];
                x.conv == d.conv && x.seq == d.seq && x.fingerprint == d.fingerprint
            });
            let Some(o) = self.convs[d.conv].as_mut() else {
                continue; // an answer for a conversation the sequencer does not know: ignored
            };
            assert!(
                d.seq != 0 && d.seq != u64::MAX,
                "invalid sequence not dead-lettered"
            );
            if o.closed() {
                assert!(
                    d.seq < o.next || copy_emitted,
                    "{}/{}: a state above a closed or abandoned call dropped silently",
                    CONVS[d.conv],
                    d.seq
                );
                continue; // a duplicate
            }
            if d.seq < o.next {
                continue; // a duplicate of something published (window checked by the caller)
            }
            match o.held.get(&d.seq) {
                Some(&h) => {
                    assert_eq!(
                        self.deliveries[h as usize].fingerprint, d.fingerprint,
                        "{}/{}: conflicting copy of a held state dropped silently",
                        CONVS[d.conv], d.seq
                    );
                    // A live copy of a held back-filled state pins the watermark for it.
                    if let (None, Some(off)) = (self.deliveries[h as usize].offset, d.offset) {
                        o.pinned.entry(d.seq).or_insert(off);
                    }
                }
                None => {
                    o.held.insert(d.seq, p);
                    o.pinned.remove(&d.seq);
                    o.active_since = now;
                }
            }
        }

        // Evictions.
        for c in 0..4 {
            let Some(o) = &self.convs[c] else {
                continue;
            };
            if self.seq.checkpoint(CONVS[c]).is_some() {
                continue;
            }
            assert_eq!(call, Call::Tick, "{} evicted outside a tick", CONVS[c]);
            // A tick only ever lowers what is held, so the watermark after it is no lower than
            // when the conversation was evicted: this is implied by the rule, not the rule.
            if let (Some(low), Some(max)) = (self.seq.raw_low_watermark(), o.max_offset) {
                assert!(
                    low > max,
                    "{} forgotten while raw {max} of it lies above the low watermark {low}",
                    CONVS[c]
                );
            }
            if o.ended {
                if let Some(t) = o.closed_at {
                    assert!(
                        now >= t.plus(self.config.closed_retention),
                        "{} evicted before closed_retention",
                        CONVS[c]
                    );
                }
            } else {
                assert!(o.abandoned, "{} evicted open without Abandoned", CONVS[c]);
                if let Some(t) = o.closed_at {
                    assert!(
                        now >= t.plus(self.config.abandon_after),
                        "{} forgotten less than abandon_after after its abandonment or last state",
                        CONVS[c]
                    );
                }
            }
            self.convs[c] = None;
            self.tombstones.insert(c);
            self.pending.retain(|p| p.0 != c);
        }
    }

    /// Whole-sequencer consistency with the oracle.
    fn check(&self) {
        let mut held = 0;
        let mut low: Option<i64> = None;
        let (mut open, mut closed, mut gaps) = (0, 0, 0);
        for c in 0..4 {
            let cp = self.seq.checkpoint(CONVS[c]);
            match &self.convs[c] {
                Some(o) => {
                    assert_eq!(cp, Some(o.checkpoint()), "{} checkpoint", CONVS[c]);
                    assert!(
                        !o.closed() || o.held.is_empty(),
                        "{} holds states after completion or abandonment",
                        CONVS[c]
                    );
                    held += o.held.len();
                    for (seq, &p) in &o.held {
                        let pinned = o.pinned.get(seq).copied();
                        if let Some(off) = self.deliveries[p as usize].offset.or(pinned) {
                            low = Some(low.map_or(off, |l| l.min(off)));
                        }
                    }
                    if o.closed() {
                        closed += 1;
                    } else {
                        open += 1;
                        gaps += usize::from(!o.held.is_empty());
                    }
                }
                None => assert_eq!(cp, None, "{} should be forgotten", CONVS[c]),
            }
        }
        assert_eq!(
            self.seq.raw_low_watermark(),
            low,
            "raw_low_watermark is not the smallest raw offset of a held state"
        );
        let st = self.seq.stats();
        assert_eq!(st.held_states, held, "held states");
        assert_eq!(st.open_conversations, open, "open conversations");
        assert_eq!(st.closed_conversations, closed, "closed conversations");
        assert_eq!(st.open_gaps, gaps, "open gaps");
        assert_eq!(self.seq.len(), open + closed);
        assert_eq!(
            self.seq.next_deadline().is_some(),
            !self.seq.is_empty(),
            "a conversation without a timer (or a timer without one)"
        );
    }
}

fn conv_index(id: &ConversationId) -> usize {
    CONVS
        .iter()
        .position(|c| *id == **c)
        .unwrap_or_else(|| panic!("action for a conversation never fed: {id}"))
}

/// The 32-bit fold the conflict window compares (see `sequencer/window.rs`).
fn fold(fingerprint: u64) -> u32 {
    (fingerprint ^ (fingerprint >> 32)) as u32
}

/// A fingerprint for a synthetic payload: any fixed hash will do (the sequencer treats
/// fingerprints as opaque), and a fixed one keeps runs and shrunk cases reproducible, which the
/// bridge's per-process seeded fingerprint would not.
fn synthetic_fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
