//! Where one received body goes: raw topic, dead-letter topic, the other-sources topic, or the
//! channel lifecycle (WebSocket control messages). Pure, so every case is unit-tested.

use crate::notification::{self, ControlMessage, Notification};

/// Largest body GoTo may send (its documented 1 MB cap); larger ones are dead-lettered.
pub const MAX_NOTIFICATION_BYTES: usize = 1024 * 1024;

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
        Ok(Notification::CallState(state)) => Disposition::Raw {
            conversation_space_id: state.conversation_space_id.into_owned(),
        },
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
            ("control", br#"{"data":{"source":"notification-websocket","type":"WEBSOCKET_REFRESH_REQUIRED"}}"#.to_vec(), "control"),
            ("other source", br#"{"source":"call-history","type":"report-summary","content":{}}"#.to_vec(), "other_source"),
        ];
        for (name, body, expected) in &rows {
            assert_eq!(reason(body), *expected, "{name}");
        }
    }
}
