//! Where one received body goes: raw topic, dead-letter topic, the other-sources topic, or the
//! channel lifecycle (WebSocket control messages). Pure, so every case is unit-tested.

use crate::kafka::producer::MAX_RECORD_BYTES;
use crate::notification::{self, ControlMessage, Notification};

/// Largest body routed (to raw, or to the other-sources topic); larger ones are dead-lettered as
/// `oversize` (cut like every dead letter).
///
/// Not GoTo's documented cap (1 MB, 1,048,576 bytes): what bounds a routable body is what Kafka
/// takes. A state is written twice, as its raw record by ingest and as its ordered record by the
/// sequencer, and librdkafka refuses either at once (`MsgSizeTooLarge`) when key, value and
/// headers exceed [`MAX_RECORD_BYTES`] (1,000,000). With the limit at GoTo's cap, a state between
/// the two was routed to raw and refused: answered 503, refused again on each of GoTo's retries,
/// a WebSocket frame dropped; neither written nor dead-lettered. The ordered record is the larger
/// one (about 500 bytes of CloudEvents headers and JSON fields, plus copies of the conversation
/// id and the state's timestamp), so the limit leaves 40,000 bytes for what the records add; a
/// state whose id or timestamp is so long that even that is not enough is dead-lettered as
/// `oversize` too ([`record_bytes`]).
pub const MAX_NOTIFICATION_BYTES: usize = 960_000;

/// An upper bound of what a state's records add to its body besides the copies [`record_bytes`]
/// counts: for the ordered record, its fixed JSON fields, its eleven headers (names and values,
/// epoch and sequence at 20 digits) and librdkafka's framing (up to 36 bytes per record, plus
/// two length varints per header). Measured at about 540 bytes
/// (`the_records_of_a_routed_state_fit_kafka`); the raw record adds less (two headers).
const RECORD_OVERHEAD: usize = 1024;

const _: () = assert!(MAX_NOTIFICATION_BYTES + RECORD_OVERHEAD < MAX_RECORD_BYTES);

/// An upper bound of the larger record (the ordered one) of a state whose body is `body_len`
/// bytes, whose `conversationSpaceId` takes `id_json_len` bytes as sent and its state's
/// `timestamp` `timestamp_json_len`. Beyond the body, the ordered record repeats the id four
/// times (Kafka key, the value's `conversationSpaceId`, headers `ce_id` and `ce_subject`) and
/// the timestamp once (header `ce_time`); each copy is at most as long as it was sent.
pub(crate) fn record_bytes(
    body_len: usize,
    id_json_len: usize,
    timestamp_json_len: usize,
) -> usize {
    body_len + 4 * id_json_len + timestamp_json_len + RECORD_OVERHEAD
}

/// The decision for one body.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    /// A call state: write to raw, keyed by its conversation.
    Raw {
        /// `conversationSpaceId`, the Kafka key.
        conversation_space_id: String,
    },
    /// Cannot be processed: dead-letter with a reason.
    DeadLetter {
        /// Kafka key when the conversation is known.
        key: Option<String>,
        /// Stable reason code (header and metrics label).
        reason: &'static str,
        /// What exactly is wrong (field names, never the body).
        detail: String,
    },
    /// A notification of another source (reports, recordings…).
    OtherSource {
        /// Its `source`, for counting.
        source: String,
    },
    /// A WebSocket control message for the channel lifecycle.
    Control(ControlMessage),
}

