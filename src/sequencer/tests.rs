//! One test per rule of the sequencer, driven through the public `PartitionSequencer` API with
//! injected time.

use std::time::Duration;

use super::conversation::Conversation;
use super::*;

type P = String;

fn fp(seq: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabc
}

fn live(seq: u64) -> IncomingState<P> {
    IncomingState {
        sequence_number: seq,
        fingerprint: fp(seq),
        is_ending: false,
        origin: Origin::Webhook,
        raw_offset: Some(i64::try_from(seq).unwrap() * 10),
        payload: format!("s{seq}"),
    }
}

fn ending(seq: u64) -> IncomingState<P> {
    IncomingState {
        is_ending: true,
        ..live(seq)
    }
}

fn conflicting(seq: u64) -> IncomingState<P> {
    IncomingState {
        fingerprint: fp(seq) ^ 1,
        payload: format!("x{seq}"),
        ..live(seq)
    }
}

fn backfilled(seq: u64) -> IncomingState<P> {
    IncomingState {
        origin: Origin::Backfill,
        raw_offset: None,
        ..live(seq)
    }
}

struct Harness {
    seq: PartitionSequencer<P>,
    now: Timestamp,
}

impl Harness {
    fn new() -> Self {
        Self::with(SequencerConfig::default())
    }

    fn with(cfg: SequencerConfig) -> Self {
        Harness {
            seq: PartitionSequencer::new(cfg),
            now: Timestamp(1_000),
        }
    }

    fn state(&mut self, conv: &str, s: IncomingState<P>) -> Vec<Action<P>> {
        let mut out = Vec::new();
        self.seq.on_state(conv, s, self.now, &mut out);
        out
    }

    fn backfill(
        &mut self,
        conv: &str,
        from: u64,
        to: Option<u64>,
        outcome: BackfillOutcome<P>,
    ) -> Vec<Action<P>> {
        let mut out = Vec::new();
        self.seq
            .on_backfill(conv, from, to, outcome, self.now, &mut out);
        out
    }

    /// Moves time forward by `ms`, firing every deadline on the way, at its own time.
    fn advance(&mut self, ms: u64) -> Vec<Action<P>> {
        let target = Timestamp(self.now.0 + ms);
        let mut out = Vec::new();
        let mut ticks = 0;
        while let Some(d) = self.seq.next_deadline() {
            if d > target {
                break;
            }
            ticks += 1;
            assert!(
                ticks < 100_000,
                "a deadline at {d:?} keeps firing without progress"
            );
            self.now = self.now.max(d);
            self.seq.on_tick(self.now, &mut out);
        }
        self.now = target;
        out
    }
}

fn published(actions: &[Action<P>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                sequence_number, ..
            } => Some(*sequence_number),
            _ => None,
        })
        .collect()
}

fn request(conv: &str, from: u64, to: Option<u64>) -> Action<P> {
    Action::RequestBackfill {
        conversation: conv.into(),
        from,
        to,
    }
}

fn gap(conv: &str, from: u64, to: u64, reason: GapReason) -> Action<P> {
    Action::PublishGap {
        conversation: conv.into(),
        from,
        to,
        reason,
    }
}

#[test]
fn in_order_states_publish_at_once_and_ending_completes() {
    let mut h = Harness::new();
    assert_eq!(published(&h.state("c", live(1))), vec![1]);
    assert_eq!(published(&h.state("c", live(2))), vec![2]);
    let out = h.state("c", ending(3));
    assert_eq!(
        out,
        vec![
            Action::Publish {
                conversation: "c".into(),
                sequence_number: 3,
                origin: Origin::Webhook,
                payload: "s3".into()
            },
            Action::PublishCompletion {
                conversation: "c".into(),
                last_sequence: 3,
                gap_count: 0
            }
        ]
    );
    assert_eq!(h.seq.stats().counters.completions, 1);
    assert_eq!(
        h.seq.checkpoint("c"),
        Some(ConversationCheckpoint {
            next_sequence: 4,
            ended: true,
            gap_count: 0,
            abandoned: false
        })
    );
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(2));
    assert!(h.state("c", live(1)).is_empty());
    assert!(h.state("c", live(2)).is_empty());
    h.state("c", live(5)); // held
    assert!(h.state("c", live(5)).is_empty());
    assert_eq!(h.seq.stats().counters.duplicates_dropped, 3);
    assert_eq!(h.seq.stats().counters.published, 2);
}

#[test]
fn conflicting_duplicates_of_published_and_held_states_are_dead_lettered() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(4));
    let out = h.state("c", conflicting(1));
    assert_eq!(
        out,
        vec![Action::DeadLetter {
            conversation: "c".into(),
            sequence_number: 1,
            reason: DeadLetterReason::ConflictingDuplicate,
            payload: "x1".into()
        }]
    );
    let out = h.state("c", conflicting(4));
    assert!(matches!(
        &out[..],
        [Action::DeadLetter { sequence_number: 4, reason: DeadLetterReason::ConflictingDuplicate, payload, .. }] if payload == "x4"
    ));
    // The held original, not the conflicting copy, is what gets published.
    h.state("c", live(2));
    let out = h.state("c", live(3));
    assert!(out.iter().any(
        |a| matches!(a, Action::Publish { sequence_number: 4, payload, .. } if payload == "s4")
    ));
    assert_eq!(h.seq.stats().counters.conflicts, 2);
}

#[test]
fn conflicts_older_than_the_window_are_plain_duplicates() {
    let mut h = Harness::new();
    for s in 1..=40 {
        h.state("c", live(s));
    }
    let oldest_checked = 41 - CONFLICT_WINDOW;
    assert_eq!(h.state("c", conflicting(oldest_checked)).len(), 1);
    assert!(h.state("c", conflicting(oldest_checked - 1)).is_empty());
}

#[test]
fn early_states_wait_for_the_missing_one_without_backfill() {
    let mut h = Harness::new();
    h.state("c", live(1));
    assert!(h.state("c", live(3)).is_empty());
    assert!(h.state("c", live(4)).is_empty());
    assert!(h.advance(1_999).is_empty(), "gap timer not due yet");
    assert_eq!(published(&h.state("c", live(2))), vec![2, 3, 4]);
    assert!(h.advance(10).is_empty(), "no back-fill once the gap closed");
    assert_eq!(h.seq.stats().counters.backfills_requested, 0);
}

#[test]
fn gap_timeout_requests_exactly_the_front_hole() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(4));
    h.state("c", live(7));
    assert!(h.advance(1_999).is_empty());
    assert_eq!(h.advance(1), vec![request("c", 2, Some(3))]);
    // Coalesced: nothing more while it is in flight, even with new holes appearing.
    h.state("c", live(9));
    assert!(h.advance(60_000).is_empty());
}

#[test]
fn a_new_gap_gets_its_full_timeout_even_when_an_older_timer_fires_first() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(3)); // gap timer for 2 at +2000
    h.advance(1_000);
    h.state("c", live(2)); // closed; the queue entry at +2000 stays (early is allowed)
    h.advance(500);
    h.state("c", live(5)); // new gap, due at +3500
    assert!(
        h.advance(1_999).is_empty(),
        "the +2000 entry must not request early"
    );
    assert_eq!(h.advance(1), vec![request("c", 4, Some(4))]);
}

#[test]
fn a_conversation_first_seen_late_treats_the_start_as_a_gap() {
    let mut h = Harness::new();
    assert!(h.state("c", live(5)).is_empty());
    assert_eq!(h.advance(2_000), vec![request("c", 1, Some(4))]);
    let states = (1..=4).map(backfilled).collect();
    let out = h.backfill("c", 1, Some(4), BackfillOutcome::Answered(states));
    assert_eq!(published(&out), vec![1, 2, 3, 4, 5]);
    assert!(matches!(
        out[0],
        Action::Publish {
            origin: Origin::Backfill,
            ..
        }
    ));
    assert!(matches!(
        out[4],
        Action::Publish {
            origin: Origin::Webhook,
            ..
        }
    ));
}

#[test]
fn a_state_is_gone_only_after_two_answers_without_it() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(3));
    assert_eq!(h.advance(2_000), vec![request("c", 2, Some(2))]);
    let out = h.backfill("c", 2, Some(2), BackfillOutcome::Answered(vec![]));
    assert!(out.is_empty(), "one absent answer is not enough: {out:?}");
    assert!(h.advance(499).is_empty());
    assert_eq!(h.advance(1), vec![request("c", 2, Some(2))]);
    let out = h.backfill("c", 2, Some(2), BackfillOutcome::NotFound);
    assert_eq!(out[0], gap("c", 2, 2, GapReason::Gone));
    assert_eq!(published(&out), vec![3]);
    assert_eq!(h.seq.checkpoint("c").unwrap().gap_count, 1);
}

#[test]
fn a_lagging_store_recovers_the_state_on_the_second_answer() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(3));
    h.advance(2_000);
    h.backfill("c", 2, Some(2), BackfillOutcome::Answered(vec![]));
    h.advance(500);
    let out = h.backfill(
        "c",
        2,
        Some(2),
        BackfillOutcome::Answered(vec![backfilled(2)]),
    );
    assert_eq!(published(&out), vec![2, 3]);
    assert!(!out.iter().any(|a| matches!(a, Action::PublishGap { .. })));
}

