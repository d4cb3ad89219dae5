//! Delivery of call states to webhook and WebSocket channels.

mod simulator_support;

use std::collections::HashMap;
use std::time::Duration;

use callbridge::simulator::config::{Envelope, WebSocketFrame};
use callbridge::simulator::RunningSimulator;
use reqwest::Method;
use serde_json::json;
use simulator_support::*;

async fn webhook_channel(sim: &RunningSimulator, rx: &Receiver) -> (String, String) {
    let base = sim.base_url();
    let t = token(&base).await;
    let (s, ch) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/hook"),
        &t,
        Some(json!({"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": rx.url}}})),
    )
    .await;
    assert_eq!(s, 201);
    let id = ch["channelId"].as_str().unwrap().to_string();
    subscribe_all(&base, &t, &id).await;
    (id, t)
}

fn one_call(states: u32) -> callbridge::simulator::SimulatorConfig {
    let mut c = fast_config();
    c.scheduler.calls = 1;
    c.traffic.min_states = states;
    c.traffic.max_states = states;
    c
}

#[tokio::test]
async fn webhook_gets_every_state_in_the_full_envelope() {
    let rx = Receiver::start().await;
    let sim = start(one_call(5)).await;
    let (id, _) = webhook_channel(&sim, &rx).await;
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let posts = rx.posts();
    assert_eq!(posts.len(), 5);
    let gt = sim.control().ground_truth();
    let call0 = &gt.calls[0];
    let mut seqs = Vec::new();
    for p in &posts {
        assert_eq!(p.headers["content-type"], "application/json");
        let n = p.json();
        assert_eq!(n["source"], "call-events");
        assert_eq!(n["type"], "call-state");
        assert_eq!(n["ttl"], 600);
        assert_eq!(n["bypassDoNotDisturb"], false);
        assert!(n["id"].is_string() && n["timestamp"].is_string());
        assert_eq!(n["content"]["metadata"], call0.metadata);
        let seq = n["content"]["state"]["sequenceNumber"].as_u64().unwrap();
        assert_eq!(n["content"]["state"], call0.states[seq as usize - 1].state);
        seqs.push(seq);
    }
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    for st in &call0.states {
        let d = &st.deliveries[&id];
        assert_eq!(
            (d.copies, d.attempts, d.acknowledged, d.dropped),
            (1, 1, 1, 0)
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_500_receiver_sees_exactly_three_attempts_per_state() {
    let rx = Receiver::start().await;
    rx.answer_posts_with(500);
    let sim = start(one_call(3)).await;
    let (id, _) = webhook_channel(&sim, &rx).await;
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let posts = rx.posts();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for p in &posts {
        *per_id
            .entry(p.json()["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), 3);
    assert!(per_id.values().all(|n| *n == 3), "{per_id:?}");
    let gt = sim.control().ground_truth();
    for st in &gt.calls[0].states {
        let d = &st.deliveries[&id];
        assert_eq!((d.attempts, d.failed_attempts, d.dropped), (3, 3, 1));
        assert_eq!(d.drop_reasons, vec!["retriesExhausted"]);
    }
    let stats = sim.control().stats();
    assert_eq!(
        (
            stats.deliveries.attempted,
            stats.deliveries.failed,
            stats.deliveries.dropped
        ),
        (9, 9, 3)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_404_marks_the_channel_unreachable_until_the_next_2xx() {
    let rx = Receiver::start().await;
    rx.answer_posts_with(404);
    let sim = start(one_call(3)).await;
    let (id, t) = webhook_channel(&sim, &rx).await;
    let base = sim.base_url();
    let one = format!("{base}/notification-channel/v1/channels/hook/{id}");
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    assert_eq!(rx.posts().len(), 3, "404 is not retried");
    let (_, ch) = call(Method::GET, &one, &t, None).await;
    assert!(ch["webhookChannelData"]["unreachableTimestamp"].is_string());
    sim.shutdown().await;

    let mut c = one_call(3);
    c.scheduler.calls = 2;
    c.scheduler.max_concurrent_calls = 1;
    c.scheduler.calls_per_second = 5.0;
    let rx = Receiver::start().await;
    rx.answer_posts_with(410);
    let sim = start(c).await;
    let (id, t) = webhook_channel(&sim, &rx).await;
    let one = format!(
        "{}/notification-channel/v1/channels/hook/{id}",
        sim.base_url()
    );
    sim.control().start_traffic();
    rx.wait_posts(1, Duration::from_secs(3)).await;
    // The mark lands once the simulator has read the 410; poll for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, ch) = call(Method::GET, &one, &t, None).await;
        if ch["webhookChannelData"]["unreachableTimestamp"].is_string() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked unreachable"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rx.answer_posts_with(200);
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let (_, ch) = call(Method::GET, &one, &t, None).await;
    assert!(
        ch["webhookChannelData"]
            .get("unreachableTimestamp")
            .is_none(),
        "{ch}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn oversize_notifications_are_never_sent() {
    let rx = Receiver::start().await;
    let mut c = one_call(3);
    c.delivery.max_body_bytes = 64;
    let sim = start(c).await;
    webhook_channel(&sim, &rx).await;
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    assert!(rx.posts().is_empty());
    assert_eq!(sim.control().stats().deliveries.oversize, 3);
    sim.shutdown().await;
}

async fn ws_frames(frame: WebSocketFrame, envelope: Envelope) -> Vec<serde_json::Value> {
    let mut c = one_call(4);
    c.delivery.websocket_frame = frame;
    c.delivery.envelope = envelope;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    subscribe_all(&base, &t, &id).await;
    let mut ws = ws_connect(&url).await;
    wait_connected(&base, &t, "n", &id).await;
    sim.control().start_traffic();
    let mut frames = Vec::new();
    while frames.len() < 4 {
        frames.push(next_json(&mut ws, Duration::from_secs(5)).await.unwrap());
    }
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    sim.shutdown().await;
    frames
}

#[tokio::test]
async fn websocket_frames_follow_the_frame_and_envelope_settings() {
    let frames = ws_frames(WebSocketFrame::Data, Envelope::Full).await;
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| {
            f["data"]["content"]["state"]["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "in order without faults");
    assert_eq!(frames[0]["data"]["source"], "call-events");
    assert_eq!(frames[0]["data"]["type"], "call-state");
    assert!(frames[0].get("event").is_none());

    let frames = ws_frames(WebSocketFrame::Event, Envelope::Bare).await;
    assert_eq!(frames[0]["event"], "Notification");
    assert!(frames[0]["eventId"].is_string() && frames[0]["timestamp"].is_string());
    assert_eq!(frames[0]["data"]["state"]["type"], "STARTING");
    assert!(frames[0]["data"]["metadata"]["conversationSpaceId"].is_string());
    assert!(frames[0]["data"].get("source").is_none());
}

#[tokio::test]
async fn without_a_socket_states_are_lost_for_that_channel() {
    let sim = start(one_call(3)).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, _) = websocket_channel(&base, &t, "n").await;
    subscribe_all(&base, &t, &id).await;
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let gt = sim.control().ground_truth();
    for st in &gt.calls[0].states {
        assert_eq!(st.deliveries[&id].drop_reasons, vec!["noSocket"]);
    }
    sim.shutdown().await;
}
