//! SIGKILL inside every window the exactly-once argument must cover, on a broker without
//! transactions (tansu). Two replicas (real processes, WebSocket mode, GoTo's delivery faults on)
//! run with a crash point armed (`CALLBRIDGE_FAILPOINT`, see `src/failpoint.rs`): each one kills
//! itself the n-th time it passes the point (n random), is restarted at once with a new n, and a
//! replica is also killed from outside now and then so partitions move and takeovers run. Then
//! both run unarmed until every call is complete, and the ordered topic is compared with the
//! ground truth: nothing missing, doubled or out of order, and each point really fired.
mod support;

use callbridge::failpoint;
use callbridge::simulator::{self, FaultsConfig, SimulatorConfig};
use callbridge::verify::verify;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use support::cluster::{
    join_after_sessions_expired, wait_for_completion, webhook_secret, Deployment, Replica,
};
use support::tansu::{Tansu, TempDir};

/// How many passes of each point before the kill: points passed per record get a wide range,
/// points passed once per takeover or back-fill a narrow one.
fn passes(point: &str) -> u64 {
    match point {
        failpoint::INGEST_AFTER_RAW_ACK | failpoint::SEQUENCER_AFTER_OUTPUT_SENT => 60,
        failpoint::SEQUENCER_BEFORE_CHANGELOG | failpoint::SEQUENCER_BEFORE_COMMIT => 15,
        // Passed once per takeover or back-fill answer: kill at the first pass, or a 30 s run
        // may not get there at all.
        _ => 1,
    }
}

async fn crash_at(point: &'static str, seed: u64) {
    let traffic_secs = 30;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.scheduler.calls = 4 * traffic_secs;
    sim_config.scheduler.calls_per_second = 4.0;
    sim_config.scheduler.max_concurrent_calls = 200;
    sim_config.traffic.seed = seed;
    sim_config.traffic.min_states = 4;
    sim_config.traffic.max_states = 8;
    sim_config.traffic.mean_state_interval = Duration::from_millis(800);
    sim_config.faults = FaultsConfig {
        seed,
        drop_rate: 0.05,
        duplicate_rate: 0.03,
        delay_rate: 0.05,
        max_delay: Duration::from_millis(300),
        ..FaultsConfig::default()
    };
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();
    let dir = TempDir::new("crash-points");
    let d = Deployment {
        simulator_url: sim.base_url(),
        bootstrap: broker.bootstrap(),
        transport: "websocket",
        partitions: 4,
        webhook_secret: webhook_secret(),
        extra_toml: String::new(),
    };
    let mut replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::new(&dir.0, &format!("{point}-replica-{i}"), &d))
        .collect();
    let arm = |r: &mut Replica, rng: &mut rand_chacha::ChaCha8Rng| {
        let n = rng.gen_range(1..=passes(point));
        r.set_env("CALLBRIDGE_FAILPOINT", &format!("{point}:{n}"));
        r.start();
    };
    for r in &mut replicas {
        arm(r, &mut rng);
    }
    for r in &replicas {
        // A replica may already have crashed at its point during start-up; it is restarted below.
        let _ = r.wait_ready(Duration::from_secs(60)).await;
    }
    control.start_traffic();
    let started = Instant::now();
    let mut crashes = 0u64;
    let mut outside_kills = 0u64;
    let mut last_kill = Instant::now();
    let mut next_outside_kill = Instant::now() + Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(traffic_secs) {
        for r in &mut replicas {
            if !r.is_running() {
                crashes += 1;
                last_kill = Instant::now();
                arm(r, &mut rng);
            }
        }
        if Instant::now() >= next_outside_kill {
            let i = rng.gen_range(0..replicas.len());
            replicas[i].kill();
            last_kill = Instant::now();
            outside_kills += 1;
            arm(&mut replicas[i], &mut rng);
            next_outside_kill = Instant::now() + Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Disarm: restart both without the point and let them finish the work.
    for r in &mut replicas {
        if !r.is_running() {
            crashes += 1;
        }
        r.kill();
        last_kill = Instant::now();
        r.set_env("CALLBRIDGE_FAILPOINT", "");
        r.start();
    }
    join_after_sessions_expired(&mut replicas, last_kill, 4).await;
    let fired: usize = replicas
        .iter()
        .map(|r| {
            r.log_lines()
                .iter()
                .filter(|l| l.starts_with(&format!("failpoint {point}")))
                .count()
        })
        .sum();
    assert!(control.wait_until_done(Duration::from_secs(120)).await.done);
    let complete = wait_for_completion(&d, &control, &replicas, Duration::from_secs(120)).await;
    let truth = control.ground_truth();
    let v = verify(&truth, &d.read_ordered().await);
    println!(
        "{point}: {fired} kills at the point, {outside_kills} from outside, {} states checked\n{v}",
        v.states
    );
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
    assert!(fired > 0, "{point} never fired (crashes seen: {crashes})");
    assert!(complete, "{point}: not every announced call completed");
    assert!(
        v.is_perfect(),
        "{point}: the ordered topic is not perfect:\n{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_raw_ack_before_answer() {
    crash_at(failpoint::INGEST_AFTER_RAW_ACK, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_output_sent_before_ack() {
    crash_at(failpoint::SEQUENCER_AFTER_OUTPUT_SENT, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_output_ack_before_changelog() {
    crash_at(failpoint::SEQUENCER_BEFORE_CHANGELOG, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_changelog_before_commit() {
    crash_at(failpoint::SEQUENCER_BEFORE_COMMIT, 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_takeover_scan() {
    crash_at(failpoint::SEQUENCER_DURING_TAKEOVER_SCAN, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_backfill_answer_before_publish() {
    crash_at(failpoint::SEQUENCER_BACKFILL_ANSWERED, 16).await;
}
