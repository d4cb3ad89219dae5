//! `callbridge bench-load`: the load generator, a process of its own so its CPU is not the
//! bridge's.
//!
//! It hosts the GoTo simulator (OAuth, channel API, and the REST back-fill the bridge heals gaps
//! from, with GoTo's 10 requests/s limit) and POSTs call states to the bridge's webhook the way
//! GoTo would, with the simulator's own realistic call states. Rendering is cheap: a few thousand
//! calls are generated once and replayed under fresh conversation ids, each body assembled from
//! pre-split segments. Every state carries `benchSentAtUs` (an unknown field, which the bridge
//! must pass through unchanged) so the reader of the ordered topic can measure end-to-end latency.
//!
//! A withheld state (an injected drop, or a POST that failed three times like GoTo gives up) is
//! registered with the simulator instead, stamped with the time it would have been sent: the
//! bridge has to back-fill it, and its end-to-end latency is the time the gap took to heal.
//!
//! The orchestrator drives it with one JSON command per line on stdin; every answer is one JSON
//! line on stdout.

use super::dist::{summarize, Summary};
use super::http1::{Connection, Target};
use crate::simulator::traffic::{generate_call, TrafficConfig};
use crate::simulator::{self, SimulatorConfig, SimulatorControl};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncBufReadExt;

/// Distinct calls generated up front and replayed under new conversation ids.
const TEMPLATE_CALLS: u64 = 2_000;
/// Calls each connection interleaves, so consecutive POSTs on it belong to different calls.
const CALLS_PER_CONNECTION: usize = 4;
/// A POST without an answer after this is a failed attempt.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// GoTo retries a failed webhook POST twice.
const ATTEMPTS: u32 = 3;

/// One command from the orchestrator.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum LoadCommand {
    /// Drive POSTs at `target`.
    Run(RunSpec),
    /// Write the same bodies with a plain librdkafka producer (the Kafka ceiling).
    KafkaCeiling {
        /// Broker.
        bootstrap: String,
        /// Topic (created by the orchestrator).
        topic: String,
        /// Records to write.
        records: u64,
        /// librdkafka properties the bridge was given (`--librdkafka`), so the ceiling
        /// producer is configured as the bridge's raw producer is.
        #[serde(default)]
        librdkafka: std::collections::BTreeMap<String, String>,
    },
    /// Read `records` records of `topic` from the beginning with a plain consumer (the Kafka
    /// read ceiling: what the bridge's sequencer and any reader of the ordered topic pay).
    KafkaReadCeiling {
        /// Broker.
        bootstrap: String,
        /// Topic, already written.
        topic: String,
        /// Records to read.
        records: u64,
        /// As for `KafkaCeiling`.
        #[serde(default)]
        librdkafka: std::collections::BTreeMap<String, String>,
    },
    /// Write the same bodies at a fixed rate with the same producer and time each record's
    /// acknowledgement: the floor of any webhook that answers after Kafka has the state.
    KafkaAckLatency {
        /// Broker.
        bootstrap: String,
        /// Topic (created by the orchestrator).
        topic: String,
        /// Records per second.
        rate: f64,
        /// How long to send.
        duration_ms: u64,
        /// As for `KafkaCeiling`.
        #[serde(default)]
        librdkafka: std::collections::BTreeMap<String, String>,
        /// Read the topic back while writing it, as the bridge's sequencer reads raw (a plain
        /// consumer, the sequencer's `fetch.wait.max.ms`): the floor of a bridge, which always
        /// has that reader, rather than of a producer alone.
        #[serde(default)]
        read_back: bool,
    },
    /// The simulator's REST counters.
    RestStats,
    /// Stop.
    Quit,
}

/// One load phase.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RunSpec {
    /// Phase number: the first 8 hex digits of every conversation id of the phase.
    pub phase: u32,
    /// `http://host:port/path`.
    pub target: String,
    /// Concurrent connections.
    pub connections: usize,
    /// None: closed loop (each connection POSTs as soon as its last answer came). Some: open
    /// loop at this many states per second in total.
    pub rate: Option<f64>,
    /// No new call starts after this; started calls finish.
    pub duration_ms: u64,
    /// Start at most this many calls (0: no limit).
    pub max_calls: u64,
    /// Share of states withheld (left for back-fill).
    pub drop_rate: f64,
    /// Send only each call's STARTING (calls stay open; the memory phase).
    pub only_starting: bool,
}