#[test]
fn missing_runs_are_merged_and_split_around_recovered_states() {
    let cfg = SequencerConfig {
        confirm_gone_after: 1,
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg);
    h.state("c", live(1));
    h.state("c", live(8));
    assert_eq!(h.advance(2_000), vec![request("c", 2, Some(7))]);
    let out = h.backfill(
        "c",
        2,
        Some(7),
        BackfillOutcome::Answered(vec![backfilled(5)]),
    );
    assert_eq!(
        out.iter()
            .map(|a| match a {
                Action::PublishGap { from, to, .. } => format!("gap {from}-{to}"),
                Action::Publish {
                    sequence_number, ..
                } => format!("pub {sequence_number}"),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        vec!["gap 2-4", "pub 5", "gap 6-7", "pub 8"]
    );
}

#[test]
fn later_holes_need_their_own_confirmations() {
    let mut h = Harness::new(); // confirm_gone_after = 2
    h.state("c", live(1));
    h.state("c", live(8));
    h.advance(2_000);
    // First answer returns 5: 2-4 and 6-7 absent once.
    h.backfill(
        "c",
        2,
        Some(7),
        BackfillOutcome::Answered(vec![backfilled(5)]),
    );
    assert_eq!(h.advance(500), vec![request("c", 2, Some(4))]);
    let out = h.backfill("c", 2, Some(4), BackfillOutcome::Answered(vec![]));
    assert_eq!(out[0], gap("c", 2, 4, GapReason::Gone));
    assert_eq!(published(&out), vec![5]);
    // 6-7 were only absent once while in front: not gone yet, asked again.
    assert_eq!(out.len(), 2);
    let out = h.advance(2_000);
    assert_eq!(out, vec![request("c", 6, Some(7))]);
}

#[test]
fn failed_backfills_back_off_then_give_up_after_max_wait() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(3));
    let gap_seen = h.now;
    // The back-fill gets `backfill_max_wait` from its first request, due at `gap_timeout`.
    let give_up = gap_seen.plus(Duration::from_secs(2 + 300));
    let mut attempts = 0;
    let mut delays = Vec::new();
    let mut last = h.advance(2_000);
    loop {
        assert_eq!(last, vec![request("c", 2, Some(2))]);
        attempts += 1;
        let out = h.backfill("c", 2, Some(2), BackfillOutcome::Failed { retryable: true });
        assert!(out.is_empty(), "{out:?}");
        let before = h.now;
        let next = h.seq.next_deadline().unwrap();
        delays.push(next.0 - before.0);
        h.now = next;
        last = h.advance(0);
        if let Some(Action::PublishGap { reason, .. }) = last.first() {
            // Given up at the deadline, not at the first failure after it: the retry due
            // later is not sent.
            assert_eq!(*reason, GapReason::BackfillFailed { attempts });
            assert_eq!(published(&last), vec![3]);
            assert_eq!(h.now, give_up);
            break;
        }
        assert!(attempts < 100);
    }
    assert_eq!(
        &delays[..7],
        &[500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000]
    );
    assert!(delays[7..delays.len() - 1].iter().all(|d| *d == 30_000));
    assert!(h.advance(60_000).is_empty(), "nothing more: {:?}", h.seq);
}

#[test]
fn a_non_retryable_failure_gives_up_at_once() {
    let mut h = Harness::new();
    h.state("c", live(2));
    h.advance(2_000);
    let out = h.backfill(
        "c",
        1,
        Some(1),
        BackfillOutcome::Failed { retryable: false },
    );
    assert_eq!(
        out[0],
        gap("c", 1, 1, GapReason::BackfillFailed { attempts: 1 })
    );
    assert_eq!(published(&out), vec![2]);
}

#[test]
fn a_live_state_filling_the_gap_mid_flight_makes_the_answer_harmless() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(3));
    h.advance(2_000);
    assert_eq!(published(&h.state("c", live(2))), vec![2, 3]);
    let out = h.backfill(
        "c",
        2,
        Some(2),
        BackfillOutcome::Answered(vec![backfilled(2)]),
    );
    assert!(out.is_empty());
    let out = h.advance(10_000);
    assert!(out.is_empty(), "no retry, no gap: {out:?}");
    assert_eq!(h.seq.stats().counters.backfill_overlap, 1);
}

#[test]
fn a_stale_answer_contributes_states_but_not_absence() {
    let cfg = SequencerConfig {
        confirm_gone_after: 1,
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg);
    h.state("c", live(1));
    h.state("c", live(4));
    h.advance(2_000); // requests 2..=3
    let out = h.backfill("c", 2, Some(2), BackfillOutcome::NotFound);
    assert!(
        out.is_empty(),
        "an answer to another range declares nothing"
    );
    let out = h.backfill(
        "c",
        9,
        Some(9),
        BackfillOutcome::Answered(vec![backfilled(2)]),
    );
    assert_eq!(published(&out), vec![2]);
    let out = h.backfill("c", 2, Some(3), BackfillOutcome::NotFound);
    assert_eq!(out[0], gap("c", 3, 3, GapReason::Gone));
}

#[test]
fn quiet_conversations_are_probed_for_their_tail() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(2));
    assert!(h.advance(29_999).is_empty());
    assert_eq!(h.advance(1), vec![request("c", 3, None)]);
    // Nothing new is not a gap; the probe repeats after another interval.
    assert!(h
        .backfill("c", 3, None, BackfillOutcome::Answered(vec![]))
        .is_empty());
    assert!(h.advance(29_999).is_empty());
    assert_eq!(h.advance(1), vec![request("c", 3, None)]);
    let out = h.backfill(
        "c",
        3,
        None,
        BackfillOutcome::Answered(vec![
            backfilled(3),
            IncomingState {
                is_ending: true,
                ..backfilled(4)
            },
        ]),
    );
    assert_eq!(published(&out), vec![3, 4]);
    assert!(matches!(
        out.last(),
        Some(Action::PublishCompletion {
            last_sequence: 4,
            ..
        })
    ));
    assert_eq!(h.seq.stats().counters.probes_requested, 2);
}

#[test]
fn a_probe_answer_with_a_hole_starts_the_gap_rules() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.advance(30_000);
    let out = h.backfill("c", 2, None, BackfillOutcome::Answered(vec![backfilled(4)]));
    assert!(out.is_empty());
    assert_eq!(h.advance(2_000), vec![request("c", 2, Some(3))]);
}

#[test]
fn silent_open_conversations_are_abandoned() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.seq.take_dirty();
    let mut out = Vec::new();
    // Answer every probe with nothing for six hours.
    while h.seq.len() == 1 {
        let step = h.advance(30_000);
        for a in &step {
            if let Action::RequestBackfill { from, to, .. } = a {
                out.extend(h.backfill("c", *from, *to, BackfillOutcome::Answered(vec![])));
            }
        }
        out.extend(
            step.into_iter()
                .filter(|a| !matches!(a, Action::RequestBackfill { .. })),
        );
    }
    assert_eq!(
        out,
        vec![Action::Abandoned {
            conversation: "c".into(),
            next_sequence: 2
        }]
    );
    // Abandoned after 6 h, then kept for another 6 h of quiet before it is forgotten.
    assert!(h.now.since(Timestamp(1_000)) >= Duration::from_secs(12 * 3600));
    assert_eq!(h.seq.take_dirty(), vec![("c".into(), None)]);
    assert_eq!(h.seq.next_deadline(), None);
}

#[test]
fn closed_conversations_drop_late_duplicates_then_are_evicted() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", ending(2));
    h.seq.take_dirty();
    h.advance(60_000);
    assert!(h.state("c", live(1)).is_empty());
    let out = h.state("c", live(3));
    assert!(matches!(
        &out[..],
        [Action::DeadLetter {
            sequence_number: 3,
            reason: DeadLetterReason::AfterEnding,
            ..
        }]
    ));
    assert!(h.advance(3_600_000 - 60_001).is_empty());
    assert_eq!(h.seq.len(), 1, "still remembered");
    assert!(h.advance(1).is_empty());
    assert_eq!(h.seq.len(), 0);
    assert_eq!(h.seq.take_dirty(), vec![("c".into(), None)]);
}

#[test]
fn states_above_a_held_ending_are_dead_lettered() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(5)); // will be above ENDING
    h.state("c", ending(3));
    let out = h.state("c", live(6));
    assert!(matches!(
        &out[..],
        [Action::DeadLetter {
            sequence_number: 6,
            reason: DeadLetterReason::AfterEnding,
            ..
        }]
    ));
    let out = h.state("c", live(2));
    assert_eq!(published(&out), vec![2, 3]);
    assert!(matches!(
        out[2],
        Action::PublishCompletion {
            last_sequence: 3,
            ..
        }
    ));
    assert!(matches!(
        &out[3],
        Action::DeadLetter {
            sequence_number: 5,
            reason: DeadLetterReason::AfterEnding,
            ..
        }
    ));
    assert_eq!(out.len(), 4);
    assert_eq!(h.seq.raw_low_watermark(), None, "nothing held any more");
}

#[test]
fn invalid_sequence_numbers_are_dead_lettered() {
    let mut h = Harness::new();
    let out = h.state("c", live(0));
    assert!(matches!(
        &out[..],
        [Action::DeadLetter {
            reason: DeadLetterReason::InvalidSequence,
            ..
        }]
    ));
    let out = h.state(
        "c",
        IncomingState {
            sequence_number: u64::MAX,
            ..live(1)
        },
    );
    assert!(matches!(
        &out[..],
        [Action::DeadLetter {
            reason: DeadLetterReason::InvalidSequence,
            ..
        }]
    ));
}

#[test]
fn raw_low_watermark_is_the_oldest_held_live_state() {
    let mut h = Harness::new();
    h.state("a", live(1));
    assert_eq!(
        h.seq.raw_low_watermark(),
        None,
        "published states do not hold"
    );
    h.state("a", live(4)); // offset 40
    h.state("b", live(3)); // offset 30
    h.state("b", backfilled(5)); // no offset
    assert_eq!(h.seq.raw_low_watermark(), Some(30));
    h.state("b", live(1));
    h.state("b", live(2));
    assert_eq!(h.seq.raw_low_watermark(), Some(40));
    h.state("a", live(2));
    h.state("a", live(3));
    assert_eq!(h.seq.raw_low_watermark(), None);
}

/// A state held from a back-fill answer has no raw record of its own: a crash would forget it,
/// and only another back-fill or an idle probe would find it again (none, for a call's last
/// state with probes off). Its live copy, dropped as a duplicate, pins the watermark for it.
#[test]
fn a_held_back_filled_state_is_pinned_by_its_live_copy() {
    let mut h = Harness::new();
    h.state("a", live(1));
    h.state("a", backfilled(3));
    h.state("a", backfilled(4));
    assert_eq!(
        h.seq.raw_low_watermark(),
        None,
        "back-filled states have no record"
    );
    // The live copies arrive: dropped, their records now standing for the held states.
    let out = h.state("a", live(4)); // offset 40
    assert!(published(&out).is_empty(), "{out:?}");
    assert_eq!(h.seq.raw_low_watermark(), Some(40));
    h.state("a", live(3)); // offset 30
    assert_eq!(h.seq.raw_low_watermark(), Some(30));
    // A second copy pins nothing more, and a conflicting one nothing at all.
    h.state("a", live(3));
    h.state(
        "a",
        IncomingState {
            raw_offset: Some(5),
            ..conflicting(4)
        },
    );
    assert_eq!(h.seq.raw_low_watermark(), Some(30));
    // Published once the hole fills: released, each once.
    let out = h.state("a", live(2));
    assert_eq!(published(&out), vec![2, 3, 4]);
    assert_eq!(h.seq.raw_low_watermark(), None, "released with the states");
    assert_eq!(h.seq.stats().held_states, 0);
}

