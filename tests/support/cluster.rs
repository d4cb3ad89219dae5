//! Bridge replicas as real processes (`callbridge run`), for the tests that kill, restart and
//! rebalance them: each replica gets its own config file and ports, its stderr is kept line by
//! line (for the secret check), and it can be SIGKILLed, SIGTERMed and started again.

use callbridge::kafka::reader::{read_topic, ReadRecord};
use callbridge::kafka::KafkaConfig;
use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `sequencer_io.session_timeout` of every replica.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Secrets every replica is configured with; none may appear in a log line.
pub const CLIENT_SECRET: &str = "demo-secret";
/// The personal access token the simulator accepts by default.
pub const PAT: &str = "demo-pat";
/// Prefixes of the tokens the simulator issues.
pub const ISSUED_TOKEN_PREFIXES: [&str; 2] = ["sim-at-", "sim-rt-"];

/// Where replica logs are kept: `<target>/tmp/replica-logs/<test binary>-<pid>/`.
pub fn log_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("replica-logs")
            .join(format!("{exe}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
    .clone()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// What every replica of one deployment shares.
#[derive(Clone)]
pub struct Deployment {
    /// The simulator's base URL.
    pub simulator_url: String,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// `webhook` or `websocket`.
    pub transport: &'static str,
    /// Partitions of raw/ordered/changelog.
    pub partitions: i32,
    /// Webhook path secret.
    pub webhook_secret: String,
    /// Extra TOML appended to each replica's config (later tables win over nothing: use new
    /// tables only, e.g. `[sequencer]` keys not set here).
    pub extra_toml: String,
}

impl Deployment {
    /// A deployment of `transport` (`webhook` or `websocket`) over `partitions`, with a fresh
    /// webhook secret and no extra TOML.
    pub fn new(
        simulator_url: String,
        bootstrap: String,
        transport: &'static str,
        partitions: i32,
    ) -> Deployment {
        Deployment {
            simulator_url,
            bootstrap,
            transport,
            partitions,
            webhook_secret: webhook_secret(),
            extra_toml: String::new(),
        }
    }

    /// The same with `toml` appended to each replica's config.
    pub fn with_toml(mut self, toml: &str) -> Deployment {
        self.extra_toml = toml.to_string();
        self
    }

    /// The deployment's Kafka settings, for reading its topics.
    pub fn kafka(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            ..KafkaConfig::default()
        };
        kafka.topics.partitions = self.partitions;
        kafka.topics.replication_factor = 1;
        kafka
    }

    /// Every record of the ordered topic.
    pub async fn read_ordered(&self) -> Vec<ReadRecord> {
        let kafka = self.kafka();
        let topic = kafka.topics.ordered.clone();
        read_all(kafka, topic).await
    }

    /// Every record of the raw topic: what ingest wrote.
    pub async fn read_raw(&self) -> Vec<ReadRecord> {
        let kafka = self.kafka();
        let topic = kafka.topics.raw.clone();
        read_all(kafka, topic).await
    }
}

/// Every record of `topic`, read on a blocking thread (at most 120 s).
async fn read_all(kafka: KafkaConfig, topic: String) -> Vec<ReadRecord> {
    let name = topic.clone();
    tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(120)))
        .await
        .expect("reader task")
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// One replica process.
pub struct Replica {
    /// `replica-N`.
    pub name: String,
    config_path: PathBuf,
    secret: String,
    child: Option<Child>,
    /// Admin port (`/readyz`, `/metrics`).
    pub admin_port: u16,
    /// Webhook port.
    pub webhook_port: u16,
    /// Every stderr line of every incarnation.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Times started.
    pub starts: u32,
    env: Vec<(String, String)>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// Writes the replica's config under `dir`; does not start it.
    pub fn new(dir: &Path, name: &str, d: &Deployment) -> Replica {
        let (webhook_port, admin_port) = (free_port(), free_port());
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config_path,
            format!(
                r#"
[goto]
api_base_url = "{sim}"
auth_base_url = "{sim}"
client_id = "callbridge-demo"
account_keys = {accounts}
[channel]
kind = "{transport}"
reconnect_base = "100ms"
repair_interval = "2s"
owner_session_timeout = "3s"
report_sweep_delay = "2s"
report_sweep_lookback = "60s"
[webhook]
listen = "127.0.0.1:{webhook_port}"
public_url = "http://127.0.0.1:{webhook_port}/goto/webhook"
[admin]
listen = "127.0.0.1:{admin_port}"
[kafka]
bootstrap_servers = "{bootstrap}"
ack_timeout = "3s"
[kafka.topics]
partitions = {partitions}
replication_factor = 1
[sequencer]
gap_timeout = "500ms"
backfill_retry_base = "200ms"
backfill_retry_max = "2s"
idle_probe_after = "3s"
[sequencer_io]
checkpoint_interval = "200ms"
session_timeout = "{session_ms}ms"
[shutdown]
timeout = "10s"
[log]
format = "json"
level = "debug"
{extra}
"#,
                sim = d.simulator_url,
                accounts = serde_json::to_string(
                    &callbridge::simulator::traffic::TrafficConfig::default().account_keys
                )
                .expect("account keys"),
                transport = d.transport,
                bootstrap = d.bootstrap,
                partitions = d.partitions,
                session_ms = SESSION_TIMEOUT.as_millis(),
                extra = d.extra_toml,
            ),
        )
        .expect("replica config");
        Replica {
            name: name.to_string(),
            config_path,
            secret: d.webhook_secret.clone(),
            child: None,
            admin_port,
            webhook_port,
            log: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
            env: Vec::new(),
            readers: Vec::new(),
        }
    }

    /// Sets an environment variable for the next starts; an empty value removes it.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        if !value.is_empty() {
            self.env.push((key.to_string(), value.to_string()));
        }
    }

    /// Starts the process (not waiting for readiness).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_callbridge"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("CALLBRIDGE_GOTO__CLIENT_SECRET", CLIENT_SECRET)
            .env("CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN", PAT)
            .env("CALLBRIDGE_WEBHOOK__SECRET", &self.secret)
            .env("HOSTNAME", &self.name)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting callbridge");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        // Also on disk, kept after the test for whoever debugs a failure.
        let file_path = log_dir().join(format!("{}.log", self.name));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file_path)
            .ok();
        self.readers.push(std::thread::spawn(move || {
            use std::io::Write;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(f) = &mut file {
                    let _ = writeln!(f, "{line}");
                }
                log.lock().unwrap().push(line);
            }
        }));
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no drain, no flush, no goodbye to the group.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (a paused process: it keeps its sockets but answers nothing) or SIGCONT.
    pub fn pause(&mut self, paused: bool) {
        if let Some(c) = &self.child {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
    }

    /// SIGTERM and wait for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// True while the process runs (reaps it if it exited by itself).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                _ => {
                    self.child = None;
                    false
                }
            },
            None => false,
        }
    }

    /// `/readyz`'s body, `None` when the process does not answer.
    pub async fn readyz(&self) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let r = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The channel state `/readyz` reports (`Ready("…")`, `Standby`, `Starting`…).
    pub async fn channel_state(&self) -> Option<String> {
        let v = self.readyz().await?;
        v["checks"]["channel"]["state"].as_str().map(str::to_string)
    }

    /// True when this replica holds the channel and it is up.
    pub async fn owns_channel(&self) -> bool {
        self.channel_state()
            .await
            .is_some_and(|s| s.starts_with("Ready"))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines (of any replica) that contain a configured secret or an issued token.
pub fn leaked_secrets(replicas: &[Replica], webhook_secret: &str) -> Vec<String> {
    let mut needles = vec![CLIENT_SECRET, PAT, webhook_secret];
    needles.extend(ISSUED_TOKEN_PREFIXES);
    replicas
        .iter()
        .flat_map(|r| r.log_lines())
        .filter(|line| needles.iter().any(|n| line.contains(n)))
        .collect()
}

/// A fresh webhook path secret (64 hex characters).
pub fn webhook_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Calls with at least one notification delivered to the bridge, per the ground truth: the
/// calls the bridge can be held to.
pub fn announced(truth: &callbridge::simulator::GroundTruth) -> std::collections::HashSet<String> {
    truth
        .calls
        .iter()
        .filter(|c| {
            c.states
                .iter()
                .any(|s| s.deliveries.values().any(|d| d.delivered > 0))
        })
        .map(|c| c.conversation_space_id.clone())
        .collect()
}

/// Waits (180 s at most each) until the simulator's traffic is done and then until one replica
/// has completed every announced call in the ordered topic; false if the calls did not complete.
pub async fn traffic_done_and_complete(
    d: &Deployment,
    control: &callbridge::simulator::SimulatorControl,
    replica: &Replica,
) -> bool {
    let timeout = Duration::from_secs(180);
    assert!(
        control.wait_until_done(timeout).await.done,
        "traffic not done in {timeout:?}"
    );
    wait_for_completion(d, control, std::slice::from_ref(replica), timeout).await
}

/// Waits until every announced call is complete in the ordered topic, printing progress
/// (incomplete calls, partitions owned per replica) every 2 s; false at the deadline.
pub async fn wait_for_completion(
    d: &Deployment,
    control: &callbridge::simulator::SimulatorControl,
    replicas: &[Replica],
    timeout: Duration,
) -> bool {
    let started = Instant::now();
    loop {
        // Every call GoTo announced, and every call the bridge published anything of (the
        // report sweep finds calls GoTo never announced), must be complete.
        let records = d.read_ordered().await;
        let mut want = announced(&control.ground_truth());
        want.extend(records.iter().filter_map(|r| r.key.clone()));
        let have: std::collections::HashSet<String> = records
            .iter()
            .filter(|r| r.header("callbridge-kind") == Some("completion"))
            .filter_map(|r| r.key.clone())
            .collect();
        let missing = want.difference(&have).count();
        if missing == 0 {
            return true;
        }
        let mut owned = Vec::new();
        for r in replicas {
            let p = r
                .readyz()
                .await
                .and_then(|v| v["checks"]["sequencer"]["partitions_owned"].as_u64());
            owned.push(p.map_or("-".to_string(), |p| p.to_string()));
        }
        println!(
            "  +{:>5.1}s  {missing} announced calls not complete yet; partitions owned per replica: {}",
            started.elapsed().as_secs_f64(),
            owned.join("/")
        );
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// tansu 0.6 evicts a group member that died without leaving only when another member joins
/// after the dead one's session expired (a real broker evicts it by itself and rebalances); until
/// then the dead member's raw partitions have no owner. This waits for the session timeout to
/// run out since the last kill, then restarts one replica cleanly (a rolling restart: the join
/// tansu needs) and waits for every partition to be owned again; if one is still orphaned, it
/// does the same with the next replica (at most once per replica). Returns the restarts made.
pub async fn join_after_sessions_expired(
    replicas: &mut [Replica],
    last_kill: Instant,
    partitions: u64,
) -> usize {
    let mut restarts = 0;
    let expired = last_kill + SESSION_TIMEOUT + Duration::from_secs(1);
    tokio::time::sleep_until(expired.into()).await;
    for i in 0..replicas.len() {
        let r = &mut replicas[i];
        r.terminate();
        r.start();
        restarts += 1;
        assert!(
            r.wait_ready(Duration::from_secs(60)).await,
            "{} did not come back",
            r.name
        );
        // Takeovers after a crash wait out the previous owner (session timeout + 5 s).
        let deadline = Instant::now() + SESSION_TIMEOUT + Duration::from_secs(20);
        while Instant::now() < deadline {
            if owned_partitions(replicas).await >= partitions {
                return restarts;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Sessions of members killed just before this join have expired by now.
    }
    restarts
}

/// Raw partitions taken over, summed over the replicas' `/readyz`.
pub async fn owned_partitions(replicas: &[Replica]) -> u64 {
    let mut n = 0;
    for r in replicas {
        n += r
            .readyz()
            .await
            .and_then(|v| v["checks"]["sequencer"]["partitions_owned"].as_u64())
            .unwrap_or(0);
    }
    n
}

/// A simulator of `calls` long calls that start at 30 a second, each with `states` states on
/// average `interval` apart, no faults, traffic not started: for the tests that inject a fault
/// once every call is under way, so the calls' later states can only come back by back-fill.
pub fn long_calls(
    calls: u64,
    seed: u64,
    states: std::ops::RangeInclusive<u32>,
    interval: Duration,
) -> callbridge::simulator::SimulatorConfig {
    let mut config = callbridge::simulator::SimulatorConfig::default();
    config.scheduler.autostart = false;
    config.scheduler.calls = calls;
    config.scheduler.calls_per_second = 30.0;
    config.scheduler.max_concurrent_calls = 100.max(calls as usize);
    config.traffic.seed = seed;
    config.traffic.min_states = *states.start();
    config.traffic.max_states = *states.end();
    config.traffic.mean_state_interval = interval;
    config.faults = callbridge::simulator::FaultsConfig::default();
    config
}

/// Starts the simulator's traffic and waits until `calls` calls have started (30 s at most).
pub async fn start_traffic_and_wait(control: &callbridge::simulator::SimulatorControl, calls: u64) {
    control.start_traffic();
    let deadline = Instant::now() + Duration::from_secs(30);
    while control.traffic_status().calls_started < calls {
        assert!(
            Instant::now() < deadline,
            "traffic never got going: {} of {calls} calls started",
            control.traffic_status().calls_started
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Replica {
    /// The replica's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        reqwest::get(url)
            .await
            .expect("scraping /metrics")
            .text()
            .await
            .expect("reading /metrics")
    }
}
