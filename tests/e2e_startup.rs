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
    let mut k = KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    k.topics.partitions = 2;
    k.topics.replication_factor = 1;
    k
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
