//! The shape detection behind [`parse`]: find the notification object inside whatever frame
//! carried it, classify it by `(source, type)`, then read the few call-state fields.
//!
//! Every level is deserialised into a struct of `Option<&RawValue>` so serde never rejects a
//! value by type on its own: each field's type is checked here, which lets errors carry the full
//! dotted path and never the value.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::fingerprint::fingerprint_at;
use super::{
    is_reserved_id, CallState, ControlMessage, Notification, ParseError, StateSummary,
    RESERVED_ID_RULE,
};

const REFRESH_REQUIRED: &str = "WEBSOCKET_REFRESH_REQUIRED";
const TO_BE_CLOSED: &str = "WEBSOCKET_TO_BE_CLOSED";

/// Any object level we look into; unknown members are ignored, `null` reads as absent.
#[derive(Deserialize)]
struct Level<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<ContentField<'a>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    state: Option<&'a RawValue>,
}

/// `content`, read in the same pass as the level around it: skimming it as a `RawValue` and
/// parsing that text again read every byte of the state twice more than needed (JSON skimming
/// was the largest cost of parsing in the profile). Only its `metadata` and `state` are used.
enum ContentField<'a> {
    Object(Content<'a>),
    /// Anything but an object (a `WrongType` for `content`).
    NotObject,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    state: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ContentField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        use std::marker::PhantomData;

        struct AnyValue<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for AnyValue<'a> {
            type Value = ContentField<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                Content::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ContentField::Object)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ContentField::NotObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ContentField::NotObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ContentField::NotObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ContentField::NotObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ContentField::NotObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ContentField::NotObject)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ContentField::NotObject)
            }
        }
        d.deserialize_any(AnyValue(PhantomData))
    }
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default, rename = "conversationSpaceId")]
    conversation_space_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct State<'a> {
    #[serde(borrow, default, rename = "sequenceNumber")]
    sequence_number: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    /// Only its length is used (the ordered record repeats it in a header).
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses one notification body (webhook POST body or WebSocket text frame).
///
/// Never panics; errors name the offending field, never its value.
pub fn parse(body: &[u8]) -> Result<Notification<'_>, ParseError> {
    // The common case, an object: read it in one pass. (UTF-8 is checked up front because
    // serde_json does not check the strings it skips; a `RawValue` of the whole body did.)
    if let Ok(text) = std::str::from_utf8(body) {
        if text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return level(from_json(text)?);
        }
    }
    let raw: &RawValue = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => {
            return bare_control(body.trim_ascii())
                .map(Notification::Control)
                .ok_or_else(|| ParseError::from_json(&e))
        }
    };
    let text = raw.get();
    if text.starts_with('"') {
        let Str(word) = from_json(text)?;
        return bare_control(word.as_bytes())
            .map(Notification::Control)
            .ok_or(ParseError::NotAnObject);
    }
    // An object never gets here: the first branch took every valid UTF-8 body whose first
    // non-whitespace character is `{`, and a body that is not UTF-8 is not a `RawValue`.
    Err(ParseError::NotAnObject)
}

/// The top level of a notification: a call-state envelope, or a frame whose only member is
/// `data` (WebSocket), which is unwrapped first.
fn level(top: Level<'_>) -> Result<Notification<'_>, ParseError> {
    let unwrap_data = top.data.is_some()
        && top.source.is_none()
        && top.kind.is_none()
        && top.content.is_none()
        && top.metadata.is_none()
        && top.state.is_none();
    match top.data {
        Some(data) if unwrap_data => {
            let inner = object(data, "", "data")?;
            classify(from_json(inner)?, true)
        }
        _ => classify(top, false),
    }
}

/// Reads the routing fields of a bare state object (e.g. one item of a back-fill answer).
pub fn inspect_state(state: &RawValue) -> Result<StateSummary<'_>, ParseError> {
    let (sequence_number, state_type, _) = state_fields(state, "state")?;
    Ok(StateSummary {
        sequence_number,
        state_type,
        fingerprint: fingerprint_at(state, "state")?,
    })
}

/// The dotted paths errors name, for each place a call state can sit: static, because they were
/// formatted for every notification (four allocations each, on both sides of the raw topic)
/// only to be read when one is refused.
struct Paths {
    container: &'static str,
    metadata: &'static str,
    state: &'static str,
}

