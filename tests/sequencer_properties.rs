//! Property tests for the sequencer core against a ground truth.
//!
//! Each case generates conversations (1..=40 states, the last one ENDING), delivers every state
//! 0..=3 times in an arbitrary interleaving across conversations with arbitrary pauses, makes
//! some states unrecoverable (never delivered, never returned by the API; never the last),
//! lets the API lag (a state hidden from its first answer) and fail (the first calls of a
//! conversation), injects conflicting duplicates, and runs time forward through `on_tick` until
//! nothing is left to do. The oracle answering back-fills is the ground truth minus the
//! unrecoverable states. Then it asserts the exact ordered stream per conversation.

use std::collections::{BTreeMap, HashMap};

use callbridge::sequencer::{
    Action, BackfillOutcome, ConversationCheckpoint, ConversationId, DeadLetterReason, GapReason,
    IncomingState, Origin, PartitionSequencer, SequencerConfig, Timestamp, CONFLICT_WINDOW,
    MAX_SEQUENCE_AHEAD,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---- scenario ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct StateSpec {
    /// Live deliveries (0 for unrecoverable states).
    deliveries: u8,
    unrecoverable: bool,
    /// Answers covering it that leave it out before the API shows it (store lag).
    lag: u8,
    /// Deliver one conflicting copy after the first live delivery.
    conflict: bool,
}

#[derive(Debug, Clone)]
struct ConvSpec {
    states: Vec<StateSpec>,
    /// The first this-many back-fill calls for the conversation fail (retryably).
    failing_calls: u8,
}

#[derive(Debug, Clone)]
struct Scenario {
    convs: Vec<ConvSpec>,
    seed: u64,
}

fn state_spec(last: bool, allow_conflicts: bool) -> impl Strategy<Value = StateSpec> {
    (0u8..=3, 0u8..10, 0u8..=1, 0u8..8).prop_map(move |(deliveries, unrec, lag, conflict)| {
        // Unrecoverable: about 1 in 10, never the ENDING; such a state is never delivered.
        let unrecoverable = !last && unrec == 0;
        let deliveries = if unrecoverable { 0 } else { deliveries };
        StateSpec {
            deliveries,
            unrecoverable,
            lag,
            conflict: allow_conflicts && deliveries > 0 && conflict == 0,
        }
    })
}

fn conv_spec(allow_conflicts: bool) -> impl Strategy<Value = ConvSpec> {
    (1usize..=40, 0u8..=3)
        .prop_flat_map(move |(len, failing_calls)| {
            let states: Vec<_> = (0..len)
                .map(|i| state_spec(i + 1 == len, allow_conflicts).boxed())
                .collect();
            (states, Just(failing_calls))
        })
        .prop_map(|(states, failing_calls)| ConvSpec {
            states,
            failing_calls,
        })
}

fn scenario(allow_conflicts: bool) -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(conv_spec(allow_conflicts), 1..=8),
        any::<u64>(),
    )
        .prop_map(|(convs, seed)| Scenario { convs, seed })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Original,
    Conflict,
    /// A state no call has: its `seq` is 0, `u64::MAX` or implausibly far ahead.
    Bad,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    conv: usize,
    seq: u64,
    kind: Kind,
    /// Milliseconds after the previous event.
    pause: u64,
}

/// The delivery order: all deliveries shuffled, each conflicting copy moved after the first
/// original delivery of its state, pauses mostly short with rare long ones (which let gap
/// timers, retries and idle probes fire mid-stream).
fn events(s: &Scenario, rng: &mut ChaCha8Rng) -> Vec<Event> {
    let mut evs = Vec::new();
    for (c, conv) in s.convs.iter().enumerate() {
        for (i, st) in conv.states.iter().enumerate() {
            let seq = i as u64 + 1;
            for _ in 0..st.deliveries {
                evs.push((c, seq, Kind::Original));
            }
            if st.conflict {
                evs.push((c, seq, Kind::Conflict));
            }
        }
    }
    evs.shuffle(rng);
    for i in 0..evs.len() {
        if evs[i].2 != Kind::Conflict {
            continue;
        }
        let (c, seq) = (evs[i].0, evs[i].1);
        let first = evs
            .iter()
            .position(|e| e.0 == c && e.1 == seq && e.2 == Kind::Original);
        if let Some(first) = first.filter(|f| *f > i) {
            evs.swap(i, first);
        }
    }
    evs.into_iter()
        .map(|(conv, seq, kind)| Event {
            conv,
            seq,
            kind,
            pause: if rng.gen_ratio(1, 40) {
                rng.gen_range(2_000..40_000)
            } else {
                rng.gen_range(0..400)
            },
        })
        .collect()
}

