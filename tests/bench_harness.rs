//! `callbridge bench` end to end, small: the harness starts tansu, the load generator, the HTTP
//! sink and the bridge, runs every phase, and writes a report whose figures add up. Speed is not
//! judged here (that is the benchmark's job); what must hold is that the harness measures what
//! it claims: every expected state was read back, none twice, back-fill healed every withheld
//! state within GoTo's 10 requests/s, and the memory phase held the conversations it opened.

use std::process::Command;

#[test]
fn a_small_bench_run_measures_every_phase_and_the_bridge_keeps_its_promises() {
    let out =
        std::env::temp_dir().join(format!("callbridge-bench-test-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args([
            "bench",
            "--quick",
            "--phase-secs",
            "2",
            "--connections",
            "16",
            "--rates",
            "300",
            "--open-conversations",
            "3000",
            "--drop-calls",
            "60",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("callbridge bench runs");
    assert!(status.success(), "bench exited with {status}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report written"))
            .expect("report is JSON");
    let _ = std::fs::remove_file(&out);
    // Every process's log beside the JSON, not under the working directory.
    let logs = out.with_extension("logs");
    let bridge_logs = std::fs::read_dir(&logs)
        .expect("logs beside --out")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("bridge"))
        .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
        .count();
    let _ = std::fs::remove_dir_all(&logs);
    assert!(bridge_logs > 0, "no bridge log in {}", logs.display());

    let c = &report["ceilings"];
    assert!(c["http_states_per_sec"].as_f64().unwrap() > 0.0, "{c}");
    assert!(c["kafka_records_per_sec"].as_f64().unwrap() > 0.0, "{c}");
    assert_eq!(c["kafka_failed"], 0, "{c}");
    // The pipeline ceiling charges each state one POST and two records at their measured
    // machine CPU, so it sits below the HTTP ceiling and half the Kafka one.
    let pipeline = c["pipeline_states_per_sec"].as_f64().unwrap();
    assert!(pipeline > 0.0, "{c}");
    assert!(
        pipeline < c["http_states_per_sec"].as_f64().unwrap() * 2.0,
        "{c}"
    );
    assert!(
        c["http_machine_cpu_us_per_post"].as_f64().unwrap() > 0.0,
        "{c}"
    );
    assert!(
        c["kafka_machine_cpu_us_per_record"].as_f64().unwrap() > 0.0,
        "{c}"
    );
    assert!(
        c["kafka_read_records_per_sec"].as_f64().unwrap() > 0.0,
        "the read ceiling read: {c}"
    );
    // The floors at each fixed rate measured both sides.
    let floors = c["at_rates"].as_array().unwrap();
    assert_eq!(floors.len(), 1, "{c}");
    assert!(
        floors[0]["http_latency"]["count"].as_u64().unwrap() > 0,
        "{c}"
    );
    assert!(
        floors[0]["kafka_ack_latency"]["count"].as_u64().unwrap() > 0,
        "{c}"
    );
    // And again with the topic read back meanwhile, the reader having read.
    assert!(
        floors[0]["kafka_ack_read_latency"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{c}"
    );
    assert!(
        floors[0]["kafka_ack_read_back"].as_u64().unwrap() > 0,
        "{c}"
    );

    let phases = std::iter::once(&report["closed_loop"])
        .chain(std::iter::once(&report["drops"]["figures"]))
        .chain(
            report["rates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| &r["figures"]),
        );
    for p in phases {
        let expected = p["states_expected"].as_u64().unwrap();
        assert!(expected > 0, "{p}");
        assert_eq!(p["states_published"].as_u64().unwrap(), expected, "{p}");
        assert_eq!(p["duplicates"], 0, "{p}");
        assert_eq!(p["order_violations"], 0, "{p}");
        assert_eq!(p["gaps"], 0, "GoTo had every state: {p}");
        assert!(
            p["end_to_end_latency"]["count"].as_u64().unwrap() > 0,
            "{p}"
        );
        assert!(p["bridge_cpu_secs"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["machine_cpu_us_per_state"].as_f64().unwrap() > 0.0, "{p}");
        // The part up to the sequencer's output is measured for live states and cannot
        // exceed the whole (the timestamp has millisecond resolution: allow one).
        let (to_output, whole) = (&p["to_output_latency"], &p["end_to_end_latency"]);
        if p["backfilled"].as_u64().unwrap() < p["states_published"].as_u64().unwrap() {
            assert!(to_output["count"].as_u64().unwrap() > 0, "{p}");
            assert!(
                to_output["p50_ms"].as_f64().unwrap() <= whole["p50_ms"].as_f64().unwrap() + 1.0,
                "{p}"
            );
        }
        // The bridge's own timing of its raw writes, scraped from its /metrics: every POSTed
        // state was written to raw once at least, and a write is part of its webhook's answer
        // (the exporter's quantiles are estimates: compare the median with the answer's p99).
        let raw_write = &p["raw_write_latency"];
        let live = p["states_published"].as_u64().unwrap() - p["backfilled"].as_u64().unwrap();
        assert!(raw_write["count"].as_u64().unwrap() >= live, "{p}");
        assert!(raw_write["p50_ms"].as_f64().unwrap() > 0.0, "{p}");
        assert!(
            raw_write["p50_ms"].as_f64().unwrap()
                <= p["webhook_latency"]["p99_ms"].as_f64().unwrap(),
            "{p}"
        );
    }

    let d = &report["drops"];
    let withheld = d["withheld"].as_u64().unwrap();
    assert!(withheld > 0, "{d}");
    assert!(
        d["figures"]["backfilled"].as_u64().unwrap() >= withheld,
        "every withheld state must come back by back-fill: {d}"
    );
    assert!(
        d["figures"]["healed_latency"]["count"].as_u64().unwrap() >= withheld,
        "{d}"
    );
    let busiest = d["busiest_second_requests"].as_u64().unwrap();
    assert!((1..=10).contains(&busiest), "GoTo's 10 requests/s: {d}");

    let m = &report["memory"];
    assert_eq!(m["open_conversations"], 3000, "{m}");
    assert_eq!(m["all_published"], true, "{m}");
    let (half, after) = (
        m["rss_half_bytes"].as_u64().unwrap(),
        m["rss_after_bytes"].as_u64().unwrap(),
    );
    assert!(half > 0 && after > 0, "{m}");
    // The two figures are the growth of the second half and since ready, per conversation.
    let second = 3000 - 3000 / 2;
    let marginal = m["bytes_per_conversation"].as_f64().unwrap();
    assert!(
        (marginal - after.saturating_sub(half) as f64 / second as f64).abs() < 1.0,
        "{m}"
    );
    let from_ready = m["bytes_per_conversation_from_ready"].as_f64().unwrap();
    let before = m["rss_before_bytes"].as_u64().unwrap();
    assert!(
        (from_ready - after.saturating_sub(before) as f64 / 3000.0).abs() < 1.0,
        "{m}"
    );
    assert!(report["bridge_peak_rss_bytes"].as_u64().unwrap() > 0);
}
