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