/// Even conversations get plain names, odd ones canonical UUIDs (which the core packs into 16
/// bytes), so both id forms go through every property.
fn conv_name(c: usize) -> String {
    if c % 2 == 0 {
        format!("conv-{c}")
    } else {
        format!("00000000-0000-4000-8000-{c:012x}")
    }
}

fn payload(c: usize, seq: u64, kind: Kind) -> String {
    match kind {
        Kind::Original => format!("c{c}:s{seq}"),
        Kind::Conflict => format!("c{c}:x{seq}"),
        Kind::Bad => format!("c{c}:bad{seq}"),
    }
}

fn incoming(
    s: &Scenario,
    c: usize,
    seq: u64,
    kind: Kind,
    origin: Origin,
    offset: Option<i64>,
) -> IncomingState<String> {
    let p = payload(c, seq, kind);
    IncomingState {
        sequence_number: seq,
        fingerprint: synthetic_fingerprint(p.as_bytes()),
        is_ending: seq as usize == s.convs[c].states.len(),
        origin,
        raw_offset: offset,
        payload: p,
    }
}

// ---- the simulated shell ----------------------------------------------------------------------

/// One record of the ordered topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Pub(u64, String),
    Gap(u64, u64, GapReason),
    Done(u64, u32),
}

struct Pending {
    at: Timestamp,
    conv: usize,
    from: u64,
    to: Option<u64>,
}

struct Sim<'a> {
    s: &'a Scenario,
    seq: PartitionSequencer<String>,
    rng: ChaCha8Rng,
    now: Timestamp,
    pending: Vec<Pending>,
    /// The ordered topic, in production order.
    topic: Vec<(usize, Out)>,
    dead: Vec<(usize, u64, DeadLetterReason, String)>,
    abandoned: Vec<usize>,
    /// Every action, in order.
    actions: Vec<Action<String>>,
    expected_dead: Vec<(usize, u64)>,
    /// Oracle state: calls per conversation, remaining lag per state.
    calls: Vec<u32>,
    lag: Vec<Vec<u8>>,
    /// Raw offset → (conv, seq) of each live delivery.
    offsets: Vec<(usize, u64)>,
    /// Some back-fill answers take up to two hours (the shell's queue behind GoTo's 10
    /// requests/s), longer than `closed_retention`.
    slow_answers: bool,
}

impl<'a> Sim<'a> {
    fn new(s: &'a Scenario, seed_salt: u64, start: Timestamp) -> Self {
        Self::with(s, seed_salt, start, SequencerConfig::default())
    }

    fn with(s: &'a Scenario, seed_salt: u64, start: Timestamp, cfg: SequencerConfig) -> Self {
        Sim {
            s,
            seq: PartitionSequencer::new(cfg),
            rng: ChaCha8Rng::seed_from_u64(s.seed ^ seed_salt),
            now: start,
            pending: Vec::new(),
            topic: Vec::new(),
            dead: Vec::new(),
            abandoned: Vec::new(),
            actions: Vec::new(),
            expected_dead: Vec::new(),
            calls: vec![0; s.convs.len()],
            lag: s
                .convs
                .iter()
                .map(|c| c.states.iter().map(|st| st.lag).collect())
                .collect(),
            offsets: Vec::new(),
            slow_answers: false,
        }
    }

