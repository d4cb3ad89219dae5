//! SIGTERM while webhooks are coming in: every notification answered 200 is in Kafka, POSTs sent
//! after readiness turned false are still answered (the webhook server stops last), the process
//! leaves cleanly, and not one line of its debug-level log holds a secret. The bridge
//! runs as the real binary (`callbridge run`), answering after Kafka (the default) and on receipt
//! (`webhook.answer = "on_receipt"`, where a graceful stop must still write every answered state).
mod support;

use callbridge::kafka::reader::read_topic;
use callbridge::kafka::KafkaConfig;
use callbridge::simulator::{self, SimulatorConfig};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::tansu::{Tansu, TempDir};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_accepted_notification() {
    let queued = sigterm_under_load("after_kafka", "").await;
    assert_eq!(queued, 0, "answered on receipt without being asked to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answering_on_receipt_loses_no_accepted_notification() {
    // A long linger keeps the answered states in the producer's queue when SIGTERM comes: only
    // the graceful stop's flush can still write them.
    let queued = sigterm_under_load(
        "on_receipt",
        "[kafka.librdkafka]\n\"linger.ms\" = \"3000\"\n",
    )
    .await;
    assert!(queued > 0, "no state was answered on receipt");
}

/// A `callbridge run` child process and what the test needs to talk to it.
struct Bridge {
    child: std::process::Child,
    webhook_port: u16,
    admin_port: u16,
    secret: String,
    /// Every line the process logged, once its stderr closed.
    log_reader: std::thread::JoinHandle<Vec<String>>,
    _dir: TempDir,
}

/// Starts the real binary against `sim` and `broker`, with `webhook.answer = answer` and
/// `extra` TOML, logging JSON at debug level.
fn spawn_bridge(
    sim: &simulator::RunningSimulator,
    broker: &Tansu,
    answer: &str,
    extra: &str,
) -> Bridge {
    let (webhook_port, admin_port) = (free_port(), free_port());
    let secret = "s".repeat(16) + &uuid::Uuid::new_v4().simple().to_string();
    let dir = TempDir::new("shutdown");
    let config_path = dir.0.join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[goto]
api_base_url = "{sim}"
auth_base_url = "{sim}"
client_id = "callbridge-demo"
account_keys = ["1000000000000000001"]
[webhook]
listen = "127.0.0.1:{webhook_port}"
public_url = "http://127.0.0.1:{webhook_port}/goto/webhook"
answer = "{answer}"
[admin]
listen = "127.0.0.1:{admin_port}"
[kafka]
bootstrap_servers = "{bootstrap}"
[kafka.topics]
partitions = 2
replication_factor = 1
[log]
format = "json"
level = "debug"
{extra}
"#,
            sim = sim.base_url(),
            bootstrap = broker.bootstrap(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("CALLBRIDGE_GOTO__CLIENT_SECRET", "demo-secret")
        .env("CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN", "demo-pat")
        .env("CALLBRIDGE_WEBHOOK__SECRET", &secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log_reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    Bridge {
        child,
        webhook_port,
        admin_port,
        secret,
        log_reader,
        _dir: dir,
    }
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (at most 60 s) for the process to end, requires exit code 0, and returns its log.
async fn exits_cleanly(
    mut child: std::process::Child,
    log_reader: std::thread::JoinHandle<Vec<String>>,
) -> Vec<String> {
    let exited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("the bridge did not stop after SIGTERM")
    .unwrap()
    .unwrap();
    let log = log_reader.join().unwrap();
    assert!(
        exited.success(),
        "callbridge exited with {exited}:\n{}",
        log.join("\n")
    );
    log
}

/// SIGTERM while the owner still waits for its channel (GoTo refuses the subscriptions with a
/// 503, which the bridge retries for as long as it takes): the process stops cleanly instead of
/// ignoring the signal (in a container it is PID 1, which has no default action for SIGTERM;
/// outside one the default kills it, which is what this test would see without a handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_start_up_stops_cleanly() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.faults.subscription_item_status = Some(503);
    let sim = simulator::start(sim_config).await.unwrap();
    let Bridge {
        mut child,
        admin_port,
        log_reader,
        _dir,
        ..
    } = spawn_bridge(&sim, &broker, "after_kafka", "");
    // Start-up is under way and waiting on GoTo once the admin server says the channel is down.
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(r) = http.get(&readyz).send().await {
            last = r.json().await.unwrap_or_default();
            if last["checks"]["channel"]["state"]
                .as_str()
                .is_some_and(|s| s.starts_with("Down"))
            {
                break;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "callbridge exited during start-up with {status}:\n{}",
                log_reader.join().unwrap().join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "the owner never reported its channel down: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&child);
    let log = exits_cleanly(child, log_reader).await;
    assert!(
        log.iter()
            .any(|l| l.contains("shutdown requested before start-up finished")),
        "{}",
        log.join("\n")
    );
    sim.shutdown().await;
}

/// Runs the scenario with `webhook.answer = answer` and `extra` TOML; returns how many answers
/// said `queued`.
async fn sigterm_under_load(answer: &str, extra: &str) -> usize {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let sim = simulator::start(sim_config).await.unwrap();
    let Bridge {
        child,
        webhook_port,
        admin_port,
        secret,
        log_reader,
        _dir,
    } = spawn_bridge(&sim, &broker, answer, extra);
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&readyz).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the bridge never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Load: 8 senders, each its own call, sequence numbers counting up, until refused.
    let url = format!("http://127.0.0.1:{webhook_port}/goto/webhook/{secret}");
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Set once `/readyz` answered 503 after SIGTERM; POSTs sent after that and answered 200.
    let unready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered_unready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for sender in 0..8 {
        let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
        let (queued, unready, answered_unready) =
            (queued.clone(), unready.clone(), answered_unready.clone());
        senders.push(tokio::spawn(async move {
            let conv = format!("shutdown-{sender}");
            for seq in 1u64.. {
                let body = serde_json::json!({
                    "id": format!("{conv}-{seq}"), "source": "call-events", "type": "call-state",
                    "content": {"metadata": {"conversationSpaceId": conv},
                                "state": {"id": format!("{conv}-{seq}"), "sequenceNumber": seq,
                                          "type": if seq == 1 { "STARTING" } else { "ACTIVE" }}}
                });
                let sent_unready = unready.load(std::sync::atomic::Ordering::SeqCst);
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => {
                        accepted.lock().unwrap().insert((conv.clone(), seq));
                        if sent_unready {
                            answered_unready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        if r.text().await.is_ok_and(|t| t.contains("\"queued\"")) {
                            queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Let load build up, then SIGTERM (awaiting a count of accepted requests, not a timer).
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&child);
    // Readiness turns false first; the webhook server keeps answering while the rest drains
    // (Kubernetes keeps routing to a terminating pod whose Service publishes not-ready
    // addresses). Polled: the only sign of it is the other process's answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http.get(&readyz).send().await {
            Ok(r) if r.status() == 503 => break,
            Ok(_) => {}
            Err(e) => panic!("/readyz stopped answering before it said 503: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unready.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = exits_cleanly(child, log_reader).await;
    // Secrets never reach a log line, even at debug level: the client secret, the PAT, the
    // webhook path secret, and the access tokens the simulator issued (all start `sim-at-`).
    assert!(log.len() > 20, "the run logged almost nothing: {log:?}");
    for line in &log {
        for secret in ["demo-secret", "demo-pat", secret.as_str(), "sim-at-"] {
            assert!(
                !line.contains(secret),
                "a secret leaked into the log: {line}"
            );
        }
    }
    for s in senders {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .unwrap()
            .unwrap();
    }

    let accepted = accepted.lock().unwrap().clone();
    let mut kafka = KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    kafka.topics.partitions = 2;
    let topic = kafka.topics.raw.clone();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap();
    let in_raw: BTreeSet<(String, u64)> = records
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).ok()?;
            let conv = v["content"]["metadata"]["conversationSpaceId"]
                .as_str()?
                .to_string();
            Some((conv, v["content"]["state"]["sequenceNumber"].as_u64()?))
        })
        .collect();
    let lost: Vec<_> = accepted.difference(&in_raw).collect();
    assert!(accepted.len() >= 200);
    assert!(
        lost.is_empty(),
        "{} accepted notifications are not in Kafka: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let answered_unready = answered_unready.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        answered_unready > 0,
        "no POST sent after /readyz said 503 was answered: the webhook stopped with readiness"
    );
    sim.shutdown().await;
    queued.load(std::sync::atomic::Ordering::Relaxed)
}
