//! Several replicas, one channel owner: exactly one replica holds the GoTo channel, ownership
//! does not move when a replica joins, and when the owner goes away (SIGTERM, or SIGKILL) another
//! replica takes the channel over within a bounded time, printed here. An owner paused past its
//! session comes back in doubt, and the deployment settles on one owner again. In webhook mode every replica accepts POSTs, owner or not. The replicas are real
//! `callbridge run` processes, except in the rolling restart within one process, where each
//! owner's `shutdown` must have left the election group before it returns.
mod support;

use callbridge::app::{self, RunningBridge};
use callbridge::channel::ChannelState;
use callbridge::config::bridge::{BridgeConfig, ChannelKind};
use callbridge::simulator::{self, SimulatorConfig};
use std::time::{Duration, Instant};
use support::cluster::{Deployment, Replica};
use support::tansu::{Tansu, TempDir};

async fn simulator_without_traffic() -> simulator::RunningSimulator {
    let mut config = SimulatorConfig::default();
    config.scheduler.autostart = false;
    simulator::start(config).await.unwrap()
}

/// Index of the one replica that owns the channel, once exactly one does and every other
/// running replica is on standby.
async fn sole_owner(replicas: &mut [Replica], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut owners = Vec::new();
        let mut standbys = 0;
        let mut running = 0;
        for (i, r) in replicas.iter_mut().enumerate() {
            if !r.is_running() {
                continue;
            }
            running += 1;
            match r.channel_state().await.as_deref() {
                Some(s) if s.starts_with("Ready") => owners.push(i),
                Some("Standby") => standbys += 1,
                _ => {}
            }
        }
        if owners.len() == 1 && owners.len() + standbys == running {
            return Some(owners[0]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn deployment(
    sim: &simulator::RunningSimulator,
    bootstrap: String,
    transport: &'static str,
) -> Deployment {
    Deployment::new(sim.base_url(), bootstrap, transport, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_owner_and_handover_on_tansu() {
    let broker = Tansu::start();
    let sim = simulator_without_traffic().await;
    let dir = TempDir::new("election");
    let mut replicas = two_ready_replicas(&sim, broker.bootstrap(), &dir).await;
    let owner = sole_owner(&mut replicas, Duration::from_secs(30))
        .await
        .expect("exactly one owner");
    // GoTo sees one channel, with one socket.
    assert_eq!(
        sim.control().channel_ids().len(),
        1,
        "only the owner creates a channel"
    );

    // A clean stop hands the channel over at once (the owner leaves the group).
    let stopped = Instant::now();
    assert!(replicas[owner].terminate(), "SIGTERM exit status");
    let next = sole_owner(&mut replicas, Duration::from_secs(30))
        .await
        .expect("a new owner after SIGTERM");
    let handover_term = stopped.elapsed();
    assert_ne!(next, owner);
    println!("handover after SIGTERM of the owner: {handover_term:?}");

    // A replica joining does not take ownership from a healthy owner (sticky assignment).
    replicas[owner].start();
    assert!(replicas[owner].wait_ready(Duration::from_secs(60)).await);
    assert_eq!(
        sole_owner(&mut replicas, Duration::from_secs(30)).await,
        Some(next),
        "ownership moved when a replica joined"
    );

    // SIGKILL: the dead member holds the partition until someone joins the group again (tansu
    // does not expire sessions; Kubernetes restarts the pod), then the channel moves on.
    let killed = Instant::now();
    replicas[next].kill();
    replicas[next].start();
    let after_kill = sole_owner(&mut replicas, Duration::from_secs(60))
        .await
        .expect("an owner after SIGKILL and restart");
    println!(
        "channel owned again {:?} after SIGKILL + restart (owner: replica-{after_kill})",
        killed.elapsed()
    );
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
}

/// Two WebSocket replicas on `bootstrap`, in `dir`, started and ready (60 s at most each).
async fn two_ready_replicas(
    sim: &simulator::RunningSimulator,
    bootstrap: String,
    dir: &TempDir,
) -> Vec<Replica> {
    let d = deployment(sim, bootstrap, "websocket");
    let mut replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::new(&dir.0, &format!("replica-{i}"), &d))
        .collect();
    for r in &mut replicas {
        r.start();
    }
    for r in &replicas {
        assert!(
            r.wait_ready(Duration::from_secs(60)).await,
            "{} never became ready",
            r.name
        );
    }
    replicas
}

/// librdkafka's mock cluster with every topic of the default configuration: it enforces
/// `session.timeout.ms`, which tansu does not.
fn mock_cluster() -> callbridge::demo::MockKafka {
    let topics = callbridge::kafka::KafkaConfig::default().topics.required();
    callbridge::demo::MockKafka::start(&topics, 2).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_owner_is_replaced_within_the_session_timeout() {
    // librdkafka's mock cluster enforces session.timeout.ms, so a SIGKILLed owner that never
    // comes back is evicted: the measured handover is bounded by channel.owner_session_timeout.
    let cluster = mock_cluster();
    let sim = simulator_without_traffic().await;
    let dir = TempDir::new("election-mock");
    let mut replicas = two_ready_replicas(&sim, cluster.bootstrap.clone(), &dir).await;
    let owner = sole_owner(&mut replicas, Duration::from_secs(30))
        .await
        .expect("exactly one owner");
    let killed = Instant::now();
    replicas[owner].kill();
    let next = sole_owner(&mut replicas, Duration::from_secs(40))
        .await
        .expect("the standby takes over");
    let handover = killed.elapsed();
    assert_ne!(next, owner);
    println!("handover after SIGKILL of the owner (owner session timeout 3 s): {handover:?}");
    // Session timeout (3 s) plus a rebalance and the channel set-up.
    assert!(
        handover < Duration::from_secs(20),
        "handover took {handover:?}"
    );
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
    drop(cluster);
}

/// An owner paused (SIGSTOP) past its 3 s session is replaced; resumed, it finds its session
/// gone without a hand-over and is in doubt (another replica may own the channel: here one
/// does). The deployment must settle on one owner holding the one channel. (A resumed owner can
/// still reconnect once, if it reads GoTo's close of its replaced socket before librdkafka tells
/// it the session is gone: seen in a run, and settled by the next rebalance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_comes_back_in_doubt_and_one_owner_remains() {
    let cluster = mock_cluster();
    let sim = simulator_without_traffic().await;
    let dir = TempDir::new("election-pause");
    let mut replicas = two_ready_replicas(&sim, cluster.bootstrap.clone(), &dir).await;
    let owner = sole_owner(&mut replicas, Duration::from_secs(30))
        .await
        .expect("exactly one owner");
    let other = 1 - owner;
    replicas[owner].pause(true);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !replicas[other].owns_channel().await {
        assert!(
            Instant::now() < deadline,
            "the standby never took over from the paused owner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replicas[owner].pause(false);
    let in_doubt = |r: &Replica| {
        r.log_lines()
            .iter()
            .any(|l| l.contains("the channel election is unanswered"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !in_doubt(&replicas[owner]) {
        assert!(
            Instant::now() < deadline,
            "the resumed owner never found its session gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then one owner again. Which one is the group's choice: on the mock cluster the resumed
    // replica has been seen to win the partition back at the next rebalance.
    let settled = sole_owner(&mut replicas, Duration::from_secs(30)).await;
    println!("owner before the pause: replica-{owner}; after it: {settled:?}");
    assert!(
        settled.is_some(),
        "no single owner holding the channel after the paused one came back"
    );
    assert!(
        sim.control().channel_ids().len() == 1,
        "a second channel was created: {:?}",
        sim.control().channel_ids()
    );
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_webhook_replica_accepts_posts() {
    let broker = Tansu::start();
    let sim = simulator_without_traffic().await;
    let dir = TempDir::new("election-webhook");
    let d = deployment(&sim, broker.bootstrap(), "webhook");
    let mut replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::new(&dir.0, &format!("replica-{i}"), &d))
        .collect();
    for r in &mut replicas {
        r.start();
    }
    for r in &replicas {
        assert!(
            r.wait_ready(Duration::from_secs(60)).await,
            "{} never became ready",
            r.name
        );
    }
    let owner = sole_owner(&mut replicas, Duration::from_secs(30))
        .await
        .expect("exactly one owner");
    let http = reqwest::Client::new();
    for (i, r) in replicas.iter().enumerate() {
        let conv = format!("election-{i}");
        let body = serde_json::json!({
            "id": format!("{conv}-1"), "source": "call-events", "type": "call-state",
            "content": {"metadata": {"conversationSpaceId": conv},
                        "state": {"id": format!("{conv}-1"), "sequenceNumber": 1, "type": "STARTING"}}
        });
        let url = format!(
            "http://127.0.0.1:{}/goto/webhook/{}",
            r.webhook_port, d.webhook_secret
        );
        let status = http.post(url).json(&body).send().await.unwrap().status();
        assert_eq!(
            status,
            200,
            "replica-{i} (owner: {}) refused a POST",
            i == owner
        );
    }
    let kafka = d.kafka();
    let topic = kafka.topics.raw.clone();
    let raw = tokio::task::spawn_blocking(move || {
        callbridge::kafka::reader::read_topic(&kafka, &topic, Duration::from_secs(30))
    })
    .await
    .unwrap()
    .unwrap();
    for i in 0..2 {
        let key = format!("election-{i}");
        assert!(
            raw.iter().any(|r| r.key.as_deref() == Some(key.as_str())),
            "the POST to replica-{i} is not in the raw topic"
        );
    }
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
}

/// Logs of this test process to the test's output (nextest keeps each test's output apart),
/// `RUST_LOG` when set. `CALLBRIDGE_TEST_RDKAFKA_DEBUG` (for example `cgrp`) is handed to
/// librdkafka's `debug` by [`in_process_config`], whose log lines arrive here through `log`.
fn in_process_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,callbridge::simulator=off".into()),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// A WebSocket bridge on `broker` whose owner session (30 s) is far longer than the hand-over
/// bound below: only a leave the broker saw can hand the channel over in time, never an
/// eviction (and tansu evicts nobody anyway).
fn in_process_config(
    sim: &simulator::RunningSimulator,
    broker: &Tansu,
    addr: std::net::SocketAddr,
) -> BridgeConfig {
    let mut config = callbridge::demo::bridge_config(
        &sim.base_url(),
        broker.kafka(2),
        ChannelKind::Websocket,
        addr,
    );
    config.channel.owner_session_timeout = OWNER_SESSION;
    if let Ok(debug) = std::env::var("CALLBRIDGE_TEST_RDKAFKA_DEBUG") {
        config.kafka.librdkafka.insert("debug".into(), debug);
    }
    config
}

const OWNER_SESSION: Duration = Duration::from_secs(30);

/// Well below [`OWNER_SESSION`]: a rebalance and the channel set-up.
const HANDOVER_BOUND: Duration = Duration::from_secs(10);

/// Hand-overs per run: each one is a chance for a stopped owner to stay in the group (the race
/// this guards against lost about one hand-over in 25 here).
const ROUNDS: usize = 5;

/// Waits (at most `within`) until `bridge` owns a Ready channel; the state it was left in
/// otherwise.
async fn ready_within(bridge: &RunningBridge, within: Duration) -> Result<(), ChannelState> {
    let mut state = bridge.channel.clone();
    let ready = tokio::time::timeout(
        within,
        state.wait_for(|s| matches!(s, ChannelState::Ready(_))),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if ready {
        Ok(())
    } else {
        Err(bridge.channel.borrow().clone())
    }
}

/// Starts a bridge in this process and waits until it owns a Ready channel, all within `within`
/// (`app::start` returns once the role is known: a `Joining` that lasts, as while the group
/// still lists a departed leader, counts too); what it was left at otherwise.
async fn owner_within(
    sim: &simulator::RunningSimulator,
    broker: &Tansu,
    within: Duration,
) -> Result<RunningBridge, String> {
    let started = Instant::now();
    let (l, addr) = support::listeners().await;
    let bridge =
        match tokio::time::timeout(within, app::start(in_process_config(sim, broker, addr), l))
            .await
        {
            Err(_) => return Err("still Joining (its role unknown)".into()),
            Ok(Err(e)) => return Err(format!("start-up failed: {e}")),
            Ok(Ok(bridge)) => bridge,
        };
    ready_within(&bridge, within.saturating_sub(started.elapsed()))
        .await
        .map_err(|state| format!("{state:?}"))?;
    Ok(bridge)
}

/// A rolling deploy within one process: the owner stops cleanly and a new bridge joins the same
/// election group right after `shutdown` returned, [`ROUNDS`] times. Each stopped owner must
/// have left the group by then; otherwise the broker still lists it and nobody owns the channel
/// until its session expires (tansu keeps the departed member as the group's leader, so the new
/// one stays `Joining`; one CI run of `e2e_subscriptions` saw a restarted bridge stay `Standby`
/// for 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_started_after_the_owner_shut_down_takes_the_channel_at_once() {
    in_process_logs();
    let broker = Tansu::start();
    let sim = simulator_without_traffic().await;
    // Alone in the group, the first bridge owns the channel once it has set it up.
    let mut owner = owner_within(&sim, &broker, Duration::from_secs(60))
        .await
        .unwrap_or_else(|state| panic!("the first bridge never owned a Ready channel: {state}"));
    for round in 1..=ROUNDS {
        let stopping = Instant::now();
        owner.shutdown().await;
        let stopped_in = stopping.elapsed();
        let joined = Instant::now();
        owner = owner_within(&sim, &broker, HANDOVER_BOUND)
            .await
            .unwrap_or_else(|state| {
                panic!(
                    "round {round}: the bridge started after the owner's shutdown ({stopped_in:?}) \
                     did not own the channel within {HANDOVER_BOUND:?}: {state} (the stopped \
                     owner's election member was still in the group)"
                )
            });
        println!(
            "round {round}: the owner shut down in {stopped_in:?}; the next one owned the \
             channel {:?} after it started",
            joined.elapsed()
        );
    }
    assert_eq!(
        sim.control().channel_ids().len(),
        1,
        "every owner reused the first one's channel"
    );
    owner.shutdown().await;
    sim.shutdown().await;
}