    fn conv_index(id: &ConversationId) -> usize {
        let name = id.to_string();
        name.strip_prefix("conv-")
            .and_then(|n| n.parse().ok())
            .or_else(|| {
                let hex = name.strip_prefix("00000000-0000-4000-8000-")?;
                usize::from_str_radix(hex, 16).ok()
            })
            .expect("our name")
    }

    /// `next` of a conversation according to the ordered topic alone.
    fn topic_next(&self, c: usize) -> u64 {
        let mut next = 1;
        for (cc, out) in &self.topic {
            if *cc != c {
                continue;
            }
            match out {
                Out::Pub(s, _) => next = s + 1,
                Out::Gap(_, to, _) => next = to + 1,
                Out::Done(..) => {}
            }
        }
        next
    }

    fn apply(&mut self, actions: Vec<Action<String>>) {
        for a in actions {
            self.actions.push(a.clone());
            match a {
                Action::Publish {
                    conversation,
                    sequence_number,
                    payload,
                    ..
                } => {
                    let c = Self::conv_index(&conversation);
                    self.topic.push((c, Out::Pub(sequence_number, payload)));
                }
                Action::PublishGap {
                    conversation,
                    from,
                    to,
                    reason,
                } => {
                    let c = Self::conv_index(&conversation);
                    self.topic.push((c, Out::Gap(from, to, reason)));
                }
                Action::PublishCompletion {
                    conversation,
                    last_sequence,
                    gap_count,
                } => {
                    let c = Self::conv_index(&conversation);
                    self.topic.push((c, Out::Done(last_sequence, gap_count)));
                }
                Action::RequestBackfill {
                    conversation,
                    from,
                    to,
                } => {
                    let c = Self::conv_index(&conversation);
                    assert!(
                        !self.pending.iter().any(|p| p.conv == c),
                        "two back-fills in flight for conversation {c}"
                    );
                    let delay = if self.slow_answers && self.rng.gen_ratio(1, 3) {
                        self.rng.gen_range(0..2 * 3_600_000)
                    } else {
                        self.rng.gen_range(0..300)
                    };
                    let at = Timestamp(self.now.0 + delay);
                    self.pending.push(Pending {
                        at,
                        conv: c,
                        from,
                        to,
                    });
                }
                Action::DeadLetter {
                    conversation,
                    sequence_number,
                    reason,
                    payload,
                } => {
                    let c = Self::conv_index(&conversation);
                    self.dead.push((c, sequence_number, reason, payload));
                }
                Action::Abandoned { conversation, .. } => {
                    self.abandoned.push(Self::conv_index(&conversation));
                }
            }
        }
    }

    /// The REST back-fill: ground truth minus unrecoverable states, with lag and failures.
    fn answer(&mut self, p: Pending) {
        let Some(spec) = self.s.convs.get(p.conv) else {
            // A call GoTo never had (only bad states of it were sent).
            self.answer_with(p, BackfillOutcome::NotFound);
            return;
        };
        self.calls[p.conv] += 1;
        let outcome = if self.calls[p.conv] <= u32::from(spec.failing_calls) {
            BackfillOutcome::Failed { retryable: true }
        } else {
            let last = spec.states.len() as u64;
            let to = p.to.unwrap_or(last).min(last);
            let mut states = Vec::new();
            for seq in p.from.max(1)..=to {
                let i = (seq - 1) as usize;
                if spec.states[i].unrecoverable {
                    continue;
                }
                if self.lag[p.conv][i] > 0 {
                    self.lag[p.conv][i] -= 1;
                    continue;
                }
                states.push(incoming(
                    self.s,
                    p.conv,
                    seq,
                    Kind::Original,
                    Origin::Backfill,
                    None,
                ));
            }
            states.shuffle(&mut self.rng);
            if states.is_empty() && self.rng.gen_bool(0.5) {
                BackfillOutcome::NotFound
            } else {
                BackfillOutcome::Answered(states)
            }
        };
        self.answer_with(p, outcome);
    }

    fn answer_with(&mut self, p: Pending, outcome: BackfillOutcome<String>) {
        let mut out = Vec::new();
        self.seq.on_backfill(
            &conv_name(p.conv),
            p.from,
            p.to,
            outcome,
            self.now,
            &mut out,
        );
        self.apply(out);
    }

