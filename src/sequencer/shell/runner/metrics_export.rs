//! Exporting the cores' counters and gauges to Prometheus.

use super::*;

impl RunState {
    /// Exports the cores' counters (as increments since the last export) and gauges.
    pub(super) fn export_metrics(&mut self) {
        use metrics::{counter, gauge};
        self.last_metrics = Instant::now();
        let now = now_ms(self.origin);
        let (mut open_gaps, mut held, mut open, mut oldest) = (0usize, 0usize, 0usize, None);
        let mut probes_waiting = 0usize;
        for (p, part) in &self.partitions {
            let st = part.core.stats();
            let c = &st.counters;
            let exported = self.exported.entry(*p).or_default();
            let last = exported.baseline(part.epoch);
            let inc = |now: u64, before: u64| now.saturating_sub(before);
            counter!("callbridge_duplicates_dropped_total")
                .increment(inc(c.duplicates_dropped, last.duplicates_dropped));
            counter!("callbridge_conflicting_duplicates_total")
                .increment(inc(c.conflicts, last.conflicts));
            counter!("callbridge_gaps_detected_total")
                .increment(inc(c.gaps_detected, last.gaps_detected));
            counter!("callbridge_gap_records_published_total", "reason" => "gone")
                .increment(inc(c.gaps_gone, last.gaps_gone));
            counter!("callbridge_gap_records_published_total", "reason" => "backfill_failed")
                .increment(inc(c.gaps_backfill_failed, last.gaps_backfill_failed));
            counter!("callbridge_backfill_requests_total", "kind" => "gap")
                .increment(inc(c.backfills_requested, last.backfills_requested));
            counter!("callbridge_backfill_requests_total", "kind" => "idle_probe")
                .increment(inc(c.probes_requested, last.probes_requested));
            counter!("callbridge_backfill_failures_total")
                .increment(inc(c.backfills_failed, last.backfills_failed));
            counter!("callbridge_completions_published_total")
                .increment(inc(c.completions, last.completions));
            counter!("callbridge_conversations_abandoned_total")
                .increment(inc(c.abandoned, last.abandoned));
            *exported = Exported {
                epoch: part.epoch,
                counters: c.clone(),
            };
            open_gaps += st.open_gaps;
            held += st.held_states;
            open += st.open_conversations;
            probes_waiting += st.probes_waiting;
            oldest = match (oldest, st.oldest_open_gap_since) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
        }
        self.exported.retain(|p, _| self.partitions.contains_key(p));
        gauge!("callbridge_gaps_open").set(open_gaps as f64);
        gauge!("callbridge_states_held").set(held as f64);
        gauge!("callbridge_conversations_open").set(open as f64);
        self.stats
            .conversations_open
            .store(open as u64, std::sync::atomic::Ordering::Relaxed);
        gauge!("callbridge_idle_probes_waiting").set(probes_waiting as f64);
        gauge!("callbridge_partitions_owned").set(self.partitions.len() as f64);
        let age = oldest.map_or(0.0, |t: Timestamp| now.since(t).as_secs_f64());
        gauge!("callbridge_gap_oldest_age_seconds").set(age);
    }
}

/// What was last exported of one partition's core: its epoch and its counters then.
#[derive(Debug, Default)]
pub(super) struct Exported {
    epoch: u64,
    counters: crate::sequencer::Counters,
}

impl Exported {
    /// The counters the core of `epoch` is exported against. A partition taken over again (a
    /// revoke and a new assignment within one export interval) has a new core, whose counters
    /// start at 0: the old core's counters as the baseline would hide its first increments.
    fn baseline(&self, epoch: u64) -> crate::sequencer::Counters {
        if self.epoch == epoch {
            self.counters.clone()
        } else {
            crate::sequencer::Counters::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Exported;
    use crate::sequencer::Counters;

    #[test]
    fn a_new_core_of_the_same_partition_is_exported_from_zero() {
        let old_core = Counters {
            published: 50,
            duplicates_dropped: 7,
            ..Counters::default()
        };
        let exported = Exported {
            epoch: 3,
            counters: old_core.clone(),
        };
        // The same core: increments since its last export.
        assert_eq!(exported.baseline(3), old_core);
        // Taken over again within the export interval (epoch 4): its 5 duplicates are all new,
        // not hidden under the previous core's 7.
        let base = exported.baseline(4);
        assert_eq!(base, Counters::default());
        assert_eq!(5u64.saturating_sub(base.duplicates_dropped), 5);
    }
}
