//! Contract: the client's Notification Channel calls against the simulator's channel API.
//!
//! Covers every endpoint (create webhook / WebSocket, refresh, extend lifetime, get, list with
//! paging, delete) and every response variant the simulator can play where GoTo's documentation
//! is ambiguous: `WebSocket` vs `WebSockets`, `channelURL` nested or top-level, OPTIONS or GET
//! webhook verification.

mod contract_support;

use callbridge::goto::{ChannelKind, ChannelRequest, GotoError, WebSocketTypeSpelling};
use callbridge::simulator::config::{WebSocketSpelling, WebSocketUrlLocation, WebhookVerification};
use contract_support::*;
use futures_util::StreamExt;

const WEBSOCKET: ChannelRequest = ChannelRequest::WebSocket { lifetime: None };

#[tokio::test]
async fn webhook_channel_is_created_after_options_verification() {
    let sim = start(sim_config()).await;
    let receiver = Receiver::start(200).await;
    let client = client(&sim);
    let ch = client
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: receiver.url.clone(),
            },
        )
        .await
        .unwrap();
    assert!(ch.channel_id.starts_with("Webhook."), "{}", ch.channel_id);
    assert_eq!(ch.nickname, "bridge-hook");
    assert_eq!(
        ch.kind,
        ChannelKind::Webhook {
            url: Some(receiver.url.clone())
        }
    );
    assert_eq!(ch.lifetime_secs, Some(2_147_483_647));
    assert_eq!(ch.unreachable_since, None);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, axum::http::Method::OPTIONS);
}

#[tokio::test]
async fn webhook_channel_is_created_after_get_verification() {
    let mut c = sim_config();
    c.channels.webhook_verification = WebhookVerification::Get;
    let sim = start(c).await;
    let receiver = Receiver::start(200).await;
    let ch = client(&sim)
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: receiver.url.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ch.kind.url(), Some(receiver.url.as_str()));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, axum::http::Method::GET);
    assert_eq!(seen[0].user_agent.as_deref(), Some("GoTo Notifications"));
}

#[tokio::test]
async fn failed_webhook_verification_is_a_400_naming_the_url_field() {
    let sim = start(sim_config()).await;
    let receiver = Receiver::start(405).await;
    let err = client(&sim)
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: receiver.url.clone(),
            },
        )
        .await
        .unwrap_err();
    match &err {
        GotoError::Api {
            status,
            error_code,
            constraints,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error_code.as_deref(), Some("BAD_REQUEST"));
            assert_eq!(
                constraints[0].field.as_deref(),
                Some("webhookChannelData.webhook.url")
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("POST /notification-channel/v1/channels/{nickname} answered HTTP 400"),
        "{text}"
    );
    assert!(
        !text.contains("s3cr3t-path"),
        "webhook URL in the error: {text}"
    );
    assert!(client(&sim).list_channels().await.unwrap().is_empty());
}

/// Creates a WebSocket channel with the given spellings on each side and returns its type as
/// the simulator reports it on the wire next to what the client decoded.
async fn websocket_with_spelling(
    sim_spelling: WebSocketSpelling,
    client_spelling: WebSocketTypeSpelling,
) -> (String, ChannelKind) {
    let mut c = sim_config();
    c.channels.websocket_type_spelling = sim_spelling;
    let sim = start(c).await;
    let mut cfg = client_config(&sim);
    cfg.websocket_channel_type = client_spelling;
    let ch = client_with(cfg)
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap();
    assert_eq!(ch.lifetime_secs, Some(10_800));
    let token = raw_token(&sim).await;
    let (status, body) = raw_get(
        &sim,
        &token,
        &format!(
            "/notification-channel/v1/channels/bridge-ws/{}",
            ch.channel_id
        ),
    )
    .await;
    assert_eq!(status, 200);
    let wire: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spelled = wire["channelData"]["channelType"]
        .as_str()
        .unwrap()
        .to_owned();
    (spelled, ch.kind)
}

