//! The records of the ordered topic, byte for byte.
//!
//! A state record embeds GoTo's `metadata` and `state` objects as the exact bytes GoTo sent
//! (unknown fields included): the value is assembled around the raw JSON, never re-serialised.
//! Headers follow the CloudEvents Kafka protocol binding in binary mode (`ce_*` headers, the value
//! is the event data), so generic CloudEvents consumers can route without parsing the value.
//! `ce_id` is deterministic (`{conversation}:{sequence}` …), so a downstream consumer can dedupe
//! by it even across a replay.

use serde_json::value::RawValue;

/// CloudEvents `type` of a call state.
pub const TYPE_CALL_STATE: &str = "com.goto.connect.call-state.v1";
/// CloudEvents `type` of a gap record.
pub const TYPE_GAP: &str = "dev.callbridge.gap.v1";
/// CloudEvents `type` of a completion record.
pub const TYPE_COMPLETION: &str = "dev.callbridge.completion.v1";
/// CloudEvents `type` of a takeover marker.
pub const TYPE_TAKEOVER: &str = "dev.callbridge.takeover.v1";
/// CloudEvents `source` of every record.
pub const SOURCE: &str = "urn:callbridge:goto-connect:call-events";

/// Where a published state came from (the `origin` field and header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOrigin {
    /// Received by webhook.
    Webhook,
    /// Received on the WebSocket.
    WebSocket,
    /// Fetched from `/conversation-spaces/{id}/events`.
    Backfill,
}

impl RecordOrigin {
    /// Field value and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordOrigin::Webhook => "webhook",
            RecordOrigin::WebSocket => "websocket",
            RecordOrigin::Backfill => "backfill",
        }
    }
}

/// Why a gap record was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapCause {
    /// GoTo no longer returns the states.
    Gone,
    /// Back-fill kept failing until `sequencer.backfill_max_wait`.
    BackfillFailed,
}

impl GapCause {
    /// Field value.
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Gone => "gone",
            GapCause::BackfillFailed => "backfill_failed",
        }
    }
}

/// A record ready for the producer: key, value and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderedRecord {
    /// `conversationSpaceId`.
    pub key: String,
    /// JSON value.
    pub value: Vec<u8>,
    /// Header name/value pairs in order.
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// A header's value: most are constants, and only the rest are allocated.
pub type HeaderValue = std::borrow::Cow<'static, str>;

/// Header names beyond CloudEvents'.
pub mod headers {
    /// Sequence number (state) or first sequence (gap) or last sequence (completion).
    pub const SEQUENCE: &str = "callbridge-sequence";
    /// Last sequence of a gap record's range.
    pub const SEQUENCE_END: &str = "callbridge-sequence-end";
    /// `webhook`, `websocket`, `backfill` (state records only).
    pub const ORIGIN: &str = "callbridge-origin";
    /// Takeover epoch of the writer, for auditing zombie writes.
    pub const EPOCH: &str = "callbridge-epoch";
    /// Record kind: `state`, `gap`, `completion`, `takeover`.
    pub const KIND: &str = "callbridge-kind";
}

fn ce_headers(
    id: String,
    ce_type: &'static str,
    subject: &str,
    time: Option<String>,
) -> Vec<(&'static str, HeaderValue)> {
    let mut h = vec![
        ("ce_specversion", "1.0".into()),
        ("ce_id", id.into()),
        ("ce_source", SOURCE.into()),
        ("ce_type", ce_type.into()),
        ("ce_subject", subject.to_string().into()),
        ("content-type", "application/json".into()),
    ];
    if let Some(t) = time {
        h.push(("ce_time", t.into()));
    }
    h
}

/// A call state, embedding GoTo's objects unchanged: [`state_value`] and [`state_headers`].
pub fn state_record(
    conversation: &str,
    sequence: u64,
    origin: RecordOrigin,
    metadata: &RawValue,
    state: &RawValue,
    state_timestamp: Option<&str>,
    epoch: u64,
) -> OrderedRecord {
    OrderedRecord {
        key: conversation.to_string(),
        value: state_value(conversation, sequence, origin, metadata, state),
        headers: state_headers(conversation, sequence, origin, state_timestamp, epoch),
    }
}

