//! Micro-benchmarks of the pure sequencer core (`callbridge::sequencer::PartitionSequencer`),
//! driven the way the shell drives it: states in, actions out, timers on `next_deadline`,
//! back-fill requests answered, `take_dirty` at a regular cadence. See docs/microbenchmarks.md.
//!
//! Every scenario feeds `CONVERSATIONS` conversations of `STATES` states each (the last one
//! ENDING), interleaved round-robin (state 1 of every conversation, then state 2, …), at
//! `STATES_PER_MS` deliveries per millisecond of injected time, to a fresh core. Setup (the
//! delivery list, the core) is kept out of the timed part, and the core with its output is
//! dropped after timing. Before timing, each scenario is run once and its outputs checked, so a
//! bench that silently stopped exercising what it claims fails instead.
//!
//! Run: `cargo bench --bench sequencer` (add `-- --warm-up-time 1 --measurement-time 3` for a
//! quick pass).

use std::hint::black_box;
use std::time::Duration;

use callbridge::sequencer::{
    Action, BackfillOutcome, IncomingState, Origin, PartitionSequencer, SequencerConfig, Timestamp,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const CONVERSATIONS: usize = 10_000;
const STATES: u64 = 10;
/// Injected clock: 10 deliveries per ms (10 000/s on one partition), so a round over all
/// conversations takes 1 s, under the default 2 s `gap_timeout`: a swapped pair is reordered
/// in memory, a missing state is back-filled two rounds after its successor arrives.
const STATES_PER_MS: u64 = 10;
/// The shell writes the changelog (`take_dirty`) every so many deliveries in this bench.
const DIRTY_EVERY: usize = 1_024;
const START: Timestamp = Timestamp(1_000);

/// The payload is opaque to the core and only moved; a `u64` keeps its cost out of the figures.
type P = u64;

/// One delivery to the core.
struct Delivery {
    conv: usize,
    state: IncomingState<P>,
}

/// Everything one timed run needs, built untimed.
struct Input {
    ids: Vec<String>,
    deliveries: Vec<Delivery>,
    /// States chosen by [`is_withheld`] were left out of the live stream; the back-fill has them.
    withholding: bool,
    core: PartitionSequencer<P>,
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Every state once, in order.
    InOrder,
    /// 5 % of the states (never the first nor the ENDING) never arrive live; the core asks the
    /// back-fill for them, which answers at once.
    Missing5PercentBackfilled,
    /// Within each conversation, states 1↔2, 3↔4, … swapped (ENDING arrives before its
    /// predecessor).
    PairsSwapped,
    /// Every state twice: the round's states by webhook, then the same round again by
    /// WebSocket (same fingerprint).
    EachTwice,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::InOrder,
        Scenario::Missing5PercentBackfilled,
        Scenario::PairsSwapped,
        Scenario::EachTwice,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::InOrder => "in_order",
            Scenario::Missing5PercentBackfilled => "missing_5pct_backfilled",
            Scenario::PairsSwapped => "pairs_swapped",
            Scenario::EachTwice => "duplicates_each_twice",
        }
    }

    /// States the core receives in one run, live and back-filled: the per-element unit.
    fn elements(self) -> u64 {
        let states = CONVERSATIONS as u64 * STATES;
        match self {
            Scenario::EachTwice => 2 * states,
            _ => states,
        }
    }
}