    fn deliver(&mut self, e: Event) {
        if e.kind == Kind::Bad {
            self.deliver_bad(e);
            return;
        }
        if e.kind == Kind::Conflict {
            // The original was delivered before: it is held (at or above `next`) or published.
            let next = self.topic_next(e.conv);
            if e.seq >= next || next - e.seq <= CONFLICT_WINDOW {
                self.expected_dead.push((e.conv, e.seq));
            }
        }
        let offset = self.offsets.len() as i64;
        self.offsets.push((e.conv, e.seq));
        let origin = if self.rng.gen_bool(0.5) {
            Origin::Webhook
        } else {
            Origin::WebSocket
        };
        let s = incoming(self.s, e.conv, e.seq, e.kind, origin, Some(offset));
        let mut out = Vec::new();
        self.seq.on_state(&conv_name(e.conv), s, self.now, &mut out);
        self.apply(out);
    }

    /// A state no call has, from raw. Draws nothing from `rng`, so everything else in the run
    /// goes as it would without it.
    fn deliver_bad(&mut self, e: Event) {
        let offset = self.offsets.len() as i64;
        self.offsets.push((e.conv, e.seq));
        let p = payload(e.conv, e.seq, Kind::Bad);
        let s = IncomingState {
            sequence_number: e.seq,
            fingerprint: synthetic_fingerprint(p.as_bytes()),
            is_ending: false,
            origin: Origin::Webhook,
            raw_offset: Some(offset),
            payload: p,
        };
        let mut out = Vec::new();
        self.seq.on_state(&conv_name(e.conv), s, self.now, &mut out);
        self.apply(out);
    }

    /// The raw consumer must not commit past a held state: whatever the watermark points at
    /// must still be unpublished.
    fn check_watermark(&self) {
        if let Some(o) = self.seq.raw_low_watermark() {
            let (c, seq) = self.offsets[usize::try_from(o).expect("our offsets")];
            assert!(
                seq >= self.topic_next(c),
                "watermark {o} points at published {c}/{seq}"
            );
        }
    }

    /// Runs until the events are delivered and, with `drain`, until no deadline is left.
    /// Without `drain`, stops right after the last event (pending answers are lost).
    fn run(&mut self, evs: &[Event], drain: bool, mut on_step: impl FnMut(&mut Self)) {
        let mut i = 0;
        let mut event_at = evs.first().map(|e| Timestamp(self.now.0 + e.pause));
        for _ in 0..2_000_000 {
            if !drain && i == evs.len() {
                return;
            }
            let answer_at = self.pending.iter().map(|p| p.at).min();
            let deadline = self.seq.next_deadline();
            let Some(t) = [event_at, answer_at, deadline].into_iter().flatten().min() else {
                return;
            };
            self.now = self.now.max(t);
            if answer_at == Some(t) {
                let k = self
                    .pending
                    .iter()
                    .position(|p| p.at == t)
                    .expect("just found");
                let p = self.pending.swap_remove(k);
                self.answer(p);
            } else if deadline == Some(t) {
                let mut out = Vec::new();
                self.seq.on_tick(self.now, &mut out);
                self.apply(out);
            } else {
                self.deliver(evs[i]);
                i += 1;
                event_at = evs.get(i).map(|e| Timestamp(self.now.0 + e.pause));
            }
            self.check_watermark();
            on_step(self);
        }
        panic!("no quiescence");
    }

    fn stream(&self, c: usize) -> Vec<Out> {
        self.topic
            .iter()
            .filter(|(cc, _)| *cc == c)
            .map(|(_, o)| o.clone())
            .collect()
    }
}