#[test]
fn dirty_checkpoints_are_reported_once() {
    let mut h = Harness::new();
    h.state("a", live(1));
    h.state("b", live(2)); // held only: checkpoint unchanged
    let mut dirty = h.seq.take_dirty();
    dirty.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        dirty,
        vec![(
            "a".into(),
            Some(ConversationCheckpoint {
                next_sequence: 2,
                ended: false,
                gap_count: 0,
                abandoned: false
            })
        )]
    );
    assert!(h.seq.take_dirty().is_empty());
    h.state("a", live(1)); // duplicate: no change
    assert!(h.seq.take_dirty().is_empty());
}

#[test]
fn restore_and_observe_resume_without_republishing() {
    let mut h = Harness::new();
    let cp = ConversationCheckpoint {
        next_sequence: 4,
        ended: false,
        gap_count: 1,
        abandoned: false,
    };
    h.seq.restore("c", cp, h.now);
    assert!(
        h.seq.take_dirty().is_empty(),
        "restore alone is not a change"
    );
    h.seq.observe_published("c", 4);
    h.seq.observe_gap("c", 5, 6);
    assert_eq!(
        h.seq.checkpoint("c"),
        Some(ConversationCheckpoint {
            next_sequence: 7,
            ended: false,
            gap_count: 2,
            abandoned: false
        })
    );
    assert_eq!(h.seq.take_dirty().len(), 1);
    for s in 1..=6 {
        assert!(h.state("c", live(s)).is_empty(), "seq {s} re-published");
    }
    assert_eq!(published(&h.state("c", live(7))), vec![7]);
    // Observing something older than what is known changes nothing.
    h.seq.observe_published("c", 2);
    h.seq.restore("c", cp, h.now);
    assert_eq!(h.seq.checkpoint("c").unwrap().next_sequence, 8);
}

/// Runs `h` until `conv` is forgotten, answering every probe with nothing; returns when.
fn run_until_forgotten(h: &mut Harness) -> Timestamp {
    while h.seq.len() == 1 {
        let step = h.advance(60_000);
        for a in &step {
            if let Action::RequestBackfill { from, to, .. } = a {
                h.backfill("c", *from, *to, BackfillOutcome::Answered(vec![]));
            }
        }
    }
    h.now
}

#[test]
fn a_takeover_does_not_restart_the_abandon_and_retention_clocks() {
    let open = ConversationCheckpoint {
        next_sequence: 3,
        ended: false,
        gap_count: 0,
        abandoned: false,
    };
    let closed = ConversationCheckpoint {
        ended: true,
        ..open
    };
    let abandoned = ConversationCheckpoint {
        abandoned: true,
        ..open
    };
    let cfg = SequencerConfig::default();
    // Each checkpoint's clock, and how long the call is kept once it has run out: an open call
    // is abandoned then, and kept another `abandon_after` in case GoTo still lists it.
    for (cp, clock, then) in [
        (open, cfg.abandon_after, cfg.abandon_after),
        (closed, cfg.closed_retention, Duration::ZERO),
        (abandoned, cfg.abandon_after, Duration::ZERO),
    ] {
        // The checkpoint was written half the clock ago (on this core's clock).
        let mut h = Harness::new();
        h.now = Timestamp(1_000 + 24 * 3600 * 1000);
        let written = Timestamp(h.now.0 - (clock.as_millis() as u64) / 2);
        let start = h.now;
        h.seq.restore_since("c", cp, h.now, written);
        let gone = run_until_forgotten(&mut h);
        let after = gone.since(start);
        assert!(
            after >= clock / 2 + then && after < clock / 2 + then + Duration::from_secs(120),
            "{cp:?}: forgotten {after:?} after the takeover, not half of {clock:?} (+ {then:?})"
        );
        // Restored as written now, the clock starts again (as before the change).
        let mut h = Harness::new();
        let start = h.now;
        h.seq.restore("c", cp, h.now);
        assert!(run_until_forgotten(&mut h).since(start) >= clock + then);
    }
}

#[test]
fn restored_closed_conversations_only_drop_duplicates() {
    let mut h = Harness::new();
    h.seq.observe_published("c", 3);
    h.seq.observe_completion("c");
    assert!(h.state("c", live(2)).is_empty());
    assert!(h.state("c", ending(3)).is_empty());
    assert!(h.seq.checkpoint("c").unwrap().ended);
}

#[test]
fn an_ending_found_without_its_completion_is_completed_once() {
    // The previous owner's ENDING (3) landed, its completion record did not.
    let mut h = Harness::new();
    let cp = ConversationCheckpoint {
        next_sequence: 4,
        ended: false,
        gap_count: 1,
        abandoned: false,
    };
    h.seq.restore("c", cp, h.now);
    // Disagreeing restores are left alone: unknown conversation, ENDING not the last published.
    let mut out = Vec::new();
    assert!(!h.seq.complete_found_ending("other", 3, h.now, &mut out));
    assert!(!h.seq.complete_found_ending("c", 2, h.now, &mut out));
    assert!(out.is_empty());
    assert!(h.seq.complete_found_ending("c", 3, h.now, &mut out));
    assert_eq!(
        out,
        vec![Action::PublishCompletion {
            conversation: "c".into(),
            last_sequence: 3,
            gap_count: 1,
        }]
    );
    let cp = h.seq.checkpoint("c").unwrap();
    assert!(cp.ended && cp.next_sequence == 4, "{cp:?}");
    assert_eq!(h.seq.take_dirty().len(), 1, "the closed state is indexed");
    // Once: asked again, or the raw topic re-read, nothing more.
    out.clear();
    assert!(!h.seq.complete_found_ending("c", 3, h.now, &mut out));
    assert!(out.is_empty());
    assert!(h.state("c", ending(3)).is_empty());
    assert!(h.state("c", live(2)).is_empty());
}

#[test]
fn stats_report_open_gaps_and_held_states() {
    let mut h = Harness::new();
    h.state("a", live(3));
    let t_a = h.now;
    h.advance(100);
    h.state("b", live(1));
    h.state("b", live(5));
    h.state("b", live(6));
    h.state("z", live(1));
    h.state("z", ending(2));
    let s = h.seq.stats();
    assert_eq!(s.open_gaps, 2);
    assert_eq!(s.oldest_open_gap_since, Some(t_a));
    assert_eq!(s.held_states, 3);
    assert_eq!(s.open_conversations, 2);
    assert_eq!(s.closed_conversations, 1);
    assert_eq!(s.counters.gaps_detected, 2);
}

#[test]
fn next_deadline_tracks_the_earliest_timer() {
    let mut h = Harness::new();
    assert_eq!(h.seq.next_deadline(), None);
    h.state("a", live(1));
    assert_eq!(
        h.seq.next_deadline(),
        Some(h.now.plus(Duration::from_secs(30)))
    );
    h.state("b", live(2));
    assert_eq!(
        h.seq.next_deadline(),
        Some(h.now.plus(Duration::from_secs(2)))
    );
}

#[test]
fn an_idle_open_conversation_stays_small() {
    // The per-conversation budget is 300 bytes including the id, the index and the queue
    // (`cargo bench --bench sequencer_memory`); the struct is most of it and must not grow back.
    let size = std::mem::size_of::<Conversation<Vec<u8>>>();
    assert!(size <= 104, "Conversation is {size} bytes");
    eprintln!("Conversation<Vec<u8>> = {size} bytes");
}

#[test]
fn a_restored_checkpoint_raised_by_the_scan_is_written_again() {
    // The takeover merged the ordered-topic scan into the checkpoint it restores; the changelog
    // still holds the older entry, so the conversation must be written at the next snapshot.
    let mut h = Harness::new();
    let cp = ConversationCheckpoint {
        next_sequence: 7,
        ended: true,
        gap_count: 0,
        abandoned: false,
    };
    h.seq.restore("c", cp, h.now);
    h.seq.restore("quiet", cp, h.now);
    h.seq.mark_dirty("c");
    h.seq.mark_dirty("unknown");
    let dirty = h.seq.take_dirty();
    assert_eq!(dirty.len(), 1, "{dirty:?}");
    assert_eq!(dirty[0].0, "c");
    assert_eq!(dirty[0].1, Some(cp));
}

#[test]
fn slots_of_evicted_conversations_are_reused_without_mixing_conversations_up() {
    // Conversations live in reusable slots with an index and a deadline queue naming slots: a
    // new conversation in an evicted one's slot must start from scratch, and the old id must
    // not find it.
    let mut h = Harness::new();
    let uuid = |i: u32| format!("00000000-0000-4000-8000-{i:012x}");
    for i in 0..100 {
        h.state(&uuid(i), live(1));
        h.state(&uuid(i), ending(2));
    }
    h.seq.take_dirty();
    h.advance(3_600_000);
    assert_eq!(h.seq.len(), 0, "closed conversations evicted");
    assert_eq!(h.seq.take_dirty().len(), 100, "one tombstone each");
    for i in 100..150 {
        assert_eq!(published(&h.state(&uuid(i), live(1))), vec![1]);
        assert_eq!(published(&h.state(&format!("text-{i}"), live(1))), vec![1]);
    }
    assert_eq!(h.seq.len(), 100);
    for i in 0..100 {
        assert_eq!(h.seq.checkpoint(&uuid(i)), None, "{i} was evicted");
    }
    for i in 100..150 {
        let cp = h.seq.checkpoint(&uuid(i)).expect("remembered");
        assert_eq!((cp.next_sequence, cp.ended), (2, false));
        let cp = h.seq.checkpoint(&format!("text-{i}")).expect("remembered");
        assert_eq!((cp.next_sequence, cp.ended), (2, false));
        // Each one's next state is its own: published, not a duplicate of a previous tenant.
        assert_eq!(published(&h.state(&uuid(i), live(2))), vec![2]);
    }
}