/// What a phase did.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RunReport {
    /// Calls started.
    pub calls: u64,
    /// States answered 200.
    pub delivered: u64,
    /// States withheld on purpose.
    pub withheld: u64,
    /// States whose three attempts failed (registered for back-fill like a drop).
    pub failed: u64,
    /// Attempts answered with something else than 200, or not answered.
    pub failed_attempts: u64,
    /// Answers other than 200 by status (0: no answer).
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Wall time from the first POST to the last answer.
    pub elapsed_ms: u64,
    /// Webhook answer latency; in open loop measured from the scheduled send time, so a
    /// stalled server cannot hide its queue (no coordinated omission).
    pub latency: Summary,
    /// Connections opened (more than `connections` means some broke).
    pub connections_opened: u64,
}

/// Answer to `KafkaReadCeiling`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ReadCeilingReport {
    /// Records read.
    pub read: u64,
    /// From the first record read to the last.
    pub elapsed_ms: u64,
}

/// Answer to `KafkaAckLatency`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct AckLatencyReport {
    /// Records acknowledged.
    pub acked: u64,
    /// Records that failed.
    pub failed: u64,
    /// Scheduled send → acknowledgement (from the schedule, so a stalled producer cannot hide
    /// its queue).
    pub latency: Summary,
    /// Records the reader read meanwhile (`read_back`; 0 without).
    #[serde(default)]
    pub read_back: u64,
}

/// Answer to `KafkaCeiling`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CeilingReport {
    /// Records acknowledged.
    pub acked: u64,
    /// Records that failed.
    pub failed: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed_ms: u64,
}

enum Segment {
    Lit(String),
    ConversationId,
    SentAt,
    NotificationId,
}

struct StateTemplate {
    segments: Vec<Segment>,
    len_hint: usize,
}

struct CallTemplate {
    account_key: String,
    states: Vec<StateTemplate>,
}

const SENT_MARK: &str = "\"@@SENT@@\"";
const NID_MARK: &str = "@@NID@@";

fn split(body: &str, csid: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let next = [
            (rest.find(csid), csid.len(), 0),
            (rest.find(SENT_MARK), SENT_MARK.len(), 1),
            (rest.find(NID_MARK), NID_MARK.len(), 2),
        ]
        .into_iter()
        .filter_map(|(at, len, kind)| at.map(|a| (a, len, kind)))
        .min_by_key(|(a, _, _)| *a);
        let Some((at, len, kind)) = next else {
            if !rest.is_empty() {
                out.push(Segment::Lit(rest.to_string()));
            }
            return out;
        };
        if at > 0 {
            out.push(Segment::Lit(rest[..at].to_string()));
        }
        out.push(match kind {
            0 => Segment::ConversationId,
            1 => Segment::SentAt,
            _ => Segment::NotificationId,
        });
        rest = &rest[at + len..];
    }
}

