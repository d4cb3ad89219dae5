//! Reading GoTo notification bodies just far enough to route them.
//!
//! Ingest stores every body unchanged; the sequencer needs only a handful of fields from it (the
//! conversation, the sequence number, whether it is the last state) plus a fingerprint to tell
//! duplicates from conflicts. Parsing is therefore shallow and borrowing: the `metadata` and
//! `state` objects come back as the exact [`RawValue`] bytes they arrived as, so unknown fields
//! survive untouched, and nothing here ever re-serialises a payload.
//!
//! GoTo's envelope is only partly documented (see `goto-api.md` §4), so [`parse`] accepts every
//! shape seen or claimed:
//! - webhook body: `{"id","source":"call-events","type":"call-state","content":{"metadata","state"},…}`;
//! - the official guide's bare `{"metadata","state"}`;
//! - WebSocket frames wrapping either under `data`, with or without the claimed outer
//!   `{"event":"Notification","eventId",…}` fields;
//! - WebSocket control messages (`WEBSOCKET_REFRESH_REQUIRED`, `WEBSOCKET_TO_BE_CLOSED`), also
//!   when a frame is nothing but that word (one third party compares raw frame text).
//!
//! Not accepted: a `data` member holding the notification as a JSON *string* (double-encoded);
//! nothing suggests GoTo does that, and it could not be borrowed zero-copy.

mod error;
mod fingerprint;
mod parse;

use std::borrow::Cow;

use serde_json::value::RawValue;

pub use error::ParseError;
pub use fingerprint::{canonical_json, state_fingerprint};
pub(crate) use parse::json_string;
pub use parse::{inspect_state, parse};

/// What a notification body turned out to be.
#[derive(Debug, Clone)]
pub enum Notification<'a> {
    /// A Call Events state (`source` `call-events`, `type` `call-state`, or the bare form).
    CallState(CallState<'a>),
    /// A notification-channel control message for the WebSocket owner.
    Control(ControlMessage),
    /// Any other source or type (call-events-report, recording-service, …); the caller routes it
    /// elsewhere. Also an object with none of `source`, `type`, `content`, `metadata`, `state`.
    Other {
        /// The envelope's `source`, if any.
        source: Option<String>,
        /// The envelope's `type`, if any.
        kind: Option<String>,
    },
}

/// What no conversation id (`conversationSpaceId`) may start with. The changelog topic keeps
/// its own records under keys with this prefix (`__progress/{epoch}`, `__fence/{epoch}`, see
/// `sequencer::shell::changelog`), next to the conversation ids it keys checkpoints by: a
/// conversation called `__progress/1` would get a checkpoint that the next takeover reads as a
/// progress record, fails to decode, and stalls its partition at every takeover. [`parse`]
/// therefore refuses such ids, so neither ingest nor the sequencer lets one through, and the
/// changelog checks at compile time that each of its prefixes starts with this one.
pub const RESERVED_ID_PREFIX: &str = "__";