const fn paths(in_data: bool, in_content: bool) -> Paths {
    match (in_data, in_content) {
        (false, false) => Paths {
            container: "",
            metadata: "metadata",
            state: "state",
        },
        (false, true) => Paths {
            container: "content",
            metadata: "content.metadata",
            state: "content.state",
        },
        (true, false) => Paths {
            container: "data",
            metadata: "data.metadata",
            state: "data.state",
        },
        (true, true) => Paths {
            container: "data.content",
            metadata: "data.content.metadata",
            state: "data.content.state",
        },
    }
}

/// `in_data`: the level is the member `data` of a WebSocket frame.
fn classify(n: Level<'_>, in_data: bool) -> Result<Notification<'_>, ParseError> {
    let prefix = paths(in_data, false).container;
    let source = string(n.source, prefix, "source")?;
    let kind = string(n.kind, prefix, "type")?;
    if let Some(control) = control(source.as_deref(), kind.as_deref()) {
        return Ok(Notification::Control(control));
    }
    let is_call_events = source.as_deref().is_none_or(|s| loose_eq(s, "call-events"));
    let is_call_state = kind.as_deref().is_none_or(|k| loose_eq(k, "call-state"));
    if !(is_call_events && is_call_state) {
        return Ok(Notification::Other {
            source: source.map(Cow::into_owned),
            kind: kind.map(Cow::into_owned),
        });
    }
    let (container, metadata, state) = if let Some(content) = n.content {
        let ContentField::Object(c) = content else {
            return Err(ParseError::wrong_type(prefix, "content", "an object"));
        };
        (paths(in_data, true), c.metadata, c.state)
    } else if n.metadata.is_some() || n.state.is_some() {
        (paths(in_data, false), n.metadata, n.state)
    } else if source.is_none() && kind.is_none() {
        // Nothing that says "call state": not ours to judge.
        return Ok(Notification::Other {
            source: None,
            kind: None,
        });
    } else {
        return Err(ParseError::missing(prefix, "content"));
    };

    let metadata = metadata.ok_or_else(|| ParseError::missing(container.container, "metadata"))?;
    let meta_path = container.metadata;
    let meta: Metadata<'_> = from_json(object(metadata, container.container, "metadata")?)?;
    let conversation_space_id =
        string(meta.conversation_space_id, meta_path, "conversationSpaceId")?
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ParseError::missing(meta_path, "conversationSpaceId"))?;
    if is_reserved_id(&conversation_space_id) {
        return Err(ParseError::wrong_type(
            meta_path,
            "conversationSpaceId",
            RESERVED_ID_RULE,
        ));
    }
    let id_json_len = meta.conversation_space_id.map_or(0, |raw| raw.get().len());

    let state = state.ok_or_else(|| ParseError::missing(container.container, "state"))?;
    let state_path = container.state;
    let (sequence_number, state_type, timestamp) = state_fields(state, state_path)?;
    // The fingerprint is computed later (by the sequencer) by serde_json reading the state
    // alone, which refuses more than MAX_DEPTH levels; refuse such a state here already, where
    // it costs one byte scan, so it is dead-lettered at ingest like any other unreadable body.
    if let Some((line, column)) = too_deep_at(state.get(), MAX_DEPTH) {
        // Worded like serde_json's own recursion-limit error (a syntax error at the bracket,
        // position within the state), as the fingerprint reported it before.
        return Err(ParseError::InvalidJson {
            detail: format!("syntax error at line {line} column {column}"),
        });
    }

    Ok(Notification::CallState(CallState {
        notification_id: id(n.id),
        conversation_space_id,
        sequence_number,
        state_type,
        metadata,
        state,
        state_path,
        id_json_len,
        timestamp_json_len: timestamp.map_or(0, |raw| raw.get().len()),
        timestamp,
    }))
}

/// serde_json's nesting limit (for a value read alone, as the fingerprint reads the state).
const MAX_DEPTH: usize = 127;

