//! The chaos suite: three replicas (real `callbridge run` processes, WebSocket mode) against
//! tansu with `sqlite://` storage and the simulator with GoTo's delivery faults on, while a
//! seeded schedule SIGKILLs and restarts replicas, stops them cleanly (rebalances), restarts the
//! broker, revokes GoTo's tokens, deletes the channel, sends `WEBSOCKET_TO_BE_CLOSED`, and opens
//! 429 storms and 5xx bursts on the REST API. Then every call's stream in the ordered topic is
//! compared with the simulator's ground truth: nothing missing without a gap record, nothing
//! doubled, nothing out of order.
//!
//! Short form (CI): 60 s of chaos. Long form: `CALLBRIDGE_CHAOS_SECS=1800 cargo nextest run
//! --test chaos --no-capture` (see docs/reliability.md). `CALLBRIDGE_CHAOS_SEED` replays a
//! schedule; the seed of every run is printed. The figures go to the terminal and, as JSON, to
//! `CALLBRIDGE_CHAOS_REPORT` (default `target/chaos-report.json`).
mod support;

use callbridge::simulator::{self, FaultsConfig, SimulatorConfig};
use callbridge::verify::verify;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::{
    join_after_sessions_expired, leaked_secrets, wait_for_completion, Deployment, Replica,
};
use support::tansu::{Tansu, TempDir};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// GoTo's everyday delivery faults, on for the whole run.
fn base_faults(seed: u64) -> FaultsConfig {
    FaultsConfig {
        seed,
        drop_rate: 0.03,
        duplicate_rate: 0.03,
        duplicate_new_id_rate: 0.02,
        delay_rate: 0.05,
        max_delay: Duration::from_millis(400),
        unrecoverable_rate: 0.01,
        ..FaultsConfig::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Chaos {
    KillReplica,
    StopReplica,
    RestartBroker,
    RevokeTokens,
    DeleteChannel,
    ToBeClosed,
    Storm429,
    Burst5xx,
}

impl Chaos {
    fn pick(rng: &mut impl Rng) -> Chaos {
        // Weighted: replica kills are what the suite is about.
        match rng.gen_range(0..20) {
            0..=6 => Chaos::KillReplica,
            7..=8 => Chaos::StopReplica,
            9..=10 => Chaos::RestartBroker,
            11..=12 => Chaos::RevokeTokens,
            13..=14 => Chaos::DeleteChannel,
            15..=16 => Chaos::ToBeClosed,
            17..=18 => Chaos::Storm429,
            _ => Chaos::Burst5xx,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_replicas_broker_and_goto_faults_lose_nothing() {
    let chaos_secs = env_u64("CALLBRIDGE_CHAOS_SECS").unwrap_or(60);
    let seed = env_u64("CALLBRIDGE_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    println!("chaos: {chaos_secs} s, seed {seed} (replay with CALLBRIDGE_CHAOS_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // Kafka whose data survives its restarts.
    let data = TempDir::new("chaos-kafka");
    let mut broker = Tansu::start_with_storage(Some(&data.0));

    // GoTo: calls of several seconds (a handover must not swallow whole calls), three new calls
    // a second for the chaos period.
    let rate = 3.0;
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.scheduler.calls = (rate * chaos_secs as f64) as u64;
    sim_config.scheduler.calls_per_second = rate;
    sim_config.scheduler.max_concurrent_calls = 500;
    sim_config.traffic.seed = seed;
    sim_config.traffic.min_states = 5;
    sim_config.traffic.max_states = 9;
    sim_config.traffic.mean_state_interval = Duration::from_millis(1200);
    sim_config.faults = base_faults(seed);
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();

    let dir = TempDir::new("chaos");
    let d = Deployment::new(sim.base_url(), broker.bootstrap(), "websocket", 6);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::new(&dir.0, &format!("replica-{i}"), &d))
        .collect();
    for r in &mut replicas {
        r.start();
    }
    for r in &replicas {
        assert!(
            r.wait_ready(Duration::from_secs(90)).await,
            "{} never became ready:\n{}",
            r.name,
            r.log_lines().join("\n")
        );
    }

    // Chaos.
    control.start_traffic();
    let started = Instant::now();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut restart_at: Vec<(Instant, usize)> = Vec::new();
    let mut last_broker_restart = Instant::now();
    let mut broker_restarts = 0u32;
    let mut last_kill = Instant::now();
    let mut first_pass = vec![
        Chaos::KillReplica,
        Chaos::StopReplica,
        Chaos::RestartBroker,
        Chaos::RevokeTokens,
        Chaos::DeleteChannel,
        Chaos::ToBeClosed,
        Chaos::Storm429,
        Chaos::Burst5xx,
    ];
    {
        use rand::seq::SliceRandom;
        first_pass.shuffle(&mut rng);
    }
    // Replicas that exited on their own (a crash, not one of ours): Kubernetes restarts them too.
    let mut crashes = 0u64;
    while started.elapsed() < Duration::from_secs(chaos_secs) {
        // Replicas due back come back (what Kubernetes does after a crash).
        let now = Instant::now();
        for (_, i) in restart_at.iter().filter(|(t, _)| *t <= now) {
            replicas[*i].start();
        }
        restart_at.retain(|(t, _)| *t > now);
        for (i, replica) in replicas.iter_mut().enumerate() {
            if !replica.is_running() && !restart_at.iter().any(|(_, j)| *j == i) {
                crashes += 1;
                println!(
                    "  {:>5.1}s  replica-{i} exited by itself; restarting it (see its log)",
                    started.elapsed().as_secs_f64()
                );
                restart_at.push((now + Duration::from_millis(rng.gen_range(2000..5000)), i));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..5000))).await;
        // Every kind of fault once (in a seeded order), then at random; a first-pass fault that
        // cannot happen yet (too few replicas up, a broker restart too recent) is tried again.
        let from_first_pass = !first_pass.is_empty();
        let event = first_pass.pop().unwrap_or_else(|| Chaos::pick(&mut rng));
        let running: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].is_running())
            .collect();
        let done = match event {
            Chaos::KillReplica | Chaos::StopReplica if running.len() >= 2 => {
                let i = running[rng.gen_range(0..running.len())];
                if event == Chaos::KillReplica {
                    replicas[i].kill();
                    last_kill = Instant::now();
                } else {
                    replicas[i].terminate();
                }
                // Kubernetes restarts a crashed container after a short back-off.
                let back_in = Duration::from_millis(rng.gen_range(2000..5000));
                restart_at.push((Instant::now() + back_in, i));
                true
            }
            Chaos::RestartBroker
                if broker_restarts == 0
                    || last_broker_restart.elapsed() > Duration::from_secs(20) =>
            {
                broker.stop();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..5000))).await;
                broker.restart();
                broker_restarts += 1;
                last_broker_restart = Instant::now();
                last_kill = Instant::now();
                true
            }
            Chaos::RevokeTokens => {
                control.revoke_tokens();
                true
            }
            Chaos::DeleteChannel => control
                .channel_ids()
                .iter()
                .fold(false, |any, id| control.delete_channel(id) | any),
            Chaos::ToBeClosed => control
                .channel_ids()
                .iter()
                .fold(false, |any, id| control.send_to_be_closed(id) | any),
            Chaos::Storm429 | Chaos::Burst5xx => {
                let mut f = base_faults(seed);
                if event == Chaos::Storm429 {
                    f.rest_429_rate = 0.6;
                } else {
                    f.rest_5xx_rate = 0.6;
                }
                control.set_faults(f).unwrap();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..4000))).await;
                control.set_faults(base_faults(seed)).unwrap();
                true
            }
            _ => false,
        };
        if done {
            *counts.entry(format!("{event:?}")).or_default() += 1;
            println!("  {:>5.1}s  {event:?}", started.elapsed().as_secs_f64());
        } else if from_first_pass {
            first_pass.insert(0, event);
        }
    }

    // Calm: everyone back, GoTo healthy, traffic finishes; wait until every call GoTo announced
    // is complete in the ordered topic.
    for (_, i) in restart_at.drain(..) {
        replicas[i].start();
    }
    for r in &mut replicas {
        if !r.is_running() {
            r.start();
        }
    }
    control.set_faults(base_faults(seed)).unwrap();
    let rolling_restarts = join_after_sessions_expired(&mut replicas, last_kill, 6).await;
    let status = control.wait_until_done(Duration::from_secs(300)).await;
    assert!(status.done, "the simulator's traffic did not finish");
    let complete = wait_for_completion(&d, &control, &replicas, Duration::from_secs(240)).await;

    // The verdict.
    let truth = control.ground_truth();
    let records = d.read_ordered().await;
    let v = verify(&truth, &records);
    let published_keys: std::collections::HashSet<&str> =
        records.iter().filter_map(|r| r.key.as_deref()).collect();
    let swept = truth
        .calls
        .iter()
        .filter(|c| {
            c.states
                .iter()
                .all(|s| s.deliveries.values().all(|d| d.delivered == 0))
                && published_keys.contains(c.conversation_space_id.as_str())
        })
        .count();
    let kills = counts.get("KillReplica").copied().unwrap_or(0);
    let stops = counts.get("StopReplica").copied().unwrap_or(0);
    let broker_restarts = counts.get("RestartBroker").copied().unwrap_or(0);
    let replica_starts: u32 = replicas.iter().map(|r| r.starts).sum();
    println!("\nchaos schedule (seed {seed}, {chaos_secs} s):");
    for (event, n) in &counts {
        println!("  {event:<16} {n:>5}");
    }
    println!("  replica starts   {replica_starts:>5}");
    println!("  replica crashes  {crashes:>5}");
    println!("\nGoTo faults injected by the simulator:");
    for (name, n) in &truth.fault_counts {
        println!("  {name:<36} {n:>8}");
    }
    println!("\nverification of the ordered topic against the ground truth:\n{v}");
    println!("calls GoTo never delivered, recovered by the report sweep: {swept}");
    let report = serde_json::json!({
        "seed": seed,
        "chaos_seconds": chaos_secs,
        "replicas": replicas.len(),
        "chaos_events": counts,
        "replica_sigkills": kills,
        "replica_sigterms": stops,
        "replica_crashes": crashes,
        "rolling_restarts_for_tansu_eviction": rolling_restarts,
        "broker_restarts": broker_restarts,
        "goto_faults": truth.fault_counts,
        "calls": v.calls,
        "states_checked": v.states,
        "states_published": v.states_published,
        "states_backfilled": v.states_backfilled,
        "gap_records": v.gap_records,
        "unrecoverable_states": v.unrecoverable,
        "duplicates": v.duplicates,
        "order_violations": v.order_violations,
        "missing_without_gap": v.missing_without_gap,
        "unneeded_gaps": v.unneeded_gaps,
        "content_mismatches": v.content_mismatches,
        "never_announced_calls": v.never_announced_calls,
        "undelivered_calls_recovered_by_report_sweep": swept,
        "all_announced_calls_complete": complete,
        "perfect": v.is_perfect(),
    });
    let path = std::env::var("CALLBRIDGE_CHAOS_REPORT")
        .unwrap_or_else(|_| format!("{}/target/chaos-report.json", env!("CARGO_MANIFEST_DIR")));
    let _ = std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap());
    println!(
        "report written to {path}; replica logs in {}",
        support::cluster::log_dir().display()
    );
    if !v.is_perfect() || !complete {
        // What GoTo did with every state (each delivery, drop and fault, with times) is what a
        // failure is diagnosed from; the simulator is gone once the test ends.
        let truth_path = format!("{path}.truth.json");
        let _ = std::fs::write(&truth_path, serde_json::to_string(&truth).unwrap());
        println!("the simulator's ground truth written to {truth_path}");
    }

    let leaks = leaked_secrets(&replicas, &d.webhook_secret);
    let lines: usize = replicas.iter().map(|r| r.log_lines().len()).sum();
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;

    assert!(
        kills + stops > 0,
        "the schedule killed nothing (seed {seed})"
    );
    assert!(
        complete,
        "seed {seed}: not every announced call completed:\n{v}"
    );
    assert!(
        v.is_perfect(),
        "seed {seed}: the ordered topic is not perfect:\n{v}"
    );
    assert!(v.states_published > 0);
    assert!(lines > 100, "the replicas logged almost nothing");
    assert!(
        leaks.is_empty(),
        "{} log lines hold a secret or token, e.g. {}",
        leaks.len(),
        leaks[0]
    );
}
