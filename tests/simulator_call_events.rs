//! The simulator's Call Events API: subscriptions, back-fill, active calls.

mod simulator_support;

use std::time::Duration;

use callbridge::simulator::config::{BackfillShape, LastPageMarker};
use reqwest::Method;
use serde_json::{json, Value};
use simulator_support::*;

const A1: &str = "1000000000000000001";

#[tokio::test]
async fn subscribe_answers_207_with_a_verdict_per_item() {
    let mut c = fast_config();
    c.call_events.forbidden_account_keys = vec!["1000000000000000002".into()];
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, _) = websocket_channel(&base, &t, "n").await;
    let subs = format!("{base}/call-events/v1/subscriptions");
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": id, "accountKeys": [
            {"id": A1, "events": ["STARTING", "ENDING"]},
            {"id": "1000000000000000002"},
            {"id": "999"}
        ]})),
    )
    .await;
    assert_eq!(s, 207);
    let items = v["accountKeys"].as_array().unwrap();
    assert_eq!(
        items[0],
        json!({"id": A1, "status": 200, "message": "Success"})
    );
    assert_eq!(
        (&items[1]["status"], &items[1]["errorCode"]),
        (&json!(403), &json!("AUTHZ_INSUFFICIENT_SCOPE"))
    );
    assert_eq!(
        (&items[2]["status"], &items[2]["errorCode"]),
        (&json!(404), &json!("NOT_FOUND"))
    );
    // Repeat subscribe is harmless.
    let (s, _) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": id, "accountKeys": [{"id": A1, "events": ["ACTIVE"]}]})),
    )
    .await;
    assert_eq!(s, 207);
    let (s, v) = call(Method::GET, &format!("{subs}?channelId={id}"), &t, None).await;
    assert_eq!((s, v), (200, json!({"accountKeys": [A1]})));
    let (s, v) = call(Method::GET, &subs, &t, None).await;
    assert_eq!(s, 400);
    assert_eq!(v["constraints"][0]["field"], "channelId");
    assert_eq!(
        call(
            Method::DELETE,
            &format!("{subs}?channelId={id}&accountKey={A1}"),
            &t,
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(
            Method::DELETE,
            &format!("{subs}?channelId={id}&accountKey={A1}"),
            &t,
            None
        )
        .await
        .0,
        404
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn repeat_subscribe_keeps_the_first_event_list() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let subs = format!("{base}/call-events/v1/subscriptions");
    let keys: Vec<Value> = [
        "1000000000000000001",
        "1000000000000000002",
        "1000000000000000003",
    ]
    .iter()
    .map(|k| json!({"id": k, "events": ["ENDING"]}))
    .collect();
    call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": id, "accountKeys": keys})),
    )
    .await;
    let keys: Vec<Value> = [
        "1000000000000000001",
        "1000000000000000002",
        "1000000000000000003",
    ]
    .iter()
    .map(|k| json!({"id": k}))
    .collect();
    call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": id, "accountKeys": keys})),
    )
    .await;
    let mut ws = ws_connect(&url).await;
    wait_connected(&base, &t, "n", &id).await;
    let c = sim.control();
    c.start_traffic();
    let mut types = Vec::new();
    while let Some(frame) = next_json(&mut ws, Duration::from_secs(5)).await {
        types.push(
            frame["data"]["content"]["state"]["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        if types.len() == 3 {
            break;
        }
    }
    assert_eq!(types, ["ENDING", "ENDING", "ENDING"]);
    c.stop_traffic();
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_and_invalid_subscriptions_get_constraints() {
    let mut c = fast_config();
    c.call_events.require_websocket_channel = true;
    let rx = Receiver::start().await;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let subs = format!("{base}/call-events/v1/subscriptions");
    let (ws_id, _) = websocket_channel(&base, &t, "n").await;
    let r = client()
        .post(&subs)
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("[1,")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errorCode"],
        "MALFORMED_REQUEST"
    );
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"accountKeys": [{"id": A1}]})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["constraints"],
        json!([{"field": "channelId", "constraint": "REQUIRED"}])
    );
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(
            json!({"channelId": ws_id, "accountKeys": [{"id": A1, "events": ["REPORT_SUMMARY"]}]}),
        ),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["constraints"],
        json!([{"field": "Events[0]", "constraint": "INVALID"}])
    );
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": ws_id, "accountKeys": [{"events": ["ACTIVE"]}]})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["constraints"],
        json!([{"field": "ID", "constraint": "REQUIRED"}])
    );
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": "nope", "accountKeys": [{"id": A1}]})),
    )
    .await;
    assert_eq!((s, v["errorCode"].as_str()), (404, Some("NOT_FOUND")));
    let (_, hook) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/h"),
        &t,
        Some(json!({"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": rx.url}}})),
    )
    .await;
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": hook["channelId"], "accountKeys": [{"id": A1}]})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "The Notification Channel must be a WebSocket channel"
    );
    let bf = format!("{base}/call-events/v1/conversation-spaces/x/events?sequenceFrom=abc");
    let (s, v) = call(Method::GET, &bf, &t, None).await;
    assert_eq!(s, 400);
    assert_eq!(v["constraints"][0]["field"], "sequenceFrom");
    sim.shutdown().await;
}

