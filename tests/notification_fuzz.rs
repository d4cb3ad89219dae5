//! Fuzz-style properties for the notification parser: it must return (never panic) on any
//! input, and what it accepts must be consistent with the bytes it was given.

use callbridge::notification::{parse, state_fingerprint, Notification};
use proptest::prelude::*;

/// Real-shaped bodies in every envelope GoTo may use.
fn corpus() -> Vec<String> {
    let meta = r#"{"conversationSpaceId":"8a484291-0000","direction":"INBOUND","accountKey":"5442810562173005068","callCreated":"2026-09-25T19:33:04.223Z","associatedConversations":["x"]}"#;
    let state = r#"{"id":"b2b8e13e","sequenceNumber":7,"type":"ACTIVE","timestamp":"2026-09-25T19:33:04.223Z","participants":[{"id":"4eb87369","legId":"b869","status":{"value":"IN_WARM_TRANSFER","initiator":{"name":"Zoë \"Z\""}},"type":{"value":"PHONE_NUMBER","caller":{"name":"Test","number":"+12015550123"}}}],"interactiveVoiceResponseSystems":[{"type":{"value":"DIAL_PLAN","currentNode":{"id":"n"}}}]}"#;
    let webhook = format!(
        r#"{{"id":"1f4f6e0c","source":"call-events","type":"call-state","timestamp":"2026-09-25T19:33:04.521Z","ttl":600,"content":{{"metadata":{meta},"state":{state}}},"bypassDoNotDisturb":false}}"#
    );
    vec![
        webhook.clone(),
        format!(r#"{{"metadata":{meta},"state":{state}}}"#),
        format!(r#"{{"data":{webhook}}}"#),
        format!(r#"{{"event":"Notification","eventId":"e1","timestamp":"t","data":{webhook}}}"#),
        r#"{"data":{"source":"notification-websocket","type":"WEBSOCKET_REFRESH_REQUIRED"}}"#.into(),
        r#"{"source":"call-events-report","type":"REPORT_SUMMARY","content":{"conversationSpaceId":"c"}}"#.into(),
    ]
}

fn check(body: &[u8]) {
    // The property is "returns"; on success the borrowed parts must come from the body.
    if let Ok(Notification::CallState(cs)) = parse(body) {
        assert!(cs.sequence_number >= 1);
        assert!(!cs.conversation_space_id.is_empty());
        let text = std::str::from_utf8(body).expect("accepted body is UTF-8");
        assert!(text.contains(cs.state.get()));
        assert!(text.contains(cs.metadata.get()));
        assert_eq!(state_fingerprint(cs.state).ok(), cs.fingerprint().ok());
    }
}

#[test]
fn every_truncation_of_real_bodies_returns() {
    for body in corpus() {
        for end in 0..=body.len() {
            check(&body.as_bytes()[..end]);
        }
    }
}

#[test]
fn corpus_bodies_parse() {
    let parsed: Vec<_> = corpus()
        .iter()
        .map(|b| parse(b.as_bytes()).is_ok())
        .collect();
    assert_eq!(parsed, vec![true; corpus().len()]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&body);
    }

    #[test]
    fn mutated_real_bodies_never_panic(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut body = corpus()[which].clone().into_bytes();
        for (at, byte, op) in edits {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                _ => body.insert(i, byte),
            }
        }
        check(&body);
    }

    #[test]
    fn arbitrary_json_values_never_panic(v in arb_json()) {
        let text = v.to_string();
        check(text.as_bytes());
        let wrapped = format!(r#"{{"data":{{"content":{text}}}}}"#);
        check(wrapped.as_bytes());
        let as_state = format!(r#"{{"metadata":{{"conversationSpaceId":"c"}},"state":{text}}}"#);
        check(as_state.as_bytes());
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("sequenceNumber".to_string()),
            Just("conversationSpaceId".to_string()),
            Just("ENDING".to_string()),
            "[a-zA-Z0-9_\\-]{0,8}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("metadata".to_string()),
            Just("state".to_string()),
            Just("content".to_string()),
            Just("data".to_string()),
            Just("source".to_string()),
            Just("type".to_string()),
            Just("sequenceNumber".to_string()),
            Just("conversationSpaceId".to_string()),
            "[a-z]{1,4}"
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