/// The exact ordered stream a conversation must produce.
fn expected_stream(s: &Scenario, c: usize) -> Vec<Out> {
    let spec = &s.convs[c];
    if spec.states.iter().all(|st| st.deliveries == 0) {
        return Vec::new(); // never seen: the sequencer cannot know it exists
    }
    let mut out = Vec::new();
    let mut gaps = 0;
    let mut run: Option<(u64, u64)> = None;
    for (i, st) in spec.states.iter().enumerate() {
        let seq = i as u64 + 1;
        if st.unrecoverable {
            run = Some(run.map_or((seq, seq), |(a, _)| (a, seq)));
            continue;
        }
        if let Some((a, b)) = run.take() {
            out.push(Out::Gap(a, b, GapReason::Gone));
            gaps += 1;
        }
        out.push(Out::Pub(seq, payload(c, seq, Kind::Original)));
    }
    out.push(Out::Done(spec.states.len() as u64, gaps));
    out
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

// ---- properties -------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_state_once_in_order_with_exact_gaps(s in scenario(true)) {
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let evs = events(&s, &mut rng);
        let mut sim = Sim::new(&s, 1, Timestamp(0));
        sim.run(&evs, true, |_| {});

        for c in 0..s.convs.len() {
            prop_assert_eq!(sim.stream(c), expected_stream(&s, c), "conversation {}", c);
        }
        // Exactly the injected conflicts that were still checkable went to the dead letters,
        // with the conflicting payload; nothing else did.
        let dead: Vec<_> = sim.dead.iter().map(|(c, seq, reason, p)| {
            assert_eq!(*reason, DeadLetterReason::ConflictingDuplicate);
            assert_eq!(p, &payload(*c, *seq, Kind::Conflict));
            (*c, *seq)
        }).collect();
        prop_assert_eq!(sorted(dead), sorted(sim.expected_dead.clone()));
        prop_assert!(sim.abandoned.is_empty());
        // Quiescent: every conversation completed and was evicted after retention.
        prop_assert_eq!(sim.seq.len(), 0);
        prop_assert_eq!(sim.seq.next_deadline(), None);
        prop_assert_eq!(sim.seq.raw_low_watermark(), None);
        let st = sim.seq.stats();
        prop_assert_eq!(st.held_states, 0);
        prop_assert_eq!(st.counters.conflicts as usize, sim.expected_dead.len());
    }

    #[test]
    fn takeover_from_a_checkpoint_plus_full_redelivery_duplicates_nothing(
        s in scenario(false),
        cut in any::<prop::sample::Index>(),
        lost in any::<prop::sample::Index>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let evs = events(&s, &mut rng);
        let cut = cut.index(evs.len() + 1);

        // Owner A runs part of the stream, writing the changelog now and then.
        let mut changelog: BTreeMap<String, ConversationCheckpoint> = BTreeMap::new();
        let mut indexed_upto = 0usize; // topic length covered by the changelog
        let mut a = Sim::new(&s, 2, Timestamp(0));
        let mut flush_rng = ChaCha8Rng::seed_from_u64(s.seed ^ 3);
        a.run(&evs[..cut], false, |sim| {
            if flush_rng.gen_ratio(1, 8) {
                for (id, cp) in sim.seq.take_dirty() {
                    match cp {
                        Some(cp) => { changelog.insert(id.to_string(), cp); }
                        None => { changelog.remove(&id.to_string()); }
                    }
                }
                indexed_upto = sim.topic.len();
            }
        });

        // A dies (held states and in-flight back-fills lost), and outputs it had sent but not
        // seen acknowledged are lost with it: any suffix of the topic beyond the index (for
        // example an ENDING that landed and its completion record that did not).
        let kept = indexed_upto + lost.index(a.topic.len() - indexed_upto + 1);
        a.topic.truncate(kept);
        // B takes over: changelog, then the ordered topic beyond it (finishing an ENDING found
        // without its completion, as the shell's takeover does), then the raw topic again.
        let mut b = Sim::new(&s, 4, a.now);
        for (id, cp) in &changelog {
            b.seq.restore(id, *cp, b.now);
        }
        let mut endings = BTreeMap::new();
        for (c, out) in &a.topic[indexed_upto..] {
            let id = conv_name(*c);
            match out {
                Out::Pub(seq, _) => {
                    b.seq.observe_published(&id, *seq);
                    if *seq as usize == s.convs[*c].states.len() {
                        endings.insert(id, *seq);
                    }
                }
                Out::Gap(from, to, _) => b.seq.observe_gap(&id, *from, *to),
                Out::Done(..) => {
                    endings.remove(&id);
                    b.seq.observe_completion(&id);
                }
            }
        }
        b.topic = a.topic.clone();
        let mut out = Vec::new();
        for (id, last) in &endings {
            prop_assert!(b.seq.complete_found_ending(id, *last, b.now, &mut out));
        }
        b.apply(out);
        b.run(&evs, true, |_| {});

        for c in 0..s.convs.len() {
            prop_assert_eq!(b.stream(c), expected_stream(&s, c), "conversation {}", c);
        }
        prop_assert!(a.dead.is_empty() && b.dead.is_empty());
        prop_assert_eq!(b.seq.len(), 0);
    }
}

