//! The simulator's Notification Channel API and WebSocket server.

mod simulator_support;

use std::time::Duration;

use callbridge::simulator::config::{WebSocketSpelling, WebSocketUrlLocation, WebhookVerification};
use reqwest::Method;
use serde_json::json;
use simulator_support::*;

#[tokio::test]
async fn webhook_channel_crud_and_verification_by_options() {
    let rx = Receiver::start().await;
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (s, ch) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/my.nick@x"),
        &t,
        Some(json!({"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": rx.url}}})),
    )
    .await;
    assert_eq!(s, 201, "{ch}");
    let id = ch["channelId"].as_str().unwrap().to_string();
    assert!(id.starts_with("Webhook."));
    assert_eq!(ch["channelNickname"], "my.nick@x");
    assert_eq!(ch["webhookChannelData"]["channelType"], "Webhook");
    assert_eq!(ch["webhookChannelData"]["webhook"]["url"], rx.url.as_str());
    assert_eq!(ch["channelLifetime"], 2_147_483_647u64);
    assert_eq!(ch["doNotDisturbAware"], false);
    assert!(ch["resourceURL"].as_str().unwrap().ends_with(&id));
    let verification = rx.seen();
    assert_eq!(verification.len(), 1);
    assert_eq!(verification[0].method, Method::OPTIONS);

    let one = format!("{base}/notification-channel/v1/channels/my.nick@x/{id}");
    let (s, got) = call(Method::GET, &one, &t, None).await;
    assert_eq!((s, &got["channelId"]), (200, &json!(id)));
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels/other/{id}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 404, "nickname must match");
    assert_eq!(call(Method::DELETE, &one, &t, None).await.0, 204);
    let (s, gone) = call(Method::DELETE, &one, &t, None).await;
    assert_eq!(s, 404);
    assert_eq!(gone["errorCode"], "RTC-NOTIFICATION-CHANNEL-NOT-FOUND");
    assert_eq!(gone["constraintViolations"], json!([]));
    assert!(gone["message"].as_str().unwrap().contains(&id));
    sim.shutdown().await;
}

