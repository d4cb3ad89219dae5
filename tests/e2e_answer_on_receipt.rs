//! `webhook.answer = "on_receipt"` and a crash: the states the bridge answered 200 but Kafka never
//! had die with the process, and GoTo, told they were received, never sends them again. The
//! sequencer must find them missing and back-fill them. Kafka is stopped so that answered states
//! pile up unacknowledged (up to `webhook.on_receipt_limit`), the bridge is killed with SIGKILL,
//! then both come back: the ordered topic must still be perfect.
mod support;

use callbridge::demo::metric_value;
use callbridge::simulator;
use callbridge::verify::verify;
use std::time::{Duration, Instant};
use support::cluster::{
    join_after_sessions_expired, long_calls, start_traffic_and_wait, traffic_done_and_complete,
    Deployment, Replica,
};
use support::tansu::{Tansu, TempDir};

const LIMIT: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn states_answered_on_receipt_and_lost_in_a_crash_are_back_filled() {
    let data = TempDir::new("on-receipt-kafka");
    let mut broker = Tansu::start_with_storage(Some(&data.0));
    // Calls start before Kafka goes and live on after the crash, so the lost states sit between
    // states the bridge does get: gaps the sequencer finds and back-fills.
    let sim = simulator::start(long_calls(30, 41, 12..=16, Duration::from_secs(2)))
        .await
        .unwrap();
    let control = sim.control();
    let dir = TempDir::new("on-receipt");
    let d = Deployment::new(sim.base_url(), broker.bootstrap(), "webhook", 3);
    let mut replica = Replica::new(&dir.0, "on-receipt-replica", &d);
    replica.set_env("CALLBRIDGE_WEBHOOK__ANSWER", "on_receipt");
    replica.set_env("CALLBRIDGE_WEBHOOK__ON_RECEIPT_LIMIT", &LIMIT.to_string());
    replica.start();
    assert!(replica.wait_ready(Duration::from_secs(60)).await);
    start_traffic_and_wait(&control, 30).await;

    broker.stop();
    // Wait for the bridge to report every place taken: LIMIT states answered 200 that only its
    // memory holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = replica.metrics().await;
        if metric_value(&text, "callbridge_webhook_answered_unacknowledged") >= LIMIT as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge never held {LIMIT} states answered on receipt"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    replica.kill();
    let killed_at = Instant::now();
    broker.restart();
    replica.start();
    assert!(replica.wait_ready(Duration::from_secs(60)).await);
    // tansu keeps the killed member in the group until a join after its session expired.
    join_after_sessions_expired(std::slice::from_mut(&mut replica), killed_at, 3).await;

    let complete = traffic_done_and_complete(&d, &control, &replica).await;
    let truth = control.ground_truth();
    let ordered = d.read_ordered().await;
    let v = verify(&truth, &ordered);
    println!("{v}");
    let answered_then_backfilled = answered_and_backfilled(&truth, &ordered);
    println!("{answered_then_backfilled} states GoTo saw answered 200 were back-filled");
    replica.terminate();
    sim.shutdown().await;

    assert!(complete, "not every call completed after the crash");
    assert_eq!(v.never_announced_calls, 0, "a call was lost as a whole");
    // The bridge held LIMIT states answered 200 and not in Kafka when it was killed; GoTo never
    // sends an answered state again, so each must come back through back-fill.
    assert!(
        answered_then_backfilled >= LIMIT,
        "{answered_then_backfilled} states GoTo saw answered 200 were back-filled, fewer than \
         the {LIMIT} lost in the crash"
    );
    assert!(v.is_perfect(), "the ordered topic is not perfect:\n{v}");
    assert_eq!(
        v.gap_records, 0,
        "a gap record where GoTo still had the states"
    );
}

/// States GoTo saw answered 2xx on some channel whose published copy came from back-fill: the
/// ones the crash took after the bridge had answered for them. (Counted per state, not from
/// GoTo's delivery counters around `broker.stop()`: a state answered just before the stop and not
/// yet acknowledged by Kafka is lost in the crash too.)
fn answered_and_backfilled(
    truth: &callbridge::simulator::ground_truth::GroundTruth,
    ordered: &[callbridge::verify::ReadRecord],
) -> u64 {
    let backfilled: std::collections::HashSet<(&str, u64)> = ordered
        .iter()
        .filter_map(|r| {
            let value: serde_json::Value = serde_json::from_slice(&r.value).ok()?;
            if value.get("type")?.as_str()? != "call-state"
                || value.get("origin")?.as_str()? != "backfill"
            {
                return None;
            }
            Some((r.key.as_deref()?, value.get("sequenceNumber")?.as_u64()?))
        })
        .collect();
    truth
        .calls
        .iter()
        .flat_map(|call| {
            call.states
                .iter()
                .map(move |s| (call.conversation_space_id.as_str(), s))
        })
        .filter(|(id, s)| {
            s.deliveries.values().any(|d| d.acknowledged > 0)
                && backfilled.contains(&(*id, s.sequence_number))
        })
        .count() as u64
}