/// Bad states to sprinkle into a scenario's stream: `(where, which, whose)`.
fn bad_states() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, prop::sample::Index)>> {
    proptest::collection::vec(
        (
            any::<prop::sample::Index>(),
            0u8..4,
            any::<prop::sample::Index>(),
        ),
        1..=10,
    )
}

/// Sequence numbers no call has; the first two invalid, the others implausible (more than
/// `MAX_SEQUENCE_AHEAD` above any `next` a scenario reaches).
fn bad_seq(which: u8) -> u64 {
    match which {
        0 => 0,
        1 => u64::MAX,
        2 => u64::MAX - 1,
        _ => 1_700_000_000_000, // a timestamp in the field
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// States no call has, for calls seen before or after them, for calls never seen otherwise
    /// and for a call GoTo never had: each goes to the dead letters once, with its payload, and
    /// everything else the core does is exactly what it does without them. Invalid sequence
    /// numbers (0, `u64::MAX`) come anywhere; implausible ones only before their call's first
    /// valid state, because for a call it knows the core counts them as activity (they postpone
    /// its idle probe and abandonment). A bad first state used to open its call: probed every
    /// `idle_probe_after` (a call never seen live was then published from the probe's answer)
    /// and abandoned after `abandon_after`.
    #[test]
    fn bad_sequence_numbers_are_dead_lettered_and_change_nothing_else(
        s in scenario(false),
        bad in bad_states(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let evs = events(&s, &mut rng);
        let mut with_bad = evs.clone();
        let mut expected_dead = Vec::new();
        for (at, which, whose) in &bad {
            let conv = whose.index(s.convs.len() + 1); // the last: a call GoTo never had
            let seq = bad_seq(*which);
            let invalid = seq == 0 || seq == u64::MAX;
            let limit = if invalid {
                with_bad.len()
            } else {
                with_bad
                    .iter()
                    .position(|e| e.conv == conv && e.kind != Kind::Bad)
                    .unwrap_or(with_bad.len())
            };
            // Pause 0: every other event keeps its time.
            let e = Event { conv, seq, kind: Kind::Bad, pause: 0 };
            with_bad.insert(at.index(limit + 1), e);
            let reason = if invalid {
                DeadLetterReason::InvalidSequence
            } else {
                DeadLetterReason::ImplausibleSequence
            };
            expected_dead.push((conv, seq, reason.code(), payload(conv, seq, Kind::Bad)));
        }
        let mut a = Sim::new(&s, 8, Timestamp(0));
        a.run(&evs, true, |_| {});
        let mut b = Sim::new(&s, 8, Timestamp(0));
        b.run(&with_bad, true, |_| {});

        let dead = b.dead.iter().map(|(c, seq, r, p)| (*c, *seq, r.code(), p.clone()));
        prop_assert_eq!(sorted(dead.collect()), sorted(expected_dead));
        let others: Vec<_> = b
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::DeadLetter { .. }))
            .cloned()
            .collect();
        prop_assert_eq!(others, a.actions.clone());
        for c in 0..s.convs.len() {
            prop_assert_eq!(b.stream(c), expected_stream(&s, c), "conversation {}", c);
        }
        prop_assert!(b.abandoned.is_empty());
        prop_assert_eq!(b.seq.len(), 0);
        let st = b.seq.stats().counters;
        prop_assert_eq!(
            (st.invalid_sequence + st.implausible_sequence) as usize,
            bad.len()
        );
        prop_assert!(bad_seq(3) > 41 + MAX_SEQUENCE_AHEAD, "implausible for every scenario");
    }
}