/// Where (line, 1-based byte column) `json` (valid JSON) first nests arrays and objects more
/// than `limit` levels deep, if it does.
fn too_deep_at(json: &str, limit: usize) -> Option<(usize, usize)> {
    // Nesting deeper than `limit` needs more than `limit` opening brackets. Counting them is a
    // loop the compiler vectorises; the exact scan below (strings, lines) ran on every state and
    // was 3–4 % of the bridge's CPU, for states that are never anywhere near the limit.
    if opening_brackets(json.as_bytes()) <= limit {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut line_start) = (1usize, 0usize);
    for (i, b) in json.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'\n' => (line, line_start) = (line + 1, i + 1),
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return Some((line, i - line_start + 1));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// How many `{` and `[` bytes `bytes` holds, strings included.
///
/// Counted into one-byte lanes, 255 bytes at a time so no lane can overflow: a plain
/// `filter().count()` widened every byte to a `usize` lane and ran at a quarter of the speed
/// (it was 1.4 % of the bridge's CPU in the profile). `[` (0x5B) and `{` (0x7B) differ only
/// in bit 0x20, so one comparison finds both.
fn opening_brackets(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|chunk| {
            let n = chunk
                .iter()
                .fold(0u8, |n, &b| n + u8::from(b | 0x20 == b'{'));
            usize::from(n)
        })
        .sum()
}

/// `sequenceNumber`, `type` and the raw `timestamp` of a state object found at `path`.
#[allow(clippy::type_complexity)]
fn state_fields<'a>(
    state: &'a RawValue,
    path: &str,
) -> Result<(u64, Option<Cow<'a, str>>, Option<&'a RawValue>), ParseError> {
    let text = state.get();
    if !text.starts_with('{') {
        return Err(ParseError::wrong_type("", path, "an object"));
    }
    let s: State<'a> = from_json(text)?;
    let seq = s
        .sequence_number
        .ok_or_else(|| ParseError::missing(path, "sequenceNumber"))?;
    Ok((
        sequence_number(seq)?,
        string(s.kind, path, "type")?,
        s.timestamp,
    ))
}

/// `raw` when it is a JSON string, unescaped (borrowed when it has no escapes).
pub(crate) fn json_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if text.starts_with('"') {
        from_json::<Str<'_>>(text).ok().map(|s| s.0)
    } else {
        None
    }
}

/// A JSON integer ≥ 1, or a string of decimal digits with the same value.
fn sequence_number(raw: &RawValue) -> Result<u64, ParseError> {
    let text = raw.get();
    let digits: Cow<'_, str> = if text.starts_with('"') {
        from_json::<Str<'_>>(text)?.0
    } else {
        Cow::Borrowed(text)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::bad_sequence(&digits));
    }
    match digits.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ParseError::bad_sequence(&digits)),
    }
}

fn control(source: Option<&str>, kind: Option<&str>) -> Option<ControlMessage> {
    match kind {
        Some(k) if k.eq_ignore_ascii_case(REFRESH_REQUIRED) => {
            return Some(ControlMessage::RefreshRequired)
        }
        Some(k) if k.eq_ignore_ascii_case(TO_BE_CLOSED) => return Some(ControlMessage::ToBeClosed),
        _ => {}
    }
    source
        .filter(|s| s.eq_ignore_ascii_case("notification-websocket"))
        .map(|_| ControlMessage::Other(kind.unwrap_or_default().to_owned()))
}

/// A frame that is only a control word, as raw text or as a JSON string.
fn bare_control(word: &[u8]) -> Option<ControlMessage> {
    if word.eq_ignore_ascii_case(REFRESH_REQUIRED.as_bytes()) {
        Some(ControlMessage::RefreshRequired)
    } else if word.eq_ignore_ascii_case(TO_BE_CLOSED.as_bytes()) {
        Some(ControlMessage::ToBeClosed)
    } else {
        None
    }
}

/// Case-insensitive, `_` and `-` interchangeable: `call-state` == `CALL_STATE`.
fn loose_eq(a: &str, b: &str) -> bool {
    let norm = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

/// The envelope id: a string, or a number kept as its text; anything else is ignored (it does
/// not affect routing).
fn id(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let text = raw?.get();
    if text.starts_with('"') {
        from_json::<Str<'_>>(text).ok().map(|s| s.0)
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(Cow::Borrowed(text))
    } else {
        None
    }
}

fn string<'a>(
    raw: Option<&'a RawValue>,
    prefix: &str,
    field: &str,
) -> Result<Option<Cow<'a, str>>, ParseError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get().starts_with('"') => Ok(Some(from_json::<Str<'a>>(raw.get())?.0)),
        Some(_) => Err(ParseError::wrong_type(prefix, field, "a string")),
    }
}

