//! The benchmark's results: one serialisable structure (the JSON compared between commits) and
//! its terminal table, where every bridge figure also appears as a share of its ceiling.

use super::dist::Summary;
use crate::config::bridge::WebhookAnswer;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Targets from the issue that asked for this benchmark (#6), checked in the table.
pub mod targets {
    /// End-to-end states per second, load generator included.
    pub const STATES_PER_SEC: f64 = 50_000.0;
    /// Webhook p99 at 5,000 states/s, ms.
    pub const WEBHOOK_P99_MS: f64 = 5.0;
    /// End-to-end p99 at 5,000 states/s, ms.
    pub const END_TO_END_P99_MS: f64 = 100.0;
    /// Bridge memory per open conversation, bytes.
    pub const BYTES_PER_CONVERSATION: f64 = 300.0;
}

/// The whole run.
#[derive(Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// callbridge version.
    pub version: String,
    /// Commit, when the build recorded one.
    pub commit: String,
    /// When it ran (UTC).
    pub date: String,
    /// CPUs available.
    pub cores: usize,
    /// Load generator connections.
    pub connections: usize,
    /// Seconds per timed phase.
    pub phase_secs: u64,
    /// The bridge's `webhook.answer` (`after_kafka` in runs before the option existed).
    #[serde(default)]
    pub webhook_answer: WebhookAnswer,
    /// The two ceilings.
    pub ceilings: Ceilings,
    /// Closed loop at maximum, no drops.
    pub closed_loop: ThroughputPhase,
    /// 5 % drops (absent when skipped with `--drop-calls 0`).
    pub drops: Option<DropPhase>,
    /// Open loop at fixed rates.
    pub rates: Vec<RatePhase>,
    /// Memory per open conversation (absent when skipped with `--open-conversations 0`).
    pub memory: Option<MemoryPhase>,
    /// Peak RSS of the bridge over the throughput phases.
    pub bridge_peak_rss_bytes: u64,
    /// CPU seconds the broker used over the whole run.
    pub tansu_cpu_secs: f64,
}

/// What the same machine does without the bridge.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ceilings {
    /// POSTs per second a bare HTTP server (axum, no work) answers, same load generator.
    pub http_states_per_sec: f64,
    /// Its answer latency.
    pub http_latency: Summary,
    /// Records per second a plain librdkafka producer (the bridge's settings) gets acknowledged.
    pub kafka_records_per_sec: f64,
    /// Records it failed to write.
    pub kafka_failed: u64,
    /// Machine CPU (every process and the kernel, all cores) per POST during the HTTP ceiling,
    /// µs: what the load generator and the bare server together spend on one answered POST.
    #[serde(default)]
    pub http_machine_cpu_us_per_post: f64,
    /// Machine CPU per acknowledged record during the Kafka ceiling, µs: the producer and the
    /// broker together.
    #[serde(default)]
    pub kafka_machine_cpu_us_per_record: f64,
    /// Records per second a plain consumer reads back (the same topic, from the beginning).
    #[serde(default)]
    pub kafka_read_records_per_sec: f64,
    /// Machine CPU per record read, µs: the consumer and the broker together.
    #[serde(default)]
    pub kafka_read_machine_cpu_us_per_record: f64,
    /// The most states per second any bridge could carry on this machine: every state costs at
    /// least one answered POST and two records written and read (raw by the sequencer, ordered
    /// by its consumers) at the prices above, and the machine has `cores` of CPU. Optimistic
    /// (it leaves out the changelog and all of the bridge's own logic, and the ceilings write
    /// and read larger batches than a live bridge can), so the true ceiling is lower.
    #[serde(default)]
    pub pipeline_states_per_sec: f64,
    /// At each fixed rate of the open-loop phases: the bare HTTP server's answer latency and a
    /// plain producer's acknowledgement latency (the bridge's raw-producer settings), each
    /// measured alone from the scheduled send. A webhook answered only once Kafka has the
    /// state cannot beat the second.
    #[serde(default)]
    pub at_rates: Vec<RateCeiling>,
}

