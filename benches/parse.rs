//! Micro-benchmarks of notification parsing (`callbridge::notification`), on webhook bodies
//! built by the simulator's own traffic generator. See docs/microbenchmarks.md.
//!
//! Run: `cargo bench --bench parse` (add `-- --warm-up-time 1 --measurement-time 3` for a
//! quick pass).

use std::hint::black_box;

use callbridge::notification::{
    canonical_json, inspect_state, parse, state_fingerprint, Notification,
};
use callbridge::publish::record::{state_headers, state_record, state_value, RecordOrigin};
use callbridge::simulator::traffic::{generate_call, GeneratedCall, TrafficConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::{to_raw_value, RawValue};
use serde_json::{json, Value};

/// Calls generated to pick the sample bodies from (deterministic: seed 42).
const CALLS: u64 = 500;
/// Fixed epoch origin so the bodies (timestamps included) are the same on every run.
const BASE_TIME_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// One call state as GoTo delivers it by webhook.
struct Sample {
    /// What it is, for the report.
    label: &'static str,
    /// The whole webhook body (`simulator::delivery::envelope` shape, compact JSON).
    body: Vec<u8>,
    /// The `state` object alone, as the back-fill hands it over.
    state: Box<RawValue>,
    participants: usize,
}

fn envelope(call: &GeneratedCall, index: usize) -> Value {
    let state = &call.states[index];
    json!({
        "id": format!("{}-{}", call.conversation_space_id, state.sequence_number),
        "source": "call-events",
        "type": "call-state",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "ttl": 600,
        "content": {"metadata": call.metadata, "state": state.state},
        "bypassDoNotDisturb": false,
    })
}

fn sample(label: &'static str, call: &GeneratedCall, index: usize) -> Sample {
    let state = &call.states[index].state;
    Sample {
        label,
        body: serde_json::to_vec(&envelope(call, index)).expect("serialisable"),
        state: to_raw_value(state).expect("serialisable"),
        participants: participants(state),
    }
}

fn participants(state: &Value) -> usize {
    state["participants"].as_array().map_or(0, Vec::len)
}

/// The three bodies of the report: the first STARTING, the median-sized ACTIVE and the largest
/// state of all (most participants, then most bytes); plus every body of the first 50 calls as
/// a realistic mix.
fn samples() -> (Vec<Sample>, Vec<Vec<u8>>) {
    let config = TrafficConfig {
        base_time_ms: Some(BASE_TIME_MS),
        ..TrafficConfig::default()
    };
    let calls: Vec<GeneratedCall> = (0..CALLS)
        .map(|i| generate_call(&config, BASE_TIME_MS, i))
        .collect();

    let mut active: Vec<(usize, usize, usize)> = Vec::new(); // (body size, call, state)
    let mut largest = (0, 0, 0, 0); // (participants, body size, call, state)
    for (c, call) in calls.iter().enumerate() {
        for (s, state) in call.states.iter().enumerate() {
            let size = serde_json::to_vec(&envelope(call, s))
                .expect("serialisable")
                .len();
            if state.state_type == "ACTIVE" {
                active.push((size, c, s));
            }
            let key = (participants(&state.state), size, c, s);
            if (key.0, key.1) > (largest.0, largest.1) {
                largest = key;
            }
        }
    }
    active.sort_unstable();
    let (_, ac, as_) = active[active.len() / 2];

    let picked = vec![
        sample("starting", &calls[0], 0),
        sample("active_median", &calls[ac], as_),
        sample("largest", &calls[largest.2], largest.3),
    ];
    let mix = calls
        .iter()
        .take(50)
        .flat_map(|call| (0..call.states.len()).map(move |s| envelope(call, s)))
        .map(|body| serde_json::to_vec(&body).expect("serialisable"))
        .collect();
    (picked, mix)
}

fn bench_parse(c: &mut Criterion) {
    let (picked, mix) = samples();
    for s in &picked {
        // The bench is only meaningful if the body parses as a call state.
        match parse(&s.body) {
            Ok(Notification::CallState(_)) => {}
            other => panic!("{} body does not parse as a call state: {other:?}", s.label),
        }
        eprintln!(
            "sample {}: body {} B, state {} B, {} participants",
            s.label,
            s.body.len(),
            s.state.get().len(),
            s.participants
        );
    }

    let mut group = c.benchmark_group("parse");
    for s in &picked {
        group.throughput(Throughput::Bytes(s.body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(s.label), &s.body, |b, body| {
            b.iter(|| parse(black_box(body)).expect("call state"))
        });
    }
    group.finish();

    // What the sequencer pays per raw record: routing fields plus the fingerprint (ingest
    // pays only `parse`).
    let mut group = c.benchmark_group("parse_and_fingerprint");
    for s in &picked {
        group.throughput(Throughput::Bytes(s.body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(s.label), &s.body, |b, body| {
            b.iter(|| match parse(black_box(body)) {
                Ok(Notification::CallState(cs)) => cs.fingerprint().expect("fingerprint"),
                _ => panic!("call state"),
            })
        });
    }
    group.finish();

    // The same bodies through serde_json alone (validate into a RawValue): the floor any parse
    // must pay, to tell how much of `parse` is the fingerprint.
    let mut group = c.benchmark_group("json_validate_only");
    for s in &picked {
        group.throughput(Throughput::Bytes(s.body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(s.label), &s.body, |b, body| {
            b.iter(|| {
                serde_json::from_slice::<&RawValue>(black_box(body))
                    .expect("valid JSON")
                    .get()
                    .len()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("state_fingerprint");
    for s in &picked {
        group.throughput(Throughput::Bytes(s.state.get().len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(s.label),
            &*s.state,
            |b, state| b.iter(|| state_fingerprint(black_box(state)).expect("object")),
        );
    }
    group.finish();

    // What a back-filled state costs (routing fields + fingerprint), and the canonical text
    // the fingerprint hashes (allocates the output: debugging aid, not on the hot path).
    let mut group = c.benchmark_group("inspect_state");
    for s in &picked {
        group.throughput(Throughput::Bytes(s.state.get().len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(s.label),
            &*s.state,
            |b, state| b.iter(|| inspect_state(black_box(state)).expect("state").fingerprint),
        );
    }
    group.finish();

    // The ordered record the sequencer builds around each state (value and CloudEvents headers;
    // the producer's copy is not included).
    let mut group = c.benchmark_group("state_record");
    let metadata = to_raw_value(
        &json!({"conversationSpaceId": "0b4dc2a1-5e6f-4a3b-9c8d-7e6f5a4b3c2d",
        "callCreated": "2026-01-01T00:00:00.000Z", "accountKey": "1234567890"}),
    )
    .expect("serialisable");
    for s in &picked {
        group.throughput(Throughput::Bytes(s.state.get().len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(s.label),
            &*s.state,
            |b, state| {
                b.iter(|| {
                    state_record(
                        black_box("0b4dc2a1-5e6f-4a3b-9c8d-7e6f5a4b3c2d"),
                        black_box(7),
                        RecordOrigin::Webhook,
                        &metadata,
                        state,
                        Some("2026-01-01T00:00:07.000Z"),
                        3,
                    )
                    .value
                    .len()
                })
            },
        );
    }
    group.finish();

    // What the sequencer does per state between reading it and handing it to the producer:
    // since session 20 it renders the record value once when it reads the state
    // (`state_value`) and builds the headers at publication; before, it copied GoTo's two
    // objects out of the raw record and built the whole record from them at publication.
    let mut group = c.benchmark_group("state_payload");
    let conversation = "0b4dc2a1-5e6f-4a3b-9c8d-7e6f5a4b3c2d";
    for s in &picked {
        group.throughput(Throughput::Bytes(s.state.get().len() as u64));
        group.bench_with_input(
            BenchmarkId::new("copied_then_built", s.label),
            &*s.state,
            |b, state| {
                b.iter(|| {
                    let (m, st) = (metadata.to_owned(), state.to_owned());
                    let r = state_record(
                        black_box(conversation),
                        black_box(7),
                        RecordOrigin::Webhook,
                        &m,
                        &st,
                        Some("2026-01-01T00:00:07.000Z"),
                        3,
                    );
                    r.value.len() + r.headers.len()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("rendered_once", s.label),
            &*s.state,
            |b, state| {
                b.iter(|| {
                    let value = state_value(
                        black_box(conversation),
                        black_box(7),
                        RecordOrigin::Webhook,
                        &metadata,
                        state,
                    );
                    let headers = state_headers(
                        black_box(conversation),
                        7,
                        RecordOrigin::Webhook,
                        Some("2026-01-01T00:00:07.000Z"),
                        3,
                    );
                    value.len() + headers.len()
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("canonical_json");
    let largest = &picked[2];
    group.throughput(Throughput::Bytes(largest.state.get().len() as u64));
    group.bench_function(largest.label, |b| {
        b.iter(|| {
            canonical_json(black_box(&largest.state))
                .expect("object")
                .len()
        })
    });
    group.finish();

    // A realistic stream: every state of 50 calls, in call order; per-notification cost.
    let mix_bytes: usize = mix.iter().map(Vec::len).sum();
    eprintln!(
        "mix: {} bodies, {} B in total, {} B on average",
        mix.len(),
        mix_bytes,
        mix_bytes / mix.len()
    );
    let mut group = c.benchmark_group("parse_mix");
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("50_calls", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for body in &mix {
                if let Ok(Notification::CallState(s)) = parse(black_box(body)) {
                    n = n.wrapping_add(s.fingerprint().unwrap_or(0));
                }
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
