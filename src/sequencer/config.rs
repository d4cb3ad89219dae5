//! Timing rules of the sequencer, as operators set them.
//!
//! Defaults follow what GoTo is known to do: states of one call arrive within seconds, its
//! store may lag a little behind the notification, and a call rarely lasts hours.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sequencer settings. Durations accept humantime strings (`"2s"`, `"5m"`, `"6h"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencerConfig {
    /// How long to wait for a missing state to arrive live before asking the REST back-fill.
    /// Longer means fewer API calls for states that are merely late; shorter means less delay.
    #[serde(with = "humantime_serde")]
    pub gap_timeout: Duration,
    /// First back-fill retry delay; doubles per attempt on the same gap.
    #[serde(with = "humantime_serde")]
    pub backfill_retry_base: Duration,
    /// Cap on the back-fill retry delay.
    #[serde(with = "humantime_serde")]
    pub backfill_retry_max: Duration,
    /// How long the back-fill of a gap may take from its first request (`gap_timeout` after the
    /// gap was detected): a gap still open then is given up and a `BackfillFailed` gap record
    /// published, whether the back-fill keeps failing or its answer has not come yet (the
    /// shell's queue of requests may be long: GoTo allows 10 a second). So one conversation
    /// cannot stall forever behind an unreachable API, and no state is held back longer than
    /// `gap_timeout + backfill_max_wait`, which bounds how long the raw low watermark (where a
    /// takeover resumes reading raw) can stand still.
    #[serde(with = "humantime_serde")]
    pub backfill_max_wait: Duration,
    /// A state must be absent from this many consecutive successful back-fill answers (spaced
    /// by the retry backoff) before it is declared gone: GoTo's store may lag the notification.
    /// Values below 1 act as 1.
    pub confirm_gone_after: u32,
    /// An open conversation that got nothing for this long is probed with an open-ended
    /// back-fill from its next sequence, to catch a lost tail such as a dropped ENDING; repeated
    /// every interval while it stays quiet. Each probe is one API call per quiet conversation.
    #[serde(with = "humantime_serde")]
    pub idle_probe_after: Duration,
    /// Idle probes out at once per partition; conversations due for one wait their turn, oldest
    /// first. GoTo allows 10 requests/s, so probing every quiet call each `idle_probe_after`
    /// cannot scale to thousands of open calls: rationed, probes never crowd out the back-fill
    /// of real gaps (which are not rationed), and a quiet call is probed less often when many
    /// are quiet. 0 turns idle probes off.
    pub idle_probes_in_flight: u32,
    /// An open conversation with no state for this long is given up (`Abandoned`). States it
    /// still holds (only possible when this is shorter than `gap_timeout + backfill_max_wait`)
    /// are published first, the holes below them becoming `BackfillFailed` gap records. It is
    /// then remembered until it has been quiet for another `abandon_after` (any state of it,
    /// such as a catch-up's copy of its last one, counts) and the raw low watermark has passed
    /// its raw records, and meanwhile dead-letters any state at or above where it stopped
    /// (`after_abandonment`), on a new owner too (its checkpoint says it was abandoned).
    #[serde(with = "humantime_serde")]
    pub abandon_after: Duration,
    /// After completion, how long to remember a conversation to drop late duplicates. After
    /// that it is evicted (changelog tombstone); a state arriving later would be treated as a
    /// new conversation, so keep this above GoTo's redelivery horizon. Never evicted before the
    /// raw low watermark has passed every raw record of the call (a takeover resumes reading
    /// raw there and would otherwise publish the call again).
    #[serde(with = "humantime_serde")]
    pub closed_retention: Duration,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            gap_timeout: Duration::from_secs(2),
            backfill_retry_base: Duration::from_millis(500),
            backfill_retry_max: Duration::from_secs(30),
            backfill_max_wait: Duration::from_secs(5 * 60),
            confirm_gone_after: 2,
            idle_probe_after: Duration::from_secs(30),
            idle_probes_in_flight: 2,
            abandon_after: Duration::from_secs(6 * 60 * 60),
            closed_retention: Duration::from_secs(60 * 60),
        }
    }
}

impl SequencerConfig {
    /// Delay before retry number `tries` (1-based) of one gap: base·2^(tries-1), capped.
    pub fn backoff(&self, tries: u32) -> Duration {
        let exp = tries.saturating_sub(1).min(31);
        self.backfill_retry_base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.backfill_retry_max)
            .min(self.backfill_retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_fields_and_defaults_parse() {
        let cfg: SequencerConfig =
            serde_json::from_str(r#"{"gap_timeout":"3s","backfill_max_wait":"10m"}"#).unwrap();
        assert_eq!(cfg.gap_timeout, Duration::from_secs(3));
        assert_eq!(cfg.backfill_max_wait, Duration::from_secs(600));
        assert_eq!(cfg.confirm_gone_after, 2);
        assert_eq!(
            cfg.closed_retention,
            SequencerConfig::default().closed_retention
        );
        assert!(serde_json::from_str::<SequencerConfig>(r#"{"gap_timout":"3s"}"#).is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = SequencerConfig::default();
        assert_eq!(cfg.backoff(1), Duration::from_millis(500));
        assert_eq!(cfg.backoff(2), Duration::from_secs(1));
        assert_eq!(cfg.backoff(4), Duration::from_secs(4));
        assert_eq!(cfg.backoff(7), Duration::from_secs(30));
        assert_eq!(cfg.backoff(u32::MAX), Duration::from_secs(30));
    }
}
