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
    join_after_sessions_expired, owned_partitions, wait_for_completion, Deployment, Replica,
    SESSION_TIMEOUT,
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

/// Ordered outputs stop for a while after every kill (tansu keeps the dead member until a later
/// join, then the takeover waits out its session), so a point passed per record can go a whole
/// fixed-length run without firing. The armed phase therefore runs at least `MIN_ARMED` and until
/// the point has fired, bounded by `MAX_ARMED` (the test fails if it never fires).
const MIN_ARMED: Duration = Duration::from_secs(30);
const MAX_ARMED: Duration = Duration::from_secs(90);

/// Kills of this point so far, over every incarnation of every replica.
fn fired(replicas: &[Replica], point: &str) -> usize {
    let prefix = format!("failpoint {point}");
    replicas
        .iter()
        .map(|r| {
            r.log_lines()
                .iter()
                .filter(|l| l.starts_with(&prefix))
                .count()
        })
        .sum()
}

async fn crash_at(point: &'static str, seed: u64) {
    let partitions = 4;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    // Enough calls for the longest armed phase; traffic is stopped when the phase ends.
    sim_config.scheduler.calls = 4 * MAX_ARMED.as_secs();
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
    let d = Deployment::new(
        sim.base_url(),
        broker.bootstrap(),
        "websocket",
        partitions as i32,
    );
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
    let mut evicting_restarts = 0u64;
    let mut last_kill = Instant::now();
    let mut last_evicting_restart = Instant::now();
    let mut next_outside_kill = Instant::now() + Duration::from_secs(5);
    // A takeover after a crash waits out the dead owner's session plus its fence margin (5 s).
    let takeover_bound = SESSION_TIMEOUT + Duration::from_secs(7);
    loop {
        let elapsed = started.elapsed();
        if (elapsed >= MIN_ARMED && fired(&replicas, point) > 0) || elapsed >= MAX_ARMED {
            break;
        }
        for r in &mut replicas {
            if !r.is_running() {
                crashes += 1;
                last_kill = Instant::now();
                arm(r, &mut rng);
            }
        }
        let all_owned = owned_partitions(&replicas).await >= partitions;
        if all_owned && Instant::now() >= next_outside_kill {
            // Kill a working deployment, not one still recovering from the last kill.
            let i = rng.gen_range(0..replicas.len());
            replicas[i].kill();
            last_kill = Instant::now();
            outside_kills += 1;
            arm(&mut replicas[i], &mut rng);
            next_outside_kill = Instant::now() + Duration::from_secs(5);
        } else if !all_owned
            && last_kill.elapsed() > takeover_bound
            && last_evicting_restart.elapsed() > takeover_bound
        {
            // Partitions still orphaned long after the last kill: tansu is keeping a dead member
            // until someone joins. A real broker evicts it by itself; a rolling restart is the
            // join tansu needs.
            let i = rng.gen_range(0..replicas.len());
            replicas[i].terminate();
            arm(&mut replicas[i], &mut rng);
            last_evicting_restart = Instant::now();
            evicting_restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let armed = started.elapsed();
    control.stop_traffic();
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
    join_after_sessions_expired(&mut replicas, last_kill, partitions).await;
    let fired = fired(&replicas, point);
    assert!(control.wait_until_done(Duration::from_secs(120)).await.done);
    let complete = wait_for_completion(&d, &control, &replicas, Duration::from_secs(120)).await;
    let truth = control.ground_truth();
    let v = verify(&truth, &d.read_ordered().await);
    println!(
        "{point}: {fired} kills at the point, {outside_kills} from outside, {evicting_restarts} \
         evicting restarts, armed {:.0} s, {} states checked\n{v}",
        armed.as_secs_f64(),
        v.states
    );
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
    if !v.is_perfect() {
        // CI keeps only what the test prints: the ownership history is what a diagnosis needs.
        for r in &replicas {
            for line in r.log_lines().iter().filter(|l| is_ownership_line(l)) {
                println!("{}: {line}", r.name);
            }
        }
    }
    assert!(fired > 0, "{point} never fired (crashes seen: {crashes})");
    assert!(complete, "{point}: not every announced call completed");
    assert!(
        v.is_perfect(),
        "{point}: the ordered topic is not perfect:\n{v}"
    );
}

/// Log lines that say who owned which partition when, and how each takeover resumed.
fn is_ownership_line(line: &str) -> bool {
    [
        "failpoint",
        "taken over",
        "released",
        "given up",
        "did not hand over cleanly",
        "without a hand-over",
        "sequencer run failed",
        "without its completion",
    ]
    .iter()
    .any(|needle| line.contains(needle))
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