#[test]
fn idle_probes_are_rationed_oldest_first_and_never_hold_up_a_gap() {
    let mut h = Harness::with(SequencerConfig {
        idle_probes_in_flight: 1,
        ..SequencerConfig::default()
    });
    for (i, c) in ["a", "b", "c"].into_iter().enumerate() {
        h.state(c, live(1));
        h.advance(10 * (i as u64 + 1)); // a is the quietest, then b, then c
    }
    // All three are due by now; only one probe may be out: the oldest.
    assert_eq!(h.advance(30_000), vec![request("a", 2, None)]);
    assert_eq!(h.seq.stats().probes_waiting, 2, "b and c wait their turn");
    // A gap elsewhere is not rationed: asked for at gap_timeout while the probe slot is taken.
    h.state("g", live(1));
    h.state("g", live(3));
    assert_eq!(h.advance(2_000), vec![request("g", 2, Some(2))]);
    // Answering the probe frees the slot for the next in line, at once.
    assert!(h
        .backfill("a", 2, None, BackfillOutcome::Answered(vec![]))
        .is_empty());
    assert_eq!(
        h.seq.next_deadline(),
        Some(h.now),
        "a waiting probe is due now"
    );
    assert_eq!(h.advance(0), vec![request("b", 2, None)]);
    // Answering b's probe lets c's go out.
    assert!(h
        .backfill("b", 2, None, BackfillOutcome::Answered(vec![]))
        .is_empty());
    assert_eq!(h.advance(0), vec![request("c", 2, None)]);
    assert_eq!(h.seq.stats().counters.probes_requested, 3);
}

#[test]
fn a_conversation_that_speaks_while_waiting_for_a_probe_is_not_probed() {
    let mut h = Harness::with(SequencerConfig {
        idle_probes_in_flight: 1,
        ..SequencerConfig::default()
    });
    h.state("a", live(1));
    h.state("b", live(1));
    assert_eq!(h.advance(30_000), vec![request("a", 2, None)]);
    // b waits for the slot; then it gets its next state live.
    assert_eq!(published(&h.state("b", live(2))), vec![2]);
    assert!(h.advance(5_000).is_empty());
    assert!(h
        .backfill("a", 2, None, BackfillOutcome::Answered(vec![]))
        .is_empty());
    assert!(h.advance(0).is_empty(), "b is no longer quiet");
    // Its own idle clock runs again from the state it got (5 s ago).
    assert!(h.advance(24_999).is_empty());
    assert_eq!(h.advance(1), vec![request("b", 3, None)]);
}

#[test]
fn idle_probes_can_be_turned_off() {
    let mut h = Harness::with(SequencerConfig {
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    });
    h.state("a", live(1));
    assert!(h.advance(3_600_000).is_empty(), "no probe, ever");
    // Nor is the call counted as waiting for one (`callbridge_idle_probes_waiting`).
    assert_eq!(h.seq.stats().probes_waiting, 0);
    let out = h.advance(6 * 3_600_000);
    assert!(
        matches!(&out[..], [Action::Abandoned { .. }]),
        "still abandoned after abandon_after: {out:?}"
    );
}

// ---- held states never pin the raw low watermark for long; closed calls wait for it ---------

/// A changelog as the shell keeps it: `take_dirty` applied, tombstones removing entries.
fn write_changelog(
    seq: &mut PartitionSequencer<P>,
    changelog: &mut std::collections::BTreeMap<String, ConversationCheckpoint>,
) {
    for (id, cp) in seq.take_dirty() {
        match cp {
            Some(cp) => changelog.insert(id.to_string(), cp),
            None => changelog.remove(&id.to_string()),
        };
    }
}

fn at(seq: u64, offset: i64) -> IncomingState<P> {
    IncomingState {
        raw_offset: Some(offset),
        ..live(seq)
    }
}

#[test]
fn a_gap_whose_answer_is_slow_waits_for_it_then_publishes_without_a_gap() {
    // The shell's back-fill queue is long (GoTo allows 10 requests/s; after an outage it can
    // take far longer than `backfill_max_wait` to reach a request): an unanswered request is
    // not a failure, GoTo may still have the states, so the hole waits for the answer.
    let mut h = Harness::new();
    h.state("a", live(1));
    h.state("a", at(3, 100));
    h.state("a", at(5, 101));
    assert_eq!(h.advance(2_000), vec![request("a", 2, Some(2))]);
    assert!(
        h.advance(3_600_000).is_empty(),
        "an hour without an answer: no gap record, no second request"
    );
    assert_eq!(h.seq.raw_low_watermark(), Some(100), "still held");
    assert_eq!(h.seq.stats().counters.gaps_backfill_failed, 0);
    // The answer comes: 2 and 4 are published in order, no gap anywhere.
    let out = h.backfill(
        "a",
        2,
        Some(2),
        BackfillOutcome::Answered(vec![backfilled(2), backfilled(4)]),
    );
    assert_eq!(published(&out), vec![2, 3, 4, 5]);
    assert!(
        !out.iter().any(|a| matches!(a, Action::PublishGap { .. })),
        "{out:?}"
    );
    assert_eq!(h.seq.raw_low_watermark(), None, "the watermark moves on");
}

#[test]
fn a_hole_whose_retry_is_due_is_given_up_at_backfill_max_wait() {
    // A failed answer puts the hole on a retry timer: then `backfill_max_wait` counts, also
    // between attempts (the tick gives it up, not only the next failure).
    let cfg = SequencerConfig {
        backfill_max_wait: Duration::from_secs(30),
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg);
    h.state("a", live(1));
    h.state("a", at(3, 100));
    assert_eq!(h.advance(2_000), vec![request("a", 2, Some(2))]);
    h.advance(1_000);
    let out = h.backfill("a", 2, Some(2), BackfillOutcome::Failed { retryable: true });
    assert!(out.is_empty(), "{out:?}");
    let mut waited = 0;
    let out = loop {
        let out = h.advance(1_000);
        waited += 1_000;
        // Retries that go out are answered with failures too.
        if let Some(Action::RequestBackfill { .. }) = out.first() {
            let out = h.backfill("a", 2, Some(2), BackfillOutcome::Failed { retryable: true });
            if !out.is_empty() {
                break out;
            }
            continue;
        }
        if !out.is_empty() {
            break out;
        }
        assert!(waited < 60_000, "never given up");
    };
    assert!(
        matches!(
            out.first(),
            Some(Action::PublishGap {
                from: 2,
                to: 2,
                reason: GapReason::BackfillFailed { .. },
                ..
            })
        ),
        "{out:?}"
    );
    assert_eq!(published(&out), vec![3]);
    assert!(
        h.now.0 >= 32_000,
        "not before gap_timeout + backfill_max_wait"
    );
}

#[test]
fn a_gap_behind_an_unanswered_probe_waits_for_the_probe() {
    // A state held while the conversation's own idle probe is out: no gap request can go out
    // until the probe is answered, and the hole waits for that answer (the probe may bring the
    // missing states) instead of being declared a gap.
    let mut h = Harness::new();
    h.state("c", live(1));
    assert_eq!(h.advance(30_000), vec![request("c", 2, None)]);
    h.state("c", at(4, 40));
    assert!(h.advance(600_000).is_empty());
    assert_eq!(h.seq.raw_low_watermark(), Some(40));
    let out = h.backfill(
        "c",
        2,
        None,
        BackfillOutcome::Answered(vec![backfilled(2), backfilled(3), backfilled(4)]),
    );
    assert_eq!(published(&out), vec![2, 3, 4]);
    assert!(!out.iter().any(|a| matches!(a, Action::PublishGap { .. })));
    assert_eq!(h.seq.raw_low_watermark(), None);
}

#[test]
fn a_closed_call_is_remembered_until_the_raw_watermark_passes_it() {
    // Reviewer's repro: a holds state 2 (raw 100) with its back-fill pending; b (raw 101-102)
    // completes; an hour later b must not be forgotten while a takeover would resume raw at 100.
    // a's request stays unanswered (the shell's queue is long), which the hole waits for.
    let cfg = SequencerConfig::default();
    let mut h = Harness::with(cfg.clone());
    let mut changelog = std::collections::BTreeMap::new();
    let raw = [
        ("a", at(2, 100)),
        ("b", at(1, 101)),
        (
            "b",
            IncomingState {
                is_ending: true,
                ..at(2, 102)
            },
        ),
    ];
    for (c, s) in raw.clone() {
        h.state(c, s);
    }
    write_changelog(&mut h.seq, &mut changelog);
    assert!(changelog.contains_key("b"));
    h.advance(61 * 60_000); // a's requests go unanswered
    write_changelog(&mut h.seq, &mut changelog);
    assert!(
        changelog.contains_key("b"),
        "b forgotten while raw 101-102 lie above the watermark"
    );
    assert_eq!(h.seq.raw_low_watermark(), Some(100));
    // Takeover: restore, re-read raw from the watermark: b is not published again.
    let mut t = Harness::with(cfg.clone());
    t.now = h.now;
    for (c, cp) in &changelog {
        t.seq.restore(c, *cp, t.now);
    }
    for (c, s) in raw {
        assert!(published(&t.state(c, s)).is_empty() || c == "a");
    }
    // Once a's answer comes, the watermark passes b and b is forgotten at its next look.
    let out = h.backfill(
        "a",
        1,
        Some(1),
        BackfillOutcome::Answered(vec![backfilled(1)]),
    );
    assert_eq!(published(&out), vec![1, 2]);
    assert_eq!(h.seq.raw_low_watermark(), None);
    h.advance(3_600_000);
    assert_eq!(
        h.seq.checkpoint("b"),
        None,
        "forgotten once nothing pins it"
    );
    write_changelog(&mut h.seq, &mut changelog);
    assert!(!changelog.contains_key("b"));
}

