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
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = webhook.local_addr().unwrap();
    (
        Listeners {
            webhook: Some(webhook),
            admin: Some(admin),
        },
        addr,
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

/// Polls `/readyz` until `pred` holds (an awaited condition with a deadline, not a sleep).
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    let http = reqwest::Client::new();
    wait_ready(&http, &url, "ready after start-up", |s, _| s == 200).await;
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
    drop(bridge);
    sim.shutdown().await;
}