fn assert_websocket_url(kind: &ChannelKind) {
    match kind {
        ChannelKind::WebSocket { url: Some(url) } => {
            assert!(url.starts_with("ws://127.0.0.1:"), "{url}")
        }
        other => panic!("expected a WebSocket channel with a URL, got {other:?}"),
    }
}

#[tokio::test]
async fn websocket_type_spelled_websockets_is_accepted() {
    let (spelled, kind) = websocket_with_spelling(
        WebSocketSpelling::WebSockets,
        WebSocketTypeSpelling::WebSocket,
    )
    .await;
    assert_eq!(spelled, "WebSockets");
    assert_websocket_url(&kind);
}

#[tokio::test]
async fn websocket_type_spelled_websocket_is_accepted() {
    let (spelled, kind) = websocket_with_spelling(
        WebSocketSpelling::WebSocket,
        WebSocketTypeSpelling::WebSockets,
    )
    .await;
    assert_eq!(spelled, "WebSocket");
    assert_websocket_url(&kind);
}

#[tokio::test]
async fn websocket_type_echoed_as_requested_is_accepted() {
    for (client_spelling, expected) in [
        (WebSocketTypeSpelling::WebSocket, "WebSocket"),
        (WebSocketTypeSpelling::WebSockets, "WebSockets"),
    ] {
        let (spelled, kind) =
            websocket_with_spelling(WebSocketSpelling::AsRequested, client_spelling).await;
        assert_eq!(spelled, expected, "the client sent {expected}");
        assert_websocket_url(&kind);
    }
}

#[tokio::test]
async fn websocket_url_at_the_top_level_is_found() {
    let mut c = sim_config();
    c.channels.websocket_url_location = WebSocketUrlLocation::TopLevel;
    let sim = start(c).await;
    let client = client(&sim);
    let ch = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap();
    assert_websocket_url(&ch.kind);
    // Same on the read paths.
    let got = client
        .get_channel("bridge-ws", &ch.channel_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.kind, ch.kind);
    let listed = client.list_channels().await.unwrap();
    assert_eq!(listed[0].kind, ch.kind);
}

/// The URL the client hands back is the one the simulator serves the socket on.
#[tokio::test]
async fn websocket_url_returned_by_the_client_connects() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let ch = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap();
    let url = ch.kind.url().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    eventually(std::time::Duration::from_secs(3), async || {
        let token = raw_token(&sim).await;
        let (_, body) = raw_get(
            &sim,
            &token,
            &format!(
                "/notification-channel/v1/channels/bridge-ws/{}",
                ch.channel_id
            ),
        )
        .await;
        body.contains(r#""isConnected":true"#).then_some(())
    })
    .await;
    // Deleting the channel closes the socket.
    assert!(client
        .delete_channel("bridge-ws", &ch.channel_id)
        .await
        .unwrap());
    let closed = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "socket still open after delete");
}

#[tokio::test]
async fn requested_lifetime_is_honoured_and_refresh_restarts_it() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let request = ChannelRequest::WebSocket {
        lifetime: Some(1200),
    };
    let ch = client.create_channel("bridge-ws", &request).await.unwrap();
    assert_eq!(ch.lifetime_secs, Some(1200));
    let refreshed = client
        .refresh_channel("bridge-ws", &ch.channel_id, &request)
        .await
        .unwrap();
    assert_eq!(refreshed.channel_id, ch.channel_id);
    assert_eq!(refreshed.nickname, "bridge-ws");
    assert_eq!(refreshed.kind, ch.kind, "same socket URL after refresh");
    assert_eq!(refreshed.lifetime_secs, Some(1200));
}

