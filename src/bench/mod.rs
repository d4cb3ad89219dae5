//! `callbridge bench`: the end-to-end benchmark, with its two ceilings measured in the same run.
//!
//! Real parts only: tansu as the broker, the bridge as its own process (`callbridge run`), the
//! load generator as another ([`load`], hosting the GoTo simulator the bridge sets its channel
//! up with and back-fills from), and a reader of the ordered topic here ([`observe`]). The
//! ceilings: a bare HTTP server ([`sink`]) the same load generator POSTs to, and a plain
//! librdkafka producer writing the same bodies to the same broker. Every figure is printed as a
//! table and written as JSON so runs can be compared between commits (`docs/performance.md`).
//!
//! The phases, in order: the HTTP ceiling, then the bare server alone at each fixed rate; the
//! Kafka write and read ceilings, then a plain producer's acknowledgement latency alone at each
//! fixed rate; closed loop at 0 % drops; 5 % drops (withheld states healed by back-fill under
//! GoTo's 10 requests/s); open loop at fixed rates; then a bridge holding many open
//! conversations, for memory per conversation. Every phase through the bridge runs on a fresh
//! broker and a fresh bridge ([`Stage`]).

pub mod dist;
pub mod http1;
pub mod load;
pub mod observe;
pub mod procs;
pub mod procstat;
pub mod report;
pub mod sink;

