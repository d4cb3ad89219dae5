//! A replica joining the sequencer's group under traffic takes only the raw partitions it is
//! given: the replica already running hands over exactly those, and keeps processing the others
//! without giving them up and taking them over again (the group's assignor is
//! `cooperative-sticky`; with an eager one every join revokes every partition everywhere, and
//! each is drained, released and taken over anew, a pause of every call in the deployment). The
//! ordered topic stays perfect across the join. Real `callbridge run` processes on tansu.
mod support;

use callbridge::simulator::{self, SimulatorConfig};
use callbridge::verify::verify;
use std::time::{Duration, Instant};
use support::cluster::{owned_partitions, wait_for_completion, Deployment, Replica};
use support::tansu::{Tansu, TempDir};

const PARTITIONS: u64 = 4;

/// Lines of `replica`'s log whose message is `message`.
fn count(replica: &Replica, message: &str) -> usize {
    let needle = format!("\"message\":\"{message}\"");
    replica
        .log_lines()
        .iter()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Partitions `replica` owns, from its readiness report.
async fn owned_by(replica: &Replica) -> u64 {
    owned_partitions(std::slice::from_ref(replica)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_replica_moves_only_the_partitions_it_gets() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.scheduler.calls = 60;
    sim_config.scheduler.calls_per_second = 6.0;
    sim_config.traffic.min_states = 4;
    sim_config.traffic.max_states = 8;
    sim_config.traffic.mean_state_interval = Duration::from_millis(500);
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();
    let dir = TempDir::new("rebalance");
    let d = Deployment::new(
        sim.base_url(),
        broker.bootstrap(),
        "webhook",
        PARTITIONS as i32,
    );
    let mut replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::new(&dir.0, &format!("replica-{i}"), &d))
        .collect();

    replicas[0].start();
    assert!(replicas[0].wait_ready(Duration::from_secs(60)).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while owned_by(&replicas[0]).await < PARTITIONS {
        assert!(
            Instant::now() < deadline,
            "replica-0 never owned every partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(&replicas[0], "partition taken over"),
        PARTITIONS as usize
    );

    control.start_traffic();
    // Join while calls are under way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    replicas[1].start();
    assert!(replicas[1].wait_ready(Duration::from_secs(60)).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (kept, given) = loop {
        let (kept, given) = (owned_by(&replicas[0]).await, owned_by(&replicas[1]).await);
        if given > 0 && kept + given == PARTITIONS {
            break (kept, given);
        }
        assert!(
            Instant::now() < deadline,
            "the partitions were never shared: {kept} and {given}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("after the join: replica-0 owns {kept}, replica-1 owns {given}");

    assert!(control.wait_until_done(Duration::from_secs(120)).await.done);
    let complete = wait_for_completion(&d, &control, &replicas, Duration::from_secs(120)).await;
    let v = verify(&control.ground_truth(), &d.read_ordered().await);
    println!("{v}");
    // Counted once the traffic is over: a rebalance after the join would show here too.
    let released = count(&replicas[0], "partition released");
    let taken = count(&replicas[0], "partition taken over");
    for r in &mut replicas {
        r.terminate();
    }
    sim.shutdown().await;
    assert!(complete, "not every call completed");
    assert!(v.is_perfect(), "the ordered topic is not perfect:\n{v}");
    assert_eq!(
        released as u64, given,
        "replica-0 released {released} partitions for the {given} replica-1 got"
    );
    assert_eq!(
        taken as u64, PARTITIONS,
        "replica-0 took partitions over again ({taken} takeovers in all) after the join"
    );
}
