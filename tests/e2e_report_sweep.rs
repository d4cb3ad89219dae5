//! Calls that start and end while nobody holds the channel: GoTo delivers none of their states,
//! and they are no longer active when the bridge is back, so only the report sweep can find them
//! (report summaries of the outage window, then the back-fill endpoint). One replica, WebSocket
//! mode, SIGKILLed while whole calls happen, then restarted.
mod support;

use callbridge::simulator::{self, FaultsConfig, SimulatorConfig};
use callbridge::verify::verify;
use std::time::{Duration, Instant};
use support::cluster::{wait_for_completion, Deployment, Replica, SESSION_TIMEOUT};
use support::tansu::{Tansu, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_entirely_inside_an_outage_are_found_by_the_report_sweep() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    sim_config.scheduler.calls = 12;
    sim_config.scheduler.calls_per_second = 4.0;
    sim_config.traffic.seed = 7;
    sim_config.traffic.min_states = 3;
    sim_config.traffic.max_states = 5;
    sim_config.traffic.mean_state_interval = Duration::from_millis(200);
    sim_config.faults = FaultsConfig::default();
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();
    let dir = TempDir::new("report-sweep");
    let d = Deployment::new(sim.base_url(), broker.bootstrap(), "websocket", 2);
    let mut replica = Replica::new(&dir.0, "sweep-replica", &d);
    replica.start();
    assert!(replica.wait_ready(Duration::from_secs(60)).await);

    // Nobody holds the socket while every call happens.
    replica.kill();
    let killed = Instant::now();
    control.start_traffic();
    let status = control.wait_until_done(Duration::from_secs(60)).await;
    assert!(status.done, "traffic did not finish");
    let truth = control.ground_truth();
    assert!(
        truth.calls.iter().all(|c| c
            .states
            .iter()
            .all(|s| s.deliveries.values().all(|d| d.delivered == 0))),
        "some state was delivered: the test would not isolate the sweep"
    );

    // tansu evicts the dead member only at a join after its session expired (a real broker
    // does it by itself); start again once it has, as a crash-looping pod would.
    tokio::time::sleep_until((killed + SESSION_TIMEOUT + Duration::from_secs(1)).into()).await;
    let restarted = Instant::now();
    replica.start();
    assert!(replica.wait_ready(Duration::from_secs(60)).await);
    // The new owner sweeps `report_sweep_lookback` (60 s) after `report_sweep_delay` (2 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = d.read_ordered().await;
        let complete = records
            .iter()
            .filter(|r| r.header("callbridge-kind") == Some("completion"))
            .count();
        if complete == truth.calls.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {complete} of {} calls found by the sweep",
            truth.calls.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} calls GoTo never delivered found and completed {:?} after the restart",
        truth.calls.len(),
        restarted.elapsed()
    );
    assert!(
        wait_for_completion(
            &d,
            &control,
            std::slice::from_ref(&replica),
            Duration::from_secs(30)
        )
        .await
    );
    let v = verify(&control.ground_truth(), &d.read_ordered().await);
    replica.terminate();
    sim.shutdown().await;
    assert_eq!(v.never_announced_calls, 0, "{v}");
    assert_eq!(
        v.states_backfilled, v.states_published,
        "every state came from the sweep"
    );
    assert!(v.is_perfect(), "{v}");
}