fn templates(seed: u64) -> Vec<CallTemplate> {
    let config = TrafficConfig {
        seed,
        min_states: 3,
        max_states: 16,
        ..TrafficConfig::default()
    };
    let base = now_ms();
    (0..TEMPLATE_CALLS)
        .map(|i| {
            let call = generate_call(&config, base, i);
            let states = call
                .states
                .iter()
                .map(|s| {
                    let mut state = s.state.clone();
                    if let Some(o) = state.as_object_mut() {
                        o.insert("benchSentAtUs".into(), json!("@@SENT@@"));
                    }
                    let body = json!({
                        "id": NID_MARK,
                        "source": "call-events",
                        "type": "call-state",
                        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                        "ttl": 600,
                        "content": {"metadata": call.metadata, "state": state},
                        "bypassDoNotDisturb": false,
                    })
                    .to_string();
                    StateTemplate {
                        len_hint: body.len() + 16,
                        segments: split(&body, &call.conversation_space_id),
                    }
                })
                .collect();
            CallTemplate {
                account_key: call.account_key,
                states,
            }
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the epoch: the clock `benchSentAtUs` and the reader share.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The conversation id of call `n` of `phase` (a well-formed UUID).
pub fn conversation_id(phase: u32, n: u64) -> String {
    format!("{phase:08x}-0000-4000-8000-{n:012x}")
}

/// The phase a conversation id belongs to.
pub fn phase_of(conversation: &str) -> Option<u32> {
    u32::from_str_radix(conversation.get(..8)?, 16).ok()
}

fn render(t: &StateTemplate, csid: &str, sent_us: u64, nid: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    out.reserve(t.len_hint);
    for s in &t.segments {
        match s {
            Segment::Lit(l) => out.push_str(l),
            Segment::ConversationId => out.push_str(csid),
            Segment::SentAt => {
                let _ = write!(out, "{sent_us}");
            }
            Segment::NotificationId => {
                let _ = write!(out, "bench-{nid:016x}");
            }
        }
    }
}

/// SplitMix64: a fixed, fast hash so the same (call, state) is withheld in every run.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn withheld(n: u64, seq: u64, rate: f64) -> bool {
    rate > 0.0 && (mix(n.wrapping_mul(1_000_003) ^ seq) >> 11) as f64 / (1u64 << 53) as f64 <= rate
}

struct Shared {
    spec: RunSpec,
    templates: Arc<Vec<CallTemplate>>,
    control: SimulatorControl,
    target: Target,
    next_call: AtomicU64,
    next_slot: AtomicU64,
    next_nid: AtomicU64,
    start: Instant,
    stop_calls: AtomicBool,
}

struct Active {
    n: u64,
    csid: String,
    template: usize,
    next: usize,
    last: usize,
}

#[derive(Default)]
struct WorkerResult {
    latencies: Vec<u32>,
    delivered: u64,
    withheld: u64,
    failed: u64,
    failed_attempts: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    opened: u64,
}

impl Shared {
    fn new_call(&self) -> Option<Active> {
        if self.stop_calls.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.next_call.fetch_add(1, Ordering::Relaxed);
        if self.spec.max_calls > 0 && n >= self.spec.max_calls {
            self.stop_calls.store(true, Ordering::Relaxed);
            return None;
        }
        if self.start.elapsed() >= Duration::from_millis(self.spec.duration_ms) {
            self.stop_calls.store(true, Ordering::Relaxed);
            return None;
        }
        let template = (n % self.templates.len() as u64) as usize;
        let states = self.templates[template].states.len();
        Some(Active {
            n,
            csid: conversation_id(self.spec.phase, n),
            template,
            next: 0,
            last: if self.spec.only_starting { 1 } else { states },
        })
    }

    fn register(&self, call: &Active, body: &str) {
        let parsed: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(_) => return,
        };
        let content = &parsed["content"];
        let seq = content["state"]["sequenceNumber"].as_u64().unwrap_or(0);
        self.control.record_withheld_state(
            &call.csid,
            &self.templates[call.template].account_key,
            &content["metadata"],
            seq,
            content["state"].clone(),
        );
    }
}

async fn worker(shared: Arc<Shared>) -> WorkerResult {
    let mut r = WorkerResult::default();
    let mut conn = Connection::new(shared.target.clone());
    let mut ring: Vec<Active> = (0..CALLS_PER_CONNECTION)
        .filter_map(|_| shared.new_call())
        .collect();
    let mut body = String::with_capacity(4096);
    let mut i = 0usize;
    while !ring.is_empty() {
        i = (i + 1) % ring.len();
        // Open loop: wait for this POST's slot; latency counts from the slot, not the send.
        let scheduled = match shared.spec.rate {
            Some(rate) => {
                let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
                let at = shared.start + Duration::from_secs_f64(slot as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        let call = &mut ring[i];
        let template = &shared.templates[call.template].states[call.next];
        let seq = call.next as u64 + 1;
        let nid = shared.next_nid.fetch_add(1, Ordering::Relaxed);
        render(
            template,
            &call.csid,
            crate::bench::load::now_us(),
            nid,
            &mut body,
        );
        if withheld(call.n, seq, shared.spec.drop_rate) {
            shared.register(call, &body);
            r.withheld += 1;
        } else {
            let mut ok = false;
            for _ in 0..ATTEMPTS {
                match conn.post(body.as_bytes(), POST_TIMEOUT).await {
                    Ok(200) => {
                        ok = true;
                        break;
                    }
                    Ok(status) => *r.statuses.entry(status).or_default() += 1,
                    Err(_) => *r.statuses.entry(0).or_default() += 1,
                }
                r.failed_attempts += 1;
            }
            let micros = scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            r.latencies.push(micros);
            if ok {
                r.delivered += 1;
            } else {
                // GoTo gave up; the state is still in its store for back-fill.
                shared.register(call, &body);
                r.failed += 1;
            }
        }
        call.next += 1;
        if call.next >= call.last {
            match shared.new_call() {
                Some(fresh) => ring[i] = fresh,
                None => {
                    ring.swap_remove(i);
                }
            }
        }
    }
    r.opened = conn.opened;
    r
}

async fn run_phase(
    spec: RunSpec,
    templates: Arc<Vec<CallTemplate>>,
    control: SimulatorControl,
) -> Result<RunReport, String> {
    let target = Target::parse(&spec.target)?;
    let connections = spec.connections.max(1);
    let shared = Arc::new(Shared {
        spec,
        templates,
        control,
        target,
        next_call: AtomicU64::new(0),
        next_slot: AtomicU64::new(0),
        next_nid: AtomicU64::new(0),
        start: Instant::now(),
        stop_calls: AtomicBool::new(false),
    });
    let handles: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut report = RunReport::default();
    let mut latencies = Vec::new();
    for h in handles {
        let r = h.await.map_err(|e| format!("load worker failed: {e}"))?;
        latencies.extend_from_slice(&r.latencies);
        report.delivered += r.delivered;
        report.withheld += r.withheld;
        report.failed += r.failed;
        report.failed_attempts += r.failed_attempts;
        report.connections_opened += r.opened;
        for (k, v) in r.statuses {
            *report.statuses.entry(k).or_default() += v;
        }
    }
    report.elapsed_ms = shared.start.elapsed().as_millis() as u64;
    report.calls = shared
        .next_call
        .load(Ordering::Relaxed)
        .min(if shared.spec.max_calls > 0 {
            shared.spec.max_calls
        } else {
            u64::MAX
        });
    report.latency = summarize(&mut latencies);
    Ok(report)
}

/// Default Kafka settings for `bootstrap` with the `--librdkafka` properties.
fn ceiling_config(
    bootstrap: String,
    librdkafka: std::collections::BTreeMap<String, String>,
) -> crate::kafka::KafkaConfig {
    crate::kafka::KafkaConfig {
        bootstrap_servers: bootstrap,
        librdkafka,
        ..crate::kafka::KafkaConfig::default()
    }
}

/// The bridge's raw producer, as `--librdkafka` configured it.
fn ceiling_producer(
    bootstrap: String,
    librdkafka: std::collections::BTreeMap<String, String>,
) -> Result<rdkafka::producer::FutureProducer, String> {
    crate::kafka::producer::raw_producer(&ceiling_config(bootstrap, librdkafka))
        .map_err(|e| format!("ceiling producer: {e}"))
}

/// The same bodies the webhook phases POST, keyed the same way.
fn ceiling_bodies(templates: &[CallTemplate], count: u64) -> Vec<(String, String)> {
    let mut bodies = Vec::new();
    let mut n = 0u64;
    while (bodies.len() as u64) < count {
        let t = &templates[(n % templates.len() as u64) as usize];
        let csid = conversation_id(0xffff_fff0, n);
        for (k, s) in t.states.iter().enumerate() {
            let mut b = String::new();
            render(s, &csid, now_us(), n * 64 + k as u64, &mut b);
            bodies.push((csid.clone(), b));
        }
        n += 1;
    }
    bodies
}

/// A plain consumer as the bridge's raw consumer is configured (`--librdkafka` included), reading
/// from the beginning without committing.
fn ceiling_consumer(
    bootstrap: String,
    librdkafka: std::collections::BTreeMap<String, String>,
    what: &str,
) -> Result<rdkafka::consumer::BaseConsumer, String> {
    let config = ceiling_config(bootstrap, librdkafka);
    let mut c = config.client_config().map_err(|e| e.to_string())?;
    c.set(
        "group.id",
        format!("callbridge-bench-read-{}", std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("auto.offset.reset", "earliest");
    if !config.librdkafka.contains_key("fetch.wait.max.ms") {
        // The wait the bridge's raw consumer uses by default.
        c.set("fetch.wait.max.ms", "20");
    }
    c.create().map_err(|e| format!("{what}: {e}"))
}

/// Reads every partition of `topic` from its start on a thread of its own until `stop`, without
/// joining a group (assigned, so it fetches from the first moment). Answers the records read.
fn read_back(
    bootstrap: String,
    topic: String,
    librdkafka: std::collections::BTreeMap<String, String>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<u64>, String> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer = ceiling_consumer(bootstrap, librdkafka, "read-back")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .map_err(|e| format!("read-back: metadata of {topic}: {e}"))?;
    let mut partitions = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions
            .add_partition_offset(&topic, p.id(), Offset::Beginning)
            .map_err(|e| format!("read-back: {e}"))?;
    }
    if partitions.count() == 0 {
        return Err(format!("read-back: {topic} has no partition"));
    }
    consumer
        .assign(&partitions)
        .map_err(|e| format!("read-back: {e}"))?;
    Ok(std::thread::spawn(move || {
        let mut read = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
                read += 1;
            }
        }
        read
    }))
}

/// Reads a topic from the beginning until `records` records came, or a minute without one.
fn kafka_read_ceiling(
    bootstrap: String,
    topic: String,
    records: u64,
    librdkafka: std::collections::BTreeMap<String, String>,
) -> Result<ReadCeilingReport, String> {
    use rdkafka::consumer::Consumer;
    let consumer = ceiling_consumer(bootstrap, librdkafka, "read ceiling")?;
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|e| format!("read ceiling: {e}"))?;
    let mut report = ReadCeilingReport::default();
    // Timed from the first record, so the consumer-group join is not in the rate.
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while report.read < records && last.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            report.read += 1;
            last = Instant::now();
            first.get_or_insert(last);
        }
    }
    report.elapsed_ms = first.map_or(0, |f| last.duration_since(f).as_millis() as u64);
    Ok(report)
}