#[test]
fn a_late_raw_duplicate_of_a_closed_call_moves_its_raw_mark() {
    let cfg = SequencerConfig {
        backfill_max_wait: Duration::from_secs(2 * 3600),
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg);
    h.state("b", at(1, 10));
    h.state(
        "b",
        IncomingState {
            is_ending: true,
            ..at(2, 11)
        },
    );
    h.advance(60_000);
    h.state("a", at(2, 20)); // held for hours
    h.state("b", at(1, 21)); // GoTo redelivers b's first state after a's
    h.advance(3_600_000);
    assert!(
        h.seq.checkpoint("b").is_some(),
        "raw 21 (b) lies above the watermark 20: a takeover would re-read it"
    );
}

#[test]
fn a_restored_closed_call_waits_for_the_takeover_to_re_read_its_states() {
    // The previous owner kept b (closed two hours ago) because a's state at raw 100 pinned the
    // watermark. The new owner restores b and re-reads raw from 100: b must still be known when
    // its states come by, and forgotten only once the watermark has passed them.
    let mut h = Harness::new();
    h.now = Timestamp(10 * 3_600_000);
    let closed = ConversationCheckpoint {
        next_sequence: 3,
        ended: true,
        gap_count: 0,
        abandoned: false,
    };
    h.seq
        .restore_since("b", closed, h.now, Timestamp(h.now.0 - 2 * 3_600_000));
    assert!(h.advance(1_000).is_empty());
    assert!(
        h.seq.checkpoint("b").is_some(),
        "forgotten before the re-read"
    );
    // The re-read is slow to reach raw 100.
    h.advance(249_000);
    h.state("a", at(2, 100));
    assert!(h.state("b", at(1, 101)).is_empty());
    assert!(h
        .state(
            "b",
            IncomingState {
                is_ending: true,
                ..at(2, 102)
            }
        )
        .is_empty());
    // Past the catch-up allowance b takes raw 103 as its mark, and a still pins raw 100.
    h.advance(150_000);
    assert!(h.seq.checkpoint("b").is_some(), "a still pins raw 100");
    // a's hole is filled, the watermark moves past b, b is forgotten at its next look.
    let out = h.backfill(
        "a",
        1,
        Some(1),
        BackfillOutcome::Answered(vec![backfilled(1)]),
    );
    assert_eq!(published(&out), vec![1, 2]);
    h.advance(160_000);
    assert_eq!(h.seq.raw_low_watermark(), None);
    assert_eq!(h.seq.checkpoint("b"), None);
    assert_eq!(h.seq.len(), 1, "a is still open");
}

#[test]
fn an_announced_raw_end_settles_restored_calls_without_waiting() {
    let mut h = Harness::new();
    h.now = Timestamp(10 * 3_600_000);
    let closed = ConversationCheckpoint {
        next_sequence: 3,
        ended: true,
        gap_count: 0,
        abandoned: false,
    };
    h.seq
        .restore_since("b", closed, h.now, Timestamp(h.now.0 - 2 * 3_600_000));
    h.seq.restored_raw_end(103);
    h.state("a", at(2, 100));
    h.advance(1_000);
    assert!(
        h.seq.checkpoint("b").is_some(),
        "raw 100 is held, below 103"
    );
    h.state("a", at(1, 103));
    assert!(h.advance(5_000).is_empty());
    assert_eq!(h.seq.checkpoint("b"), None, "the watermark passed 103");
}

#[test]
fn a_takeover_keeps_restored_closed_calls_until_it_has_read_raw_to_the_previous_end() {
    // The previous owner held a's state 2 (raw 100) for over an hour; b (raw 101-102, closed
    // two hours ago) was kept because that pinned the watermark at 100. The new owner restores
    // b, is told the previous owner read no further than 103, resumes reading raw at 100, and
    // its loop ticks before the first record comes in. Nothing is held then, yet raw 101-102
    // have not been read again: forgotten now, b's states would be read as a new call and
    // published a second time.
    let mut h = Harness::new();
    h.now = Timestamp(10 * 3_600_000);
    let closed = ConversationCheckpoint {
        next_sequence: 3,
        ended: true,
        gap_count: 0,
        abandoned: false,
    };
    h.seq
        .restore_since("b", closed, h.now, Timestamp(h.now.0 - 2 * 3_600_000));
    h.seq.restored_raw_end(103);
    h.seq.raw_read_to(100); // the resume point
    let mut out = h.advance(0);
    assert!(
        h.seq.checkpoint("b").is_some(),
        "b forgotten at the first tick, before raw 101-102 were read again"
    );
    out.extend(h.state("a", at(2, 100)));
    out.extend(h.state("b", at(1, 101)));
    out.extend(h.advance(1_000));
    assert!(h.seq.checkpoint("b").is_some(), "raw 102 not read yet");
    out.extend(h.state(
        "b",
        IncomingState {
            is_ending: true,
            ..at(2, 102)
        },
    ));
    out.extend(h.advance(10_000));
    assert!(
        h.seq.checkpoint("b").is_some(),
        "raw 100 is held, below 103"
    );
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Publish { conversation, .. } | Action::PublishCompletion { conversation, .. }
                if *conversation == "b"
        )),
        "b published again: {out:?}"
    );
    // Not held any more and read past 103: b goes.
    h.state("a", at(1, 103));
    h.advance(10_000);
    assert_eq!(h.seq.checkpoint("b"), None);
}

#[test]
fn every_raw_record_read_counts_towards_a_restored_calls_raw_mark() {
    // Records that never reach the core as a state (dead-lettered, other notifications) still
    // move the read position the shell reports: a restored call is forgotten once it passed.
    let mut h = Harness::new();
    h.now = Timestamp(10 * 3_600_000);
    let closed = ConversationCheckpoint {
        next_sequence: 3,
        ended: true,
        gap_count: 0,
        abandoned: false,
    };
    h.seq
        .restore_since("b", closed, h.now, Timestamp(h.now.0 - 2 * 3_600_000));
    h.seq.restored_raw_end(103);
    h.seq.raw_read_to(100);
    h.advance(10_000);
    assert!(h.seq.checkpoint("b").is_some());
    h.seq.raw_read_to(103);
    h.advance(10_000);
    assert_eq!(h.seq.checkpoint("b"), None);
    assert_eq!(h.seq.raw_end(), 103);
}

#[test]
fn an_abandoned_call_is_remembered_until_the_raw_watermark_passes_it() {
    // a holds state 2 (raw 100) with its back-fill answer queued for longer than
    // `abandon_after`; b (raw 101) goes quiet and is abandoned meanwhile. Forgotten then, a
    // takeover resuming raw at 100 would read b's state again for a call nobody remembers and
    // publish it a second time, as a new call.
    let cfg = SequencerConfig::default();
    let mut h = Harness::with(cfg.clone());
    let mut changelog = std::collections::BTreeMap::new();
    let mut raw = vec![("a", at(2, 100)), ("b", at(1, 101))];
    for (c, s) in raw.clone() {
        h.state(c, s);
    }
    let out = h.advance(3_600_000);
    assert_eq!(
        out,
        vec![request("a", 1, Some(1)), request("b", 2, None)],
        "neither answer comes"
    );
    // a speaks again an hour later, so only b is quiet for `abandon_after`.
    raw.push(("a", at(3, 102)));
    h.state("a", at(3, 102));
    write_changelog(&mut h.seq, &mut changelog);
    let out = h.advance(5 * 3_600_000 + 60_000);
    assert_eq!(
        out,
        vec![Action::Abandoned {
            conversation: "b".into(),
            next_sequence: 2
        }]
    );
    write_changelog(&mut h.seq, &mut changelog);
    assert_eq!(h.seq.raw_low_watermark(), Some(100));
    assert!(
        changelog.contains_key("b"),
        "b forgotten while raw 101 lies above the watermark"
    );
    let st = h.seq.stats();
    assert_eq!((st.open_conversations, st.closed_conversations), (1, 1));
    assert_eq!(st.counters.closed_evicted, 0);
    // Takeover: restore, re-read raw from the watermark: b is not published again.
    let mut t = Harness::with(cfg.clone());
    t.now = h.now;
    for (c, cp) in &changelog {
        t.seq.restore(c, *cp, t.now);
    }
    t.seq.restored_raw_end(103);
    for (c, s) in raw {
        let out = t.state(c, s);
        assert!(published(&out).is_empty(), "{c}: {out:?}");
    }
    // Meanwhile the old owner's b takes no new state: a late one, and its probe's answer, are
    // set aside; a duplicate is dropped.
    assert!(h.state("b", at(1, 103)).is_empty());
    let late = h.state("b", at(2, 104));
    assert!(
        matches!(
            &late[..],
            [Action::DeadLetter {
                sequence_number: 2,
                reason: DeadLetterReason::AfterAbandonment,
                ..
            }]
        ),
        "{late:?}"
    );
    let answer = h.backfill(
        "b",
        2,
        None,
        BackfillOutcome::Answered(vec![backfilled(1), backfilled(3)]),
    );
    assert!(
        matches!(
            &answer[..],
            [Action::DeadLetter {
                sequence_number: 3,
                reason: DeadLetterReason::AfterAbandonment,
                ..
            }]
        ),
        "{answer:?}"
    );
    assert_eq!(
        h.seq.checkpoint("b").map(|cp| (cp.ended, cp.abandoned)),
        Some((false, true))
    );
    // b is kept another `abandon_after` after its last state (the late one just now); a goes
    // on talking for longer than that, its answer still queued, so the watermark stays at 100.
    let quiet_until = h.now.plus(cfg.abandon_after);
    let mut a_next = 4;
    while h.now <= quiet_until {
        h.state("a", at(a_next, 200 + a_next as i64));
        a_next += 1;
        let out = h.advance(3_600_000);
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(h.seq.raw_low_watermark(), Some(100));
    assert!(h.advance(60_000).is_empty());
    assert!(
        h.seq.checkpoint("b").is_some(),
        "b forgotten, quiet long enough, while raw 101 lies above the watermark"
    );
    // Once a's answer comes, the watermark passes b and b is forgotten at its next look.
    let out = h.backfill(
        "a",
        1,
        Some(1),
        BackfillOutcome::Answered(vec![backfilled(1)]),
    );
    assert_eq!(published(&out), (1..a_next).collect::<Vec<_>>());
    assert_eq!(h.seq.raw_low_watermark(), None);
    assert!(h.advance(5_000).is_empty());
    assert_eq!(
        h.seq.checkpoint("b"),
        None,
        "forgotten once nothing pins it"
    );
    write_changelog(&mut h.seq, &mut changelog);
    assert!(!changelog.contains_key("b"));
    let st = h.seq.stats();
    assert_eq!(st.counters.abandoned, 1);
    assert_eq!(st.counters.after_abandonment, 2);
    assert_eq!(
        st.counters.closed_evicted, 0,
        "counted as abandoned, not closed"
    );
}

#[test]
fn an_abandoned_call_restored_completed_is_completed() {
    // The changelog knows better (a fuzz-style merge: the shell restores only a fresh core).
    let mut h = Harness::with(SequencerConfig {
        abandon_after: Duration::from_secs(60),
        ..SequencerConfig::default()
    });
    h.state("a", at(2, 100)); // pins the watermark, so b is kept
    h.state("b", at(1, 101));
    h.advance(30_000);
    h.state("a", at(3, 102)); // a is quiet for less than b
    h.advance(31_000);
    assert!(h.seq.checkpoint("b").is_some());
    h.seq.observe_completion("b");
    assert_eq!(h.seq.checkpoint("b").map(|cp| cp.ended), Some(true));
    let out = h.state("b", at(2, 103));
    assert!(
        matches!(
            &out[..],
            [Action::DeadLetter {
                reason: DeadLetterReason::AfterEnding,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn a_call_at_the_last_sequence_number_is_not_probed() {
    // Publishing stops at `u64::MAX - 1`; a call restored (or observed) at `next = u64::MAX`
    // can take no state, so a probe for `u64::MAX..` can only come back empty.
    let mut h = Harness::new();
    let cp = ConversationCheckpoint {
        next_sequence: u64::MAX,
        ended: false,
        gap_count: 0,
        abandoned: false,
    };
    h.seq.restore("c", cp, h.now);
    h.seq.observe_published("d", u64::MAX - 1);
    let out = h.advance(6 * 3_600_000 + 1_000);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::RequestBackfill { .. })),
        "{out:?}"
    );
    assert_eq!(h.seq.stats().counters.probes_requested, 0);
    assert!(
        out.contains(&Action::Abandoned {
            conversation: "c".into(),
            next_sequence: u64::MAX
        }),
        "{out:?}"
    );
    // Kept abandoned for another `abandon_after`, without a probe either.
    let out = h.advance(6 * 3_600_000);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::RequestBackfill { .. })),
        "{out:?}"
    );
    assert_eq!(h.seq.stats().counters.probes_requested, 0);
    assert_eq!(h.seq.len(), 0);
}