/// One changelog write of owner A, and what a takeover right after it starts from.
struct Snapshot {
    /// Each conversation's checkpoint and when it was written.
    changelog: BTreeMap<String, (ConversationCheckpoint, Timestamp)>,
    /// `raw_low_watermark` of the progress record: the held state's offset, else the next one.
    raw_low_watermark: usize,
    /// How far A had read raw: what the shell announces to B (raw's high watermark is at least
    /// that).
    raw_end: usize,
    topic_len: usize,
    now: Timestamp,
    /// A call had been abandoned before it.
    after_abandonment: bool,
}

/// Per conversation, the ordered topic must be one contiguous run of states and gaps from 1,
/// each sequence once, closed by at most one completion at its end.
fn assert_exactly_once(topic: &[(usize, Out)], convs: usize) {
    for c in 0..convs {
        let mut next = 1;
        let mut done = false;
        for (cc, out) in topic {
            if *cc != c {
                continue;
            }
            assert!(!done, "conversation {c}: {out:?} after its completion");
            match out {
                Out::Pub(seq, _) => {
                    assert_eq!(*seq, next, "conversation {c}: state {seq} out of place");
                    next = seq + 1;
                }
                Out::Gap(from, to, _) => {
                    assert_eq!(
                        *from, next,
                        "conversation {c}: gap {from}-{to} out of place"
                    );
                    next = to + 1;
                }
                Out::Done(last, _) => {
                    assert_eq!(last + 1, next, "conversation {c}: completion");
                    done = true;
                }
            }
        }
    }
}

/// `abandon_after` for the abandonment property: below the slowest back-fill answer (two
/// hours), so a call can be abandoned while another one's answer still pins the raw low
/// watermark below its records.
const SHORT_ABANDON: std::time::Duration = std::time::Duration::from_secs(3600);

/// The scenario with the ENDING of about half its conversations lost for good (never delivered,
/// never in an answer): those calls can only end by being abandoned.
fn unfinished(s: &Scenario) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed ^ 11);
    let mut s = s.clone();
    for conv in &mut s.convs {
        if rng.gen_bool(0.5) {
            if let Some(last) = conv.states.last_mut() {
                last.unrecoverable = true;
                last.deliveries = 0;
                last.conflict = false;
            }
        }
    }
    s
}