async fn kafka_ack_latency(
    bootstrap: String,
    topic: String,
    rate: f64,
    duration_ms: u64,
    librdkafka: std::collections::BTreeMap<String, String>,
    with_reader: bool,
    templates: &[CallTemplate],
) -> Result<AckLatencyReport, String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::FutureRecord;
    if rate.is_nan() || rate <= 0.0 {
        return Err(format!("rate must be positive, got {rate}"));
    }
    let producer = ceiling_producer(bootstrap.clone(), librdkafka.clone())?;
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = if with_reader {
        let (topic, stop) = (topic.clone(), stop_reader.clone());
        Some(
            tokio::task::spawn_blocking(move || read_back(bootstrap, topic, librdkafka, stop))
                .await
                .map_err(|e| format!("read-back: {e}"))??,
        )
    } else {
        None
    };
    let total = (rate * duration_ms as f64 / 1000.0).ceil() as u64;
    let bodies = ceiling_bodies(templates, total.min(200_000));
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut latencies_us = Vec::with_capacity(total as usize);
    let mut report = AckLatencyReport::default();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut settle = |r: (Instant, Result<_, _>), report: &mut AckLatencyReport| {
        let (scheduled, outcome): (Instant, Result<_, _>) = r;
        if outcome.is_ok() {
            report.acked += 1;
            latencies_us.push(scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            report.failed += 1;
        }
    };
    while sent < total || !in_flight.is_empty() {
        tokio::select! {
            _ = tick.tick(), if sent < total => {
                // Every record due by now, each timed from its own scheduled instant.
                let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
                while sent < due {
                    let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
                    let (key, body) = &bodies[(sent % bodies.len() as u64) as usize];
                    let record = FutureRecord::to(&topic).key(key.as_str()).payload(body.as_str());
                    let delivery = producer.send(record, Duration::from_secs(30));
                    in_flight.push(async move { (scheduled, delivery.await) });
                    sent += 1;
                }
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => settle(r, &mut report),
        }
    }
    report.latency = super::dist::summarize(&mut latencies_us);
    if let Some(reader) = reader {
        stop_reader.store(true, Ordering::Relaxed);
        report.read_back = tokio::task::spawn_blocking(move || reader.join())
            .await
            .map_err(|e| format!("read-back: {e}"))?
            .map_err(|_| "read-back: the reader panicked".to_string())?;
    }
    Ok(report)
}

async fn kafka_ceiling(
    bootstrap: String,
    topic: String,
    records: u64,
    librdkafka: std::collections::BTreeMap<String, String>,
    templates: &[CallTemplate],
) -> Result<CeilingReport, String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::FutureRecord;
    let producer = ceiling_producer(bootstrap, librdkafka)?;
    let bodies = ceiling_bodies(templates, records.min(200_000));
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut report = CeilingReport::default();
    for i in 0..records {
        let (key, body) = &bodies[(i % bodies.len() as u64) as usize];
        let record = FutureRecord::to(&topic)
            .key(key.as_str())
            .payload(body.as_str());
        in_flight.push(producer.send(record, Duration::from_secs(30)));
        // librdkafka batches whatever is queued; bound what we hold so memory stays flat.
        if in_flight.len() >= 100_000 {
            if let Some(r) = in_flight.next().await {
                if r.is_ok() {
                    report.acked += 1
                } else {
                    report.failed += 1
                }
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        if r.is_ok() {
            report.acked += 1
        } else {
            report.failed += 1
        }
    }
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}

fn reply(v: impl Serialize) {
    match serde_json::to_string(&v) {
        Ok(line) => println!("{line}"),
        Err(e) => println!("{}", json!({"error": e.to_string()})),
    }
}

/// Starts the simulator, prints `{"simulator": URL}`, then serves commands until `quit` or EOF.
pub async fn run() -> ExitCode {
    let mut config = SimulatorConfig::default();
    // Back-fill is served under GoTo's real limit; the benchmark reports the busiest second.
    config.rate_limit.requests_per_second = 10;
    // Nobody reads the simulator's own traffic here: the load generator brings the calls.
    config.scheduler.autostart = false;
    config.faults = crate::demo::faults_for("none", 1).unwrap_or_default();
    let sim = match simulator::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-load: simulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control = sim.control();
    let templates = Arc::new(templates(7));
    reply(json!({ "simulator": sim.base_url() }));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let cmd: LoadCommand = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                reply(json!({"error": format!("bad command {line:?}: {e}")}));
                continue;
            }
        };
        match cmd {
            LoadCommand::Run(spec) => {
                match run_phase(spec, templates.clone(), control.clone()).await {
                    Ok(r) => reply(r),
                    Err(e) => reply(json!({ "error": e })),
                }
            }
            LoadCommand::KafkaCeiling {
                bootstrap,
                topic,
                records,
                librdkafka,
            } => match kafka_ceiling(bootstrap, topic, records, librdkafka, &templates).await {
                Ok(r) => reply(r),
                Err(e) => reply(json!({ "error": e })),
            },
            LoadCommand::KafkaReadCeiling {
                bootstrap,
                topic,
                records,
                librdkafka,
            } => match tokio::task::spawn_blocking(move || {
                kafka_read_ceiling(bootstrap, topic, records, librdkafka)
            })
            .await
            {
                Ok(Ok(r)) => reply(r),
                Ok(Err(e)) => reply(json!({ "error": e })),
                Err(e) => reply(json!({ "error": e.to_string() })),
            },
            LoadCommand::KafkaAckLatency {
                bootstrap,
                topic,
                rate,
                duration_ms,
                librdkafka,
                read_back,
            } => {
                match kafka_ack_latency(
                    bootstrap,
                    topic,
                    rate,
                    duration_ms,
                    librdkafka,
                    read_back,
                    &templates,
                )
                .await
                {
                    Ok(r) => reply(r),
                    Err(e) => reply(json!({ "error": e })),
                }
            }
            LoadCommand::RestStats => reply(control.stats()),
            LoadCommand::Quit => break,
        }
    }
    sim.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_valid_json_with_the_marks_replaced() {
        let t = templates(7);
        assert_eq!(t.len() as u64, TEMPLATE_CALLS);
        let csid = conversation_id(3, 12);
        assert_eq!(phase_of(&csid), Some(3));
        let mut body = String::new();
        for (k, s) in t[5].states.iter().enumerate() {
            render(s, &csid, 1_234_567, 99, &mut body);
            let v: Value = serde_json::from_str(&body).expect("valid JSON");
            assert_eq!(v["id"], "bench-0000000000000063");
            assert_eq!(
                v["content"]["metadata"]["conversationSpaceId"],
                csid.as_str()
            );
            assert_eq!(v["content"]["state"]["benchSentAtUs"], 1_234_567);
            assert_eq!(v["content"]["state"]["sequenceNumber"], k as u64 + 1);
            assert!(!body.contains("@@"), "{body}");
        }
    }

    #[test]
    fn withholding_is_deterministic_and_close_to_the_rate() {
        let n = 200_000u64;
        let hits = (0..n).filter(|i| withheld(i / 10, i % 10, 0.05)).count() as f64;
        assert!((hits / n as f64 - 0.05).abs() < 0.005, "{hits}");
        assert_eq!(withheld(7, 3, 0.05), withheld(7, 3, 0.05));
        assert!(!(0..1000).any(|i| withheld(i, 1, 0.0)));
    }
}
