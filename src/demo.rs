//! `callbridge demo`: the main job on embedded defaults, verified.
//!
//! It starts the GoTo simulator and librdkafka's mock Kafka cluster in-process, runs the real
//! pipeline (channel set-up, ingest, raw topic, sequencer with back-fill, ordered topic) against
//! them with a realistic fault mix, shows progress, then reads the ordered topic back and
//! compares it state by state with the simulator's ground truth. It exits non-zero unless the
//! stream is perfect.

use crate::app::{self, Listeners};
use crate::config::bridge::ChannelKind;
use crate::config::BridgeConfig;
use crate::kafka::reader::read_topic;
use crate::secret::Secret;
use crate::simulator::{self, SimulatorConfig};
use crate::verify::{verify, Verification};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `callbridge demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of calls to simulate.
    #[arg(long, default_value_t = 300)]
    pub calls: u64,
    /// New calls per second.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Fault mix: `none`, `realistic` or `harsh`.
    #[arg(long, default_value = "realistic")]
    pub faults: String,
    /// `webhook` or `websocket`.
    #[arg(long, default_value = "webhook")]
    pub transport: String,
    /// Seed of the simulated traffic.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give up waiting for the pipeline after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
}

/// Fault rates for a named mix (drop, duplicate, duplicate with new id, delay, unrecoverable).
fn fault_mix(name: &str) -> Option<[f64; 5]> {
    match name {
        "none" => Some([0.0; 5]),
        "realistic" => Some([0.03, 0.03, 0.02, 0.05, 0.01]),
        "harsh" => Some([0.15, 0.10, 0.05, 0.20, 0.03]),
        _ => None,
    }
}

/// Runs the demo; the exit code says whether the stream was perfect.
pub async fn run(args: DemoArgs) -> ExitCode {
    // Bad options are usage errors (64), found before anything starts.
    let usage = faults_for(&args.faults, args.seed).err().or_else(|| {
        (!matches!(args.transport.as_str(), "webhook" | "websocket")).then(|| {
            format!(
                "--transport {:?}: expected webhook or websocket",
                args.transport
            )
        })
    });
    if let Some(e) = usage {
        eprintln!("demo: {e}");
        return ExitCode::from(64);
    }
    match run_demo(&args).await {
        Ok(v) if v.is_perfect() => {
            println!("\nresult: PERFECT — every state exactly once, in order, gaps only where GoTo lost a state");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            println!("\nresult: the stream is NOT perfect (see FAIL rows above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One end-to-end run: a simulator with faults, the real bridge, Kafka, and the verification.
/// The demo runs it on the mock cluster; the end-to-end tests run it on tansu.
pub struct Scenario {
    /// Kafka connection; topics are created by the bridge if missing.
    pub kafka: crate::kafka::KafkaConfig,
    /// Webhook or WebSocket.
    pub transport: ChannelKind,
    /// Calls to simulate.
    pub calls: u64,
    /// New calls per second.
    pub rate: f64,
    /// Simulator faults.
    pub faults: crate::simulator::FaultsConfig,
    /// Traffic seed.
    pub seed: u64,
    /// Give up waiting for completion after this long.
    pub timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
    /// Mean time between two states of a call.
    pub mean_state_interval: Duration,
    /// Fewest states per call.
    pub min_states: u32,
    /// Adjusts the simulator's settings (GoTo variants, channel lifetimes) before it starts.
    pub simulator: Option<fn(&mut SimulatorConfig)>,
}

/// What a scenario produced.
pub struct ScenarioOutcome {
    /// The comparison of the ordered topic with the ground truth.
    pub verification: Verification,
    /// The simulator's ground truth.
    pub truth: crate::simulator::GroundTruth,
    /// True when not every call completed within the timeout.
    pub timed_out: bool,
    /// Every record of the ordered topic.
    pub records: Vec<crate::verify::ReadRecord>,
    /// `/metrics` scraped when the bridge was up, before any traffic.
    pub metrics_before: String,
    /// `/metrics` scraped once every call completed, before shutdown.
    pub metrics_after: String,
}

/// The value of one series in Prometheus text (`name{labels}` exactly as rendered), 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The sum of every series of `name` in Prometheus text whose labels include each of `labels`
/// (whatever its other labels and their order), 0 if none.
pub fn metric_total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, rendered) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels.iter().all(|(k, v)| {
                    rendered
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                });
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let url = format!("http://{addr}/metrics");
    match reqwest::get(&url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The fault settings of a named mix.
pub fn faults_for(mix: &str, seed: u64) -> Result<crate::simulator::FaultsConfig, String> {
    let Some([drop_rate, dup, dup_new, delay, unrecoverable]) = fault_mix(mix) else {
        return Err(format!(
            "--faults {mix:?}: expected none, realistic or harsh"
        ));
    };
    Ok(crate::simulator::FaultsConfig {
        seed,
        drop_rate,
        duplicate_rate: dup,
        duplicate_new_id_rate: dup_new,
        delay_rate: delay,
        max_delay: Duration::from_millis(400),
        unrecoverable_rate: unrecoverable,
        ..Default::default()
    })
}

/// The whole demo, returning the verification.
pub async fn run_demo(args: &DemoArgs) -> Result<Verification, String> {
    let faults = faults_for(&args.faults, args.seed)?;
    let transport = match args.transport.as_str() {
        "webhook" => ChannelKind::Webhook,
        "websocket" => ChannelKind::Websocket,
        other => {
            return Err(format!(
                "--transport {other:?}: expected webhook or websocket"
            ))
        }
    };
    println!(
        "callbridge demo: {} calls at {}/s over {}, fault mix {:?}",
        args.calls, args.rate, args.transport, args.faults
    );
    let partitions = 6;
    let mut kafka = crate::kafka::KafkaConfig::default();
    kafka.topics.partitions = partitions;
    kafka.topics.replication_factor = 1;
    let cluster = MockKafka::start(&kafka.topics.required(), partitions)?;
    kafka.bootstrap_servers = cluster.bootstrap.clone();
    let outcome = run_scenario(Scenario {
        kafka,
        transport,
        calls: args.calls,
        rate: args.rate,
        faults,
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout_secs),
        progress: true,
        mean_state_interval: Duration::from_millis(60),
        min_states: 3,
        simulator: None,
    })
    .await?;
    println!("\nfaults injected by the simulator:");
    for (name, count) in &outcome.truth.fault_counts {
        println!("  {name:<36} {count:>10}");
    }
    println!("\nverification of the ordered topic against the simulator's ground truth:");
    print!("{}", outcome.verification);
    drop(cluster);
    Ok(outcome.verification)
}

/// Calls with at least one notification delivered to the bridge, per the ground truth.
fn announced_calls(control: &crate::simulator::SimulatorControl) -> u64 {
    control
        .ground_truth()
        .calls
        .iter()
        .filter(|c| announced(c))
        .count() as u64
}

/// GoTo delivered at least one notification of the call.
fn announced(call: &crate::simulator::ground_truth::CallRecord) -> bool {
    call.states
        .iter()
        .any(|s| s.deliveries.values().any(|d| d.delivered > 0))
}

/// How long a finished stream must stay finished before a scenario stops the bridge: longer
/// than the sequencer's metrics export (1 s), which the open-conversation count comes from.
const SETTLED_FOR: Duration = Duration::from_secs(3);

/// Calls without a completion record in `ordered` yet among those GoTo announced (at least one
/// notification delivered) and those the bridge published anything of: a call GoTo never
/// delivered a word of but catch-up or the report sweep found is still being completed (an idle
/// probe may bring its last states), while one nobody found cannot be completed by anyone.
fn unfinished_announced_calls(
    control: &crate::simulator::SimulatorControl,
    ordered: &[crate::kafka::reader::ReadRecord],
) -> usize {
    let completed: std::collections::HashSet<&str> = ordered
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == crate::publish::record::headers::KIND && v == "completion")
        })
        .filter_map(|r| r.key.as_deref())
        .collect();
    let published: std::collections::HashSet<&str> =
        ordered.iter().filter_map(|r| r.key.as_deref()).collect();
    control
        .ground_truth()
        .calls
        .iter()
        .filter(|c| {
            let id = c.conversation_space_id.as_str();
            (announced(c) || published.contains(id)) && !completed.contains(id)
        })
        .count()
}

/// A bridge configuration pointed at a simulator at `simulator_url`, with the simulator's default
/// credentials and timers short enough for a demo (gaps back-filled after 500 ms).
pub fn bridge_config(
    simulator_url: &str,
    kafka: crate::kafka::KafkaConfig,
    transport: ChannelKind,
    webhook_addr: std::net::SocketAddr,
) -> BridgeConfig {
    let mut config = BridgeConfig::default();
    config.goto.api_base_url = simulator_url.to_string();
    config.goto.auth_base_url = simulator_url.to_string();
    config.goto.client_id = "callbridge-demo".into();
    config.goto.client_secret = Secret::new("demo-secret");
    config.goto.personal_access_token = Secret::new("demo-pat");
    config.goto.account_keys = crate::simulator::traffic::TrafficConfig::default().account_keys;
    config.channel.kind = transport;
    config.webhook.public_url = format!("http://{webhook_addr}/goto/webhook");
    config.webhook.secret = Secret::new(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ));
    config.kafka = kafka;
    config.sequencer.gap_timeout = Duration::from_millis(500);
    config.sequencer.backfill_retry_base = Duration::from_millis(200);
    config.sequencer.backfill_retry_max = Duration::from_secs(2);
    config.sequencer.idle_probe_after = Duration::from_secs(2);
    config.sequencer_io.checkpoint_interval = Duration::from_millis(200);
    config.channel.reconnect_base = Duration::from_millis(100);
    config.channel.repair_interval = Duration::from_secs(1);
    config.channel.report_sweep_delay = Duration::from_secs(2);
    config
}

/// Runs `scenario` to completion and verifies the ordered topic.
pub async fn run_scenario(scenario: Scenario) -> Result<ScenarioOutcome, String> {
    let Scenario {
        kafka,
        transport,
        calls,
        rate,
        faults,
        seed,
        timeout,
        progress,
        mean_state_interval,
        min_states,
        simulator: adjust_simulator,
    } = scenario;
    // GoTo: the simulator, traffic held until the bridge is up.
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.scheduler.calls = calls;
    sim_config.scheduler.calls_per_second = rate;
    sim_config.scheduler.max_concurrent_calls = 200;
    sim_config.traffic.seed = seed;
    sim_config.traffic.mean_state_interval = mean_state_interval;
    sim_config.traffic.min_states = min_states;
    sim_config.faults = faults;
    if let Some(adjust) = adjust_simulator {
        adjust(&mut sim_config);
    }
    let sim = simulator::start(sim_config)
        .await
        .map_err(|e| format!("simulator: {e}"))?;
    let control = sim.control();

    // The bridge, pointed at the simulator and Kafka.
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let webhook_addr = webhook.local_addr().map_err(|e| e.to_string())?;
    let config = bridge_config(&sim.base_url(), kafka.clone(), transport, webhook_addr);
    let bridge = app::start(
        config,
        Listeners {
            webhook: Some(webhook),
            admin: Some(admin),
        },
    )
    .await
    .map_err(|e| format!("bridge: {e}"))?;

    // Traffic, with live progress, until every call's stream is complete.
    let metrics_before = scrape(bridge.admin_addr).await;
    control.start_traffic();
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let mut timed_out = false;
    let mut last_topic_check = Instant::now() - Duration::from_secs(1);
    let mut settled_since: Option<Instant> = None;
    let mut storm_over = false;
    // Discovery work that came and went between two looks still restarts the settling.
    let mut discovery_changes = bridge.discovery.changes();
    loop {
        use std::sync::atomic::Ordering::Relaxed;
        let status = control.traffic_status();
        if status.done && !storm_over {
            // Every call has ended: the channel faults GoTo fires on a schedule stop, like an
            // incident that ends. Each reconnect asks for a catch-up and a report sweep, so
            // with sockets still cut every few seconds the bridge's discovery, which the end
            // of the scenario waits out below, would never be idle.
            storm_over = true;
            let mut faults = control.faults();
            faults.websocket_disconnect_every = None;
            faults.websocket_to_be_closed_every = None;
            faults.channel_delete_every = None;
            faults.token_revoke_every = None;
            control
                .set_faults(faults)
                .map_err(|e| format!("stopping the scheduled faults: {e}"))?;
        }
        let stats = &bridge.sequencer;
        let completions = stats.completions_published.load(Relaxed);
        if progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            println!(
                "  {:>5.1}s  calls {}/{} ended  states {}  published {} (back-filled {})  gaps {}  complete {}",
                started.elapsed().as_secs_f64(),
                status.calls_ended,
                calls,
                status.states_generated,
                stats.states_published.load(Relaxed),
                stats.states_backfilled.load(Relaxed),
                stats.gaps_published.load(Relaxed),
                completions,
            );
        }
        // Done when every call GoTo announced at all is complete. The count is only a cheap
        // pre-check: the bridge also completes calls GoTo never announced (found by catch-up or
        // the report sweep), so equal counts do not mean the same calls; the ordered topic says.
        if status.done
            && completions >= announced_calls(&control)
            && last_topic_check.elapsed() >= Duration::from_secs(1)
        {
            last_topic_check = Instant::now();
            let (k, topic) = (kafka.clone(), kafka.topics.ordered.clone());
            let records = tokio::task::spawn_blocking(move || {
                read_topic(&k, &topic, Duration::from_secs(30))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the ordered topic: {e}"))?;
            // GoTo never delivered some calls, and the bridge may still find one (a catch-up
            // of active calls, a report sweep, a back-fill it starts) after the topic was read:
            // stopping then would cut it short. So the stream must also have no call open in
            // the sequencer and no catch-up or sweep running or waiting, and stay that way for
            // a while: a call a sweep writes to raw is open only once the sequencer reads it.
            // (Read from this bridge's own counters: the metrics recorder is shared by every
            // bridge of the process.)
            let open = stats.conversations_open.load(Relaxed);
            let changes = bridge.discovery.changes();
            let discovery_quiet = bridge.discovery.idle() && changes == discovery_changes;
            discovery_changes = changes;
            if unfinished_announced_calls(&control, &records) == 0 && open == 0 && discovery_quiet {
                if settled_since.get_or_insert_with(Instant::now).elapsed() >= SETTLED_FOR {
                    break;
                }
            } else {
                settled_since = None;
            }
        }
        if Instant::now() > deadline {
            timed_out = true;
            if progress {
                println!(
                    "  timed out waiting for every call to complete; verifying what was published"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sequencer exports its counters once a second: wait for the export that covers the
    // last completion (bounded), so the scrape matches what was published.
    let published = bridge
        .sequencer
        .completions_published
        .load(std::sync::atomic::Ordering::Relaxed) as f64;
    let export_deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics_after = scrape(bridge.admin_addr).await;
    while metric_value(&metrics_after, "callbridge_completions_published_total")
        - metric_value(&metrics_before, "callbridge_completions_published_total")
        < published
        && Instant::now() < export_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics_after = scrape(bridge.admin_addr).await;
    }
    bridge.shutdown().await;

    // Read back and verify.
    let truth = control.ground_truth();
    let topic = kafka.topics.ordered.clone();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(60)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the ordered topic: {e}"))?;
    let verification = verify(&truth, &records);
    sim.shutdown().await;
    Ok(ScenarioOutcome {
        verification,
        truth,
        timed_out,
        records,
        metrics_before,
        metrics_after,
    })
}

/// librdkafka's mock cluster on its own thread (it is neither `Send` nor `Sync`).
pub struct MockKafka {
    /// Bootstrap servers of the mock brokers.
    pub bootstrap: String,
    applied: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A broker fault the mock cluster applies (what tansu cannot produce).
#[derive(Clone, Copy, Debug)]
pub enum MockFault {
    /// Every broker answers this much later (zero: back to normal).
    RoundTrip(Duration),
    /// The next `n` Produce requests fail with retriable errors (not leader, timed out).
    ProduceErrors(usize),
    /// The next `n` Fetch requests fail with retriable errors.
    FetchErrors(usize),
    /// The next `n` Produce requests are refused for good (message too large: not retried).
    ProduceRefused(usize),
    /// The leader of every partition of every topic moves to the next broker.
    MoveLeaders,
}

impl MockKafka {
    /// Starts 3 mock brokers and creates `topics` with `partitions` each.
    pub fn start(topics: &[String], partitions: i32) -> Result<Self, String> {
        Self::start_with_faults(topics, partitions, Vec::new())
    }

    /// Like [`MockKafka::start`], then applies `schedule` (offsets from the start) on the mock
    /// cluster's own thread (it is `!Send`).
    pub fn start_with_faults(
        topics: &[String],
        partitions: i32,
        schedule: Vec<(Duration, MockFault)>,
    ) -> Result<Self, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let applied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let applied_in_thread = applied.clone();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match rdkafka::mocking::MockCluster::new(3) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("mock cluster: {e}")));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions, 1) {
                        let _ = ready_tx.send(Err(format!("mock topic {t}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let started = std::time::Instant::now();
                let mut round = 0;
                for (at, fault) in schedule {
                    let wait = (started + at).saturating_duration_since(std::time::Instant::now());
                    if stop_rx.recv_timeout(wait).is_ok() {
                        return;
                    }
                    if apply_mock_fault(&cluster, &topics, partitions, fault, &mut round) {
                        applied_in_thread.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready_rx.recv().map_err(|e| e.to_string())??;
        Ok(Self {
            bootstrap,
            applied,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

fn apply_mock_fault(
    cluster: &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    topics: &[String],
    partitions: i32,
    fault: MockFault,
    round: &mut i32,
) -> bool {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let retriable = |n: usize| -> Vec<RDKafkaRespErr> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION
                } else {
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT
                }
            })
            .collect()
    };
    let result = match fault {
        MockFault::RoundTrip(d) => (1..=3).try_for_each(|b| {
            cluster
                .broker_round_trip_time(b, d)
                .map_err(|e| e.to_string())
        }),
        MockFault::ProduceErrors(n) => {
            cluster.request_errors(RDKafkaApiKey::Produce, &retriable(n));
            Ok(())
        }
        MockFault::FetchErrors(n) => {
            cluster.request_errors(RDKafkaApiKey::Fetch, &retriable(n));
            Ok(())
        }
        MockFault::ProduceRefused(n) => {
            cluster.request_errors(
                RDKafkaApiKey::Produce,
                &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; n],
            );
            Ok(())
        }
        MockFault::MoveLeaders => {
            *round += 1;
            topics.iter().try_for_each(|t| {
                (0..partitions).try_for_each(|p| {
                    let broker = (p + *round) % 3 + 1;
                    cluster
                        .partition_leader(t, p, Some(broker))
                        .map_err(|e| e.to_string())
                })
            })
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(?fault, "mock broker fault applied");
            true
        }
        Err(e) => {
            tracing::warn!(?fault, error = %e, "mock broker fault not applied");
            false
        }
    }
}

impl MockKafka {
    /// How many scheduled faults have been applied so far.
    pub fn faults_applied(&self) -> usize {
        self.applied.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metric_total;

    #[test]
    fn metric_total_sums_the_series_that_carry_the_labels() {
        let text = "# TYPE x counter\n\
                    x{status=\"503\",outcome=\"a\"} 2\n\
                    x{outcome=\"b\",status=\"503\"} 3\n\
                    x{status=\"200\",outcome=\"a\"} 7\n\
                    xy{status=\"503\"} 11\n\
                    x 5\n";
        assert_eq!(metric_total(text, "x", &[("status", "503")]), 5.0);
        assert_eq!(metric_total(text, "x", &[]), 17.0);
        assert_eq!(
            metric_total(text, "x", &[("status", "200"), ("outcome", "a")]),
            7.0
        );
        assert_eq!(metric_total(text, "x", &[("status", "404")]), 0.0);
        assert_eq!(metric_total(text, "y", &[]), 0.0);
    }
}