// ---- counters and abandonment ------------------------------------------------------------------

#[test]
fn confirm_gone_after_above_255_is_honoured() {
    // `absent` was a u8: it stopped at 255 and a setting of 300 never declared the gap.
    let cfg = SequencerConfig {
        confirm_gone_after: 300,
        backfill_retry_base: Duration::from_secs(1),
        backfill_retry_max: Duration::from_secs(1),
        backfill_max_wait: Duration::from_secs(24 * 3600),
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg);
    h.state("c", live(1));
    h.state("c", ending(3));
    let mut answers = 0;
    let mut step = h.advance(2_000);
    while answers < 400 {
        let Some(Action::RequestBackfill { from, to, .. }) = step.first().cloned() else {
            panic!("no request: {step:?}");
        };
        answers += 1;
        let out = h.backfill("c", from, to, BackfillOutcome::Answered(vec![]));
        if let Some(Action::PublishGap { reason, .. }) = out.first() {
            assert_eq!(*reason, GapReason::Gone);
            assert_eq!(published(&out), vec![3]);
            break;
        }
        step = h.advance(1_000);
    }
    assert_eq!(answers, 300);
}

#[test]
fn abandonment_publishes_held_states_behind_gap_records() {
    // With `abandon_after` below `gap_timeout + backfill_max_wait`, a call can be abandoned
    // while holding states: they are not dropped silently.
    let cfg = SequencerConfig {
        abandon_after: Duration::from_secs(60),
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg);
    h.state("c", live(1));
    h.state("c", at(3, 30));
    h.state("c", at(6, 60));
    assert_eq!(h.advance(2_000), vec![request("c", 2, Some(2))]);
    let out = h.advance(58_000);
    assert_eq!(
        out.iter()
            .map(|a| match a {
                Action::PublishGap { from, to, .. } => format!("gap {from}-{to}"),
                Action::Publish {
                    sequence_number, ..
                } => format!("pub {sequence_number}"),
                Action::Abandoned { next_sequence, .. } => format!("abandoned {next_sequence}"),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        vec!["gap 2-2", "pub 3", "gap 4-5", "pub 6", "abandoned 7"]
    );
    assert_eq!(h.seq.raw_low_watermark(), None);
    assert_eq!(
        h.seq.checkpoint("c"),
        Some(ConversationCheckpoint {
            next_sequence: 7,
            ended: false,
            gap_count: 2,
            abandoned: true,
        }),
        "remembered as abandoned, for a new owner too"
    );
    // An ENDING among the held states completes the call instead of abandoning it.
    let mut h = Harness::with(SequencerConfig {
        abandon_after: Duration::from_secs(60),
        ..SequencerConfig::default()
    });
    h.state("c", live(1));
    h.state("c", ending(3));
    h.advance(2_000);
    let out = h.advance(58_000);
    assert!(matches!(
        out.last(),
        Some(Action::PublishCompletion {
            last_sequence: 3,
            gap_count: 1,
            ..
        })
    ));
    assert!(!out.iter().any(|a| matches!(a, Action::Abandoned { .. })));
}

// ---- implausible sequence numbers and states inside a declared gap ----------------------------

#[test]
fn an_implausible_sequence_number_is_dead_lettered_not_turned_into_a_gap() {
    // Reviewer's repro: 1, 2, then a timestamp in the sequence field, then the real 3, 4, 5.
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(2));
    let out = h.state("c", live(1_700_000_000_000));
    assert!(
        matches!(
            &out[..],
            [Action::DeadLetter {
                sequence_number: 1_700_000_000_000,
                reason: DeadLetterReason::ImplausibleSequence,
                ..
            }]
        ),
        "{out:?}"
    );
    assert_eq!(published(&h.state("c", live(3))), vec![3]);
    assert!(h.advance(5_000).is_empty(), "no gap, no back-fill");
    assert_eq!(published(&h.state("c", live(4))), vec![4]);
    let out = h.state("c", ending(5));
    assert_eq!(published(&out), vec![5]);
    assert!(matches!(
        out.last(),
        Some(Action::PublishCompletion { gap_count: 0, .. })
    ));
    assert_eq!(h.seq.stats().counters.implausible_sequence, 1);
    // The bound: exactly MAX_SEQUENCE_AHEAD above next is held, one more is not (a call first
    // seen at k counts from next = 1).
    let mut h = Harness::new();
    assert!(h.state("d", live(1 + MAX_SEQUENCE_AHEAD)).is_empty());
    let out = h.state("e", live(2 + MAX_SEQUENCE_AHEAD));
    assert!(matches!(
        &out[..],
        [Action::DeadLetter {
            reason: DeadLetterReason::ImplausibleSequence,
            ..
        }]
    ));
    assert_eq!(h.seq.stats().held_states, 1);
}

#[test]
fn a_state_inside_a_declared_gap_is_dead_lettered_not_dropped() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", live(3));
    h.advance(2_000);
    h.backfill("c", 2, Some(2), BackfillOutcome::Answered(vec![]));
    h.advance(500);
    let out = h.backfill("c", 2, Some(2), BackfillOutcome::NotFound);
    assert_eq!(out[0], gap("c", 2, 2, GapReason::Gone));
    // GoTo's store caught up after all, or the webhook was only late: 2 cannot be published
    // after its gap record, and it is no duplicate.
    let out = h.state("c", live(2));
    assert!(
        matches!(
            &out[..],
            [Action::DeadLetter {
                sequence_number: 2,
                reason: DeadLetterReason::InsideDeclaredGap,
                payload,
                ..
            }] if payload == "s2"
        ),
        "{out:?}"
    );
    // Published neighbours are still plain duplicates.
    assert!(h.state("c", live(1)).is_empty());
    assert!(h.state("c", live(3)).is_empty());
    let st = h.seq.stats().counters;
    assert_eq!((st.inside_declared_gap, st.duplicates_dropped), (1, 2));
    // Also after completion; not for a gap only the takeover scan found (the previous owner
    // dead-lettered whatever came for it, and a re-read must not do so twice).
    h.state("c", ending(4));
    assert_eq!(h.state("c", live(2)).len(), 1);
    let mut h = Harness::new();
    h.seq.observe_published("d", 1);
    h.seq.observe_gap("d", 2, 4);
    assert!(h.state("d", live(3)).is_empty());
}

#[test]
fn dead_letter_reasons_have_distinct_codes_and_details() {
    let reasons = [
        DeadLetterReason::ConflictingDuplicate,
        DeadLetterReason::AfterEnding,
        DeadLetterReason::InvalidSequence,
        DeadLetterReason::ImplausibleSequence,
        DeadLetterReason::InsideDeclaredGap,
        DeadLetterReason::AfterAbandonment,
    ];
    let codes: std::collections::BTreeSet<_> = reasons.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), reasons.len());
    for r in reasons {
        assert!(r.detail(7).contains('7'), "{r:?}");
    }
}

/// A new owner restores a call's abandon clock from its changelog record's time, and that record
/// is written when the checkpoint changes: a copy of the last state (a catch-up's, of a call
/// still active) after a long quiet spell rewrites it, so a takeover does not abandon a call this
/// owner keeps alive. Copies close together do not each cost a write.
#[test]
fn a_copy_after_a_long_quiet_spell_rewrites_the_checkpoint() {
    let cfg = SequencerConfig {
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    };
    let eighth = cfg.abandon_after.as_millis() as u64 / 8;
    let mut h = Harness::with(cfg);
    h.state("c", live(1));
    assert_eq!(h.seq.take_dirty().len(), 1);
    h.advance(eighth / 4);
    h.state("c", live(1));
    assert!(
        h.seq.take_dirty().is_empty(),
        "a copy soon after the last state rewrote the checkpoint"
    );
    h.advance(eighth);
    h.state("c", live(1));
    let dirty = h.seq.take_dirty();
    assert_eq!(
        dirty
            .iter()
            .map(|(id, cp)| (id.as_text().to_string(), cp.map(|c| c.next_sequence)))
            .collect::<Vec<_>>(),
        vec![("c".to_string(), Some(2))],
        "a copy after a long quiet spell left the changelog record as old as the last new state"
    );
}