use crate::config::bridge::WebhookAnswer;
use load::{LoadCommand, RunReport, RunSpec};
use observe::Observer;
use procs::{LineChild, Proc};
use report::{
    BenchReport, Ceilings, DropPhase, MemoryPhase, RateCeiling, RatePhase, ThroughputPhase,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `callbridge bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A short run (seconds per phase, 50k open conversations): to try the harness, not for
    /// figures.
    #[arg(long)]
    pub quick: bool,
    /// Length of each closed-loop and fixed-rate phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub phase_secs: u64,
    /// Concurrent webhook connections of the load generator.
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Fixed rates (states/s) of the open-loop phases.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
    pub rates: Vec<f64>,
    /// Open conversations held for the memory figure (0 skips the phase).
    #[arg(long, default_value_t = 1_000_000)]
    pub open_conversations: u64,
    /// Rate (conversations/s) at which the memory phase opens them; 0 for as fast as answers
    /// come (then the RSS also holds whatever librdkafka buffered while the sequencer lagged).
    #[arg(long, default_value_t = 8_000.0)]
    pub memory_rate: f64,
    /// Calls of the 5 %-drop phase, 0 to skip it (each withheld state costs one back-fill request, and GoTo
    /// allows 10 per second: the phase lasts about calls × 0.4 / 10 seconds).
    #[arg(long, default_value_t = 2_000)]
    pub drop_calls: u64,
    /// Partitions of the bridge's topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// A librdkafka property (`KEY=VALUE`, repeatable) for the bridge and for the Kafka ceiling
    /// and floors, so they compare like with like: to compare settings.
    #[arg(long)]
    pub librdkafka: Vec<String>,
    /// The callbridge binary run as the bridge (default: this one), to compare builds: the load
    /// generator, the ceilings and the measurements stay the same. A wrapper script must `exec`
    /// the bridge (or pass SIGTERM on): each bridge is stopped with SIGTERM to the process
    /// started, and its CPU and memory are read from that process.
    #[arg(long)]
    pub bridge_bin: Option<PathBuf>,
    /// The bridge's `webhook.answer`: `after_kafka` (its default: a POST is answered once Kafka
    /// has the state) or `on_receipt` (answered once queued; a crash leaves to back-fill what
    /// was answered and not yet written).
    #[arg(long, value_enum, default_value_t = WebhookAnswer::AfterKafka)]
    pub webhook_answer: WebhookAnswer,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/latest.json")]
    pub out: PathBuf,
    /// `fetch.wait.max.ms` of the benchmark's reader of the ordered topic. tansu answers a fetch
    /// only when this wait is over, so it adds 1.5× itself to every end-to-end figure on
    /// average; lower waits cost tansu more fetches (docs/performance.md).
    #[arg(long, default_value_t = 5)]
    pub reader_fetch_wait_ms: u32,
    /// The tansu binary (default: `$TANSU_BIN`, `~/.cargo/bin/tansu`, then PATH).
    #[arg(long)]
    pub tansu: Option<PathBuf>,
}

/// Runs the benchmark; non-zero when it could not run or the bridge broke a promise
/// (a lost, doubled or misordered state).
pub async fn run(mut args: BenchArgs) -> ExitCode {
    if args.quick {
        args.phase_secs = args.phase_secs.min(3);
        args.open_conversations = args.open_conversations.min(50_000);
        args.drop_calls = args.drop_calls.min(200);
    }
    match run_bench(&args).await {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(dir) = args.out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match serde_json::to_string_pretty(&report) {
                Ok(json) => match std::fs::write(&args.out, json) {
                    Ok(()) => println!("\nJSON: {}", args.out.display()),
                    Err(e) => eprintln!("cannot write {}: {e}", args.out.display()),
                },
                Err(e) => eprintln!("cannot serialise the report: {e}"),
            }
            if report.promises_kept() {
                ExitCode::SUCCESS
            } else {
                eprintln!("the bridge lost, doubled or misordered states under load (see above)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Bridge {
    proc: Proc,
    webhook: String,
    /// The admin port's `/metrics`.
    metrics: String,
    kafka: crate::kafka::KafkaConfig,
}

const WEBHOOK_SECRET: &str = "bench-webhook-secret-0123456789abcdef";

/// `--librdkafka KEY=VALUE` options as a map.
fn librdkafka_properties(
    args: &BenchArgs,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    args.librdkafka
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => Err(format!("--librdkafka {kv:?}: expected KEY=VALUE")),
        })
        .collect()
}

async fn start_bridge(
    dir: &Path,
    suffix: &str,
    simulator: &str,
    bootstrap: &str,
    args: &BenchArgs,
) -> Result<Bridge, String> {
    let partitions = args.partitions;
    let answer = args.webhook_answer.as_str();
    let mut librdkafka = String::new();
    for (k, v) in librdkafka_properties(args)? {
        librdkafka.push_str(&format!("{k:?} = {v:?}\n"));
    }
    let (port, admin) = (procs::free_port()?, procs::free_port()?);
    let accounts =
        serde_json::to_string(&crate::simulator::traffic::TrafficConfig::default().account_keys)
            .map_err(|e| e.to_string())?;
    let config = format!(
        r#"
[goto]
api_base_url = "{simulator}"
auth_base_url = "{simulator}"
client_id = "callbridge-demo"
account_keys = {accounts}
[channel]
kind = "webhook"
nickname = "callbridge-bench{suffix}"
[webhook]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}/goto/webhook"
answer = "{answer}"
[admin]
listen = "127.0.0.1:{admin}"
[kafka]
bootstrap_servers = "{bootstrap}"
consumer_group = "callbridge-bench{suffix}"
[kafka.topics]
raw = "callbridge.raw{suffix}"
ordered = "callbridge.call-states{suffix}"
changelog = "callbridge.changelog{suffix}"
dead_letter = "callbridge.dead-letter{suffix}"
channel_owner = "callbridge.channel-owner{suffix}"
partitions = {partitions}
replication_factor = 1
[kafka.librdkafka]
{librdkafka}[log]
format = "json"
level = "warn"
"#
    );
    let path = dir.join(format!("bridge{suffix}.toml"));
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let proc = procs::start_bridge(
        args.bridge_bin.as_deref(),
        &path,
        &[
            ("CALLBRIDGE_GOTO__CLIENT_SECRET", "demo-secret".into()),
            ("CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN", "demo-pat".into()),
            ("CALLBRIDGE_WEBHOOK__SECRET", WEBHOOK_SECRET.into()),
        ],
        &dir.join(format!("bridge{suffix}.log")),
    )?;
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(&ready)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the bridge was not ready within 60 s (log: {})",
                dir.join(format!("bridge{suffix}.log")).display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut kafka = crate::kafka::KafkaConfig {
        bootstrap_servers: bootstrap.to_string(),
        ..crate::kafka::KafkaConfig::default()
    };
    kafka.topics.ordered = format!("callbridge.call-states{suffix}");
    Ok(Bridge {
        proc,
        webhook: format!("http://127.0.0.1:{port}/goto/webhook/{WEBHOOK_SECRET}"),
        metrics: format!("http://127.0.0.1:{admin}/metrics"),
        kafka,
    })
}

fn call<T: serde::de::DeserializeOwned>(
    child: &mut LineChild,
    command: &LoadCommand,
) -> Result<T, String> {
    let v = tokio::task::block_in_place(|| child.call(command))?;
    serde_json::from_value(v).map_err(|e| format!("load generator answer: {e}"))
}

fn usage(pid: u32) -> procstat::Usage {
    procstat::read(pid).unwrap_or_default()
}

/// Busy CPU-seconds of the whole machine since `before` (0 where `/proc/stat` is missing).
fn machine_cpu_since(before: Option<f64>) -> f64 {
    match (before, procstat::machine_busy_secs()) {
        (Some(b), Some(a)) => (a - b).max(0.0),
        _ => 0.0,
    }
}

/// The bridge's own timing of its webhooks' raw writes (`callbridge_raw_write_seconds`), from its
/// `/metrics`; empty, with a warning, when the scrape fails (a figure missing, not a run lost).
async fn raw_write_latency(bridge: &Bridge) -> dist::Summary {
    let scraped = async {
        reqwest::Client::new()
            .get(&bridge.metrics)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    match scraped.await {
        Ok(text) => dist::from_prometheus(
            &text,
            "callbridge_raw_write_seconds",
            &[("transport", "webhook")],
        ),
        Err(e) => {
            eprintln!("bench: scraping {} failed: {e}", bridge.metrics);
            dist::Summary::default()
        }
    }
}

/// Runs one load phase against the bridge and waits for the ordered topic to show all of it.
async fn bridge_phase(
    load: &mut LineChild,
    observer: &Observer,
    bridge: &Bridge,
    spec: RunSpec,
    settle: Duration,
) -> Result<(RunReport, ThroughputPhase), String> {
    let phase = spec.phase;
    let before = usage(bridge.proc.pid());
    let machine_before = procstat::machine_busy_secs();
    let start = Instant::now();
    let report: RunReport = call(load, &LoadCommand::Run(spec))?;
    // Every POST is answered, so every raw write of the phase is done (answered on receipt, all
    // but the last few); scraped now, before a wait for back-fill that can outlast the
    // exporter's rolling window.
    let raw_write_latency = raw_write_latency(bridge).await;
    let expected = report.delivered + report.withheld + report.failed;
    let complete = observer.wait_for(phase, expected, settle).await;
    let after = usage(bridge.proc.pid());
    let machine_secs = machine_cpu_since(machine_before);
    let phase_figures = observer.with(phase, |p| {
        let end = p.last_state_at.unwrap_or_else(Instant::now);
        let secs = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
        ThroughputPhase {
            states_expected: expected,
            states_published: p.states,
            gaps: p.gaps,
            backfilled: p.backfilled,
            duplicates: p.duplicates,
            order_violations: p.order_violations,
            complete,
            load_secs: report.elapsed_ms as f64 / 1000.0,
            end_to_end_secs: secs,
            states_per_sec: p.states as f64 / secs,
            webhook_latency: report.latency.clone(),
            end_to_end_latency: dist::summarize(&mut p.live_latency_us),
            to_output_latency: dist::summarize(&mut p.live_to_output_us),
            healed_latency: dist::summarize(&mut p.healed_latency_us),
            raw_write_latency,
            bridge_cpu_secs: after.cpu_secs - before.cpu_secs,
            cpu_secs_per_1000_states: (after.cpu_secs - before.cpu_secs) * 1000.0
                / (p.states.max(1) as f64),
            machine_cpu_us_per_state: machine_secs * 1e6 / (p.states.max(1) as f64),
            failed_posts: report.failed,
            failed_attempts: report.failed_attempts,
        }
    });
    Ok((report, phase_figures))
}

/// One broker and one bridge, started fresh for a phase, with a reader of its ordered topic.
///
/// Fresh because tansu's in-memory engine lists every batch a partition holds on every fetch
/// (`dynostore` `fetch`), so a broker still carrying earlier phases' records charges each later
/// phase more CPU per fetch, for every consumer, and the latencies with it (a 40 s closed loop
/// left it at 1.2 cores during a 1,000 states/s phase). Kafka finds an offset through its index
/// whatever the log holds; starting each phase on an empty broker keeps that artefact from
/// growing across the run.
struct Stage {
    tansu: Proc,
    bridge: Bridge,
    observer: Observer,
}

/// What the stages used, summed over the run.
#[derive(Default)]
struct StageTotals {
    tansu_cpu_secs: f64,
    bridge_peak_rss_bytes: u64,
}

impl Stage {
    /// Starts both and warms them up: a second of calls at a low rate (phase `warm_phase`), read
    /// back from the ordered topic before the measured phase begins, so the measured phase
    /// does not also time the sequencer's and the reader's consumer-group joins.
    async fn start(
        name: &str,
        dirs: (&Path, &Path),
        simulator: &str,
        args: &BenchArgs,
        load: &mut LineChild,
        warm_phase: u32,
    ) -> Result<Stage, String> {
        let (dir, logs) = dirs;
        let workdir = dir.join(name);
        std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
        let (tansu, bootstrap) = procs::start_tansu(
            &procs::tansu_bin(args.tansu.as_deref()),
            &workdir,
            &logs.join(format!("tansu-{name}.log")),
        )?;
        let bridge = start_bridge(logs, &format!("-{name}"), simulator, &bootstrap, args).await?;
        let observer = Observer::start(
            &bridge.kafka,
            &bridge.kafka.topics.ordered,
            args.reader_fetch_wait_ms,
        )?;
        let warm: RunReport = call(
            load,
            &LoadCommand::Run(RunSpec {
                phase: warm_phase,
                target: bridge.webhook.clone(),
                connections: 4,
                rate: Some(200.0),
                duration_ms: 1000,
                max_calls: 0,
                drop_rate: 0.0,
                only_starting: false,
            }),
        )?;
        if !observer
            .wait_for(warm_phase, warm.delivered, Duration::from_secs(60))
            .await
        {
            return Err(format!(
                "{name}: the warm-up's {} states did not reach the ordered topic within 60 s",
                warm.delivered
            ));
        }
        Ok(Stage {
            tansu,
            bridge,
            observer,
        })
    }

    /// Stops the bridge and the broker; `count_rss` adds the bridge's peak RSS to the figure
    /// of the throughput phases (the memory phase has its own).
    fn finish(self, totals: &mut StageTotals, count_rss: bool) {
        let peak = usage(self.bridge.proc.pid()).peak_rss_bytes;
        if count_rss {
            totals.bridge_peak_rss_bytes = totals.bridge_peak_rss_bytes.max(peak);
        }
        drop(self.observer);
        self.bridge.proc.terminate(Duration::from_secs(30));
        totals.tansu_cpu_secs += usage(self.tansu.pid()).cpu_secs;
    }
}

/// The processes' logs go beside the JSON (`latest.json` → `latest.logs/`): runs with different
/// `--out` keep their logs apart, and the place does not depend on the working directory.
fn logs_dir(out: &Path) -> PathBuf {
    out.with_extension("logs")
}

async fn run_bench(args: &BenchArgs) -> Result<BenchReport, String> {
    let dir = std::env::temp_dir().join(format!("callbridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let logs = logs_dir(&args.out);
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    eprintln!("bench: every process's log goes to {}", logs.display());
    let secs = Duration::from_secs(args.phase_secs);
    let ms = args.phase_secs * 1000;
    let dirs = (dir.as_path(), logs.as_path());
    let librdkafka = librdkafka_properties(args)?;
    eprintln!("bench: starting the load generator and the HTTP sink");
    let mut load = LineChild::spawn("bench-load", "load generator", &logs.join("load.log"))?;
    let hello = tokio::task::block_in_place(|| load.read())?;
    let simulator = hello["simulator"]
        .as_str()
        .ok_or("load generator: no simulator URL")?
        .to_string();
    let mut sink = LineChild::spawn("bench-sink", "HTTP sink", &logs.join("sink.log"))?;
    let sink_url = format!(
        "http://{}/goto/webhook/{WEBHOOK_SECRET}",
        tokio::task::block_in_place(|| sink.read())?["listen"]
            .as_str()
            .ok_or("HTTP sink: no address")?
    );
    let spec = |phase: u32, target: &str| RunSpec {
        phase,
        target: target.to_string(),
        connections: args.connections,
        rate: None,
        duration_ms: ms,
        max_calls: 0,
        drop_rate: 0.0,
        only_starting: false,
    };
    let mut totals = StageTotals::default();

    // 1. HTTP ceiling: nothing else runs.
    eprintln!("bench: HTTP ceiling ({} s closed loop)", args.phase_secs);
    let machine_before = procstat::machine_busy_secs();
    let http: RunReport = call(&mut load, &LoadCommand::Run(spec(1, &sink_url)))?;
    let http_machine_secs = machine_cpu_since(machine_before);
    let mut at_rates = Vec::new();
    for (i, rate) in args.rates.iter().enumerate() {
        eprintln!("bench: HTTP alone at {rate} POSTs/s");
        let r: RunReport = call(
            &mut load,
            &LoadCommand::Run(RunSpec {
                rate: Some(*rate),
                ..spec(30 + i as u32, &sink_url)
            }),
        )?;
        at_rates.push(RateCeiling {
            rate: *rate,
            http_latency: r.latency,
            ..Default::default()
        });
    }
    drop(sink);

    // 2. Kafka ceiling, on a broker of its own.
    eprintln!("bench: Kafka ceiling");
    let ceiling_dir = dir.join("ceiling");
    std::fs::create_dir_all(&ceiling_dir).map_err(|e| format!("{}: {e}", ceiling_dir.display()))?;
    let (ceiling_tansu, ceiling_bootstrap) = procs::start_tansu(
        &procs::tansu_bin(args.tansu.as_deref()),
        &ceiling_dir,
        &logs.join("tansu-ceiling.log"),
    )?;
    let ceiling_topic = "callbridge.bench-ceiling".to_string();
    create_topic(&ceiling_bootstrap, &ceiling_topic, args.partitions).await?;
    let records = if args.quick { 50_000 } else { 500_000 };
    let machine_before = procstat::machine_busy_secs();
    let kafka: load::CeilingReport = call(
        &mut load,
        &LoadCommand::KafkaCeiling {
            bootstrap: ceiling_bootstrap.clone(),
            topic: ceiling_topic.clone(),
            records,
            librdkafka: librdkafka.clone(),
        },
    )?;
    let kafka_machine_secs = machine_cpu_since(machine_before);
    eprintln!("bench: Kafka read ceiling");
    let machine_before = procstat::machine_busy_secs();
    let read: load::ReadCeilingReport = call(
        &mut load,
        &LoadCommand::KafkaReadCeiling {
            bootstrap: ceiling_bootstrap.clone(),
            topic: ceiling_topic,
            records: kafka.acked,
            librdkafka: librdkafka.clone(),
        },
    )?;
    let read_machine_secs = machine_cpu_since(machine_before);
    for (i, floor) in at_rates.iter_mut().enumerate() {
        // Alone, then on a fresh topic read back meanwhile.
        for read_back in [false, true] {
            let (what, topic) = if read_back {
                (
                    ", the topic read back meanwhile",
                    format!("callbridge.bench-ack-read-{i}"),
                )
            } else {
                (" alone", format!("callbridge.bench-ack-{i}"))
            };
            eprintln!(
                "bench: Kafka acknowledgements at {} records/s{what}",
                floor.rate
            );
            create_topic(&ceiling_bootstrap, &topic, args.partitions).await?;
            let r: load::AckLatencyReport = call(
                &mut load,
                &LoadCommand::KafkaAckLatency {
                    bootstrap: ceiling_bootstrap.clone(),
                    topic,
                    rate: floor.rate,
                    duration_ms: ms,
                    librdkafka: librdkafka.clone(),
                    read_back,
                },
            )?;
            if read_back {
                floor.kafka_ack_read_latency = r.latency;
                floor.kafka_ack_read_back = r.read_back;
            } else {
                floor.kafka_ack_latency = r.latency;
            }
        }
    }
    totals.tansu_cpu_secs += usage(ceiling_tansu.pid()).cpu_secs;
    drop(ceiling_tansu);

    // 3. The bridge, closed loop, no drops.
    eprintln!("bench: bridge, closed loop, 0 % drops");
    let stage = Stage::start("closed", dirs, &simulator, args, &mut load, 103).await?;
    let (_, closed) = bridge_phase(
        &mut load,
        &stage.observer,
        &stage.bridge,
        spec(3, &stage.bridge.webhook),
        Duration::from_secs(60),
    )
    .await?;
    stage.finish(&mut totals, true);

    // 4. 5 % drops: the back-fill path, bounded by GoTo's 10 requests/s.
    let drop_phase = if args.drop_calls == 0 {
        None
    } else {
        eprintln!(
            "bench: bridge, 5 % drops, {} calls (back-fill at GoTo's 10 requests/s)",
            args.drop_calls
        );
        let stage = Stage::start("drops", dirs, &simulator, args, &mut load, 104).await?;
        let rest_before: crate::simulator::Stats = call(&mut load, &LoadCommand::RestStats)?;
        let (drop_report, dropped) = bridge_phase(
            &mut load,
            &stage.observer,
            &stage.bridge,
            RunSpec {
                duration_ms: 3_600_000,
                max_calls: args.drop_calls,
                drop_rate: 0.05,
                ..spec(4, &stage.bridge.webhook)
            },
            // Every withheld state is one request at most; the bridge gives up after 5 minutes.
            Duration::from_secs(330),
        )
        .await?;
        let rest_after: crate::simulator::Stats = call(&mut load, &LoadCommand::RestStats)?;
        stage.finish(&mut totals, true);
        let api =
            |s: &crate::simulator::Stats| s.apis.get("call-events").cloned().unwrap_or_default();
        Some(DropPhase {
            withheld: drop_report.withheld,
            backfill_requests: api(&rest_after).requests - api(&rest_before).requests,
            busiest_second_requests: api(&rest_after).max_requests_in_one_second as u64,
            rate_limited_429: api(&rest_after).too_many_requests,
            figures: dropped,
        })
    };

    // 5. Open loop at fixed rates.
    let mut rates = Vec::new();
    for (i, rate) in args.rates.iter().enumerate() {
        eprintln!("bench: bridge, open loop at {rate} states/s");
        let stage = Stage::start(
            &format!("rate{i}"),
            dirs,
            &simulator,
            args,
            &mut load,
            110 + i as u32,
        )
        .await?;
        let (_, figures) = bridge_phase(
            &mut load,
            &stage.observer,
            &stage.bridge,
            RunSpec {
                rate: Some(*rate),
                ..spec(10 + i as u32, &stage.bridge.webhook)
            },
            Duration::from_secs(60),
        )
        .await?;
        stage.finish(&mut totals, true);
        rates.push(RatePhase {
            rate: *rate,
            figures,
        });
    }

    // 6. Memory per open conversation.
    let memory = if args.open_conversations == 0 {
        None
    } else {
        eprintln!(
            "bench: a fresh bridge holding {} open conversations",
            args.open_conversations
        );
        let stage = Stage::start("mem", dirs, &simulator, args, &mut load, 120).await?;
        let memory = memory_phase(&mut load, &stage.observer, &stage.bridge, args, secs).await?;
        stage.finish(&mut totals, false);
        Some(memory)
    };
    let _ = tokio::task::block_in_place(|| load.call(&LoadCommand::Quit));
    let _ = std::fs::remove_dir_all(&dir);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let http_machine_cpu_us_per_post = http_machine_secs * 1e6 / (http.delivered.max(1) as f64);
    let kafka_machine_cpu_us_per_record = kafka_machine_secs * 1e6 / (kafka.acked.max(1) as f64);
    let kafka_read_machine_cpu_us_per_record = read_machine_secs * 1e6 / (read.read.max(1) as f64);
    Ok(BenchReport {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: option_env!("CALLBRIDGE_COMMIT").unwrap_or("").into(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        cores,
        connections: args.connections,
        phase_secs: args.phase_secs,
        webhook_answer: args.webhook_answer,
        ceilings: Ceilings {
            http_states_per_sec: http.delivered as f64 / (http.elapsed_ms.max(1) as f64 / 1000.0),
            http_latency: http.latency,
            kafka_records_per_sec: kafka.acked as f64 / (kafka.elapsed_ms.max(1) as f64 / 1000.0),
            kafka_failed: kafka.failed,
            http_machine_cpu_us_per_post,
            kafka_machine_cpu_us_per_record,
            kafka_read_records_per_sec: read.read as f64 / (read.elapsed_ms.max(1) as f64 / 1000.0),
            kafka_read_machine_cpu_us_per_record,
            pipeline_states_per_sec: Ceilings::pipeline(
                cores,
                http_machine_cpu_us_per_post,
                kafka_machine_cpu_us_per_record,
                kafka_read_machine_cpu_us_per_record,
            ),
            at_rates,
        },
        closed_loop: closed,
        drops: drop_phase,
        rates,
        memory,
        bridge_peak_rss_bytes: totals.bridge_peak_rss_bytes,
        tansu_cpu_secs: totals.tansu_cpu_secs,
    })
}

async fn memory_phase(
    load: &mut LineChild,
    observer: &Observer,
    bridge: &Bridge,
    args: &BenchArgs,
    settle: Duration,
) -> Result<MemoryPhase, String> {
    // Let start-up allocations settle before the baseline.
    tokio::time::sleep(settle.min(Duration::from_secs(2))).await;
    let before = usage(bridge.proc.pid());
    // Two halves: the first also warms what any traffic fills once (librdkafka's fetch and
    // produce buffers, allocator arenas, metric histograms); the second's growth is what one
    // more open conversation costs.
    let halves = [
        (20, args.open_conversations / 2),
        (21, args.open_conversations - args.open_conversations / 2),
    ];
    let mut rss = Vec::new();
    let (mut delivered, mut elapsed_ms, mut held) = (0, 0, true);
    for (phase, calls) in halves {
        let report: RunReport = call(
            load,
            &LoadCommand::Run(RunSpec {
                phase,
                target: bridge.webhook.clone(),
                connections: args.connections,
                rate: (args.memory_rate > 0.0).then_some(args.memory_rate),
                duration_ms: 3_600_000,
                max_calls: calls,
                drop_rate: 0.0,
                only_starting: true,
            }),
        )?;
        held &= observer
            .wait_for(phase, report.delivered, Duration::from_secs(120))
            .await;
        delivered += report.delivered;
        elapsed_ms += report.elapsed_ms;
        // The sequencer holds them once they are published; give the allocator a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push((
            observer.with(phase, |p| p.states),
            usage(bridge.proc.pid()).rss_bytes,
        ));
    }
    let [(first, rss_half), (second, rss_after)] = rss[..] else {
        return Err("memory phase: two halves expected".into());
    };
    let per = |grown: u64, n: u64| grown as f64 / n.max(1) as f64;
    Ok(MemoryPhase {
        open_conversations: first + second,
        all_published: held,
        rss_before_bytes: before.rss_bytes,
        rss_half_bytes: rss_half,
        rss_after_bytes: rss_after,
        bytes_per_conversation: per(rss_after.saturating_sub(rss_half), second),
        bytes_per_conversation_from_ready: per(
            rss_after.saturating_sub(before.rss_bytes),
            first + second,
        ),
        states_per_sec: delivered as f64 / (elapsed_ms.max(1) as f64 / 1000.0),
    })
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .map_err(|e| format!("creating {topic}: {e}"))?;
    for r in results {
        if let Err((t, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(format!("creating {t}: {code}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::logs_dir;
    use std::path::Path;

    #[test]
    fn logs_go_beside_the_json_whatever_the_working_directory() {
        assert_eq!(
            logs_dir(Path::new("target/bench/latest.json")),
            Path::new("target/bench/latest.logs")
        );
        assert_eq!(
            logs_dir(Path::new("/tmp/run-7.json")),
            Path::new("/tmp/run-7.logs")
        );
        assert_eq!(logs_dir(Path::new("/tmp/run")), Path::new("/tmp/run.logs"));
    }
}