#[tokio::test]
async fn refresh_of_a_webhook_channel_keeps_its_url() {
    let sim = start(sim_config()).await;
    let receiver = Receiver::start(200).await;
    let client = client(&sim);
    let request = ChannelRequest::Webhook {
        url: receiver.url.clone(),
    };
    let ch = client
        .create_channel("bridge-hook", &request)
        .await
        .unwrap();
    let refreshed = client
        .refresh_channel("bridge-hook", &ch.channel_id, &request)
        .await
        .unwrap();
    assert_eq!(refreshed.channel_id, ch.channel_id);
    assert_eq!(refreshed.kind, ch.kind);
    assert_eq!(refreshed.lifetime_secs, Some(2_147_483_647));
}

#[tokio::test]
async fn extend_lifetime_returns_the_new_lifetime() {
    let mut c = sim_config();
    c.channels.websocket_lifetime = std::time::Duration::from_secs(1200);
    let sim = start(c).await;
    let client = client(&sim);
    let ch = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap();
    assert_eq!(ch.lifetime_secs, Some(1200));
    let extended = client
        .extend_channel_lifetime("bridge-ws", &ch.channel_id)
        .await
        .unwrap();
    assert_eq!(extended, 1200);
}

/// goto-api.md §2.3: `PUT …/channel-lifetime` "extends by the default value" — so a channel
/// created with a shorter lifetime gets at least the default after an extension.
#[tokio::test]
async fn extend_lifetime_extends_by_the_default_lifetime() {
    let mut c = sim_config();
    c.channels.websocket_lifetime = std::time::Duration::from_secs(1200);
    let sim = start(c).await;
    let client = client(&sim);
    let ch = client
        .create_channel(
            "bridge-ws",
            &ChannelRequest::WebSocket { lifetime: Some(60) },
        )
        .await
        .unwrap();
    assert_eq!(ch.lifetime_secs, Some(60));
    let extended = client
        .extend_channel_lifetime("bridge-ws", &ch.channel_id)
        .await
        .unwrap();
    assert!(extended >= 1200, "extended to {extended} s");
}

#[tokio::test]
async fn requested_lifetime_above_the_maximum_is_capped() {
    let sim = start(sim_config()).await;
    let ch = client(&sim)
        .create_channel(
            "bridge-ws",
            &ChannelRequest::WebSocket {
                lifetime: Some(1_000_000),
            },
        )
        .await
        .unwrap();
    assert_eq!(ch.lifetime_secs, Some(10_800));
}

/// A webhook answering 410 is marked unreachable (`webhookChannelData.unreachableTimestamp`);
/// the client surfaces that on its channel.
#[tokio::test]
async fn unreachable_webhook_is_reported_on_the_channel() {
    let mut c = with_traffic(sim_config(), 1, 3, 3);
    c.scheduler.autostart = false;
    let sim = start(c).await;
    let receiver = Receiver::answering(200, 410).await;
    let client = client(&sim);
    let ch = client
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: receiver.url.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ch.unreachable_since, None);
    let keys = [A1, A2, A3].map(callbridge::goto::AccountSubscription::all_events);
    let outcomes = client
        .subscribe_call_events(&ch.channel_id, &keys)
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o.is_subscribed()), "{outcomes:?}");
    sim.control().start_traffic();
    traffic_done(&sim).await;
    assert!(
        receiver
            .seen()
            .iter()
            .any(|s| s.method == axum::http::Method::POST),
        "premise: deliveries reached the receiver"
    );
    let got = client
        .get_channel("bridge-hook", &ch.channel_id)
        .await
        .unwrap()
        .expect("the channel stays");
    let since = got.unreachable_since.expect("marked unreachable");
    assert!(since.starts_with("20"), "{since}");
}

#[tokio::test]
async fn get_returns_the_channel_as_created() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let ch = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap();
    let got = client
        .get_channel("bridge-ws", &ch.channel_id)
        .await
        .unwrap()
        .expect("channel exists");
    assert_eq!(got.channel_id, ch.channel_id);
    assert_eq!(got.nickname, ch.nickname);
    assert_eq!(got.kind, ch.kind);
    let lifetime = got.lifetime_secs.unwrap();
    assert!((10_790..=10_800).contains(&lifetime), "{lifetime}");
    // A wrong nickname does not find it (GoTo addresses channels by nickname and id).
    assert!(client
        .get_channel("someone-else", &ch.channel_id)
        .await
        .unwrap()
        .is_none());
}