/// The shell's real takeover: owner A runs the whole stream with back-fill answers slower than
/// `closed_retention` (and, with `cfg`'s `abandon_after`, than that too), writing the
/// changelog now and then; B restores one of those writes (with `after_abandonment`, one
/// written after a call was abandoned, when there is one: most are not, and the takeovers
/// after one are those this is about) and re-reads raw from its low watermark only. Each
/// ordered stream must stay exactly-once.
fn takeover_at_the_raw_low_watermark(
    s: &Scenario,
    pick: prop::sample::Index,
    cfg: SequencerConfig,
    after_abandonment: bool,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let evs = events(s, &mut rng);
    let mut a = Sim::with(s, 5, Timestamp(0), cfg.clone());
    a.slow_answers = true;
    let mut changelog: BTreeMap<String, (ConversationCheckpoint, Timestamp)> = BTreeMap::new();
    let mut snapshots = Vec::new();
    let mut flush_rng = ChaCha8Rng::seed_from_u64(s.seed ^ 7);
    a.run(&evs, true, |sim| {
        if flush_rng.gen_ratio(1, 4) {
            for (id, cp) in sim.seq.take_dirty() {
                match cp {
                    Some(cp) => {
                        changelog.insert(id.to_string(), (cp, sim.now));
                    }
                    None => {
                        changelog.remove(&id.to_string());
                    }
                }
            }
            let next_raw = sim.offsets.len();
            snapshots.push(Snapshot {
                changelog: changelog.clone(),
                raw_low_watermark: sim
                    .seq
                    .raw_low_watermark()
                    .map_or(next_raw, |o| usize::try_from(o).expect("our offsets")),
                raw_end: next_raw,
                topic_len: sim.topic.len(),
                now: sim.now,
                after_abandonment: !sim.abandoned.is_empty(),
            });
        }
    });
    assert_exactly_once(&a.topic, s.convs.len());
    if snapshots.is_empty() {
        return Ok(());
    }
    if after_abandonment && snapshots.iter().any(|sn| sn.after_abandonment) {
        snapshots.retain(|sn| sn.after_abandonment);
    }
    // A dies right after one of its changelog writes (everything it sent is indexed).
    let snap = &snapshots[pick.index(snapshots.len())];
    // B restores each checkpoint with its age (the shell maps the changelog record's timestamp
    // onto its clock), so a closed call's retention may be over at B's first tick, before it
    // has read anything again; it resumes raw at the watermark.
    let mut b = Sim::with(s, 6, snap.now, cfg);
    for (id, (cp, written)) in &snap.changelog {
        b.seq.restore_since(id, *cp, b.now, *written);
    }
    b.seq
        .restored_raw_end(i64::try_from(snap.raw_end).expect("our offsets"));
    b.seq
        .raw_read_to(i64::try_from(snap.raw_low_watermark).expect("our offsets"));
    b.topic = a.topic[..snap.topic_len].to_vec();
    // Raw offsets are delivery indexes: B reads raw again from the watermark on.
    b.offsets = a.offsets[..snap.raw_low_watermark].to_vec();
    b.run(&evs[snap.raw_low_watermark..], true, |_| {});
    assert_exactly_once(&b.topic, s.convs.len());
    prop_assert_eq!(b.seq.len(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The shell's real takeover: restore the changelog and re-read raw from the progress
    /// record's low watermark only, while back-fill answers may take longer than
    /// `closed_retention`. A call forgotten while the watermark still lies below its states
    /// would be read again as a new one and published twice.
    #[test]
    fn takeover_at_the_raw_low_watermark_with_slow_backfills_duplicates_nothing(
        s in scenario(false),
        pick in any::<prop::sample::Index>(),
    ) {
        takeover_at_the_raw_low_watermark(&s, pick, SequencerConfig::default(), false)?;
    }

    /// The same with calls whose ENDING never comes, abandoned while another call's answer
    /// (slower than `abandon_after`) still pins the watermark below their states: forgotten at
    /// abandonment, they were read again by the takeover and published a second time.
    #[test]
    fn takeover_at_the_raw_low_watermark_after_abandonment_duplicates_nothing(
        s in scenario(false),
        pick in any::<prop::sample::Index>(),
    ) {
        let cfg = SequencerConfig {
            abandon_after: SHORT_ABANDON,
            ..SequencerConfig::default()
        };
        takeover_at_the_raw_low_watermark(&unfinished(&s), pick, cfg, true)?;
    }
}

/// Sanity check that the generator produces the situations the properties are about.
#[test]
fn scenarios_exercise_gaps_conflicts_failures_and_probes() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for _ in 0..64 {
        let s = scenario(true).new_tree(&mut runner).unwrap().current();
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let evs = events(&s, &mut rng);
        let mut sim = Sim::new(&s, 1, Timestamp(0));
        sim.run(&evs, true, |_| {});
        let c = sim.seq.stats().counters;
        *totals.entry("gaps_gone").or_default() += c.gaps_gone;
        *totals.entry("conflicts").or_default() += c.conflicts;
        *totals.entry("backfills_failed").or_default() += c.backfills_failed;
        *totals.entry("probes").or_default() += c.probes_requested;
        *totals.entry("duplicates").or_default() += c.duplicates_dropped;
        *totals.entry("backfills").or_default() += c.backfills_requested;
    }
    for (k, v) in &totals {
        assert!(*v > 0, "{k} never happened: {totals:?}");
    }
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