fn fingerprint(conv: usize, seq: u64) -> u64 {
    (conv as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(17)
        ^ seq.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
}

fn state(conv: usize, seq: u64, origin: Origin, offset: Option<i64>) -> IncomingState<P> {
    IncomingState {
        sequence_number: seq,
        fingerprint: fingerprint(conv, seq),
        is_ending: seq == STATES,
        origin,
        raw_offset: offset,
        payload: seq,
    }
}

/// Deterministic pseudo-random choice of 5 % of all states, taken among 2..ENDING so that every
/// conversation still starts and completes live.
fn is_withheld(conv: usize, seq: u64) -> bool {
    if seq == 1 || seq == STATES {
        return false;
    }
    let h = fingerprint(conv, seq).wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
    // 5 % of all states = 5 % · STATES / (STATES - 2) of the candidates.
    let threshold = (0.05 * STATES as f64 / (STATES - 2) as f64 * f64::from(u32::MAX)) as u64;
    h < threshold
}

/// UUID-shaped conversation ids whose first group is the conversation's index.
fn conv_id(index: usize) -> String {
    format!("{index:08x}-5f1e-4c7a-9b2d-{:012x}", index * 7919)
}

fn conv_index(id: &str) -> usize {
    usize::from_str_radix(&id[..8], 16).expect("an id made by conv_id")
}

fn input(scenario: Scenario) -> Input {
    let ids: Vec<String> = (0..CONVERSATIONS).map(conv_id).collect();
    let mut deliveries = Vec::with_capacity(scenario.elements() as usize);
    let mut offset = 0i64;
    let mut push = |deliveries: &mut Vec<Delivery>, conv: usize, seq: u64, origin: Origin| {
        deliveries.push(Delivery {
            conv,
            state: state(conv, seq, origin, Some(offset)),
        });
        offset += 1;
    };
    for round in 1..=STATES {
        for conv in 0..CONVERSATIONS {
            match scenario {
                Scenario::InOrder | Scenario::EachTwice => {
                    push(&mut deliveries, conv, round, Origin::Webhook)
                }
                Scenario::Missing5PercentBackfilled => {
                    if !is_withheld(conv, round) {
                        push(&mut deliveries, conv, round, Origin::Webhook);
                    }
                }
                Scenario::PairsSwapped => {
                    // Round r delivers r+1 for odd r, r-1 for even r: 2,1,4,3,…
                    let seq = if round % 2 == 1 && round < STATES {
                        round + 1
                    } else if round % 2 == 0 {
                        round - 1
                    } else {
                        round
                    };
                    push(&mut deliveries, conv, seq, Origin::Webhook);
                }
            }
        }
        if let Scenario::EachTwice = scenario {
            for conv in 0..CONVERSATIONS {
                push(&mut deliveries, conv, round, Origin::WebSocket);
            }
        }
    }
    Input {
        ids,
        deliveries,
        withholding: matches!(scenario, Scenario::Missing5PercentBackfilled),
        core: PartitionSequencer::new(SequencerConfig::default()),
    }
}

/// What one run produced, for the pre-flight check.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    published: u64,
    completions: u64,
    backfill_requests: u64,
    gaps: u64,
    dead_letters: u64,
    dirty_entries: u64,
}

/// The shell's side of the back-fill: knows which states were withheld from the live stream.
struct Backfill<'a> {
    ids: &'a [String],
    withholding: bool,
    requests: u64,
}

impl Backfill<'_> {
    /// Answers every `RequestBackfill` in `out` straight away with the withheld states in its
    /// range, as a back-fill that finds them would; requests those answers cause are answered
    /// too.
    fn answer(
        &mut self,
        core: &mut PartitionSequencer<P>,
        now: Timestamp,
        out: &mut Vec<Action<P>>,
    ) {
        let mut from = 0;
        while from < out.len() {
            let end = out.len();
            for i in from..end {
                let Action::RequestBackfill {
                    conversation,
                    from: lo,
                    to,
                } = &out[i]
                else {
                    continue;
                };
                self.requests += 1;
                let (conv, lo, to) = (conv_index(&conversation.as_text()), *lo, *to);
                let hi = to.unwrap_or(STATES).min(STATES);
                let states = (lo..=hi)
                    .filter(|&s| self.withholding && is_withheld(conv, s))
                    .map(|s| state(conv, s, Origin::Backfill, None))
                    .collect();
                core.on_backfill(
                    &self.ids[conv],
                    lo,
                    to,
                    BackfillOutcome::Answered(states),
                    now,
                    out,
                );
            }
            from = end;
        }
    }
}

fn count(out: &[Action<P>], tally: &mut Tally) {
    for a in out {
        match a {
            Action::Publish { .. } => tally.published += 1,
            Action::PublishCompletion { .. } => tally.completions += 1,
            Action::PublishGap { .. } => tally.gaps += 1,
            Action::DeadLetter { .. } => tally.dead_letters += 1,
            Action::RequestBackfill { .. } | Action::Abandoned { .. } => {}
        }
    }
}