/// True when `id` starts with [`RESERVED_ID_PREFIX`]: no conversation may have such an id.
/// (A `const fn`, so the changelog can assert its key prefixes at compile time.)
pub const fn is_reserved_id(id: &str) -> bool {
    let (id, prefix) = (id.as_bytes(), RESERVED_ID_PREFIX.as_bytes());
    if id.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if id[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The id rule as a parse error states it (a `conversationSpaceId` that breaks it is refused as
/// `invalid_conversation_space_id`, dead-lettered with this in its detail).
pub const RESERVED_ID_RULE: &str = "a usable conversation id (ids starting with \"__\" are \
     reserved for the changelog's own keys)";

/// The routing view of one call state. Borrowed from the body it was parsed from.
#[derive(Debug, Clone)]
pub struct CallState<'a> {
    /// The envelope `id` (webhook deliveries and wrapped WebSocket frames carry one; the bare
    /// form does not). A numeric id is kept as its decimal text.
    pub notification_id: Option<Cow<'a, str>>,
    /// `metadata.conversationSpaceId`: the call, and the Kafka key. Never empty, never starting
    /// with [`RESERVED_ID_PREFIX`].
    pub conversation_space_id: Cow<'a, str>,
    /// `state.sequenceNumber`, ≥ 1 (a JSON integer, or a string of decimal digits).
    pub sequence_number: u64,
    /// `state.type`: STARTING, ACTIVE, ENDING or anything GoTo adds later.
    pub state_type: Option<Cow<'a, str>>,
    /// The `metadata` object, byte for byte.
    pub metadata: &'a RawValue,
    /// The `state` object, byte for byte.
    pub state: &'a RawValue,
    /// Where `state` sits in the body (`content.state`, …), for error messages.
    pub(crate) state_path: &'static str,
    /// Length of `conversationSpaceId` as sent (its JSON string, quotes and escapes included):
    /// a bound on each copy of the id the records written for this state repeat outside it
    /// (Kafka key, headers), which ingest's size limit must count.
    pub(crate) id_json_len: usize,
    /// Length of `state.timestamp` as sent (0 when absent): a bound on the copy the ordered
    /// record repeats in a header (`ce_time`).
    pub(crate) timestamp_json_len: usize,
    /// `state.timestamp` as sent, if present.
    pub(crate) timestamp: Option<&'a RawValue>,
}

impl<'a> CallState<'a> {
    /// [`state_fingerprint`] of `state`. Computed on demand: reading the whole state again is
    /// a third of the cost of parsing, and only the sequencer needs it (ingest routes on the
    /// fields above). An error here means the state cannot be compared with another copy of itself;
    /// the sequencer dead-letters such a state.
    pub fn fingerprint(&self) -> Result<u64, ParseError> {
        fingerprint::fingerprint_at(self.state, self.state_path)
    }

    /// `state.timestamp` when it is a JSON string (anything else reads as absent): the ordered
    /// record repeats it in `ce_time`.
    pub fn timestamp(&self) -> Option<Cow<'a, str>> {
        parse::json_string(self.timestamp?)
    }

    /// True for the conversation's last state (`type` ENDING, any letter case).
    pub fn is_ending(&self) -> bool {
        is_ending_type(self.state_type.as_deref())
    }
}

/// The routing view of a bare `state` object, e.g. one returned by the REST back-fill.
#[derive(Debug, Clone)]
pub struct StateSummary<'a> {
    /// `sequenceNumber`, ≥ 1.
    pub sequence_number: u64,
    /// `type`, if present.
    pub state_type: Option<Cow<'a, str>>,
    /// [`state_fingerprint`] of the object.
    pub fingerprint: u64,
}

impl StateSummary<'_> {
    /// True for the conversation's last state.
    pub fn is_ending(&self) -> bool {
        is_ending_type(self.state_type.as_deref())
    }
}

/// Messages the notification channel sends about itself (WebSocket only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// `WEBSOCKET_REFRESH_REQUIRED`: refresh the channel (PUT) before its lifetime runs out.
    RefreshRequired,
    /// `WEBSOCKET_TO_BE_CLOSED`: the server will close the socket; recreate the channel.
    ToBeClosed,
    /// Another `notification-websocket` message; carries its `type` (empty when absent).
    Other(String),
}

/// The rule for a conversation's last state: `type` ENDING, any letter case.
pub(crate) fn is_ending_type(t: Option<&str>) -> bool {
    t.is_some_and(|t| t.eq_ignore_ascii_case("ENDING"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_prefix_and_the_rule_agree() {
        assert!(is_reserved_id("__progress/1") && is_reserved_id("__"));
        assert!(!is_reserved_id("_") && !is_reserved_id("") && !is_reserved_id("a__"));
        assert!(RESERVED_ID_RULE.contains(&format!("\"{RESERVED_ID_PREFIX}\"")));
    }
}