/// The text of `raw` if it is an object, else a `WrongType` for `prefix.field`.
fn object<'a>(raw: &'a RawValue, prefix: &str, field: &str) -> Result<&'a str, ParseError> {
    let text = raw.get();
    if text.starts_with('{') {
        Ok(text)
    } else {
        Err(ParseError::wrong_type(prefix, field, "an object"))
    }
}

fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, ParseError> {
    serde_json::from_str(text).map_err(|e| ParseError::from_json(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::state_fingerprint;

    const STATE: &str = r#"{"id":"b2b8e13e","sequenceNumber":1,"type":"STARTING","timestamp":"2026-09-25T19:33:04.223Z","participants":[{"id":"4eb8","status":{"value":"RINGING"},"futureField":{"x":1}}]}"#;
    const META: &str = r#"{"conversationSpaceId":"8a484291-aaaa","direction":"INBOUND","accountKey":"5442810562173005068","callCreated":"2026-09-25T19:33:04.223Z"}"#;

    fn webhook() -> String {
        format!(
            r#"{{"id":"1f4f6e0c","source":"call-events","type":"call-state","timestamp":"2026-09-25T19:33:04.521Z","ttl":600,"content":{{"metadata":{META},"state":{STATE}}},"bypassDoNotDisturb":false}}"#
        )
    }

    fn call_state(body: &str) -> CallState<'_> {
        match parse(body.as_bytes()).unwrap() {
            Notification::CallState(cs) => cs,
            other => panic!("not a call state: {other:?}"),
        }
    }

    #[test]
    fn webhook_envelope_is_read_and_raw_bytes_kept() {
        let body = webhook();
        let cs = call_state(&body);
        assert_eq!(cs.notification_id.as_deref(), Some("1f4f6e0c"));
        assert_eq!(cs.conversation_space_id, "8a484291-aaaa");
        assert!(
            matches!(cs.conversation_space_id, Cow::Borrowed(_)),
            "zero-copy id"
        );
        assert_eq!(cs.sequence_number, 1);
        assert_eq!(cs.state_type.as_deref(), Some("STARTING"));
        assert!(!cs.is_ending());
        assert_eq!(cs.state.get(), STATE, "unknown fields and bytes untouched");
        assert_eq!(cs.metadata.get(), META);
        let expected = state_fingerprint(serde_json::from_str(STATE).unwrap()).unwrap();
        assert_eq!(cs.fingerprint().unwrap(), expected);
    }

    #[test]
    fn every_envelope_shape_gives_the_same_routing_fields() {
        let w = webhook();
        let bare = format!(r#"{{"metadata":{META},"state":{STATE}}}"#);
        let ws = format!(r#"{{"data":{w}}}"#);
        let ws_event = format!(
            r#"{{"event":"Notification","eventId":"e-1","timestamp":"2026-09-25T19:33:04Z","data":{w}}}"#
        );
        let ws_bare = format!(r#"{{"data":{bare}}}"#);
        let reference = call_state(&w);
        for body in [&bare, &ws, &ws_event, &ws_bare] {
            let cs = call_state(body);
            assert_eq!(cs.conversation_space_id, reference.conversation_space_id);
            assert_eq!(cs.sequence_number, reference.sequence_number);
            assert_eq!(cs.fingerprint().unwrap(), reference.fingerprint().unwrap());
            assert_eq!(cs.state.get(), STATE);
        }
        assert_eq!(call_state(&bare).notification_id, None);
        assert_eq!(call_state(&ws).notification_id.as_deref(), Some("1f4f6e0c"));
    }

    #[test]
    fn opening_brackets_counts_exactly_the_two_bytes_and_never_overflows() {
        for b in 0..=u8::MAX {
            let expected = usize::from(b == b'{' || b == b'[');
            assert_eq!(opening_brackets(&[b; 3]), 3 * expected, "byte {b:#04x}");
        }
        // Chunks of 255 brackets exactly fill a lane; 1,000 span four chunks and a part.
        assert_eq!(opening_brackets(&[b'['; 1_000]), 1_000);
        let mixed: Vec<u8> = (0..5_000u32).map(|i| (i * 37 % 256) as u8).collect();
        let naive = mixed.iter().filter(|&&b| b == b'{' || b == b'[').count();
        assert_eq!(opening_brackets(&mixed), naive);
    }

    #[test]
    fn depth_is_judged_by_nesting_not_by_the_number_of_brackets() {
        let wide = format!("{{\"a\":[{}]}}", vec!["[{}]"; 300].join(","));
        assert_eq!(too_deep_at(&wide, 4), None, "600 brackets, 4 levels");
        assert_eq!(too_deep_at(&wide, 3), Some((1, 8)));
        assert_eq!(
            too_deep_at("{\"s\":\"[[[[\"}", 1),
            None,
            "brackets in a string"
        );
        assert_eq!(too_deep_at("{\n [[\n", 2), Some((2, 3)));
    }

    #[test]
    fn routing_refuses_exactly_the_nesting_the_fingerprint_cannot_read() {
        for depth in [126usize, 127, 128, 129] {
            // The state object is level 1; `x` adds depth - 1 more levels.
            let inner = format!("{}1{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
            let body = format!(
                r#"{{"source":"call-events","type":"call-state","content":{{"metadata":{{"conversationSpaceId":"c"}},"state":{{"sequenceNumber":1,"s":"[[[\"","x":{inner}}}}}}}"#
            );
            let routed = parse(body.as_bytes());
            let state_text = format!(r#"{{"sequenceNumber":1,"s":"[[[\"","x":{inner}}}"#);
            let state: &RawValue = serde_json::from_str(&state_text).unwrap();
            let fingerprint = state_fingerprint(state);
            assert_eq!(routed.is_ok(), fingerprint.is_ok(), "depth {depth}");
            assert_eq!(routed.is_ok(), depth <= MAX_DEPTH, "depth {depth}");
            if let Ok(Notification::CallState(cs)) = routed {
                assert_eq!(cs.fingerprint().ok(), fingerprint.ok());
            }
        }
    }

    #[test]
    fn whitespace_and_key_order_do_not_change_the_fingerprint() {
        let pretty: serde_json::Value = serde_json::from_str(STATE).unwrap();
        let pretty = serde_json::to_string_pretty(&pretty).unwrap();
        let body = format!(r#"{{"data":{{"content":{{"state":{pretty},"metadata":{META}}}}}}}"#);
        assert_eq!(
            call_state(&body).fingerprint().unwrap(),
            call_state(&webhook()).fingerprint().unwrap()
        );
    }

    #[test]
    fn sequence_number_as_string_and_ending_any_case() {
        let body = r#"{"metadata":{"conversationSpaceId":"c"},"state":{"sequenceNumber":"42","type":"ending"}}"#;
        let cs = call_state(body);
        assert_eq!(cs.sequence_number, 42);
        assert!(cs.is_ending());
    }

    #[test]
    fn bad_sequence_numbers_are_rejected() {
        for (seq, code) in [
            ("0", "invalid_sequence_number"),
            ("-1", "invalid_sequence_number"),
            ("1.5", "invalid_sequence_number"),
            ("1e3", "invalid_sequence_number"),
            ("\"\"", "invalid_sequence_number"),
            ("\"12a\"", "invalid_sequence_number"),
            ("18446744073709551616", "invalid_sequence_number"),
            ("true", "invalid_sequence_number"),
            ("null", "missing_sequence_number"),
        ] {
            let body = format!(
                r#"{{"metadata":{{"conversationSpaceId":"c"}},"state":{{"sequenceNumber":{seq}}}}}"#
            );
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.reason_code(), code, "seq {seq}: {err}");
        }
    }

    #[test]
    fn missing_fields_name_their_full_path() {
        let cases = [
            (
                r#"{"source":"call-events","type":"call-state","content":{"metadata":{},"state":{"sequenceNumber":1}}}"#,
                "content.metadata.conversationSpaceId",
                "missing_conversation_space_id",
            ),
            (
                r#"{"data":{"source":"call-events","type":"call-state","content":{"metadata":{"conversationSpaceId":"c"},"state":{}}}}"#,
                "data.content.state.sequenceNumber",
                "missing_sequence_number",
            ),
            (
                r#"{"metadata":{"conversationSpaceId":""},"state":{"sequenceNumber":1}}"#,
                "metadata.conversationSpaceId",
                "missing_conversation_space_id",
            ),
            (
                r#"{"source":"call-events","type":"call-state"}"#,
                "content",
                "missing_field",
            ),
            (
                r#"{"source":"call-events","content":{"state":{"sequenceNumber":1}}}"#,
                "content.metadata",
                "missing_metadata",
            ),
        ];
        for (body, path, code) in cases {
            match parse(body.as_bytes()) {
                Err(e @ ParseError::MissingField { .. }) => {
                    assert_eq!(e.reason_code(), code, "{body}");
                    assert!(
                        matches!(&e, ParseError::MissingField { path: p } if p == path),
                        "{e}"
                    );
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn conversation_ids_reserved_for_the_changelog_are_refused() {
        use crate::notification::{RESERVED_ID_PREFIX, RESERVED_ID_RULE};
        // Every key the changelog writes for itself, the bare prefix, and the prefix spelled
        // with JSON escapes (the rule applies to the id, not to how it was written).
        for id in [
            "__progress/1",
            "__fence/3",
            "__",
            "__anything",
            "\\u005f\\u005fprogress/1",
        ] {
            let webhook = format!(
                r#"{{"source":"call-events","type":"call-state","content":{{"metadata":{{"conversationSpaceId":"{id}"}},"state":{{"sequenceNumber":1}}}}}}"#
            );
            let bare = format!(
                r#"{{"metadata":{{"conversationSpaceId":"{id}"}},"state":{{"sequenceNumber":1}}}}"#
            );
            let ws = format!(r#"{{"data":{webhook}}}"#);
            for (body, path) in [
                (&webhook, "content.metadata.conversationSpaceId"),
                (&bare, "metadata.conversationSpaceId"),
                (&ws, "data.content.metadata.conversationSpaceId"),
            ] {
                let err = parse(body.as_bytes()).unwrap_err();
                assert_eq!(
                    err,
                    ParseError::WrongType {
                        path: path.into(),
                        expected: RESERVED_ID_RULE
                    },
                    "{body}"
                );
                assert_eq!(err.reason_code(), "invalid_conversation_space_id");
                let text = err.to_string();
                assert!(
                    text.contains(&format!("\"{RESERVED_ID_PREFIX}\""))
                        && text.contains("reserved"),
                    "the detail names the rule: {text}"
                );
                assert!(
                    !text.contains("progress") && !text.contains("anything"),
                    "{text}"
                );
            }
        }
        // Underscores elsewhere, or only one, are ordinary ids.
        for id in ["_progress/1", "a__b", "c-__", "_"] {
            let body = format!(
                r#"{{"metadata":{{"conversationSpaceId":"{id}"}},"state":{{"sequenceNumber":1}}}}"#
            );
            assert_eq!(call_state(&body).conversation_space_id, id);
        }
    }

    #[test]
    fn lengths_of_the_parts_the_records_repeat_are_kept() {
        let cs = call_state(
            r#"{"metadata":{"conversationSpaceId":"c\u002d1"},"state":{"sequenceNumber":1,"timestamp":"2026-01-01T00:00:00Z"}}"#,
        );
        assert_eq!(cs.conversation_space_id, "c-1");
        assert_eq!(
            cs.id_json_len,
            r#""c\u002d1""#.len(),
            "as sent, escapes included"
        );
        assert_eq!(cs.timestamp_json_len, r#""2026-01-01T00:00:00Z""#.len());
        let cs =
            call_state(r#"{"metadata":{"conversationSpaceId":"c"},"state":{"sequenceNumber":1}}"#);
        assert_eq!((cs.id_json_len, cs.timestamp_json_len), (3, 0));
    }

    #[test]
    fn the_state_timestamp_is_read_with_the_state_and_only_as_a_string() {
        let state = |s: &str| {
            format!(
                r#"{{"data":{{"content":{{"metadata":{{"conversationSpaceId":"c"}},"state":{s}}}}}}}"#
            )
        };
        let ts = |s: &str| {
            parse(state(s).as_bytes())
                .ok()
                .and_then(|n| match n {
                    Notification::CallState(cs) => Some(cs.timestamp().map(Cow::into_owned)),
                    _ => None,
                })
                .expect("a call state")
        };
        assert_eq!(
            ts(r#"{"sequenceNumber":1,"timestamp":"2026-01-01T00:00:00Z"}"#).as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            ts(r#"{"sequenceNumber":1,"timestamp":"a\u0062"}"#).as_deref(),
            Some("ab")
        );
        assert_eq!(ts(r#"{"sequenceNumber":1,"timestamp":17}"#), None);
        assert_eq!(ts(r#"{"sequenceNumber":1,"timestamp":null}"#), None);
        assert_eq!(ts(r#"{"sequenceNumber":1}"#), None);
    }

    #[test]
    fn errors_name_the_path_of_each_container() {
        let missing = |body: &str| match parse(body.as_bytes()) {
            Err(ParseError::MissingField { path }) => path,
            other => panic!("{body}: {other:?}"),
        };
        for (body, path) in [
            (r#"{"state":{}}"#, "metadata"),
            (
                r#"{"metadata":{"conversationSpaceId":"c"},"state":{}}"#,
                "state.sequenceNumber",
            ),
            (
                r#"{"content":{"metadata":{}}}"#,
                "content.metadata.conversationSpaceId",
            ),
            (
                r#"{"data":{"metadata":{"conversationSpaceId":"c"}}}"#,
                "data.state",
            ),
            (
                r#"{"data":{"content":{"metadata":{"conversationSpaceId":"c"},"state":{}}}}"#,
                "data.content.state.sequenceNumber",
            ),
            (
                r#"{"data":{"content":{"state":{}}}}"#,
                "data.content.metadata",
            ),
        ] {
            assert_eq!(missing(body), path, "{body}");
        }
    }

    #[test]
    fn wrong_types_are_reported_by_path_without_values() {
        let body = r#"{"content":{"metadata":{"conversationSpaceId":12015550123},"state":{"sequenceNumber":1}}}"#;
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ParseError::WrongType {
                path: "content.metadata.conversationSpaceId".into(),
                expected: "a string"
            }
        );
        assert!(!err.to_string().contains("12015550123"));
        for content in [
            "[1]",
            r#"[[1,{"a":[]}],"x"]"#,
            r#""{}""#,
            "5",
            "-1.5e3",
            "true",
        ] {
            let body = format!(r#"{{"content":{content},"id":"after"}}"#);
            assert_eq!(
                parse(body.as_bytes()).unwrap_err().reason_code(),
                "invalid_content",
                "{content}"
            );
        }
        // `null` is absent, as everywhere.
        let body = r#"{"content":null,"metadata":{"conversationSpaceId":"c"},"state":{"sequenceNumber":2}}"#;
        assert!(
            matches!(parse(body.as_bytes()), Ok(Notification::CallState(cs)) if cs.sequence_number == 2)
        );
        let body = r#"{"data":"{}"}"#;
        assert_eq!(
            parse(body.as_bytes()).unwrap_err().reason_code(),
            "invalid_data"
        );
        let body = r#"{"metadata":{"conversationSpaceId":"c"},"state":[]}"#;
        assert_eq!(
            parse(body.as_bytes()).unwrap_err().reason_code(),
            "invalid_state"
        );
    }

    #[test]
    fn invalid_utf8_anywhere_is_refused_even_in_a_field_never_read() {
        let good = br#"{"x":"ok","content":{"metadata":{"conversationSpaceId":"c"},"state":{"sequenceNumber":1}}}"#;
        assert!(parse(good).is_ok());
        let mut bad = good.to_vec();
        bad[6] = 0xff; // inside "ok", a field nobody reads
        assert_eq!(parse(&bad).unwrap_err().reason_code(), "invalid_json");
    }

    #[test]
    fn control_messages_in_every_spelling() {
        let cases = [
            (
                r#"{"data":{"source":"notification-websocket","type":"WEBSOCKET_REFRESH_REQUIRED"}}"#,
                ControlMessage::RefreshRequired,
            ),
            (
                r#"{"data":{"type":"WEBSOCKET_TO_BE_CLOSED"}}"#,
                ControlMessage::ToBeClosed,
            ),
            (
                r#"{"type":"WEBSOCKET_TO_BE_CLOSED"}"#,
                ControlMessage::ToBeClosed,
            ),
            (
                r#"{"data":{"source":"notification-websocket","type":"SOMETHING_NEW"}}"#,
                ControlMessage::Other("SOMETHING_NEW".into()),
            ),
            (
                "WEBSOCKET_REFRESH_REQUIRED",
                ControlMessage::RefreshRequired,
            ),
            (" \"WEBSOCKET_TO_BE_CLOSED\"\n", ControlMessage::ToBeClosed),
        ];
        for (body, want) in cases {
            match parse(body.as_bytes()) {
                Ok(Notification::Control(c)) => assert_eq!(c, want, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_sources_are_passed_back_for_routing() {
        let body = r#"{"source":"call-events-report","type":"REPORT_SUMMARY","content":{"conversationSpaceId":"c"}}"#;
        match parse(body.as_bytes()).unwrap() {
            Notification::Other { source, kind } => {
                assert_eq!(source.as_deref(), Some("call-events-report"));
                assert_eq!(kind.as_deref(), Some("REPORT_SUMMARY"));
            }
            other => panic!("{other:?}"),
        }
        let body = r#"{"data":{"source":"recording-service","type":"RECORDING_UPLOADED","content":{"recording_id":"r"}}}"#;
        assert!(matches!(
            parse(body.as_bytes()).unwrap(),
            Notification::Other { source: Some(s), .. } if s == "recording-service"
        ));
        assert!(matches!(
            parse(b"{\"event\":\"Ping\"}").unwrap(),
            Notification::Other {
                source: None,
                kind: None
            }
        ));
        // A call-events notification of an unknown type is not a call state.
        let body = r#"{"source":"call-events","type":"call-summary","content":{}}"#;
        assert!(matches!(
            parse(body.as_bytes()).unwrap(),
            Notification::Other { .. }
        ));
    }

    #[test]
    fn loose_source_and_type_spellings_are_accepted() {
        let body = format!(
            r#"{{"source":"CALL_EVENTS","type":"CALL_STATE","content":{{"metadata":{META},"state":{STATE}}}}}"#
        );
        assert_eq!(call_state(&body).sequence_number, 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse(b"").unwrap_err().reason_code(), "invalid_json");
        assert_eq!(
            parse(b"\xff\xfe").unwrap_err().reason_code(),
            "invalid_json"
        );
        assert_eq!(parse(b"[1,2]").unwrap_err(), ParseError::NotAnObject);
        assert_eq!(parse(b"\"hello\"").unwrap_err(), ParseError::NotAnObject);
        assert_eq!(parse(b"42").unwrap_err(), ParseError::NotAnObject);
        let deep = "[".repeat(10_000);
        assert_eq!(
            parse(deep.as_bytes()).unwrap_err().reason_code(),
            "invalid_json"
        );
        let deep_state = format!(
            r#"{{"metadata":{{"conversationSpaceId":"c"}},"state":{{"sequenceNumber":1,"x":{}1{}}}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        assert_eq!(
            parse(deep_state.as_bytes()).unwrap_err().reason_code(),
            "invalid_json"
        );
    }

    #[test]
    fn inspect_state_reads_backfilled_states() {
        let raw: &RawValue = serde_json::from_str(STATE).unwrap();
        let s = inspect_state(raw).unwrap();
        assert_eq!(s.sequence_number, 1);
        assert_eq!(s.state_type.as_deref(), Some("STARTING"));
        assert_eq!(s.fingerprint, call_state(&webhook()).fingerprint().unwrap());
        let raw: &RawValue = serde_json::from_str(r#"{"type":"ENDING"}"#).unwrap();
        assert_eq!(
            inspect_state(raw).unwrap_err().reason_code(),
            "missing_sequence_number"
        );
    }
}