#[tokio::test]
async fn webhook_verification_failure_and_get_variant_and_https_rule() {
    let rx = Receiver::start().await;
    rx.answer_verification_with(405);
    let mut c = fast_config();
    c.channels.webhook_verification = WebhookVerification::Options;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let body =
        json!({"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": rx.url}}});
    let (s, v) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/n"),
        &t,
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["constraintViolations"].is_array());
    sim.shutdown().await;

    rx.answer_verification_with(200);
    let mut c = fast_config();
    c.channels.webhook_verification = WebhookVerification::Get;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (s, _) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/n"),
        &t,
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 201);
    let last = rx.seen().pop().unwrap();
    assert_eq!(last.method, Method::GET);
    assert_eq!(last.headers["user-agent"], "GoTo Notifications");
    sim.shutdown().await;

    let mut c = fast_config();
    c.channels.require_https_443 = true;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (s, _) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/n"),
        &t,
        Some(body),
    )
    .await;
    assert_eq!(
        s, 400,
        "http on a random port is refused under the https+443 rule"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_channel_requests_get_constraint_violations() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let url = format!("{base}/notification-channel/v1/channels/n");
    let r = client()
        .post(&url)
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "MALFORMED_REQUEST");
    let (s, v) = call(
        Method::POST,
        &url,
        &t,
        Some(json!({"channelType": "Pigeon"})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["constraintViolations"],
        json!([{"field": "channelType", "constraint": "INVALID"}])
    );
    let (s, v) = call(
        Method::POST,
        &url,
        &t,
        Some(json!({"channelType": "Webhook"})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["constraintViolations"][0]["field"],
        "webhookChannelData.webhook.url"
    );
    let (s, v) = call(
        Method::POST,
        &url,
        &t,
        Some(json!({"webhookChannelData": {}})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["constraintViolations"][0]["constraint"], "REQUIRED");
    let (s, _) = call(
        Method::POST,
        &url,
        &t,
        Some(json!({"channelType": "WebSocket", "channelLifetime": "soon"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels?pageSize=abc"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn websocket_spellings_and_url_location_follow_settings() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    for spelling in ["WebSocket", "WebSockets"] {
        let (s, ch) = call(
            Method::POST,
            &format!("{base}/notification-channel/v1/channels/n"),
            &t,
            Some(json!({"channelType": spelling})),
        )
        .await;
        assert_eq!(s, 201);
        assert_eq!(
            ch["channelData"]["channelType"], "WebSockets",
            "default spelling"
        );
        assert_eq!(ch["channelLifetime"], 10800);
        assert_eq!(ch["channelData"]["isConnected"], false);
        assert!(ch["channelData"]["channelURL"]
            .as_str()
            .unwrap()
            .starts_with("ws://127.0.0.1:"));
    }
    sim.shutdown().await;

    let mut c = fast_config();
    c.channels.websocket_type_spelling = WebSocketSpelling::AsRequested;
    c.channels.websocket_url_location = WebSocketUrlLocation::TopLevel;
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (_, ch) = call(
        Method::POST,
        &format!("{base}/notification-channel/v1/channels/n"),
        &t,
        Some(json!({"channelType": "WebSocket", "channelLifetime": 60})),
    )
    .await;
    assert_eq!(ch["channelData"]["channelType"], "WebSocket");
    assert!(ch["channelURL"].is_string());
    assert!(ch["channelData"].get("channelURL").is_none());
    assert_eq!(ch["channelLifetime"], 60);
    sim.shutdown().await;
}

#[tokio::test]
async fn list_pages_until_the_marker_is_absent() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let mut made = Vec::new();
    for i in 0..5 {
        let (_, ch) = call(
            Method::POST,
            &format!("{base}/notification-channel/v1/channels/n{i}"),
            &t,
            Some(json!({"channelType": "WebSockets"})),
        )
        .await;
        made.push(ch["channelId"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{base}/notification-channel/v1/channels?pageSize=2");
        if let Some(m) = &marker {
            url.push_str(&format!("&pageMarker={m}"));
        }
        let (s, page) = call(Method::GET, &url, &t, None).await;
        assert_eq!(s, 200);
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["channelId"].as_str().unwrap().to_string());
        }
        match page.get("nextPageMarker") {
            Some(m) => marker = Some(m.as_str().unwrap().to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made);
    sim.shutdown().await;
}

#[tokio::test]
async fn websocket_gets_refresh_required_then_closes_at_expiry() {
    let mut c = fast_config();
    c.channels.websocket_lifetime = Duration::from_secs(2);
    c.channels.refresh_required_before = Duration::from_secs(1);
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let mut ws = ws_connect(&url).await;
    let started = tokio::time::Instant::now();
    let msg = next_json(&mut ws, Duration::from_secs(3)).await.unwrap();
    assert_eq!(msg["data"]["type"], "WEBSOCKET_REFRESH_REQUIRED");
    assert_eq!(msg["data"]["source"], "notification-websocket");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not sent too early"
    );
    assert!(
        next_json(&mut ws, Duration::from_secs(3)).await.is_none(),
        "closed at expiry"
    );
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels/n/{id}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 404, "channel gone after expiry");
    sim.shutdown().await;
}

#[tokio::test]
async fn refresh_resets_the_countdown() {
    let mut c = fast_config();
    c.channels.websocket_lifetime = Duration::from_secs(2);
    c.channels.refresh_required_before = Duration::from_secs(1);
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let mut ws = ws_connect(&url).await;
    let one = format!("{base}/notification-channel/v1/channels/n/{id}");
    for _ in 0..2 {
        let msg = next_json(&mut ws, Duration::from_secs(3)).await.unwrap();
        assert_eq!(msg["data"]["type"], "WEBSOCKET_REFRESH_REQUIRED");
        let (s, ch) = call(
            Method::PUT,
            &one,
            &t,
            Some(json!({"channelType": "WebSockets"})),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(ch["channelLifetime"], 2);
    }
    // Still alive well past the original 2 s lifetime thanks to the refreshes.
    let (s, ch) = call(Method::GET, &format!("{one}/channel-lifetime"), &t, None).await;
    assert_eq!(s, 200);
    assert!(ch["channelLifetime"].as_u64().unwrap() >= 1);
    let (s, ch) = call(Method::PUT, &format!("{one}/channel-lifetime"), &t, None).await;
    assert_eq!((s, &ch["channelLifetime"]), (200, &json!(2)));
    sim.shutdown().await;
}

#[tokio::test]
async fn to_be_closed_then_close_and_disconnect() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let mut ws = ws_connect(&url).await;
    let ctl = client();
    // The socket registers asynchronously after the handshake; retry until it is seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = ctl
            .post(format!("{base}/_simulator/channels/{id}/to-be-closed"))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let msg = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(msg["data"]["type"], "WEBSOCKET_TO_BE_CLOSED");
    assert!(next_json(&mut ws, Duration::from_secs(3)).await.is_none());
    assert_eq!(
        sim.control().ground_truth().fault_counts["websocketToBeClosed"],
        1
    );

    let (id2, url2) = websocket_channel(&base, &t, "m").await;
    let mut ws2 = ws_connect(&url2).await;
    eventually(Duration::from_secs(2), || {
        sim.control().disconnect_socket(&id2).then_some(())
    })
    .await;
    assert!(next_json(&mut ws2, Duration::from_secs(2)).await.is_none());
    let (s, ch) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels/m/{id2}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 200, "a cut does not delete the channel");
    assert_eq!(ch["channelData"]["isConnected"], false);
    let r = ctl
        .post(format!("{base}/_simulator/channels/{id2}/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing connected any more");
    sim.shutdown().await;
}

#[tokio::test]
async fn protocol_pings_are_answered_and_control_delete_closes_the_socket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (id, url) = websocket_channel(&base, &t, "n").await;
    let mut ws = ws_connect(&url).await;
    wait_connected(&base, &t, "n", &id).await;
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
    let r = client()
        .delete(format!("{base}/_simulator/channels/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(next_json(&mut ws, Duration::from_secs(2)).await.is_none());
    let (s, _) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels/n/{id}"),
        &t,
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        sim.control().ground_truth().fault_counts["channelDeleted"],
        1
    );
    let bad = ws_url_404(&url).await;
    assert!(bad, "the URL of a deleted channel no longer upgrades");
    sim.shutdown().await;
}

async fn ws_url_404(url: &str) -> bool {
    tokio_tungstenite::connect_async(url).await.is_err()
}