/// The value of a call state's record, GoTo's `metadata` and `state` copied in as their bytes.
///
/// The sequencer renders it once, when it reads the state, and keeps only this while the state
/// is held: a copy of the two objects kept until publication and then copied again into the
/// value was two large allocations and two copies per state (9 % of the sequencer thread).
pub fn state_value(
    conversation: &str,
    sequence: u64,
    origin: RecordOrigin,
    metadata: &RawValue,
    state: &RawValue,
) -> Vec<u8> {
    use std::io::Write as _;
    let (metadata, state) = (metadata.get().as_bytes(), state.get().as_bytes());
    let mut value = Vec::with_capacity(metadata.len() + state.len() + conversation.len() + 140);
    value.extend_from_slice(b"{\"type\":\"call-state\",\"conversationSpaceId\":");
    // Writing to a Vec cannot fail, and a &str always serialises.
    let _ = serde_json::to_writer(&mut value, conversation);
    let _ = write!(value, ",\"sequenceNumber\":{sequence},\"origin\":\"");
    value.extend_from_slice(origin.as_str().as_bytes());
    value.extend_from_slice(b"\",\"metadata\":");
    value.extend_from_slice(metadata);
    value.extend_from_slice(b",\"state\":");
    value.extend_from_slice(state);
    value.push(b'}');
    value
}

/// The headers of a call state's record.
pub fn state_headers(
    conversation: &str,
    sequence: u64,
    origin: RecordOrigin,
    state_timestamp: Option<&str>,
    epoch: u64,
) -> Vec<(&'static str, HeaderValue)> {
    let mut headers = ce_headers(
        format!("{conversation}:{sequence}"),
        TYPE_CALL_STATE,
        conversation,
        state_timestamp.map(str::to_string),
    );
    headers.push((headers::KIND, "state".into()));
    headers.push((headers::SEQUENCE, sequence.to_string().into()));
    headers.push((headers::ORIGIN, origin.as_str().into()));
    headers.push((headers::EPOCH, epoch.to_string().into()));
    headers
}

/// GoTo's `metadata` and `state` objects as they are in a value [`state_value`] rendered;
/// `None` for anything else.
pub fn state_value_parts(value: &[u8]) -> Option<(&RawValue, &RawValue)> {
    #[derive(serde::Deserialize)]
    struct Parts<'a> {
        #[serde(borrow)]
        metadata: &'a RawValue,
        #[serde(borrow)]
        state: &'a RawValue,
    }
    let parts: Parts<'_> = serde_json::from_slice(value).ok()?;
    Some((parts.metadata, parts.state))
}

/// Reads back whether a state record's value (as built by [`state_record`]) carries GoTo's
/// ENDING state, by the same rule ingest uses. A takeover needs it to finish a call whose ENDING
/// was written and whose completion record was not. Anything unreadable is "not ENDING".
pub fn state_record_is_ending(value: &[u8]) -> bool {
    // Only `state.type` is read: the takeover has no use for the fingerprint and sequence
    // number a full `inspect_state` would also compute.
    #[derive(serde::Deserialize)]
    struct StateRecord<'a> {
        #[serde(borrow)]
        state: State<'a>,
    }
    #[derive(serde::Deserialize)]
    struct State<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<StateRecord<'_>>(value)
        .is_ok_and(|r| crate::notification::is_ending_type(r.state.kind.as_deref()))
}