async fn run_traffic(
    sim: &callbridge::simulator::RunningSimulator,
) -> callbridge::simulator::GroundTruth {
    let c = sim.control();
    c.start_traffic();
    let st = c.wait_until_done(Duration::from_secs(10)).await;
    assert!(st.done, "{st:?}");
    c.ground_truth()
}

#[tokio::test]
async fn backfill_states_shape_pages_with_inclusive_bounds() {
    let mut c = fast_config();
    c.scheduler.calls = 3;
    c.traffic.min_states = 8;
    c.traffic.max_states = 8;
    c.call_events.last_page_marker = LastPageMarker::Empty;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let gt = run_traffic(&sim).await;
    let call0 = &gt.calls[0];
    let csid = &call0.conversation_space_id;
    let url = format!("{base}/call-events/v1/conversation-spaces/{csid}/events");
    let (s, v) = call(
        Method::GET,
        &format!("{url}?sequenceFrom=3&sequenceTo=3"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["metadata"], call0.metadata);
    assert_eq!(v["states"].as_array().unwrap().len(), 1);
    assert_eq!(v["states"][0], call0.states[2].state);
    assert_eq!(v["nextPageMarker"], "");
    // Page through 2..=7 three at a time.
    let mut got = Vec::new();
    let mut marker = String::new();
    loop {
        let (_, v) = call(
            Method::GET,
            &format!("{url}?sequenceFrom=2&sequenceTo=7&pageSize=3&pageMarker={marker}"),
            &t,
            None,
        )
        .await;
        for st in v["states"].as_array().unwrap() {
            got.push(st["sequenceNumber"].as_u64().unwrap());
        }
        marker = v["nextPageMarker"].as_str().unwrap().to_string();
        if marker.is_empty() {
            break;
        }
    }
    assert_eq!(got, vec![2, 3, 4, 5, 6, 7]);
    let (s, v) = call(
        Method::GET,
        &format!("{base}/call-events/v1/conversation-spaces/unknown/events"),
        &t,
        None,
    )
    .await;
    assert_eq!((s, v["errorCode"].as_str()), (404, Some("NOT_FOUND")));
    sim.shutdown().await;
}

#[tokio::test]
async fn backfill_items_shape_with_absent_marker() {
    let mut c = fast_config();
    c.scheduler.calls = 1;
    c.traffic.min_states = 4;
    c.traffic.max_states = 4;
    c.call_events.backfill_shape = BackfillShape::Items;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let gt = run_traffic(&sim).await;
    let csid = &gt.calls[0].conversation_space_id;
    let (s, v) = call(
        Method::GET,
        &format!("{base}/call-events/v1/conversation-spaces/{csid}/events"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["metadata"], gt.calls[0].metadata);
    assert_eq!(items[3]["state"]["type"], "ENDING");
    assert!(v.get("nextPageMarker").is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn active_calls_lists_the_last_state_of_open_calls() {
    let mut c = fast_config();
    c.traffic.mean_state_interval = Duration::from_secs(30);
    c.traffic.min_states = 5;
    c.scheduler.calls = 2;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    sim.control().start_traffic();
    eventually(Duration::from_secs(3), || {
        (sim.control().traffic_status().states_generated >= 2).then_some(())
    })
    .await;
    let keys = "accountKey=1000000000000000001&accountKey=1000000000000000002&accountKey=1000000000000000003";
    let (s, v) = call(
        Method::GET,
        &format!("{base}/call-events/v1/conversation-spaces?{keys}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items
        .iter()
        .all(|i| i["state"]["type"] == "STARTING"
            && i["metadata"]["conversationSpaceId"].is_string()));
    let (s, _) = call(
        Method::GET,
        &format!("{base}/call-events/v1/conversation-spaces"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 400);
    sim.shutdown().await;
}
