//! The simulator's Call Events Report API and TOML configuration loading.

mod simulator_support;

use std::time::Duration;

use callbridge::simulator::SimulatorConfig;
use reqwest::Method;
use serde_json::{json, Value};
use simulator_support::*;

const A1: &str = "1000000000000000001";

#[tokio::test]
async fn report_is_404_until_the_call_ends_then_has_every_state() {
    // An open call (states ~30 s apart): no report yet.
    let mut c = fast_config();
    c.scheduler.calls = 1;
    c.traffic.min_states = 5;
    c.traffic.mean_state_interval = Duration::from_secs(30);
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    sim.control().start_traffic();
    let csid = eventually(Duration::from_secs(3), || {
        sim.control()
            .ground_truth()
            .calls
            .first()
            .map(|c| c.conversation_space_id.clone())
    })
    .await;
    let (s, v) = call(
        Method::GET,
        &format!("{base}/call-events-report/v1/reports/{csid}"),
        &t,
        None,
    )
    .await;
    assert_eq!((s, v["errorCode"].as_str()), (404, Some("NOT_FOUND")));
    sim.shutdown().await;

    let mut c = fast_config();
    c.scheduler.calls = 1;
    c.traffic.min_states = 4;
    c.traffic.max_states = 4;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    sim.control().start_traffic();
    let csid = eventually(Duration::from_secs(3), || {
        sim.control()
            .ground_truth()
            .calls
            .first()
            .map(|c| c.conversation_space_id.clone())
    })
    .await;
    let url = format!("{base}/call-events-report/v1/reports/{csid}");
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let (s, r) = call(Method::GET, &url, &t, None).await;
    assert_eq!(s, 200);
    let gt = sim.control().ground_truth();
    let call0 = &gt.calls[0];
    assert_eq!(r["conversationSpaceId"], json!(csid));
    assert_eq!(r["accountKey"], json!(call0.account_key));
    assert_eq!(r["direction"], call0.metadata["direction"]);
    assert_eq!(r["callCreated"], call0.metadata["callCreated"]);
    assert_eq!(r["callEnded"], call0.states[3].state["timestamp"]);
    let states: Vec<&Value> = call0.states.iter().map(|s| &s.state).collect();
    assert_eq!(
        r["callStates"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        states
    );
    assert!(!r["participants"].as_array().unwrap().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn summaries_need_a_window_and_page() {
    let mut c = fast_config();
    c.scheduler.calls = 3;
    c.traffic.account_keys = vec![A1.into()];
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let url = format!("{base}/call-events-report/v1/report-summaries");
    let (s, v) = call(Method::GET, &format!("{url}?accountKey={A1}"), &t, None).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["constraints"],
        json!([
            {"field": "startTime", "constraint": "REQUIRED"},
            {"field": "endTime", "constraint": "REQUIRED"}
        ])
    );
    let (s, _) = call(
        Method::GET,
        &format!("{url}?startTime=2020-01-01T00:00:00Z&endTime=2020-03-01T00:00:00Z"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 400, "window over 31 days");
    let start =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(3600));
    let end =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(3600));
    let mut ids = Vec::new();
    let mut marker = String::new();
    loop {
        let (s, v) = call(Method::GET, &format!("{url}?accountKey={A1}&startTime={start}&endTime={end}&pageSize=2&pageMarker={marker}"), &t, None).await;
        assert_eq!(s, 200, "{v}");
        for i in v["items"].as_array().unwrap() {
            assert_eq!(i["accountKey"], A1);
            ids.push(i["conversationSpaceId"].as_str().unwrap().to_string());
        }
        match v.get("nextPageMarker") {
            Some(m) => marker = m.as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(ids.len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn report_subscriptions_and_report_ready_notification() {
    let rx = Receiver::start().await;
    let mut c = fast_config();
    c.scheduler.calls = 1;
    c.traffic.account_keys = vec![A1.into()];
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (_, ch) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/r"),
        &t,
        Some(json!({"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": rx.url}}})),
    )
    .await;
    let id = ch["channelId"].as_str().unwrap();
    let subs = format!("{base}/call-events-report/v1/subscriptions");
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": id, "accountKeys": [A1], "eventTypes": ["REPORT-SUMMARY"]})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["constraints"][0]["field"], "eventTypes[0]");
    let (s, v) = call(
        Method::POST,
        &subs,
        &t,
        Some(json!({"channelId": id, "accountKeys": [A1], "eventTypes": ["REPORT_SUMMARY"]})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(v["items"][0]["value"], A1);
    assert_eq!(v["items"][0]["channelId"], json!(id));
    let (s, v) = call(Method::GET, &format!("{subs}?channelId={id}"), &t, None).await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"accountKeys": [A1], "userKeys": [], "lineIds": [], "phoneNumberIds": []})
        )
    );
    sim.control().start_traffic();
    assert!(
        sim.control()
            .wait_until_done(Duration::from_secs(5))
            .await
            .done
    );
    let posts = rx.posts();
    assert_eq!(
        posts.len(),
        1,
        "only the report notification: no call-events subscription"
    );
    let n = posts[0].json();
    assert_eq!(
        (&n["source"], &n["type"]),
        (&json!("call-events-report"), &json!("REPORT_SUMMARY"))
    );
    assert_eq!(
        n["content"]["conversationSpaceId"],
        json!(sim.control().ground_truth().calls[0].conversation_space_id)
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

#[test]
fn config_loads_from_toml_with_every_section() {
    use figment::providers::{Format, Toml};
    let toml = r#"
        listen = "127.0.0.1:0"
        ground_truth_path = "/tmp/gt.json"
        [auth]
        client_id = "c"
        access_token_lifetime = "10m"
        [channels]
        websocket_lifetime = "20m"
        webhook_verification = "get"
        websocket_type_spelling = "as_requested"
        websocket_url_location = "top_level"
        [call_events]
        backfill_shape = "items"
        last_page_marker = "empty"
        forbidden_account_keys = ["1"]
        [delivery]
        envelope = "bare"
        websocket_frame = "event"
        webhook_retry_spacing = "50ms"
        [rate_limit]
        requests_per_second = 5
        retry_after_seconds = 2
        [scheduler]
        autostart = true
        calls_per_second = 0.5
        calls = 10
        [traffic]
        seed = 9
        participant_id_field = "participantId"
        [faults]
        drop_rate = 0.1
        burst_every = "30s"
        retention = "1h"
    "#;
    let c: SimulatorConfig = figment::Figment::from(Toml::string(toml))
        .extract()
        .unwrap();
    assert_eq!(c.channels.websocket_lifetime, Duration::from_secs(1200));
    assert_eq!(c.faults.retention, Some(Duration::from_secs(3600)));
    assert_eq!(c.scheduler.calls, 10);
    assert_eq!(c.delivery.webhook_retry_spacing, Duration::from_millis(50));
    let bad = figment::Figment::from(Toml::string("[faults]\nnot_a_fault = 1"))
        .extract::<SimulatorConfig>();
    assert!(bad.is_err());
}