/// A call kept alive by copies of its last state that come steadily, each within an eighth of
/// `abandon_after` of the one before (a catch-up at every WebSocket reconnect of a long call),
/// is never abandoned by its owner. The changelog record a new owner restores the abandon clock
/// from must keep up with it too: otherwise a takeover abandons the call at once, and its next
/// real state, which the old owner would have published, goes to the dead letters as
/// `after_abandonment`, or, the call forgotten (at once when nothing pins the raw low
/// watermark), starts it afresh: state 1 is back-filled and published a second time.
#[test]
fn steady_copies_keep_the_restored_abandon_clock_of_a_live_call() {
    let cfg = SequencerConfig {
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    };
    let abandon = cfg.abandon_after.as_millis() as u64;
    // A copy every 40 minutes: each within `abandon_after / 8` (45 minutes) of the last.
    let every = abandon / 9;
    let mut h = Harness::with(cfg.clone());
    let mut cp = None;
    // When the shell last wrote c's record: its timestamp is what a new owner restores from.
    let mut written = h.now;
    let mut take = |h: &mut Harness, written: &mut Timestamp| {
        for (id, checkpoint) in h.seq.take_dirty() {
            assert_eq!(id, "c");
            cp = checkpoint;
            *written = h.now;
        }
    };
    h.state("c", live(1));
    take(&mut h, &mut written);
    let start = h.now;
    while h.now.0 < start.0 + abandon + abandon / 6 {
        let out = h.advance(every);
        assert!(out.is_empty(), "the owner gave the live call up: {out:?}");
        h.state("c", live(1));
        take(&mut h, &mut written);
    }
    let cp = cp.expect("c was written");
    // A takeover now: c's clock goes on from its record's time.
    let mut t = Harness::with(cfg);
    t.now = h.now;
    t.seq.restore_since("c", cp, t.now, written);
    t.seq.restored_raw_end(20);
    t.seq.raw_read_to(20);
    let mut out = t.advance(1_000);
    out.extend(t.state("c", live(2)));
    assert_eq!(
        published(&out),
        vec![2],
        "the new owner gave up a call the old one kept alive (its record written {} min before): {out:?}",
        t.now.since(written).as_secs() / 60
    );
}

/// A call abandoned with states held publishes them behind gap records; its checkpoint, written
/// at the abandonment, has no completion record. Restored open, a new owner would publish for
/// another `abandon_after` what the old owner dead-lettered as `after_abandonment`: the same
/// state dead-lettered or published, depending on who owned the partition when it came. The
/// checkpoint says the call was abandoned, and the new owner restores it so.
#[test]
fn a_state_after_abandonment_is_not_published_by_the_next_owner() {
    let cfg = SequencerConfig {
        abandon_after: Duration::from_secs(60),
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    };
    let mut h = Harness::with(cfg.clone());
    // The changelog as the shell writes it, with each record's time.
    let mut changelog = std::collections::BTreeMap::new();
    let write = |h: &mut Harness, changelog: &mut std::collections::BTreeMap<String, _>| {
        for (id, cp) in h.seq.take_dirty() {
            match cp {
                Some(cp) => changelog.insert(id.to_string(), (cp, h.now)),
                None => changelog.remove(&id.to_string()),
            };
        }
    };
    // a's state 2 (raw 100) pins the watermark, its back-fill unanswered: b stays remembered.
    let mut raw = vec![("a", at(2, 100)), ("b", at(1, 101)), ("b", at(3, 102))];
    for (c, s) in raw.clone() {
        h.state(c, s);
    }
    write(&mut h, &mut changelog);
    h.advance(30_000);
    raw.push(("a", at(3, 103)));
    h.state("a", at(3, 103));
    let out = h.advance(31_000);
    assert!(
        out.contains(&Action::Abandoned {
            conversation: "b".into(),
            next_sequence: 4
        }),
        "{out:?}"
    );
    assert_eq!(published(&out), vec![3], "b's held state published");
    write(&mut h, &mut changelog);
    // b's state 4 comes after the abandonment: the owner sets it aside.
    raw.push(("b", at(4, 104)));
    let late = h.state("b", at(4, 104));
    assert!(
        matches!(
            &late[..],
            [Action::DeadLetter {
                sequence_number: 4,
                reason: DeadLetterReason::AfterAbandonment,
                ..
            }]
        ),
        "{late:?}"
    );
    // A takeover: restore with each record's age, re-read raw from the watermark (100).
    assert_eq!(h.seq.raw_low_watermark(), Some(100));
    let mut t = Harness::with(cfg);
    t.now = Timestamp(h.now.0 + 1_000);
    for (c, (cp, at)) in &changelog {
        t.seq.restore_since(c, *cp, t.now, *at);
    }
    t.seq.restored_raw_end(105);
    t.seq.raw_read_to(100);
    let mut out = t.advance(0);
    for (c, s) in raw {
        out.extend(t.state(c, s));
    }
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Publish { conversation, .. } if *conversation == "b"
        )),
        "the new owner published b after its abandonment: {out:?}"
    );
}

/// An abandoned call used to be forgotten as soon as the raw low watermark had passed it. GoTo
/// may still list it as active (often why its ENDING never came), so the next catch-up (a
/// WebSocket reconnect) writes a copy of its last state to raw: read as a new call first seen at
/// `k`, the states below were back-filled and the whole call published a second time. It is now
/// kept until it has been quiet for another `abandon_after`, each copy counting as activity; a
/// call quiet that long is forgotten, so the memory stays bounded.
#[test]
fn a_catch_up_copy_after_an_abandoned_call_is_forgotten_does_not_republish_it() {
    let cfg = SequencerConfig {
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    };
    let abandon = cfg.abandon_after.as_millis() as u64;
    let gap_timeout = cfg.gap_timeout.as_millis() as u64;
    let mut h = Harness::with(cfg.clone());
    let mut out = h.state("c", at(1, 100));
    out.extend(h.state("c", at(2, 101)));
    assert_eq!(published(&out), vec![1, 2]);
    let out = h.advance(abandon + 1_000);
    assert!(
        out.contains(&Action::Abandoned {
            conversation: "c".into(),
            next_sequence: 3
        }),
        "{out:?}"
    );
    // Nothing pins the raw low watermark: only the quiet clock keeps c.
    assert_eq!(h.seq.raw_low_watermark(), None);
    // Catch-ups 2 h after the abandonment, and 5 h after that (7 h after it, past the first
    // `abandon_after`: the first copy counted as activity).
    let mut copied = h.now;
    for (wait, offset) in [(2 * 3_600_000, 102), (5 * 3_600_000, 103)] {
        h.advance(wait);
        copied = h.now;
        let mut out = h.state("c", at(2, offset));
        out.extend(h.advance(gap_timeout));
        if out.contains(&request("c", 1, Some(1))) {
            out.extend(h.backfill(
                "c",
                1,
                Some(1),
                BackfillOutcome::Answered(vec![backfilled(1)]),
            ));
        }
        assert!(published(&out).is_empty(), "published again: {out:?}");
    }
    // Quiet for `abandon_after` after its last copy, it is forgotten (with a tombstone).
    h.seq.take_dirty();
    let until = copied.0 + abandon - 1 - h.now.0;
    assert!(h.advance(until).is_empty());
    assert_eq!(
        h.seq.checkpoint("c").map(|cp| cp.abandoned),
        Some(true),
        "forgotten before it was quiet for abandon_after"
    );
    assert!(h.advance(1).is_empty());
    assert_eq!(
        h.seq.checkpoint("c"),
        None,
        "an abandoned call kept forever"
    );
    assert_eq!(h.seq.take_dirty(), vec![("c".into(), None)]);
    assert_eq!(h.seq.next_deadline(), None);
    let st = h.seq.stats();
    assert_eq!((st.counters.abandoned, st.counters.closed_evicted), (1, 0));
}

/// A new owner keeps an abandoned call as long as the old one would have: a copy of its last
/// state (the first in each new eighth of `abandon_after`) writes its checkpoint again, and that
/// record's time is what the new owner counts the call's quiet time from. Left at the
/// abandonment, a takeover more than `abandon_after` after it would forget the call at once,
/// and the next catch-up copy would publish the whole call again.
#[test]
fn a_copy_of_an_abandoned_call_rewrites_its_checkpoint_for_the_next_owner() {
    let cfg = SequencerConfig {
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    };
    let abandon = cfg.abandon_after.as_millis() as u64;
    let mut h = Harness::with(cfg.clone());
    // What the shell writes to the changelog now: c's record, stamped with the time.
    let write = |h: &mut Harness| {
        let dirty = h.seq.take_dirty();
        assert!(dirty.len() <= 1 && dirty.iter().all(|(id, _)| *id == "c"));
        dirty
            .into_iter()
            .find_map(|(_, cp)| cp)
            .map(|cp| (cp, h.now))
    };
    h.state("c", at(1, 100));
    h.state("c", at(2, 101));
    assert!(write(&mut h).is_some_and(|(cp, _)| !cp.abandoned));
    let out = h.advance(abandon + 1_000);
    assert!(
        out.contains(&Action::Abandoned {
            conversation: "c".into(),
            next_sequence: 3
        }),
        "{out:?}"
    );
    assert!(
        write(&mut h).is_some_and(|(cp, _)| cp.abandoned),
        "the abandonment did not rewrite the checkpoint"
    );
    // A catch-up copy 5 h after the abandonment.
    h.advance(5 * 3_600_000);
    assert!(h.state("c", at(2, 102)).is_empty());
    let (cp, written) = write(&mut h).expect("the copy did not rewrite the checkpoint");
    // A takeover 2 h later (7 h after the abandonment), and the next catch-up copy.
    let mut t = Harness::with(cfg.clone());
    t.now = Timestamp(h.now.0 + 2 * 3_600_000);
    t.seq.restore_since("c", cp, t.now, written);
    t.seq.restored_raw_end(103);
    t.seq.raw_read_to(103);
    let mut out = t.advance(1_000);
    out.extend(t.state("c", at(2, 103)));
    out.extend(t.advance(cfg.gap_timeout.as_millis() as u64));
    if out.contains(&request("c", 1, Some(1))) {
        out.extend(t.backfill(
            "c",
            1,
            Some(1),
            BackfillOutcome::Answered(vec![backfilled(1)]),
        ));
    }
    assert!(
        published(&out).is_empty(),
        "the new owner published the abandoned call again: {out:?}"
    );
    assert_eq!(t.seq.checkpoint("c").map(|cp| cp.abandoned), Some(true));
}