/// Latency floors at one fixed rate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RateCeiling {
    /// States (POSTs, records) per second.
    pub rate: f64,
    /// Bare HTTP server, same load generator.
    pub http_latency: Summary,
    /// Plain producer, scheduled send → acknowledgement.
    pub kafka_ack_latency: Summary,
    /// The same on a topic a plain consumer reads back meanwhile, as the sequencer reads raw:
    /// what the broker's serving a reader adds to every acknowledgement, so the floor of any
    /// bridge answering after Kafka.
    #[serde(default)]
    pub kafka_ack_read_latency: Summary,
    /// Records that reader read (proof it ran).
    #[serde(default)]
    pub kafka_ack_read_back: u64,
}

impl Ceilings {
    /// `cores` CPU-seconds per second shared by one POST and two records written and read per
    /// state.
    pub fn pipeline(
        cores: usize,
        http_us_per_post: f64,
        write_us_per_record: f64,
        read_us_per_record: f64,
    ) -> f64 {
        let per_state_us = http_us_per_post + 2.0 * (write_us_per_record + read_us_per_record);
        if per_state_us > 0.0 {
            cores as f64 * 1e6 / per_state_us
        } else {
            0.0
        }
    }
}

/// One phase through the bridge.
#[derive(Debug, Serialize, Deserialize)]
pub struct ThroughputPhase {
    /// States the load generator delivered or withheld.
    pub states_expected: u64,
    /// State records read from the ordered topic.
    pub states_published: u64,
    /// Gap records (each stands for states GoTo could not return).
    pub gaps: u64,
    /// Of the published states, back-filled ones.
    pub backfilled: u64,
    /// Duplicates seen (must be 0).
    pub duplicates: u64,
    /// Sequence skips without a gap record (must be 0).
    pub order_violations: u64,
    /// Every expected state was published before the wait ended.
    pub complete: bool,
    /// How long the load generator sent.
    pub load_secs: f64,
    /// From the first POST to the last state read from the ordered topic.
    pub end_to_end_secs: f64,
    /// `states_published / end_to_end_secs`.
    pub states_per_sec: f64,
    /// Webhook answer latency.
    pub webhook_latency: Summary,
    /// POST sent → state read from the ordered topic, live states.
    pub end_to_end_latency: Summary,
    /// POST sent → the ordered record's timestamp, live states: the webhook, the raw hop and the
    /// sequencer; `end_to_end_latency` minus this is the ordered hop and the reader.
    #[serde(default)]
    pub to_output_latency: Summary,
    /// Would-be send → state read, back-filled states: the time a gap took to heal.
    pub healed_latency: Summary,
    /// The bridge's own `callbridge_raw_write_seconds{transport="webhook"}`, scraped when the
    /// load generator is done: a webhook's raw write from its start to Kafka's acknowledgement,
    /// with the default answer the part of `webhook_latency` that is Kafka's. The quantiles are
    /// the exporter's estimates over its rolling window (the last 40 to 60 s of load; `max_ms`
    /// is the window's largest); `count` is every write since the bridge started, the warm-up's
    /// included.
    #[serde(default)]
    pub raw_write_latency: Summary,
    /// Bridge CPU seconds over the phase.
    pub bridge_cpu_secs: f64,
    /// Bridge CPU seconds per 1,000 published states.
    pub cpu_secs_per_1000_states: f64,
    /// Machine CPU (every process: bridge, broker, load generator, reader) per published state,
    /// µs; compare with the ceilings' prices.
    #[serde(default)]
    pub machine_cpu_us_per_state: f64,
    /// States whose three POST attempts failed (left to back-fill).
    pub failed_posts: u64,
    /// POST attempts not answered 200.
    pub failed_attempts: u64,
}

/// The 5 %-drop phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct DropPhase {
    /// States withheld.
    pub withheld: u64,
    /// Call-events API requests the bridge made during the phase.
    pub backfill_requests: u64,
    /// Most call-events requests in any one-second window, whole run (GoTo allows 10).
    pub busiest_second_requests: u64,
    /// 429 answers the bridge got from the call-events API, whole run.
    pub rate_limited_429: u64,
    /// The phase's figures.
    pub figures: ThroughputPhase,
}