/// An explicit gap: states `from..=to` will never be published.
pub fn gap_record(
    conversation: &str,
    from: u64,
    to: u64,
    cause: GapCause,
    epoch: u64,
) -> OrderedRecord {
    let value = serde_json::json!({
        "type": "gap",
        "conversationSpaceId": conversation,
        "fromSequence": from,
        "toSequence": to,
        "reason": cause.as_str(),
    });
    let mut headers = ce_headers(
        format!("{conversation}:gap:{from}-{to}"),
        TYPE_GAP,
        conversation,
        None,
    );
    headers.push((headers::KIND, "gap".into()));
    headers.push((headers::SEQUENCE, from.to_string().into()));
    headers.push((headers::SEQUENCE_END, to.to_string().into()));
    headers.push((headers::EPOCH, epoch.to_string().into()));
    OrderedRecord {
        key: conversation.to_string(),
        value: value.to_string().into_bytes(),
        headers,
    }
}

/// The conversation ended and every sequence up to `last_sequence` is accounted for.
pub fn completion_record(
    conversation: &str,
    last_sequence: u64,
    gap_count: u32,
    epoch: u64,
) -> OrderedRecord {
    let value = serde_json::json!({
        "type": "completion",
        "conversationSpaceId": conversation,
        "lastSequence": last_sequence,
        "gapCount": gap_count,
        "complete": gap_count == 0,
    });
    let mut headers = ce_headers(
        format!("{conversation}:completion"),
        TYPE_COMPLETION,
        conversation,
        None,
    );
    headers.push((headers::KIND, "completion".into()));
    headers.push((headers::SEQUENCE, last_sequence.to_string().into()));
    headers.push((headers::EPOCH, epoch.to_string().into()));
    OrderedRecord {
        key: conversation.to_string(),
        value: value.to_string().into_bytes(),
        headers,
    }
}