/// Decides what to do with `body`.
pub fn route(body: &[u8]) -> Disposition {
    if body.len() > MAX_NOTIFICATION_BYTES {
        return Disposition::DeadLetter {
            key: None,
            reason: "oversize",
            detail: format!(
                "body of {} bytes exceeds the {} byte limit",
                body.len(),
                MAX_NOTIFICATION_BYTES
            ),
        };
    }
    match notification::parse(body) {
        Ok(Notification::CallState(state)) => {
            let needed = record_bytes(body.len(), state.id_json_len, state.timestamp_json_len);
            if needed > MAX_RECORD_BYTES {
                return Disposition::DeadLetter {
                    key: None,
                    reason: "oversize",
                    detail: format!(
                        "body of {} bytes: its records, which repeat the conversation id and \
                         the state's timestamp, could need {needed} bytes, over Kafka's {} \
                         byte limit",
                        body.len(),
                        MAX_RECORD_BYTES
                    ),
                };
            }
            Disposition::Raw {
                conversation_space_id: state.conversation_space_id.into_owned(),
            }
        }
        Ok(Notification::Control(control)) => Disposition::Control(control),
        Ok(Notification::Other { source, .. }) => Disposition::OtherSource {
            source: source.unwrap_or_else(|| "unknown".to_string()),
        },
        Err(e) => Disposition::DeadLetter {
            key: None,
            reason: e.reason_code(),
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    //! The bad-input table of docs/reliability.md, row by row.
    use super::*;

    fn call_state(state: &str) -> Vec<u8> {
        format!(
            r#"{{"source":"call-events","type":"call-state","content":{{"metadata":{{"conversationSpaceId":"c-1"}},"state":{state}}}}}"#
        )
        .into_bytes()
    }

    /// A webhook call state of exactly `len` bytes (padded inside `state`), for conversation `id`.
    fn call_state_of(len: usize, id: &str) -> Vec<u8> {
        let make = |pad: usize| {
            format!(
                r#"{{"id":"n-1","source":"call-events","type":"call-state","timestamp":"2026-01-01T00:00:00.000Z","ttl":600,"content":{{"metadata":{{"conversationSpaceId":"{id}","direction":"INBOUND"}},"state":{{"sequenceNumber":2,"type":"ACTIVE","timestamp":"2026-01-01T00:00:00.000Z","pad":"{}"}}}}}}"#,
                "x".repeat(pad)
            )
            .into_bytes()
        };
        let body = make(len - make(0).len());
        assert_eq!(body.len(), len);
        body
    }

    fn reason(body: &[u8]) -> String {
        match route(body) {
            Disposition::Raw { .. } => "raw".into(),
            Disposition::DeadLetter { reason, .. } => reason.into(),
            Disposition::OtherSource { .. } => "other_source".into(),
            Disposition::Control(_) => "control".into(),
        }
    }

    #[test]
    fn bad_input_table() {
        // GoTo is known to send some numbers as strings; a numeric string sequence is accepted.
        let valid = call_state(r#"{"sequenceNumber":3,"type":"ACTIVE"}"#);
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let mut invalid_utf8 = call_state(r#"{"sequenceNumber":3,"type":"ACTIVE","x":"AB"}"#);
        let at = invalid_utf8.len() - 4;
        invalid_utf8[at] = 0xff;
        let rows: Vec<(&str, Vec<u8>, &str)> = vec![
            ("valid", valid.clone(), "raw"),
            ("truncated", valid[..valid.len() / 2].to_vec(), "invalid_json"),
            ("not json", b"{not json".to_vec(), "invalid_json"),
            ("empty", Vec::new(), "invalid_json"),
            ("invalid utf-8", invalid_utf8, "invalid_json"),
            ("array", b"[]".to_vec(), "not_an_object"),
            ("no conversation id", br#"{"source":"call-events","type":"call-state","content":{"metadata":{},"state":{"sequenceNumber":1}}}"#.to_vec(), "missing_conversation_space_id"),
            ("numeric conversation id", br#"{"source":"call-events","type":"call-state","content":{"metadata":{"conversationSpaceId":7},"state":{"sequenceNumber":1}}}"#.to_vec(), "invalid_conversation_space_id"),
            ("no sequence", call_state(r#"{"type":"ACTIVE"}"#), "missing_sequence_number"),
            ("sequence as string", call_state(r#"{"sequenceNumber":"3"}"#), "raw"),
            ("sequence zero", call_state(r#"{"sequenceNumber":0}"#), "invalid_sequence_number"),
            ("sequence negative", call_state(r#"{"sequenceNumber":-1}"#), "invalid_sequence_number"),
            ("sequence float", call_state(r#"{"sequenceNumber":1.5}"#), "invalid_sequence_number"),
            ("sequence huge", call_state(r#"{"sequenceNumber":123456789012345678901234567890}"#), "invalid_sequence_number"),
            ("state not an object", call_state(r#""ACTIVE""#), "invalid_state"),
            ("deep nesting in state (100)", call_state(&format!(r#"{{"sequenceNumber":3,"x":{}}}"#, deep(100))), "raw"),
            // Ingest reads routing fields only; the sequencer, which fingerprints the state,
            // dead-letters what serde_json's tree cannot hold (docs/reliability.md).
            ("number beyond f64 in state", call_state(r#"{"sequenceNumber":3,"x":1e400}"#), "raw"),
            ("deep nesting in state (10000)", call_state(&format!(r#"{{"sequenceNumber":3,"x":{}}}"#, deep(10_000))), "invalid_json"),
            ("oversize", vec![b' '; MAX_NOTIFICATION_BYTES + 1], "oversize"),
            // Under GoTo's 1 MiB cap but over what Kafka takes: routed to raw, such a state was
            // refused by the producer on every try (503), neither written nor dead-lettered.
            ("call state just under 1 MiB", call_state_of(1024 * 1024 - 100, "8a484291-aaaa"), "oversize"),
            ("call state just over the limit", call_state_of(MAX_NOTIFICATION_BYTES + 1, "8a484291-aaaa"), "oversize"),
            ("call state at the limit", call_state_of(MAX_NOTIFICATION_BYTES, "8a484291-aaaa"), "raw"),
            // Under the limit, but its records repeat a 30,000-byte id four times.
            ("conversation id too long for the records", call_state_of(900_000, &"i".repeat(30_000)), "oversize"),
            ("conversation id reserved for the changelog", br#"{"source":"call-events","type":"call-state","content":{"metadata":{"conversationSpaceId":"__progress/1"},"state":{"sequenceNumber":1}}}"#.to_vec(), "invalid_conversation_space_id"),
            ("control", br#"{"data":{"source":"notification-websocket","type":"WEBSOCKET_REFRESH_REQUIRED"}}"#.to_vec(), "control"),
            ("other source", br#"{"source":"call-history","type":"report-summary","content":{}}"#.to_vec(), "other_source"),
        ];
        for (name, body, expected) in &rows {
            assert_eq!(reason(body), *expected, "{name}");
        }
    }

    #[test]
    fn a_reserved_conversation_id_is_dead_lettered_naming_the_rule() {
        for id in ["__progress/1", "__fence/2", "__x"] {
            let body = format!(
                r#"{{"source":"call-events","type":"call-state","content":{{"metadata":{{"conversationSpaceId":"{id}"}},"state":{{"sequenceNumber":1}}}}}}"#
            );
            match route(body.as_bytes()) {
                Disposition::DeadLetter {
                    key,
                    reason,
                    detail,
                } => {
                    assert_eq!(key, None);
                    assert_eq!(reason, "invalid_conversation_space_id");
                    assert!(
                        detail.contains("content.metadata.conversationSpaceId")
                            && detail.contains(&format!(
                                "starting with \"{}\"",
                                notification::RESERVED_ID_PREFIX
                            ))
                            && detail.contains("reserved"),
                        "{detail}"
                    );
                }
                other => panic!("{id}: {other:?}"),
            }
        }
    }

    #[test]
    fn oversize_details_say_which_limit() {
        let Disposition::DeadLetter { detail, .. } =
            route(&call_state_of(1024 * 1024 - 100, "c-1"))
        else {
            panic!("not dead-lettered")
        };
        assert!(detail.contains("960000 byte limit"), "{detail}");
        let Disposition::DeadLetter { detail, .. } =
            route(&call_state_of(900_000, &"i".repeat(30_000)))
        else {
            panic!("not dead-lettered")
        };
        assert!(
            detail.contains("conversation id") && detail.contains("1000000 byte limit"),
            "{detail}"
        );
    }

    /// What librdkafka counts against `message.max.bytes` for one record
    /// (`rd_kafka_msg_max_wire_size`: 36 bytes of framing, key, value, and each header's name
    /// and value with two length varints, counted here at their largest).
    fn wire_size<V: AsRef<str>>(key: &str, value: &[u8], headers: &[(&str, V)]) -> usize {
        36 + key.len()
            + value.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().len() + 10)
                .sum::<usize>()
    }

    #[test]
    fn the_records_of_a_routed_state_fit_kafka() {
        use crate::publish::record::{state_record, RecordOrigin};
        let escaped_id = r#"c\u002d\"quoted\"-\n"#;
        let bare = |id: &str, pad: usize| {
            format!(
                r#"{{"metadata":{{"conversationSpaceId":"{id}"}},"state":{{"sequenceNumber":18446744073709551615,"timestamp":"2026-01-01T00:00:00.000Z","p":"{}"}}}}"#,
                "x".repeat(pad)
            )
            .into_bytes()
        };
        let at_limit = |id: &str| {
            let short = bare(id, 0).len();
            bare(id, MAX_NOTIFICATION_BYTES - short)
        };
        let bodies = [
            bare("c", 0),
            bare(escaped_id, 0),
            at_limit("8a484291-aaaa-bbbb-cccc-dddddddddddd"),
            at_limit(escaped_id),
            call_state_of(
                MAX_NOTIFICATION_BYTES,
                "8a484291-aaaa-bbbb-cccc-dddddddddddd",
            ),
        ];
        let mut largest_overhead = 0;
        for body in &bodies {
            let Ok(Notification::CallState(cs)) = notification::parse(body) else {
                panic!("not a call state");
            };
            assert!(matches!(route(body), Disposition::Raw { .. }));
            let bound = record_bytes(body.len(), cs.id_json_len, cs.timestamp_json_len);
            assert!(bound <= MAX_RECORD_BYTES, "routed, so within Kafka's limit");
            let state: serde_json::Value = serde_json::from_str(cs.state.get()).unwrap();
            let ordered = state_record(
                &cs.conversation_space_id,
                cs.sequence_number,
                RecordOrigin::WebSocket,
                cs.metadata,
                cs.state,
                state["timestamp"].as_str(),
                u64::MAX,
            );
            let ordered_size = wire_size(&ordered.key, &ordered.value, &ordered.headers);
            let raw_headers = [
                ("callbridge-transport", "websocket".to_string()),
                ("callbridge-received-at", u128::MAX.to_string()),
            ];
            let raw_size = wire_size(&cs.conversation_space_id, body, &raw_headers);
            assert!(
                raw_size < ordered_size,
                "the ordered record is the larger one"
            );
            assert!(
                ordered_size <= bound,
                "ordered record of {ordered_size} bytes, bound {bound}"
            );
            largest_overhead = largest_overhead
                .max(ordered_size - (body.len() + 4 * cs.id_json_len + cs.timestamp_json_len));
        }
        assert!(
            (400..=RECORD_OVERHEAD / 2 + 100).contains(&largest_overhead),
            "RECORD_OVERHEAD keeps about twice what the records add: {largest_overhead}"
        );
    }
}
