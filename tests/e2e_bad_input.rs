//! Bad input through the real webhook and a real broker (tansu): every malformed body gets a
//! clear answer and lands in the dead-letter topic with its reason; nothing is lost.
mod support;

use callbridge::app::{self, Listeners};
use callbridge::config::bridge::ChannelKind;
use callbridge::demo::bridge_config;
use callbridge::ingest::route::MAX_NOTIFICATION_BYTES;
use callbridge::kafka::reader::read_topic;
use callbridge::kafka::KafkaConfig;
use callbridge::simulator::{self, SimulatorConfig};
use callbridge::verify::ReadRecord;
use serde_json::json;
use std::time::{Duration, Instant};
use support::tansu::Tansu;

fn call_state(conv: &str, seq: u64, state_id: &str) -> serde_json::Value {
    json!({
        "id": format!("n-{conv}-{seq}-{state_id}"), "source": "call-events", "type": "call-state",
        "timestamp": "2026-01-01T00:00:00.000Z", "ttl": 600,
        "content": {
            "metadata": {"conversationSpaceId": conv, "direction": "INBOUND", "accountKey": "1000000000000000001"},
            "state": {"id": state_id, "sequenceNumber": seq, "type": if seq == 1 { "STARTING" } else { "ACTIVE" },
                      "timestamp": "2026-01-01T00:00:00.000Z", "participants": []}
        }
    })
}

/// A call state of exactly `len` bytes (padded inside its state).
fn call_state_of_len(conv: &str, seq: u64, len: usize) -> Vec<u8> {
    let with_pad = |pad: usize| {
        let mut v = call_state(conv, seq, "state-big");
        v["content"]["state"]["pad"] = json!("x".repeat(pad));
        serde_json::to_vec(&v).unwrap()
    };
    let body = with_pad(len - with_pad(0).len());
    assert_eq!(body.len(), len);
    body
}