/// One fixed-rate phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct RatePhase {
    /// Offered states per second.
    pub rate: f64,
    /// The phase's figures.
    pub figures: ThroughputPhase,
}

/// Memory held per open conversation.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemoryPhase {
    /// Conversations opened (STARTING published, never ended).
    pub open_conversations: u64,
    /// Every STARTING was published before the measurement.
    pub all_published: bool,
    /// Bridge RSS once ready.
    pub rss_before_bytes: u64,
    /// Bridge RSS holding the first half.
    pub rss_half_bytes: u64,
    /// Bridge RSS holding them all.
    pub rss_after_bytes: u64,
    /// RSS growth per conversation of the second half: what one more open conversation costs
    /// once traffic has filled the bridge's fixed buffers. The figure the target is judged on.
    pub bytes_per_conversation: f64,
    /// RSS growth per conversation since the bridge was ready, fixed buffers included.
    pub bytes_per_conversation_from_ready: f64,
    /// How fast they were opened.
    pub states_per_sec: f64,
}

impl BenchReport {
    /// No phase lost, doubled or misordered a state.
    pub fn promises_kept(&self) -> bool {
        let phases = std::iter::once(&self.closed_loop)
            .chain(self.drops.iter().map(|d| &d.figures))
            .chain(self.rates.iter().map(|r| &r.figures));
        let mut ok = true;
        for p in phases {
            ok &= p.duplicates == 0
                && p.order_violations == 0
                && p.complete
                && p.states_published + p.gaps >= p.states_expected;
        }
        ok && self.memory.as_ref().is_none_or(|m| m.all_published)
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let c = &self.ceilings;
        let _ = writeln!(
            t,
            "\ncallbridge bench — {} cores, {} connections, {} s phases, webhook answered {}, {}",
            self.cores,
            self.connections,
            self.phase_secs,
            self.webhook_answer.as_str().replace('_', " "),
            self.date
        );
        let _ = writeln!(t, "\nceilings");
        let _ = writeln!(
            t,
            "  bare HTTP server            {:>10.0} POSTs/s   p50 {:.2} ms  p99 {:.2} ms",
            c.http_states_per_sec, c.http_latency.p50_ms, c.http_latency.p99_ms
        );
        let _ = writeln!(
            t,
            "  plain librdkafka producer   {:>10.0} records/s  {:>6.1} µs machine CPU each",
            c.kafka_records_per_sec, c.kafka_machine_cpu_us_per_record
        );
        let _ = writeln!(
            t,
            "  plain librdkafka consumer   {:>10.0} records/s  {:>6.1} µs machine CPU each",
            c.kafka_read_records_per_sec, c.kafka_read_machine_cpu_us_per_record
        );
        let _ = writeln!(
            t,
            "  pipeline                    {:>10.0} states/s   at most, on {} cores: 1 POST ({:.1} µs) + 2 records written and read",
            c.pipeline_states_per_sec, self.cores, c.http_machine_cpu_us_per_post
        );
        for r in &c.at_rates {
            let _ = writeln!(
                t,
                "  at {:>6.0}/s alone: bare HTTP p50/p99 {:.2} / {:.2} ms, Kafka ack p50/p99 {:.2} / {:.2} ms{}",
                r.rate,
                r.http_latency.p50_ms,
                r.http_latency.p99_ms,
                r.kafka_ack_latency.p50_ms,
                r.kafka_ack_latency.p99_ms,
                if r.kafka_ack_read_latency.count > 0 {
                    format!(
                        ", read back meanwhile {:.2} / {:.2} ms",
                        r.kafka_ack_read_latency.p50_ms, r.kafka_ack_read_latency.p99_ms
                    )
                } else {
                    String::new()
                },
            );
        }
        let _ = writeln!(
            t,
            "\nthrough the bridge (webhook → raw → sequencer → ordered)"
        );
        let _ = writeln!(
            t,
            "  {:<22} {:>10} {:>7} {:>7} {:>7} {:>26} {:>18} {:>9} {:>8} {:>6}",
            "phase",
            "states/s",
            "%http",
            "%kafka",
            "%pipe",
            "webhook p50/p99/p99.9 ms",
            "e2e p50/p99 ms",
            "cpu s/1k",
            "µs/state",
            "ok"
        );
        let row = |t: &mut String, name: &str, p: &ThroughputPhase| {
            let ok = p.duplicates == 0 && p.order_violations == 0 && p.complete;
            let _ = writeln!(
                t,
                "  {:<22} {:>10.0} {:>6.0}% {:>6.0}% {:>6.0}% {:>8.2} /{:>7.2} /{:>7.2} {:>8.1} /{:>8.1} {:>9.3} {:>8.1} {:>6}",
                name,
                p.states_per_sec,
                100.0 * p.states_per_sec / c.http_states_per_sec.max(1e-9),
                100.0 * p.states_per_sec / c.kafka_records_per_sec.max(1e-9),
                100.0 * p.states_per_sec / c.pipeline_states_per_sec.max(1e-9),
                p.webhook_latency.p50_ms,
                p.webhook_latency.p99_ms,
                p.webhook_latency.p999_ms,
                p.end_to_end_latency.p50_ms,
                p.end_to_end_latency.p99_ms,
                p.cpu_secs_per_1000_states,
                p.machine_cpu_us_per_state,
                if ok { "yes" } else { "NO" },
            );
        };
        row(&mut t, "closed loop, 0% drops", &self.closed_loop);
        if let Some(d) = &self.drops {
            row(&mut t, "5% drops", &d.figures);
        }
        for r in &self.rates {
            row(&mut t, &format!("open loop {:.0}/s", r.rate), &r.figures);
        }
        let _ = writeln!(
            t,
            "\nend to end, up to the sequencer's output (webhook, raw hop, sequencer) and whole"
        );
        let split = |t: &mut String, name: &str, p: &ThroughputPhase| {
            let _ = writeln!(
                t,
                "  {:<22} to output p50/p99 {:>7.1} /{:>7.1} ms   whole {:>7.1} /{:>7.1} ms",
                name,
                p.to_output_latency.p50_ms,
                p.to_output_latency.p99_ms,
                p.end_to_end_latency.p50_ms,
                p.end_to_end_latency.p99_ms,
            );
        };
        split(&mut t, "closed loop, 0% drops", &self.closed_loop);
        for r in &self.rates {
            split(&mut t, &format!("open loop {:.0}/s", r.rate), &r.figures);
        }
        let _ = writeln!(
            t,
            "\nwebhook answer, and the raw write's (the bridge's own metric, estimated){}",
            match self.webhook_answer {
                WebhookAnswer::AfterKafka => ": Kafka's part of the answer",
                WebhookAnswer::OnReceipt =>
                    ": answered on receipt, the write ends after the answer",
            }
        );
        let answer = |t: &mut String, name: &str, p: &ThroughputPhase| {
            let _ = writeln!(
                t,
                "  {:<22} answer p50/p99 {:>7.2} /{:>7.2} ms   raw write p50/p99 {:>7.2} /{:>7.2} ms",
                name,
                p.webhook_latency.p50_ms,
                p.webhook_latency.p99_ms,
                p.raw_write_latency.p50_ms,
                p.raw_write_latency.p99_ms,
            );
        };
        answer(&mut t, "closed loop, 0% drops", &self.closed_loop);
        for r in &self.rates {
            answer(&mut t, &format!("open loop {:.0}/s", r.rate), &r.figures);
        }
        if let Some(d) = &self.drops {
            let _ = writeln!(t, "\nback-fill (5% drops)");
            let _ = writeln!(
                t,
                "  withheld {} states; {} back-filled, {} gap records; {} call-events requests",
                d.withheld, d.figures.backfilled, d.figures.gaps, d.backfill_requests
            );
            let _ = writeln!(
                t,
                "  time to heal p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; busiest second {} requests (limit 10), {} answered 429",
                d.figures.healed_latency.p50_ms,
                d.figures.healed_latency.p99_ms,
                d.figures.healed_latency.max_ms,
                d.busiest_second_requests,
                d.rate_limited_429
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(t, "\nmemory");
            let _ = writeln!(
                t,
                "  {} open conversations: {:.0} bytes each (second half); {:.0} bytes each since ready (RSS {:.1} → {:.1} → {:.1} MiB)",
                m.open_conversations,
                m.bytes_per_conversation,
                m.bytes_per_conversation_from_ready,
                m.rss_before_bytes as f64 / 1048576.0,
                m.rss_half_bytes as f64 / 1048576.0,
                m.rss_after_bytes as f64 / 1048576.0,
            );
            let _ = writeln!(
                t,
                "  bridge peak RSS under load {:.1} MiB",
                self.bridge_peak_rss_bytes as f64 / 1048576.0
            );
        }
        let _ = writeln!(t, "\ntargets");
        let at5k = self.rates.iter().find(|r| (r.rate - 5000.0).abs() < 1.0);
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        // A latency target is judged only on a phase that measured something.
        let judged = |s: &Summary, limit: f64| {
            if s.count == 0 {
                "no data"
            } else {
                mark(s.p99_ms <= limit)
            }
        };
        let best = std::iter::once(self.closed_loop.states_per_sec)
            .chain(self.rates.iter().map(|r| r.figures.states_per_sec))
            .fold(0.0, f64::max);
        let _ = writeln!(
            t,
            "  ≥ {:.0} states/s end to end: {:.0}  {}{}",
            targets::STATES_PER_SEC,
            best,
            mark(best >= targets::STATES_PER_SEC),
            if c.pipeline_states_per_sec > 0.0
                && c.pipeline_states_per_sec < targets::STATES_PER_SEC
            {
                format!(
                    " (this run's ceilings allow at most {:.0})",
                    c.pipeline_states_per_sec
                )
            } else {
                String::new()
            }
        );
        if let Some(r) = at5k {
            // An answer that waits for Kafka cannot beat Kafka's acknowledgement alone.
            let floor = if self.webhook_answer == WebhookAnswer::AfterKafka {
                c.at_rates
                    .iter()
                    .find(|f| (f.rate - 5000.0).abs() < 1.0 && f.kafka_ack_latency.count > 0)
                    .map(|f| {
                        let inside = &r.figures.raw_write_latency;
                        format!(
                            " (a Kafka acknowledgement alone: p99 {:.2} ms{}{})",
                            f.kafka_ack_latency.p99_ms,
                            if f.kafka_ack_read_latency.count > 0 {
                                format!(
                                    ", with the topic read back: p99 {:.2} ms",
                                    f.kafka_ack_read_latency.p99_ms
                                )
                            } else {
                                String::new()
                            },
                            if inside.count > 0 {
                                format!(", the bridge's raw write: p99 {:.2} ms", inside.p99_ms)
                            } else {
                                String::new()
                            }
                        )
                    })
                    .unwrap_or_default()
            } else {
                format!(
                    " (answered {})",
                    self.webhook_answer.as_str().replace('_', " ")
                )
            };
            let _ = writeln!(
                t,
                "  at 5,000/s webhook p99 ≤ {} ms: {:.2}  {}{}",
                targets::WEBHOOK_P99_MS,
                r.figures.webhook_latency.p99_ms,
                judged(&r.figures.webhook_latency, targets::WEBHOOK_P99_MS),
                floor
            );
            let _ = writeln!(
                t,
                "  at 5,000/s end-to-end p99 ≤ {} ms: {:.1}  {}",
                targets::END_TO_END_P99_MS,
                r.figures.end_to_end_latency.p99_ms,
                judged(&r.figures.end_to_end_latency, targets::END_TO_END_P99_MS)
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                t,
                "  ≤ {} bytes per open conversation: {:.0}  {}",
                targets::BYTES_PER_CONVERSATION,
                m.bytes_per_conversation,
                mark(m.bytes_per_conversation <= targets::BYTES_PER_CONVERSATION)
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_ceiling_charges_one_post_and_two_records_written_and_read_per_state() {
        // 2 cores = 2,000,000 µs of CPU per second; 30 + 2 × (7 + 3) µs per state.
        assert_eq!(Ceilings::pipeline(2, 30.0, 7.0, 3.0), 40_000.0);
        assert_eq!(
            Ceilings::pipeline(2, 0.0, 0.0, 0.0),
            0.0,
            "no reading, no ceiling"
        );
    }

    #[test]
    fn the_target_lines_name_the_pipeline_ceiling_and_judge_only_measured_latencies() {
        let phase = || ThroughputPhase {
            states_expected: 10,
            states_published: 10,
            gaps: 0,
            backfilled: 0,
            duplicates: 0,
            order_violations: 0,
            complete: true,
            load_secs: 1.0,
            end_to_end_secs: 1.0,
            states_per_sec: 20_000.0,
            webhook_latency: Summary::default(),
            end_to_end_latency: Summary::default(),
            to_output_latency: Summary::default(),
            healed_latency: Summary::default(),
            raw_write_latency: Summary::default(),
            bridge_cpu_secs: 1.0,
            cpu_secs_per_1000_states: 0.1,
            machine_cpu_us_per_state: 90.0,
            failed_posts: 0,
            failed_attempts: 0,
        };
        let mut report = BenchReport {
            version: "0".into(),
            commit: String::new(),
            date: String::new(),
            cores: 2,
            connections: 1,
            phase_secs: 1,
            webhook_answer: WebhookAnswer::AfterKafka,
            ceilings: Ceilings {
                http_states_per_sec: 60_000.0,
                kafka_records_per_sec: 200_000.0,
                http_machine_cpu_us_per_post: 30.0,
                kafka_machine_cpu_us_per_record: 10.0,
                pipeline_states_per_sec: 40_000.0,
                ..Ceilings::default()
            },
            closed_loop: phase(),
            drops: None,
            rates: vec![],
            memory: None,
            bridge_peak_rss_bytes: 0,
            tansu_cpu_secs: 0.0,
        };
        let table = report.table();
        assert!(
            table.contains("MISSED (this run's ceilings allow at most 40000)"),
            "{table}"
        );
        assert!(table.contains("50%"), "20k of a 40k pipeline: {table}");
        report.ceilings.pipeline_states_per_sec = 60_000.0;
        assert!(!report.table().contains("allow at most"));

        // A 5,000/s phase that measured nothing meets no latency target.
        report.rates.push(RatePhase {
            rate: 5000.0,
            figures: phase(),
        });
        let table = report.table();
        assert!(
            table.contains("webhook p99 ≤ 5 ms: 0.00  no data")
                && table.contains("end-to-end p99 ≤ 100 ms: 0.0  no data"),
            "{table}"
        );

        // Answered after Kafka, the line names both acknowledgements: a producer's alone and
        // the bridge's own raw write, when measured.
        let measured = |p99_ms: f64| Summary {
            count: 1000,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            p999_ms: p99_ms,
            max_ms: p99_ms,
        };
        report.ceilings.at_rates = vec![RateCeiling {
            rate: 5000.0,
            http_latency: measured(2.0),
            kafka_ack_latency: measured(6.5),
            ..Default::default()
        }];
        report.rates[0].figures.webhook_latency = measured(9.0);
        assert!(
            report
                .table()
                .contains("9.00  MISSED (a Kafka acknowledgement alone: p99 6.50 ms)"),
            "{}",
            report.table()
        );
        report.rates[0].figures.raw_write_latency = measured(8.0);
        let table = report.table();
        assert!(
            table.contains(
                "(a Kafka acknowledgement alone: p99 6.50 ms, the bridge's raw write: p99 8.00 ms)"
            ),
            "{table}"
        );
        // With the floor read back measured, the line and the floors name it too.
        report.ceilings.at_rates[0].kafka_ack_read_latency = measured(7.5);
        let table = report.table();
        assert!(
            table.contains(
                "(a Kafka acknowledgement alone: p99 6.50 ms, with the topic read back: p99 7.50 ms, \
                 the bridge's raw write: p99 8.00 ms)"
            ) && table.contains("Kafka ack p50/p99 3.25 / 6.50 ms, read back meanwhile 3.75 / 7.50 ms"),
            "{table}"
        );
    }
}