/// What a run leaves behind; returned so that criterion drops it after timing.
type Leftovers = (PartitionSequencer<P>, Vec<Action<P>>, Vec<String>, Tally);

/// One shell-like run over `input`. `tally` is filled only when `check` (the counting is not
/// part of the core's cost).
fn run(input: Input, check: bool) -> Leftovers {
    let Input {
        ids,
        deliveries,
        withholding,
        mut core,
    } = input;
    let mut backfill = Backfill {
        ids: &ids,
        withholding,
        requests: 0,
    };
    let mut tally = Tally::default();
    let mut out: Vec<Action<P>> = Vec::with_capacity(64);
    let mut now = START;
    for (i, d) in deliveries.into_iter().enumerate() {
        now = Timestamp(START.0 + i as u64 / STATES_PER_MS);
        out.clear();
        if core.next_deadline().is_some_and(|t| t <= now) {
            core.on_tick(now, &mut out);
        }
        core.on_state(&ids[d.conv], d.state, now, &mut out);
        backfill.answer(&mut core, now, &mut out);
        if check {
            count(&out, &mut tally);
        }
        if i % DIRTY_EVERY == DIRTY_EVERY - 1 {
            let dirty = core.take_dirty();
            tally.dirty_entries += dirty.len() as u64;
            black_box(core.raw_low_watermark());
        }
    }
    // Drain: let the gap timers of the last rounds fire (not far enough for idle probes).
    let step = SequencerConfig::default().gap_timeout;
    for _ in 0..4 {
        now = now.plus(step + Duration::from_millis(1));
        out.clear();
        core.on_tick(now, &mut out);
        backfill.answer(&mut core, now, &mut out);
        if check {
            count(&out, &mut tally);
        }
    }
    tally.dirty_entries += core.take_dirty().len() as u64;
    tally.backfill_requests = backfill.requests;
    (core, out, ids, tally)
}

fn preflight(scenario: Scenario) {
    let (core, _, _, tally) = run(input(scenario), true);
    let total = CONVERSATIONS as u64 * STATES;
    let withheld: u64 = (0..CONVERSATIONS)
        .flat_map(|c| (1..=STATES).map(move |s| (c, s)))
        .filter(|&(c, s)| is_withheld(c, s))
        .count() as u64;
    let stats = core.stats();
    eprintln!(
        "{}: {tally:?}; open {} closed {} conversations{}",
        scenario.name(),
        stats.open_conversations,
        stats.closed_conversations,
        match scenario {
            Scenario::Missing5PercentBackfilled => format!("; {withheld} states withheld"),
            _ => String::new(),
        }
    );
    assert_eq!(
        tally.published, total,
        "{scenario:?}: every state published"
    );
    assert_eq!(tally.completions, CONVERSATIONS as u64, "{scenario:?}");
    assert_eq!(tally.gaps, 0, "{scenario:?}");
    assert_eq!(tally.dead_letters, 0, "{scenario:?}");
    assert_eq!(stats.closed_conversations, CONVERSATIONS, "{scenario:?}");
    match scenario {
        Scenario::Missing5PercentBackfilled => assert!(
            withheld > total * 4 / 100 && withheld < total * 6 / 100 && tally.backfill_requests > 0,
            "{scenario:?}: about 5 % withheld and back-filled"
        ),
        _ => assert_eq!(
            tally.backfill_requests, 0,
            "{scenario:?}: nothing back-filled"
        ),
    }
}

fn bench_sequencer(c: &mut Criterion) {
    for scenario in Scenario::ALL {
        preflight(scenario);
    }
    let mut group = c.benchmark_group("sequencer");
    // One iteration is 100k-200k deliveries (tens of ms): few samples are enough.
    group.sample_size(10);
    for scenario in Scenario::ALL {
        group.throughput(Throughput::Elements(scenario.elements()));
        group.bench_function(scenario.name(), |b| {
            b.iter_batched(
                || input(scenario),
                |input| run(input, false),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sequencer);
criterion_main!(benches);