async fn wait_for_records(kafka: &KafkaConfig, topic: &str, n: usize) -> Vec<ReadRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (k, t) = (kafka.clone(), topic.to_string());
        let records =
            tokio::task::spawn_blocking(move || read_topic(&k, &t, Duration::from_secs(10)))
                .await
                .unwrap()
                .unwrap();
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_bodies_are_answered_and_dead_lettered_with_their_reason() {
    let broker = Tansu::start();
    let mut sim_config = SimulatorConfig::default();
    sim_config.scheduler.autostart = false;
    let sim = simulator::start(sim_config).await.unwrap();
    let mut kafka = KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    kafka.topics.partitions = 2;
    kafka.topics.replication_factor = 1;
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = webhook.local_addr().unwrap();
    let config = bridge_config(&sim.base_url(), kafka.clone(), ChannelKind::Webhook, addr);
    let url = format!(
        "http://{addr}/goto/webhook/{}",
        config.webhook.secret.expose()
    );
    let bridge = app::start(
        config,
        Listeners {
            webhook: Some(webhook),
            admin: Some(admin),
        },
    )
    .await
    .expect("bridge starts");
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // GoTo's verification request and a wrong secret.
    assert_eq!(
        http.request(reqwest::Method::OPTIONS, &url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let wrong = format!("http://{addr}/goto/webhook/not-the-secret");
    assert_eq!(
        http.post(&wrong).body("{}").send().await.unwrap().status(),
        404
    );

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 202, "invalid_json"),
        (serde_json::to_vec(&json!({"source":"call-events","type":"call-state","content":{"metadata":{},"state":{"sequenceNumber":1}}})).unwrap(), 202, "missing_conversation_space_id"),
        (serde_json::to_vec(&json!({"source":"call-events","type":"call-state","content":{"metadata":{"conversationSpaceId":"c-x"},"state":{"type":"ACTIVE"}}})).unwrap(), 202, "missing_sequence_number"),
        // The changelog keys its own records `__progress/…` and `__fence/…`: no call may.
        (serde_json::to_vec(&call_state("__progress/1", 1, "state-r")).unwrap(), 202, "invalid_conversation_space_id"),
        // Under GoTo's 1 MiB cap but over what Kafka takes as a record (1,000,000 bytes, key and
        // headers included): dead-lettered, not answered 503 on every retry.
        (call_state_of_len("c-band", 1, 1_048_000), 413, "oversize"),
        (vec![b' '; 1024 * 1024 + 10], 413, "oversize"),
        // Too large to read at all: still answered and dead-lettered, without its content.
        (vec![b' '; 4 * 1024 * 1024 + 10], 413, "oversize"),
    ];
    for (body, status, reason) in &cases {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{reason}");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer["reason"], *reason);
    }
    // A valid state, then the same sequence with different content: a conflicting duplicate,
    // caught by the sequencer after the raw topic.
    let first = post(serde_json::to_vec(&call_state("c-conflict", 1, "state-a")).unwrap())
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let dup = post(serde_json::to_vec(&call_state("c-conflict", 1, "state-a")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        dup.status(),
        200,
        "a plain duplicate is accepted (and dropped later)"
    );
    let conflict = post(serde_json::to_vec(&call_state("c-conflict", 1, "state-b")).unwrap())
        .await
        .unwrap();
    assert_eq!(conflict.status(), 200);
    // A call whose first state is its ENDING, then one more state: GoTo sends ENDING last, so
    // the sequencer sets the later one aside as `after_ending` (not as a conflict).
    let mut ending = call_state("c-ended", 1, "state-end");
    ending["content"]["state"]["type"] = json!("ENDING");
    let ended = post(serde_json::to_vec(&ending).unwrap()).await.unwrap();
    assert_eq!(ended.status(), 200);
    let after = post(serde_json::to_vec(&call_state("c-ended", 2, "state-late")).unwrap())
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    // A state ingest can route but the sequencer cannot fingerprint (a number beyond f64):
    // accepted at ingest, which reads routing fields only, and dead-lettered by the sequencer.
    let huge = post(
        br#"{"source":"call-events","type":"call-state","content":{"metadata":{"conversationSpaceId":"c-huge"},"state":{"sequenceNumber":1,"x":1e400}}}"#
            .to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(huge.status(), 200);
    // A state just under the routable limit is written to raw and published, whole.
    let big_body = call_state_of_len("c-big", 1, MAX_NOTIFICATION_BYTES);
    let big = post(big_body.clone()).await.unwrap();
    assert_eq!(big.status(), 200, "a state at the limit is accepted");
    // Another source on the same channel: counted and dropped (no other-sources topic set).
    let other = post(serde_json::to_vec(&json!({"source":"call-events-report","type":"REPORT_SUMMARY","content":{"conversationSpaceId":"c-r"}})).unwrap()).await.unwrap();
    assert_eq!(other.status(), 200);

    let dlq = wait_for_records(&kafka, &kafka.topics.dead_letter, cases.len() + 3).await;
    let mut reasons: Vec<&str> = dlq
        .iter()
        .filter_map(|r| r.header("callbridge-dead-letter-reason"))
        .collect();
    reasons.sort();
    let mut expected: Vec<&str> = cases.iter().map(|c| c.2).collect();
    expected.push("conflicting_duplicate");
    expected.push("after_ending");
    expected.push("invalid_json");
    expected.sort();
    assert_eq!(reasons, expected);
    let mut cut: Vec<(&str, usize)> = dlq
        .iter()
        .filter(|r| {
            r.header("callbridge-dead-letter-reason") == Some("oversize") && !r.value.is_empty()
        })
        .map(|r| {
            (
                r.header("callbridge-original-length").unwrap_or(""),
                r.value.len(),
            )
        })
        .collect();
    cut.sort();
    assert_eq!(
        cut,
        vec![("1048000", 512 * 1024), ("1048586", 512 * 1024)],
        "the heads of the state over the limit and of the body over 1 MiB are dead-lettered"
    );
    let unread = dlq
        .iter()
        .find(|r| {
            r.header("callbridge-dead-letter-reason") == Some("oversize") && r.value.is_empty()
        })
        .expect("the body over 4 MiB is dead-lettered without its content");
    let detail = unread.header("callbridge-dead-letter-detail").unwrap_or("");
    assert!(
        detail.contains("4194314 bytes") && detail.contains("not read"),
        "{detail}"
    );
    assert!(dlq
        .iter()
        .all(|r| r.header("callbridge-dead-letter-detail").is_some()));
    let late = dlq
        .iter()
        .find(|r| r.header("callbridge-dead-letter-reason") == Some("after_ending"))
        .expect("the state after ENDING is dead-lettered");
    assert_eq!(late.key.as_deref(), Some("c-ended"));
    assert!(
        late.header("callbridge-dead-letter-detail")
            .is_some_and(|d| d.contains("sequence 2") && d.contains("ENDING")),
        "{:?}",
        late.header("callbridge-dead-letter-detail")
    );
    let late_body: serde_json::Value = serde_json::from_slice(&late.value).unwrap();
    assert_eq!(late_body["state"]["id"], "state-late");
    assert!(
        dlq.iter().any(|r| r.key.as_deref() == Some("c-huge")
            && r.header("callbridge-dead-letter-reason") == Some("invalid_json")),
        "the unfingerprintable state is dead-lettered by the sequencer, keyed by its call"
    );

    // The valid state went through exactly once.
    let ordered = wait_for_records(&kafka, &kafka.topics.ordered, 1).await;
    let states: Vec<_> = ordered
        .iter()
        .filter(|r| r.key.as_deref() == Some("c-conflict"))
        .collect();
    assert_eq!(states.len(), 1, "{:?}", states.len());
    let v: serde_json::Value = serde_json::from_slice(&states[0].value).unwrap();
    assert_eq!(v["state"]["id"], "state-a");
    // The state at the limit is in raw byte for byte, and in the ordered topic (whose record is
    // the larger of the two).
    let raw = wait_for_records(&kafka, &kafka.topics.raw, 1).await;
    let big_raw: Vec<_> = raw
        .iter()
        .filter(|r| r.key.as_deref() == Some("c-big"))
        .collect();
    assert_eq!(big_raw.len(), 1);
    assert!(big_raw[0].value == big_body, "raw holds the body unchanged");
    let deadline = Instant::now() + Duration::from_secs(30);
    let big_state = loop {
        let ordered = wait_for_records(&kafka, &kafka.topics.ordered, 1).await;
        if let Some(r) = ordered.iter().find(|r| {
            r.key.as_deref() == Some("c-big") && r.header("callbridge-kind") == Some("state")
        }) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the state at the limit was never published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let v: serde_json::Value = serde_json::from_slice(&big_state.value).unwrap();
    assert_eq!(v["state"]["id"], "state-big");
    assert!(big_state.value.len() > MAX_NOTIFICATION_BYTES - 200);
    assert!(
        !raw.iter().any(|r| r.key.as_deref() == Some("__progress/1")),
        "the reserved id never reaches raw, so never the sequencer's changelog"
    );

    // The operator sees all of it on the admin port.
    let metrics_url = format!("http://{}/metrics", bridge.admin_addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = [
        "callbridge_dead_letter_records_total{reason=\"invalid_json\"} 1",
        "callbridge_dead_letter_records_total{reason=\"oversize\"} 3",
        "callbridge_dead_letter_records_total{reason=\"invalid_conversation_space_id\"} 1",
        "callbridge_webhook_responses_total{status=\"413\",outcome=\"dead_lettered\"} 3",
        "callbridge_webhook_responses_total{status=\"202\",outcome=\"dead_lettered\"} 4",
        "callbridge_webhook_responses_total{status=\"200\",outcome=\"other_source\"} 1",
        "callbridge_webhook_responses_total{status=\"200\",outcome=\"accepted\"} 7",
        "callbridge_conflicting_duplicates_total 1",
        "callbridge_sequencer_dead_letters_total{reason=\"conflicting_duplicate\"} 1",
        "callbridge_sequencer_dead_letters_total{reason=\"after_ending\"} 1",
        "callbridge_sequencer_dead_letters_total{reason=\"invalid_json\"} 1",
        "callbridge_duplicates_dropped_total 1",
        "callbridge_states_published_total{origin=\"webhook\"} 3",
        "callbridge_other_source_notifications_total{outcome=\"dropped\"} 1",
        "callbridge_goto_requests_total{endpoint=\"POST /oauth/token\",status=\"200\"} 1",
    ];
    loop {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<_> = wanted.iter().filter(|w| !text.contains(*w)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {missing:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bridge.shutdown().await;
    sim.shutdown().await;
}
