//! Faults move the ground truth; rate limits; determinism; the ground-truth file.

mod simulator_support;

use std::collections::HashMap;
use std::time::Duration;

use callbridge::simulator::{GroundTruth, RunningSimulator, SimulatorConfig};
use reqwest::Method;
use serde_json::{json, Value};
use simulator_support::*;

fn calls(n: u64, states: u32) -> SimulatorConfig {
    let mut c = fast_config();
    c.scheduler.calls = n;
    c.traffic.min_states = states;
    c.traffic.max_states = states;
    c
}

/// Start a simulator with a subscribed webhook channel, run its traffic to the end.
async fn run_with_webhook(
    config: SimulatorConfig,
) -> (RunningSimulator, Receiver, String, GroundTruth) {
    let rx = Receiver::start().await;
    let sim = start(config).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (_, ch) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/hook"),
        &t,
        Some(json!({"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": rx.url}}})),
    )
    .await;
    let id = ch["channelId"].as_str().unwrap().to_string();
    subscribe_all(&base, &t, &id).await;
    sim.control().start_traffic();
    let st = sim.control().wait_until_done(Duration::from_secs(10)).await;
    assert!(st.done, "{st:?}");
    let gt = sim.control().ground_truth();
    (sim, rx, t, gt)
}

fn post_ids(rx: &Receiver) -> Vec<String> {
    rx.posts()
        .iter()
        .map(|p| p.json()["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn dropped_states_are_not_delivered_but_backfill_returns_them() {
    let mut c = calls(2, 4);
    c.faults.drop_rate = 1.0;
    let (sim, rx, t, gt) = run_with_webhook(c).await;
    assert!(rx.posts().is_empty());
    assert_eq!(gt.fault_counts["dropped"], 8);
    let csid = &gt.calls[0].conversation_space_id;
    let (s, v) = call(
        Method::GET,
        &format!(
            "{}/call-events/v1/conversation-spaces/{csid}/events",
            sim.base_url()
        ),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["states"].as_array().unwrap().len(), 4);
    assert!(gt.calls[0]
        .states
        .iter()
        .all(|s| s.dropped && !s.unrecoverable));
    sim.shutdown().await;
}

#[tokio::test]
async fn unrecoverable_states_vanish_everywhere_except_the_last() {
    let mut c = calls(1, 5);
    c.faults.unrecoverable_rate = 1.0;
    let (sim, rx, t, gt) = run_with_webhook(c).await;
    let posts = rx.posts();
    assert_eq!(posts.len(), 1, "only the last state is delivered");
    assert_eq!(posts[0].json()["content"]["state"]["type"], "ENDING");
    assert_eq!(gt.fault_counts["unrecoverable"], 4);
    assert_eq!(gt.unrecoverable.len(), 4);
    assert!(gt.unrecoverable.iter().all(|u| u.sequence_number < 5));
    let base = sim.base_url();
    let csid = &gt.calls[0].conversation_space_id;
    let (_, v) = call(
        Method::GET,
        &format!("{base}/call-events/v1/conversation-spaces/{csid}/events"),
        &t,
        None,
    )
    .await;
    let seqs: Vec<u64> = v["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![5]);
    let (s, r) = call(
        Method::GET,
        &format!("{base}/call-events-report/v1/reports/{csid}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["callStates"].as_array().unwrap().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicates_with_same_and_new_ids() {
    let mut c = calls(1, 3);
    c.faults.duplicate_rate = 1.0;
    let (sim, rx, _, gt) = run_with_webhook(c).await;
    let ids = post_ids(&rx);
    assert_eq!(ids.len(), 6);
    let mut per: HashMap<&String, usize> = HashMap::new();
    ids.iter().for_each(|i| *per.entry(i).or_default() += 1);
    assert!(per.values().all(|n| *n == 2), "same id twice: {per:?}");
    assert_eq!(gt.fault_counts["duplicated"], 3);
    sim.shutdown().await;

    let mut c = calls(1, 3);
    c.faults.duplicate_new_id_rate = 1.0;
    let (sim, rx, _, gt) = run_with_webhook(c).await;
    let posts = rx.posts();
    assert_eq!(posts.len(), 6);
    let mut ids = post_ids(&rx);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "every copy has its own id");
    let mut seqs: Vec<u64> = posts
        .iter()
        .map(|p| {
            p.json()["content"]["state"]["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 1, 2, 2, 3, 3]);
    assert_eq!(gt.fault_counts["duplicatedNewId"], 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn delay_and_burst_hold_states_back() {
    let mut c = calls(2, 4);
    c.faults.delay_rate = 1.0;
    c.faults.max_delay = Duration::from_millis(200);
    let (sim, rx, _, gt) = run_with_webhook(c).await;
    assert_eq!(rx.posts().len(), 8, "delayed, not lost");
    assert_eq!(gt.fault_counts["delayed"], 8);
    assert!(gt
        .calls
        .iter()
        .flat_map(|c| &c.states)
        .all(|s| s.delay_ms.is_some_and(|d| d <= 200)));
    sim.shutdown().await;

    // The burst window opens when the setting changes, i.e. as the simulator starts.
    let mut c = calls(2, 4);
    c.faults.burst_every = Some(Duration::from_secs(10));
    c.faults.burst_hold = Duration::from_secs(2);
    let (sim, rx, _, gt) = run_with_webhook(c).await;
    assert_eq!(rx.posts().len(), 8);
    assert!(gt.fault_counts["burstHeld"] >= 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn webhook_attempts_lost_and_answers_lost() {
    let mut c = calls(1, 3);
    c.faults.webhook_attempt_lost_rate = 1.0;
    let (sim, rx, _, gt) = run_with_webhook(c).await;
    assert!(rx.posts().is_empty(), "lost attempts never arrive");
    assert_eq!(gt.fault_counts["webhookAttemptLost"], 9);
    assert!(gt.calls[0].states.iter().all(|s| s
        .deliveries
        .values()
        .all(|d| d.attempts == 3 && d.dropped == 1)));
    sim.shutdown().await;

    let mut c = calls(1, 3);
    c.faults.webhook_response_lost_rate = 1.0;
    let (sim, rx, _, gt) = run_with_webhook(c).await;
    assert_eq!(
        rx.posts().len(),
        9,
        "each attempt arrives, the answer is lost, so it is retried"
    );
    assert_eq!(gt.fault_counts["webhookResponseLost"], 9);
    assert!(gt.calls[0].states.iter().all(|s| s
        .deliveries
        .values()
        .all(|d| d.delivered == 3 && d.acknowledged == 0)));
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_429_and_5xx_and_runtime_patch() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let ctl = client();
    let r = ctl
        .patch(format!("{base}/_simulator/faults"))
        .json(&json!({"rest_429_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["rest_429_rate"], 1.0);
    let (s, v) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels"),
        &t,
        None,
    )
    .await;
    assert_eq!(
        (s, v["errorCode"].as_str()),
        (429, Some("TOO_MANY_REQUESTS"))
    );
    ctl.patch(format!("{base}/_simulator/faults"))
        .json(&json!({"rest_429_rate": 0.0, "rest_5xx_rate": 1.0}))
        .send()
        .await
        .unwrap();
    let (s, _) = call(
        Method::GET,
        &format!("{base}/call-events/v1/subscriptions?channelId=x"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 503);
    let r = ctl
        .patch(format!("{base}/_simulator/faults"))
        .json(&json!({"rest_5xx_rate": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let gt = sim.control().ground_truth();
    assert_eq!(
        (gt.fault_counts["rest429"], gt.fault_counts["rest5xx"]),
        (1, 1)
    );
    let stats = sim.control().stats();
    assert_eq!(stats.apis["notification-channel"].too_many_requests, 1);
    assert_eq!(stats.apis["call-events"].by_status[&503], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_beyond_ten_per_second_per_api() {
    let mut c = fast_config();
    c.rate_limit.requests_per_second = 10;
    c.rate_limit.retry_after_seconds = Some(1);
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let url = format!("{base}/call-events/v1/subscriptions?channelId=x");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..15 {
        let r = client().get(&url).bearer_auth(&t).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|h| h.to_str().unwrap().to_string());
        }
    }
    // 15 requests in well under a second: the first 10 pass, the rest are refused.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200, "limits are per API");
    let stats = sim.control().stats();
    assert_eq!(stats.apis["call-events"].too_many_requests, 5);
    assert_eq!(stats.apis["call-events"].max_requests_in_one_second, 15);
    sim.shutdown().await;
}

#[tokio::test]
async fn retention_ages_states_out_of_backfill() {
    let mut c = calls(1, 3);
    c.faults.retention = Some(Duration::from_millis(300));
    let (sim, _rx, t, gt) = run_with_webhook(c).await;
    let csid = &gt.calls[0].conversation_space_id;
    let url = format!(
        "{}/call-events/v1/conversation-spaces/{csid}/events",
        sim.base_url()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (s, _) = call(Method::GET, &url, &t, None).await;
        if s == 404 {
            break;
        }
        assert_eq!(s, 200);
        assert!(tokio::time::Instant::now() < deadline, "never aged out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gt.retention_ms, Some(300));
    sim.shutdown().await;
}

#[tokio::test]
async fn scheduled_faults_fire_and_are_counted() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let _ws = ws_connect(&url).await;
    wait_connected(&base, &t, "n", &id).await;
    sim.control()
        .patch_faults(
            &json!({"websocket_disconnect_every": "100ms", "token_revoke_every": "100ms"}),
        )
        .unwrap();
    eventually(Duration::from_secs(3), || {
        let gt = sim.control().ground_truth();
        (gt.fault_counts
            .get("websocketDisconnect")
            .is_some_and(|n| *n >= 1)
            && gt
                .fault_counts
                .get("tokensRevoked")
                .is_some_and(|n| *n >= 1))
        .then_some(())
    })
    .await;
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 401);
    sim.control()
        .patch_faults(&json!({"channel_delete_every": "100ms", "token_revoke_every": null}))
        .unwrap();
    eventually(Duration::from_secs(3), || {
        sim.control()
            .ground_truth()
            .fault_counts
            .get("channelDeleted")
            .copied()
    })
    .await;
    let t = token(&base).await;
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels/n/{id}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn scheduled_to_be_closed_reaches_the_socket() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let mut ws = ws_connect(&url).await;
    wait_connected(&base, &t, "n", &id).await;
    sim.control()
        .patch_faults(&json!({"websocket_to_be_closed_every": "100ms"}))
        .unwrap();
    let msg = next_json(&mut ws, Duration::from_secs(3)).await.unwrap();
    assert_eq!(msg["data"]["type"], "WEBSOCKET_TO_BE_CLOSED");
    assert!(sim.control().ground_truth().fault_counts["websocketToBeClosed"] >= 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn same_seed_same_content() {
    async fn content(seed: u64) -> Vec<(Value, Vec<Value>)> {
        let mut c = calls(4, 5);
        c.traffic.seed = seed;
        c.traffic.base_time_ms = Some(1_700_000_000_000);
        let sim = start(c).await;
        sim.control().start_traffic();
        assert!(
            sim.control()
                .wait_until_done(Duration::from_secs(5))
                .await
                .done
        );
        let mut gt = sim.control().ground_truth();
        sim.shutdown().await;
        gt.calls.sort_by_key(|c| c.index);
        gt.calls
            .into_iter()
            .map(|c| (c.metadata, c.states.into_iter().map(|s| s.state).collect()))
            .collect()
    }
    let a = content(7).await;
    let b = content(7).await;
    let other = content(8).await;
    assert_eq!(a, b);
    assert_ne!(a, other);
}

#[tokio::test]
async fn ground_truth_is_served_and_written() {
    let dir = std::env::temp_dir().join(format!("sim-gt-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gt.json");
    let mut c = calls(2, 3);
    c.ground_truth_path = Some(path.clone());
    c.faults.drop_rate = 1.0;
    let (sim, _rx, _, _) = run_with_webhook(c).await;
    let served: Value = client()
        .get(format!("{}/_simulator/ground-truth", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["totals"]["states"], 6);
    assert_eq!(served["faultCounts"]["dropped"], 6);
    let r: Value = client()
        .post(format!("{}/_simulator/ground-truth/flush", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["written"], json!(path));
    std::fs::remove_file(&path).unwrap();
    sim.shutdown().await;
    let written: GroundTruth = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written.totals.calls, 2);
    assert_eq!(written.calls[0].states.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_refused_subscribe_request_subscribes_nothing() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, _) = websocket_channel(&base, &t, "bridge").await;
    sim.control()
        .patch_faults(&json!({ "subscription_request_status": 503 }))
        .unwrap();
    let (s, v) = call(
        Method::POST,
        &format!("{base}/call-events/v1/subscriptions"),
        &t,
        Some(json!({"channelId": id, "accountKeys": [{"id": "1000000000000000001"}]})),
    )
    .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["errorCode"], "UNKNOWN_ERROR", "{v}");
    let (s, v) = call(
        Method::GET,
        &format!("{base}/call-events/v1/subscriptions?channelId={id}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["accountKeys"], json!([]), "nothing subscribed");
    assert!(sim
        .control()
        .patch_faults(&json!({ "subscription_request_status": 200 }))
        .is_err());
}

#[tokio::test]
async fn a_refused_delete_leaves_the_channel() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, _) = websocket_channel(&base, &t, "bridge").await;
    let url = format!("{base}/notification-channel/v1/channels/bridge/{id}");
    sim.control()
        .patch_faults(&json!({ "channel_delete_status": 410 }))
        .unwrap();
    let (s, v) = call(Method::DELETE, &url, &t, None).await;
    assert_eq!(s, 410, "{v}");
    assert_eq!(v["errorCode"], "GONE", "{v}");
    assert_eq!(sim.control().channel_ids(), vec![id.clone()]);
    sim.control()
        .patch_faults(&json!({ "channel_delete_status": null }))
        .unwrap();
    let (s, _) = call(Method::DELETE, &url, &t, None).await;
    assert_eq!(s, 204);
    assert!(sim.control().channel_ids().is_empty());
    assert_eq!(
        sim.control().created_channel_ids(),
        vec![id],
        "still counted"
    );
}

#[tokio::test]
async fn a_paused_active_call_listing_is_answered_once_resumed_and_counted_meanwhile() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    sim.control()
        .patch_faults(&json!({ "active_calls_paused": true }))
        .unwrap();
    let url = format!("{base}/call-events/v1/conversation-spaces?accountKey=1000000000000000001");
    // One listing given up by its client, one waiting.
    let given_up = tokio::spawn({
        let (url, t) = (url.clone(), t.clone());
        async move { call(Method::GET, &url, &t, None).await }
    });
    let waiting = tokio::spawn({
        let (url, t) = (url.clone(), t.clone());
        async move { call(Method::GET, &url, &t, None).await }
    });
    let control = sim.control();
    eventually(Duration::from_secs(5), || {
        (control.stats().active_call_listings.in_flight == 2).then_some(())
    })
    .await;
    given_up.abort();
    eventually(Duration::from_secs(5), || {
        (control.stats().active_call_listings.in_flight == 1).then_some(())
    })
    .await;
    assert!(!waiting.is_finished(), "answered while paused");
    control
        .patch_faults(&json!({ "active_calls_paused": false }))
        .unwrap();
    let (s, v) = waiting.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert!(v["items"].is_array(), "{v}");
    let listings = control.stats().active_call_listings;
    assert_eq!(
        (
            listings.requests,
            listings.in_flight,
            listings.max_in_flight
        ),
        (2, 0, 2)
    );
}

/// The status a socket upgrade at `url` is answered with, and the answer's JSON body.
async fn upgrade_refusal(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            let body = answer.body().clone().unwrap_or_default();
            (
                answer.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("not an HTTP answer: {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn a_refused_upgrade_refuses_the_named_channel_only_and_leaves_it_listed() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (refused, refused_url) = websocket_channel(&base, &t, "bridge").await;
    let (_, other_url) = websocket_channel(&base, &t, "bridge").await;
    sim.control()
        .patch_faults(&json!({
            "websocket_upgrade_status": 404,
            "websocket_upgrade_channels": [refused],
        }))
        .unwrap();
    let (status, body) = upgrade_refusal(&refused_url).await;
    assert_eq!(status, 404);
    assert_eq!(
        body["errorCode"], "RTC-NOTIFICATION-CHANNEL-NOT-FOUND",
        "{body}"
    );
    // Every other channel's socket opens; the refused channel is still there.
    let _other = ws_connect(&other_url).await;
    assert!(sim.control().channel_ids().contains(&refused));
    // Counted before the answer (the accepted socket is counted once its pump runs, later).
    assert_eq!(sim.control().stats().websocket_upgrades_refused, 1);

    // Without channels named: every channel.
    sim.control()
        .patch_faults(&json!({ "websocket_upgrade_status": 403, "websocket_upgrade_channels": [] }))
        .unwrap();
    let (status, body) = upgrade_refusal(&other_url).await;
    assert_eq!(status, 403);
    assert_eq!(body["errorCode"], "AUTHZ_INSUFFICIENT_SCOPE", "{body}");

    // Cleared: the refused channel's socket opens.
    sim.control()
        .patch_faults(&json!({ "websocket_upgrade_status": null }))
        .unwrap();
    let _refused = ws_connect(&refused_url).await;
    assert!(sim
        .control()
        .patch_faults(&json!({ "websocket_upgrade_status": 200 }))
        .is_err());
}
