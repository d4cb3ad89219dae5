//! Series that exist at 0 from the start.
//!
//! The Prometheus exporter shows a counter only once something registered it, which for most
//! counters is their first increment. `increase()` and `rate()` need two samples of a series, so
//! an alert on a counter that appears with the value 1 misses that first event (and a single
//! failure may be the only one: `CallbridgeCatchupFailed` would never fire). Every counter an
//! alert in `deploy/alerts.yaml` reads is therefore registered here, with the label values it can
//! take where that set is known and small.

/// Reason codes of [`crate::notification::ParseError::reason_code`]: ingest dead-letters a body
/// with one of these, and so does the sequencer for a state it cannot fingerprint.
pub(crate) const PARSE_REASONS: &[&str] = crate::notification::ParseError::REASON_CODES;

/// Ingest's reasons besides the parse codes: a body above the size limit.
pub(crate) const INGEST_ONLY_REASONS: &[&str] = &["oversize"];

/// The sequencer's reasons besides the parse codes: [`crate::sequencer::DeadLetterReason`]
/// codes (`invalid_sequence_number` is a parse code too), and `oversize` for a back-filled state
/// too large for Kafka.
pub(crate) const SEQUENCER_ONLY_REASONS: &[&str] = &[
    "oversize",
    "conflicting_duplicate",
    "after_ending",
    "after_abandonment",
    "implausible_sequence_number",
    "inside_declared_gap",
];

/// Why a webhook was answered 503 (the `outcome` of `callbridge_webhook_responses_total`).
pub(crate) const WEBHOOK_503_OUTCOMES: &[&str] =
    &["kafka_ack_timeout", "kafka_queue_full", "kafka_error"];

/// Registers the alerted counters on the current recorder (they then render as 0), and the
/// discovery gauges the dashboard shows (0 rather than no data until the first catch-up).
pub(crate) fn register_at_zero() {
    use metrics::{counter, gauge};
    gauge!("callbridge_catchups_pending").set(0.0);
    gauge!("callbridge_report_sweep_windows_pending").set(0.0);
    counter!("callbridge_catchup_failures_total").increment(0);
    counter!("callbridge_sequencer_run_failures_total").increment(0);
    counter!("callbridge_sequencer_foreign_outputs_total").increment(0);
    counter!("callbridge_backfill_failures_total").increment(0);
    counter!("callbridge_channel_unsubscribe_failures_total").increment(0);
    counter!("callbridge_report_sweeps_past_retention_total").increment(0);
    for reason in ["gone", "backfill_failed"] {
        counter!("callbridge_gap_records_published_total", "reason" => reason).increment(0);
    }
    for reason in PARSE_REASONS.iter().chain(INGEST_ONLY_REASONS) {
        counter!("callbridge_dead_letter_records_total", "reason" => *reason).increment(0);
        counter!("callbridge_dead_letters_unwritten_total", "reason" => *reason).increment(0);
    }
    for reason in PARSE_REASONS.iter().chain(SEQUENCER_ONLY_REASONS) {
        counter!("callbridge_sequencer_dead_letters_total", "reason" => *reason).increment(0);
    }
    for outcome in WEBHOOK_503_OUTCOMES {
        counter!("callbridge_webhook_responses_total", "status" => "503", "outcome" => *outcome)
            .increment(0);
    }
}