// ---- a dead-lettered first state opens no conversation -----------------------------------------

/// A state no call has: `seq` 0 or `u64::MAX` (invalid), or too far ahead (implausible).
fn bad(seq: u64, offset: i64) -> IncomingState<P> {
    IncomingState {
        sequence_number: seq,
        fingerprint: fp(seq),
        is_ending: false,
        origin: Origin::Webhook,
        raw_offset: Some(offset),
        payload: format!("bad{seq}"),
    }
}

const BAD: [(u64, DeadLetterReason); 4] = [
    (0, DeadLetterReason::InvalidSequence),
    (u64::MAX, DeadLetterReason::InvalidSequence),
    (
        2 + MAX_SEQUENCE_AHEAD,
        DeadLetterReason::ImplausibleSequence,
    ),
    (1_700_000_000_000, DeadLetterReason::ImplausibleSequence),
];

/// A bad state for a call the partition never saw used to open it at `next = 1`: idle-probed
/// every `idle_probe_after` for six hours (GoTo requests competing with real probes), then
/// abandoned, its checkpoint saying so, which set aside a real call of that id as
/// `AfterAbandonment` for another six hours. It is dead-lettered, and nothing else happens.
#[test]
fn a_bad_state_for_an_unknown_call_is_dead_lettered_and_opens_nothing() {
    for (seq, reason) in BAD {
        let mut h = Harness::new();
        let out = h.state("c", bad(seq, 7));
        assert_eq!(
            out,
            vec![Action::DeadLetter {
                conversation: "c".into(),
                sequence_number: seq,
                reason,
                payload: format!("bad{seq}"),
            }],
            "{seq}"
        );
        assert_eq!(h.seq.len(), 0, "{seq}: a conversation was opened");
        assert_eq!(h.seq.stats().open_conversations, 0, "{seq}");
        assert_eq!(h.seq.checkpoint("c"), None, "{seq}");
        assert_eq!(h.seq.next_deadline(), None, "{seq}: a timer was left");
        assert!(
            h.seq.take_dirty().is_empty(),
            "{seq}: a checkpoint to write"
        );
        assert_eq!(h.seq.raw_low_watermark(), None, "{seq}: the state is held");
        // Far past `idle_probe_after`, `abandon_after` and another `abandon_after`: no probe, no
        // abandonment, nothing published, nothing written.
        let out = h.advance(13 * 3_600_000);
        assert!(out.is_empty(), "{seq}: {out:?}");
        assert!(h.seq.take_dirty().is_empty(), "{seq}");
        let c = h.seq.stats().counters;
        assert_eq!((c.probes_requested, c.abandoned), (0, 0), "{seq}");
        assert_eq!(
            c.invalid_sequence + c.implausible_sequence,
            1,
            "{seq}: the dead letter is still counted"
        );
    }
}

/// A call whose first state was bad: its real states, even a while later, meet exactly what a
/// call that never had the bad one meets.
#[test]
fn a_call_whose_first_state_was_bad_runs_as_if_it_never_came() {
    for (seq, _) in BAD {
        let mut with = Harness::new();
        let mut without = Harness::new();
        with.state("c", bad(seq, 7));
        // Longer than `idle_probe_after` before the real states come.
        assert_eq!(with.advance(45_000), without.advance(45_000), "{seq}");
        // First seen at 2: 1 is a gap, back-filled after `gap_timeout`.
        assert_eq!(
            with.state("c", live(2)),
            without.state("c", live(2)),
            "{seq}"
        );
        let out = with.advance(2_000);
        assert_eq!(out, vec![request("c", 1, Some(1))], "{seq}");
        assert_eq!(out, without.advance(2_000), "{seq}");
        let answer = || BackfillOutcome::Answered(vec![backfilled(1)]);
        let out = with.backfill("c", 1, Some(1), answer());
        assert_eq!(published(&out), vec![1, 2], "{seq}");
        assert_eq!(out, without.backfill("c", 1, Some(1), answer()), "{seq}");
        assert_eq!(with.seq.take_dirty(), without.seq.take_dirty(), "{seq}");
        assert_eq!(with.advance(60_000), without.advance(60_000), "{seq}");
    }
}

/// An evicted call's tombstone is owed to the changelog; a bad state of it before that is
/// written must not turn the tombstone into a fresh call's checkpoint (restored, that would be
/// an open call at 1, probed from there: the whole call published again), nor reopen the call
/// here (the same probe, on this owner).
#[test]
fn a_bad_state_after_eviction_keeps_the_tombstone_owed() {
    let mut h = Harness::new();
    h.state("c", live(1));
    h.state("c", ending(2));
    h.seq.take_dirty();
    h.advance(SequencerConfig::default().closed_retention.as_millis() as u64 + 10_000);
    assert_eq!(h.seq.len(), 0, "evicted");
    let out = h.state("c", bad(0, 30));
    assert!(
        matches!(
            &out[..],
            [Action::DeadLetter {
                reason: DeadLetterReason::InvalidSequence,
                ..
            }]
        ),
        "{out:?}"
    );
    assert_eq!(h.seq.take_dirty(), vec![("c".into(), None)]);
    // Nor is the call reopened at 1 and probed: the probe's answer would publish it again.
    assert!(h.advance(60_000).is_empty());
    assert_eq!(h.seq.len(), 0);
}

/// A bad state for a call the partition knows still goes to the dead letters and leaves the
/// call as it was: kept, even one restored at `next = 1` with nothing published yet, and an
/// abandoned one is still kept for another `abandon_after` after it (any state of an abandoned
/// call is activity).
#[test]
fn a_bad_state_for_a_known_call_keeps_it() {
    let cfg = SequencerConfig {
        idle_probes_in_flight: 0,
        ..SequencerConfig::default()
    };
    let abandon = cfg.abandon_after.as_millis() as u64;
    for (seq, reason) in BAD {
        // Restored open at 1 (it held states at the previous owner): it stays.
        let mut h = Harness::with(cfg.clone());
        let open = ConversationCheckpoint {
            next_sequence: 1,
            ended: false,
            gap_count: 0,
            abandoned: false,
        };
        h.seq.restore("r", open, h.now);
        let out = h.state("r", bad(seq, 7));
        assert!(
            matches!(&out[..], [Action::DeadLetter { reason: r, .. }] if *r == reason),
            "{seq}: {out:?}"
        );
        assert_eq!(h.seq.checkpoint("r"), Some(open), "{seq}");
        assert!(h.seq.next_deadline().is_some(), "{seq}: its timers went");

        // Abandoned, then a bad state 5 h later: kept 6 h after that, not after abandonment.
        let mut h = Harness::with(cfg.clone());
        h.state("a", at(1, 100));
        let out = h.advance(abandon + 1_000);
        assert!(
            out.contains(&Action::Abandoned {
                conversation: "a".into(),
                next_sequence: 2
            }),
            "{seq}: {out:?}"
        );
        h.advance(5 * 3_600_000);
        let out = h.state("a", bad(seq, 101));
        let reason_now = match reason {
            // Checked before anything else: whatever the call's state.
            DeadLetterReason::InvalidSequence => reason,
            // At or above where the call stopped.
            _ => DeadLetterReason::AfterAbandonment,
        };
        assert!(
            matches!(&out[..], [Action::DeadLetter { reason: r, .. }] if *r == reason_now),
            "{seq}: {out:?}"
        );
        h.advance(abandon - 60_000);
        assert!(
            h.seq.checkpoint("a").is_some_and(|cp| cp.abandoned),
            "{seq}: forgotten less than abandon_after after its last state"
        );
        h.advance(120_000);
        assert_eq!(h.seq.checkpoint("a"), None, "{seq}: kept too long");
    }
}

/// The worse half of opening a call for a bad state: six hours later it was abandoned at 1 (and
/// its checkpoint said so), so the real call of that id, coming within the next six hours, had
/// every state dead-lettered as `AfterAbandonment` instead of published.
#[test]
fn a_real_call_after_a_bad_state_is_published_not_set_aside_as_abandoned() {
    for (seq, _) in BAD {
        let mut h = Harness::new();
        h.state("c", bad(seq, 7));
        let out = h.advance(7 * 3_600_000);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Abandoned { .. })),
            "{seq}: {out:?}"
        );
        let mut out = h.state("c", at(1, 8));
        out.extend(h.state("c", ending(2)));
        assert_eq!(published(&out), vec![1, 2], "{seq}: {out:?}");
        assert!(
            !out.iter().any(|a| matches!(a, Action::DeadLetter { .. })),
            "{seq}: {out:?}"
        );
    }
}

#[test]
fn a_scanned_record_that_advances_nothing_opens_no_conversation() {
    // A takeover scan reading a (corrupt or foreign) ordered record at sequence 0 or
    // `u64::MAX` of a call this partition does not know: nothing is published below it, so
    // there is no call to keep. Kept, it was probed for six hours and then abandoned.
    let mut h = Harness::new();
    h.seq.observe_published("m", u64::MAX);
    h.seq.observe_published("z", 0);
    h.seq.observe_gap("g", 0, u64::MAX);
    assert_eq!(h.seq.len(), 0);
    assert_eq!(h.seq.next_deadline(), None);
    assert!(h.seq.take_dirty().is_empty());
    let out = h.advance(7 * 3_600_000);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.seq.stats().counters.probes_requested, 0);
    // A known call is left as it was, and a usable record still opens one.
    h.seq.observe_published("k", 3);
    h.seq.observe_published("k", u64::MAX);
    assert_eq!(h.seq.len(), 1);
    assert_eq!(
        h.seq.take_dirty(),
        vec![(
            "k".into(),
            Some(ConversationCheckpoint {
                next_sequence: 4,
                ended: false,
                gap_count: 0,
                abandoned: false,
            })
        )]
    );
}
