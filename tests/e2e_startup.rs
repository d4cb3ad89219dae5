//! Start-up and Kafka-outage behaviour of the bridge against the simulator and tansu.
mod support;

use callbridge::app::{self, AppError, Listeners};
use callbridge::config::bridge::ChannelKind;
use callbridge::demo::bridge_config;
use callbridge::kafka::KafkaConfig;
use callbridge::simulator::{self, SimulatorConfig};
use std::time::{Duration, Instant};
use support::tansu::Tansu;

fn kafka(broker: &Tansu) -> KafkaConfig {
    broker.kafka(2)
}

async fn listeners() -> (Listeners, std::net::SocketAddr) {
    let (l, webhook, _) = listeners_and_admin().await;
    (l, webhook)
}

/// Pre-bound listeners and their (webhook, admin) addresses: the admin port answers while
/// `app::start` is still running.
async fn listeners_and_admin() -> (Listeners, std::net::SocketAddr, std::net::SocketAddr) {
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = webhook.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    (
        Listeners {
            webhook: Some(webhook),
            admin: Some(admin),
        },
        addr,
        admin_addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_subscription_stops_start_up_with_the_fix() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let forbidden = sim_config.traffic.account_keys[1].clone();
    sim_config.call_events.forbidden_account_keys = vec![forbidden.clone()];
    let sim = simulator::start(sim_config).await.unwrap();
    let (l, addr) = listeners().await;
    let config = bridge_config(&sim.base_url(), kafka(&broker), ChannelKind::Webhook, addr);
    let err = match app::start(config, l).await {
        Ok(_) => panic!("start-up must fail"),
        Err(e) => e,
    };
    assert!(matches!(err, AppError::Channel(_)), "{err}");
    let text = err.to_string();
    for needle in [
        forbidden.as_str(),
        "403",
        "AUTHZ_INSUFFICIENT_SCOPE",
        "Fix:",
        "call-events.v1.notifications.manage",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(
        !text.contains("demo-secret") && !text.contains("demo-pat"),
        "{text}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_answers_503_within_the_bound_when_kafka_is_gone() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let sim = simulator::start(sim_config).await.unwrap();
    let (l, addr) = listeners().await;
    let mut config = bridge_config(&sim.base_url(), kafka(&broker), ChannelKind::Webhook, addr);
    config.kafka.ack_timeout = Duration::from_secs(1);
    let url = format!(
        "http://{addr}/goto/webhook/{}",
        config.webhook.secret.expose()
    );
    let bridge = app::start(config, l).await.expect("bridge starts");
    let body = serde_json::json!({
        "id": "n-1", "source": "call-events", "type": "call-state",
        "content": {"metadata": {"conversationSpaceId": "c-outage"},
                    "state": {"id": "s-1", "sequenceNumber": 1, "type": "STARTING", "participants": []}}
    });
    let http = reqwest::Client::new();
    let ok = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 200, "accepted while Kafka is up");

    drop(broker); // Kafka goes away.
    let started = Instant::now();
    let r = http.post(&url).json(&body).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["reason"], "kafka_ack_timeout");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(bridge); // shutting down would wait for a broker that is gone
    sim.shutdown().await;
}

async fn readyz(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    match http.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or_default())
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Polls `/readyz` (or `/readyz/traffic`) until `pred` holds (an awaited condition with a
/// deadline, not a sleep).
async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    pred: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(http, url).await;
        if pred(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last /readyz {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_channel_and_kafka() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();
    let (l, addr) = listeners().await;
    let config = bridge_config(&sim.base_url(), kafka(&broker), ChannelKind::Webhook, addr);
    let bridge = app::start(config, l).await.expect("bridge starts");
    let url = format!("http://{}/readyz", bridge.admin_addr);
    let traffic = format!("http://{}/readyz/traffic", bridge.admin_addr);
    let http = reqwest::Client::new();
    wait_ready(&http, &url, "ready after start-up", |s, _| s == 200).await;
    wait_ready(&http, &traffic, "ready for traffic", |s, _| s == 200).await;
    let health = http
        .get(format!("http://{}/healthz", bridge.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["checks"]["sequencer_loop"]["ok"], true, "{health}");
    assert!(
        health["checks"]["sequencer_loop"]["last_turn_ms_ago"]
            .as_u64()
            .unwrap()
            < 5_000
    );

    // The channel disappears and GoTo answers 503 to everything: the repair fails, not ready.
    let channel_id = match &*bridge.channel.borrow() {
        callbridge::channel::ChannelState::Ready(id) => id.clone(),
        other => panic!("{other:?}"),
    };
    assert!(control.delete_channel(&channel_id));
    control
        .patch_faults(&serde_json::json!({"rest_5xx_rate": 1.0}))
        .unwrap();
    let body = wait_ready(&http, &url, "channel check fails", |s, b| {
        s == 503 && b["checks"]["channel"]["ok"] == false
    })
    .await;
    assert_eq!(body["checks"]["kafka"]["ok"], true, "{body}");
    // Webhooks still reach this replica: it writes them to raw whatever the channel does.
    let (status, body) = readyz(&http, &traffic).await;
    assert_eq!(status, 200, "traffic readiness ignores the channel: {body}");
    assert!(body["checks"].get("channel").is_none(), "{body}");
    // GoTo recovers: the repair loop recreates the channel, ready again.
    control
        .patch_faults(&serde_json::json!({"rest_5xx_rate": 0.0}))
        .unwrap();
    wait_ready(&http, &url, "ready after repair", |s, _| s == 200).await;

    // Kafka goes away: not ready, and the body says why.
    drop(broker);
    let body = wait_ready(&http, &url, "kafka check fails", |s, b| {
        s == 503 && b["checks"]["kafka"]["ok"] == false
    })
    .await;
    assert_eq!(body["ready"], false);
    // ... but the pod stays in the Service: its producer queues what it receives until Kafka is
    // back, where a Service without endpoints would leave GoTo's POSTs nowhere to go.
    let (status, body) = readyz(&http, &traffic).await;
    assert_eq!(
        status, 200,
        "traffic readiness does not require Kafka: {body}"
    );
    assert_eq!(body["checks"]["kafka"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["shutdown"]["ok"], true, "{body}");
    drop(bridge);
    sim.shutdown().await;
}

/// A replica takes webhooks before its channel exists (GoTo verifies the webhook URL when the
/// channel is created, so the Service must route to a replica whose channel is not up yet), and
/// stops taking them as soon as shutdown begins, while the full `/readyz` keeps its meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_readiness_is_up_before_the_channel_and_down_at_shutdown() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    // GoTo answers every subscription 503: the owner retries, start-up waits for it.
    sim_config.faults.subscription_item_status = Some(503);
    let sim = simulator::start(sim_config).await.unwrap();
    let control = sim.control();
    let (l, addr, admin) = listeners_and_admin().await;
    let config = bridge_config(&sim.base_url(), kafka(&broker), ChannelKind::Webhook, addr);
    let webhook_url = format!(
        "http://{addr}/goto/webhook/{}",
        config.webhook.secret.expose()
    );
    let starting = tokio::spawn(app::start(config, l));
    let http = reqwest::Client::new();
    let full = format!("http://{admin}/readyz");
    let traffic = format!("http://{admin}/readyz/traffic");

    wait_ready(&http, &full, "channel down during start-up", |s, b| {
        s == 503
            && b["checks"]["channel"]["state"]
                .as_str()
                .is_some_and(|c| c.starts_with("Down"))
    })
    .await;
    let body = wait_ready(
        &http,
        &traffic,
        "ready for traffic before the channel",
        |s, _| s == 200,
    )
    .await;
    assert_eq!(body["checks"]["webhook"]["ok"], true, "{body}");
    let (status, body) = readyz(&http, &full).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["channel"]["ok"], false, "{body}");
    assert!(!starting.is_finished(), "start-up waits for the channel");
    // What the Service now sends here is taken: GoTo's check of the URL, and notifications.
    let check = http
        .request(reqwest::Method::OPTIONS, &webhook_url)
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200);
    let state = serde_json::json!({
        "id": "n-early", "source": "call-events", "type": "call-state",
        "content": {"metadata": {"conversationSpaceId": "c-early"},
                    "state": {"id": "s-1", "sequenceNumber": 1, "type": "STARTING", "participants": []}}
    });
    let posted = http.post(&webhook_url).json(&state).send().await.unwrap();
    assert_eq!(posted.status(), 200);

    control
        .patch_faults(&serde_json::json!({"subscription_item_status": null}))
        .unwrap();
    let bridge = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("start-up finishes once GoTo takes the subscriptions")
        .unwrap()
        .expect("bridge starts");
    wait_ready(&http, &full, "ready after start-up", |s, _| s == 200).await;

    // Shutdown: out of traffic first thing, while the rest drains.
    let stopping = tokio::spawn(bridge.shutdown());
    let body = wait_ready(
        &http,
        &traffic,
        "out of traffic once shutdown began",
        |s, b| s == 503 && b["checks"]["shutdown"]["ok"] == false,
    )
    .await;
    assert_eq!(body["checks"]["kafka"]["ok"], true, "{body}");
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("shutdown finishes")
        .unwrap();
    sim.shutdown().await;
}