/// Nicknames are free-form (GoTo's examples contain `@` and `.`): the client must encode them
/// so the simulator decodes the same nickname.
#[tokio::test]
async fn nickname_with_reserved_characters_round_trips() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let nickname = "ops@example.com bridge/1?x#y";
    let ch = client.create_channel(nickname, &WEBSOCKET).await.unwrap();
    assert_eq!(ch.nickname, nickname);
    let got = client
        .get_channel(nickname, &ch.channel_id)
        .await
        .unwrap()
        .expect("found under the same nickname");
    assert_eq!(got.nickname, nickname);
    assert!(client
        .delete_channel(nickname, &ch.channel_id)
        .await
        .unwrap());
}

#[tokio::test]
async fn list_follows_page_markers_past_the_default_page_size() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let mut created = Vec::new();
    for i in 0..103 {
        let ch = client
            .create_channel(&format!("bridge-{i}"), &WEBSOCKET)
            .await
            .unwrap();
        created.push(ch.channel_id);
    }
    let before = requests(&sim, "notification-channel");
    let listed = client.list_channels().await.unwrap();
    assert_eq!(
        requests(&sim, "notification-channel") - before,
        2,
        "two pages of at most 100"
    );
    let ids: Vec<String> = listed.into_iter().map(|c| c.channel_id).collect();
    assert_eq!(ids, created, "every channel once, in creation order");
}

/// A GoTo whose page size maximum is below 100 (the maximum is only "per one third party",
/// goto-api.md §2.4) must still be listable.
#[tokio::test]
async fn list_follows_page_markers_with_a_small_server_page_size() {
    let mut c = sim_config();
    c.channels.max_page_size = 3;
    let sim = start(c).await;
    let client = client(&sim);
    let mut created = Vec::new();
    for i in 0..7 {
        let ch = client
            .create_channel(&format!("bridge-{i}"), &WEBSOCKET)
            .await
            .unwrap();
        created.push(ch.channel_id);
    }
    let before = requests(&sim, "notification-channel");
    let listed = client.list_channels().await.unwrap();
    assert_eq!(requests(&sim, "notification-channel") - before, 3);
    let ids: Vec<String> = listed.into_iter().map(|c| c.channel_id).collect();
    assert_eq!(ids, created);
}

#[tokio::test]
async fn delete_is_true_then_false_and_the_channel_is_gone() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let ch = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap();
    assert!(client
        .delete_channel("bridge-ws", &ch.channel_id)
        .await
        .unwrap());
    assert!(!client
        .delete_channel("bridge-ws", &ch.channel_id)
        .await
        .unwrap());
    assert!(client
        .get_channel("bridge-ws", &ch.channel_id)
        .await
        .unwrap()
        .is_none());
    assert!(client.list_channels().await.unwrap().is_empty());
    assert_eq!(answered(&sim, "notification-channel", 204), 1);
    assert_eq!(answered(&sim, "notification-channel", 404), 2);
}

#[tokio::test]
async fn refresh_and_extend_of_a_missing_channel_are_404_errors() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let err = client
        .refresh_channel("bridge-ws", "no-such-channel", &WEBSOCKET)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some("RTC-NOTIFICATION-CHANNEL-NOT-FOUND"));
    let err = client
        .extend_channel_lifetime("bridge-ws", "no-such-channel")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some("RTC-NOTIFICATION-CHANNEL-NOT-FOUND"));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "PUT /notification-channel/v1/channels/{nickname}/{channelId}/channel-lifetime answered HTTP 404 RTC-NOTIFICATION-CHANNEL-NOT-FOUND"
        ),
        "{text}"
    );
}