/// A takeover marker: value and headers (it has no key, since it belongs to no call).
///
/// A new owner of `ordered[partition]` appends one before it scans the partition for outputs
/// the changelog does not index yet, and reads until it comes back: the offset Kafka gives the
/// marker is the only end of the partition no broker can report stale (tansu 0.6's high
/// watermark can lag acknowledged writes by several batches). It also leaves an audit trail:
/// a record after it with a lower `callbridge-epoch` is a zombie write.
pub fn takeover_record(partition: i32, epoch: u64) -> (Vec<u8>, Vec<(&'static str, HeaderValue)>) {
    let value = serde_json::json!({
        "type": "takeover",
        "partition": partition,
        "epoch": epoch,
    });
    let mut headers = ce_headers(
        format!("takeover:{partition}:{epoch}"),
        TYPE_TAKEOVER,
        &format!("partition/{partition}"),
        None,
    );
    headers.push((headers::KIND, "takeover".into()));
    headers.push((headers::EPOCH, epoch.to_string().into()));
    (value.to_string().into_bytes(), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn ending_is_read_back_from_state_records_only() {
        let metadata = raw(r#"{"conversationSpaceId":"c-1"}"#);
        let record = |state: &str| {
            state_record(
                "c-1",
                2,
                RecordOrigin::Webhook,
                &metadata,
                &raw(state),
                None,
                1,
            )
            .value
        };
        assert!(state_record_is_ending(&record(
            r#"{"sequenceNumber":2,"type":"ENDING","zNew":1}"#
        )));
        assert!(state_record_is_ending(&record(
            r#"{"sequenceNumber":2,"type":"ending"}"#
        )));
        assert!(!state_record_is_ending(&record(
            r#"{"sequenceNumber":2,"type":"ACTIVE"}"#
        )));
        assert!(!state_record_is_ending(
            &completion_record("c-1", 2, 0, 1).value
        ));
        assert!(!state_record_is_ending(b"{\"state\":"));
    }

    #[test]
    fn state_record_keeps_goto_bytes_exactly() {
        // Odd spacing, key order and an unknown field must survive untouched.
        let metadata = raw(r#"{ "conversationSpaceId":"c-1","zNew":{"x":1},"accountKey":"1"}"#);
        let state = raw(r#"{"sequenceNumber":3,  "type":"ACTIVE","futureField":[1,2]}"#);
        let r = state_record(
            "c-1",
            3,
            RecordOrigin::Backfill,
            &metadata,
            &state,
            Some("2026-01-01T00:00:00.000Z"),
            7,
        );
        let text = String::from_utf8(r.value.clone()).unwrap();
        assert!(
            text.contains(metadata.get()) && text.contains(state.get()),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["sequenceNumber"], 3);
        assert_eq!(v["origin"], "backfill");
        assert_eq!(v["state"]["futureField"][1], 2);
        let h: std::collections::HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h["ce_id"], "c-1:3");
        assert_eq!(h["ce_type"], TYPE_CALL_STATE);
        assert_eq!(h["ce_subject"], "c-1");
        assert_eq!(h["ce_time"], "2026-01-01T00:00:00.000Z");
        assert_eq!(h[headers::EPOCH], "7");
        assert_eq!(r.key, "c-1");
    }

    #[test]
    fn the_objects_are_read_back_from_a_state_value_as_they_were() {
        let metadata = raw(r#"{ "conversationSpaceId" : "c\"1", "zNew":[1, {"é":"\u00e9"}] }"#);
        let state = raw("{\"sequenceNumber\":7,\n \"type\":\"ENDING\"}");
        let value = state_value("c\"1", 7, RecordOrigin::WebSocket, &metadata, &state);
        let (m, s) = state_value_parts(&value).unwrap();
        assert_eq!((m.get(), s.get()), (metadata.get(), state.get()));
        assert!(state_value_parts(b"{\"metadata\":{}}").is_none());
        assert!(state_value_parts(b"not json").is_none());
    }

    #[test]
    fn conversation_id_is_escaped() {
        let m = raw("{}");
        let r = state_record("a\"b", 1, RecordOrigin::Webhook, &m, &m, None, 0);
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["conversationSpaceId"], "a\"b");
    }

    #[test]
    fn gap_and_completion_records() {
        let g = gap_record("c", 4, 6, GapCause::Gone, 1);
        let v: serde_json::Value = serde_json::from_slice(&g.value).unwrap();
        assert_eq!(
            (v["fromSequence"].as_u64(), v["toSequence"].as_u64()),
            (Some(4), Some(6))
        );
        assert_eq!(v["reason"], "gone");
        let c = completion_record("c", 9, 1, 1);
        let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
        assert_eq!(v["complete"], false);
        assert!(c.headers.contains(&("ce_id", "c:completion".into())));
    }

    #[test]
    fn takeover_marker() {
        let (value, h) = takeover_record(3, 12);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            (
                v["type"].as_str(),
                v["partition"].as_i64(),
                v["epoch"].as_u64()
            ),
            (Some("takeover"), Some(3), Some(12))
        );
        let h: std::collections::HashMap<_, _> = h.into_iter().collect();
        assert_eq!(h[headers::KIND], "takeover");
        assert_eq!(h[headers::EPOCH], "12");
        assert_eq!(h["ce_id"], "takeover:3:12");
        assert_eq!(h["ce_type"], TYPE_TAKEOVER);
    }
}

/// Every byte of every kind of record pinned: key, value, header names, values and order.
/// Consumers and the takeover read these records back: a change to how they are built must not
/// move them by a byte.
#[cfg(test)]
mod pinned_bytes {
    use super::*;

    /// A conversation id with everything JSON escapes (and a few things it does not).
    const ODD: &str = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}é/\u{7f}😀";
    /// [`ODD`] as serde_json writes it.
    const ODD_JSON: &str = concat!(r#""a\"b\\c\n\r\t\b\f\u0001\u001fé/"#, "\u{7f}😀\"");
    const MAX: &str = "18446744073709551615";

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn pairs(h: &[(&'static str, HeaderValue)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expect(
        (key, value, headers): (Option<&str>, &[u8], Vec<(String, String)>),
        want_key: Option<&str>,
        want_value: &str,
        want_headers: &[(&str, &str)],
    ) {
        assert_eq!(key, want_key);
        assert_eq!(std::str::from_utf8(value).unwrap(), want_value);
        let want: Vec<(String, String)> = want_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(headers, want);
    }

    fn of(r: &OrderedRecord) -> (Option<&str>, &[u8], Vec<(String, String)>) {
        (Some(&r.key), &r.value, pairs(&r.headers))
    }

    fn ce<'a>(
        id: &'a str,
        ce_type: &'a str,
        subject: &'a str,
        time: Option<&'a str>,
    ) -> Vec<(&'static str, &'a str)> {
        let mut h = vec![
            ("ce_specversion", "1.0"),
            ("ce_id", id),
            ("ce_source", "urn:callbridge:goto-connect:call-events"),
            ("ce_type", ce_type),
            ("ce_subject", subject),
            ("content-type", "application/json"),
        ];
        h.extend(time.map(|t| ("ce_time", t)));
        h
    }

    #[test]
    fn state_records() {
        let metadata = raw(r#"{ "conversationSpaceId":"c-1","zNew":{"x":1},"accountKey":"1"}"#);
        let state = raw(r#"{"sequenceNumber":3,  "type":"ACTIVE","futureField":[1,2]}"#);
        let r = state_record(
            "c-1",
            3,
            RecordOrigin::Backfill,
            &metadata,
            &state,
            Some("2026-01-01T00:00:00.000Z"),
            7,
        );
        let mut h = ce(
            "c-1:3",
            "com.goto.connect.call-state.v1",
            "c-1",
            Some("2026-01-01T00:00:00.000Z"),
        );
        h.extend([
            ("callbridge-kind", "state"),
            ("callbridge-sequence", "3"),
            ("callbridge-origin", "backfill"),
            ("callbridge-epoch", "7"),
        ]);
        expect(
            of(&r),
            Some("c-1"),
            concat!(
                r#"{"type":"call-state","conversationSpaceId":"c-1","sequenceNumber":3,"#,
                r#""origin":"backfill","metadata":{ "conversationSpaceId":"c-1","zNew":{"x":1},"#,
                r#""accountKey":"1"},"state":{"sequenceNumber":3,  "type":"ACTIVE","#,
                r#""futureField":[1,2]}}"#
            ),
            &h,
        );

        let r = state_record(
            ODD,
            u64::MAX,
            RecordOrigin::WebSocket,
            &raw("{}"),
            &raw(r#"{"type":"ENDING"}"#),
            None,
            u64::MAX,
        );
        let id = format!("{ODD}:{MAX}");
        let mut h = ce(&id, "com.goto.connect.call-state.v1", ODD, None);
        h.extend([
            ("callbridge-kind", "state"),
            ("callbridge-sequence", MAX),
            ("callbridge-origin", "websocket"),
            ("callbridge-epoch", MAX),
        ]);
        expect(
            of(&r),
            Some(ODD),
            &format!(
                r#"{{"type":"call-state","conversationSpaceId":{ODD_JSON},"sequenceNumber":{MAX},"origin":"websocket","metadata":{{}},"state":{{"type":"ENDING"}}}}"#
            ),
            &h,
        );

        let r = state_record(
            "",
            0,
            RecordOrigin::Webhook,
            &raw("{}"),
            &raw("{}"),
            Some(""),
            0,
        );
        let mut h = ce(":0", "com.goto.connect.call-state.v1", "", Some(""));
        h.extend([
            ("callbridge-kind", "state"),
            ("callbridge-sequence", "0"),
            ("callbridge-origin", "webhook"),
            ("callbridge-epoch", "0"),
        ]);
        expect(
            of(&r),
            Some(""),
            r#"{"type":"call-state","conversationSpaceId":"","sequenceNumber":0,"origin":"webhook","metadata":{},"state":{}}"#,
            &h,
        );
    }

    #[test]
    fn gap_records() {
        let mut h = ce("c:gap:4-6", "dev.callbridge.gap.v1", "c", None);
        h.extend([
            ("callbridge-kind", "gap"),
            ("callbridge-sequence", "4"),
            ("callbridge-sequence-end", "6"),
            ("callbridge-epoch", "1"),
        ]);
        expect(
            of(&gap_record("c", 4, 6, GapCause::Gone, 1)),
            Some("c"),
            r#"{"conversationSpaceId":"c","fromSequence":4,"reason":"gone","toSequence":6,"type":"gap"}"#,
            &h,
        );

        let id = format!("{ODD}:gap:0-{MAX}");
        let mut h = ce(&id, "dev.callbridge.gap.v1", ODD, None);
        h.extend([
            ("callbridge-kind", "gap"),
            ("callbridge-sequence", "0"),
            ("callbridge-sequence-end", MAX),
            ("callbridge-epoch", MAX),
        ]);
        expect(
            of(&gap_record(
                ODD,
                0,
                u64::MAX,
                GapCause::BackfillFailed,
                u64::MAX,
            )),
            Some(ODD),
            &format!(
                r#"{{"conversationSpaceId":{ODD_JSON},"fromSequence":0,"reason":"backfill_failed","toSequence":{MAX},"type":"gap"}}"#
            ),
            &h,
        );
    }

    #[test]
    fn completion_records() {
        let mut h = ce("c:completion", "dev.callbridge.completion.v1", "c", None);
        h.extend([
            ("callbridge-kind", "completion"),
            ("callbridge-sequence", "9"),
            ("callbridge-epoch", "1"),
        ]);
        expect(
            of(&completion_record("c", 9, 1, 1)),
            Some("c"),
            r#"{"complete":false,"conversationSpaceId":"c","gapCount":1,"lastSequence":9,"type":"completion"}"#,
            &h,
        );

        let id = format!("{ODD}:completion");
        let mut h = ce(&id, "dev.callbridge.completion.v1", ODD, None);
        h.extend([
            ("callbridge-kind", "completion"),
            ("callbridge-sequence", MAX),
            ("callbridge-epoch", MAX),
        ]);
        expect(
            of(&completion_record(ODD, u64::MAX, 0, u64::MAX)),
            Some(ODD),
            &format!(
                r#"{{"complete":true,"conversationSpaceId":{ODD_JSON},"gapCount":0,"lastSequence":{MAX},"type":"completion"}}"#
            ),
            &h,
        );

        let mut h = ce(":completion", "dev.callbridge.completion.v1", "", None);
        h.extend([
            ("callbridge-kind", "completion"),
            ("callbridge-sequence", "0"),
            ("callbridge-epoch", "0"),
        ]);
        expect(
            of(&completion_record("", 0, u32::MAX, 0)),
            Some(""),
            r#"{"complete":false,"conversationSpaceId":"","gapCount":4294967295,"lastSequence":0,"type":"completion"}"#,
            &h,
        );
    }

    #[test]
    fn takeover_markers() {
        let (value, headers) = takeover_record(3, 12);
        let mut h = ce(
            "takeover:3:12",
            "dev.callbridge.takeover.v1",
            "partition/3",
            None,
        );
        h.extend([("callbridge-kind", "takeover"), ("callbridge-epoch", "12")]);
        expect(
            (None, &value, pairs(&headers)),
            None,
            r#"{"epoch":12,"partition":3,"type":"takeover"}"#,
            &h,
        );

        let (value, headers) = takeover_record(i32::MIN, u64::MAX);
        let id = format!("takeover:-2147483648:{MAX}");
        let mut h = ce(
            &id,
            "dev.callbridge.takeover.v1",
            "partition/-2147483648",
            None,
        );
        h.extend([("callbridge-kind", "takeover"), ("callbridge-epoch", MAX)]);
        expect(
            (None, &value, pairs(&headers)),
            None,
            &format!(r#"{{"epoch":{MAX},"partition":-2147483648,"type":"takeover"}}"#),
            &h,
        );
    }
}
