//! The traffic scheduler: pacing, concurrency, stop/start.

mod simulator_support;

use std::time::Duration;

use simulator_support::*;

#[tokio::test]
async fn calls_are_paced_and_bounded() {
    let mut c = fast_config();
    c.scheduler.calls_per_second = 10.0;
    c.scheduler.calls = 5;
    c.scheduler.max_concurrent_calls = 1;
    c.traffic.min_states = 3;
    c.traffic.max_states = 3;
    let sim = start(c).await;
    let ctl = sim.control();
    let t0 = tokio::time::Instant::now();
    ctl.start_traffic();
    let mut max_open = 0;
    loop {
        let s = ctl.traffic_status();
        max_open = max_open.max(s.calls_started - s.calls_ended);
        if s.done {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let s = ctl.traffic_status();
    assert_eq!(
        (s.calls_started, s.calls_ended, s.states_generated),
        (5, 5, 15)
    );
    assert!(max_open <= 1, "max_concurrent_calls = 1, saw {max_open}");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "5 calls at 10/s take ≥ 0.4 s"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn stop_then_start_keeps_traffic_running() {
    let mut c = fast_config();
    c.scheduler.calls_per_second = 50.0;
    let sim = start(c).await;
    let ctl = sim.control();
    ctl.start_traffic();
    eventually(Duration::from_secs(3), || {
        (ctl.traffic_status().calls_started >= 2).then_some(())
    })
    .await;
    ctl.stop_traffic();
    ctl.start_traffic();
    let before = ctl.traffic_status().calls_started;
    eventually(Duration::from_secs(3), || {
        (ctl.traffic_status().calls_started >= before + 3).then_some(())
    })
    .await;
    assert!(ctl.traffic_status().running);
    ctl.stop_traffic();
    let st = ctl.wait_until_done(Duration::from_secs(5)).await;
    assert!(st.done && !st.running, "{st:?}");
    assert_eq!(
        st.calls_started, st.calls_ended,
        "open calls play to their end"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn autostart_runs_without_control() {
    let mut c = fast_config();
    c.scheduler.autostart = true;
    c.scheduler.calls = 2;
    let sim = start(c).await;
    let st = sim.control().wait_until_done(Duration::from_secs(5)).await;
    assert!(st.done);
    assert_eq!(st.calls_started, 2);
    sim.shutdown().await;
}
