//! Fuzzes `callbridge::notification::parse` (webhook bodies and WebSocket frames, as they arrive
//! from the raw topic) and the state helpers the sequencer and the back-fill rely on.
//!
//! Beyond "never panics", every input checks what the module promises:
//! - `parse` is deterministic (same bytes, same result);
//! - an error carries no body text: its path is made of known field names, an `InvalidJson`
//!   detail is only "category at line L column C" (a bad sequence number is echoed, by design, but
//!   cut to 24 bytes);
//! - an accepted call state has a non-empty conversation id, `sequenceNumber >= 1`, `metadata` and
//!   `state` objects that are byte-for-byte slices of the body, and the fingerprint that
//!   `state_fingerprint` and `inspect_state` give for that `state`;
//! - the fingerprint does not depend on spelling: the same state with keys in reverse order, other
//!   whitespace, every string `\u`-escaped and small integers written as `n.0` has the same
//!   fingerprint (and the same sequence number and type);
//! - the envelope does not matter: the bare `{"metadata","state"}` form of an accepted call state
//!   and (when the body was not itself a `data` frame) the body wrapped as a WebSocket frame
//!   `{"event":"Notification","data":…}` parse to the same call state;
//! - `inspect_state` on any object agrees with `state_fingerprint` and never yields sequence 0.

#![no_main]

use std::fmt::{self, Write as _};

use callbridge::notification::{
    inspect_state, parse, state_fingerprint, CallState, Notification, ParseError,
};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

fuzz_target!(|body: &[u8]| check(body));

fn check(body: &[u8]) {
    let first = parse(body);
    let again = parse(body);
    assert_eq!(
        format!("{first:?}"),
        format!("{again:?}"),
        "parse is not deterministic"
    );
    if tracing() {
        eprintln!("{first:?}");
    }
    match &first {
        Ok(Notification::CallState(cs)) => check_call_state(body, cs),
        Ok(Notification::Control(_) | Notification::Other { .. }) => {}
        Err(e) => check_error(e),
    }
    check_inspect_state(body);
}

/// `PARSE_FUZZ_TRACE=1` prints each parse result (to see what a seed or a crash is).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PARSE_FUZZ_TRACE").is_some())
}

// ---- errors -------------------------------------------------------------------------------------

/// Field names an error path may contain; anything else would be text taken from the body.
const FIELDS: &[&str] = &[
    "data",
    "content",
    "metadata",
    "state",
    "source",
    "type",
    "conversationSpaceId",
    "sequenceNumber",
];

fn check_error(e: &ParseError) {
    assert!(
        ParseError::REASON_CODES.contains(&e.reason_code()),
        "unknown code {e:?}"
    );
    match e {
        ParseError::InvalidJson { detail } => {
            assert!(is_json_detail(detail), "InvalidJson detail {detail:?}")
        }
        ParseError::NotAnObject => {}
        ParseError::MissingField { path } | ParseError::WrongType { path, .. } => assert!(
            path.split('.').all(|seg| FIELDS.contains(&seg)),
            "error path is not made of field names: {path:?}"
        ),
        ParseError::InvalidSequenceNumber { value } => assert!(
            value.len() <= 24 + '…'.len_utf8(),
            "sequence echo not bounded: {} bytes",
            value.len()
        ),
    }
}

/// `"<category> at line <n> column <n>"`, nothing else.
fn is_json_detail(detail: &str) -> bool {
    let rest = [
        "io error",
        "syntax error",
        "unexpected data",
        "unexpected end of input",
    ]
    .iter()
    .find_map(|c| detail.strip_prefix(c));
    let Some(rest) = rest.and_then(|r| r.strip_prefix(" at line ")) else {
        return false;
    };
    let Some((line, column)) = rest.split_once(" column ") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(line) && digits(column)
}

// ---- accepted call states -----------------------------------------------------------------------

fn check_call_state(body: &[u8], cs: &CallState<'_>) {
    assert!(cs.sequence_number >= 1, "sequence 0 accepted");
    assert!(
        !cs.conversation_space_id.is_empty(),
        "empty conversation id"
    );
    let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
    let (meta, state) = (cs.metadata.get(), cs.state.get());
    assert!(
        meta.starts_with('{') && state.starts_with('{'),
        "not objects"
    );
    assert!(text.contains(meta), "metadata is not a slice of the body");
    assert!(text.contains(state), "state is not a slice of the body");
    assert!(
        cs.is_ending()
            == cs
                .state_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("ENDING")),
        "is_ending disagrees with the state type"
    );

    // The fingerprint is lazy: it may fail where routing succeeded (the sequencer then
    // dead-letters the state), but it must agree with `state_fingerprint` either way.
    let Ok(fp) = cs.fingerprint() else {
        assert!(
            state_fingerprint(cs.state).is_err(),
            "fingerprint disagrees on failure"
        );
        assert!(
            inspect_state(cs.state).is_err(),
            "inspect_state accepted an unfingerprintable state"
        );
        return;
    };
    assert_eq!(
        Ok(fp),
        state_fingerprint(cs.state),
        "parse and state_fingerprint disagree"
    );
    let summary = inspect_state(cs.state).expect("inspect_state of an accepted state");
    assert_eq!(summary.sequence_number, cs.sequence_number);
    assert_eq!(summary.state_type, cs.state_type);
    assert_eq!(summary.fingerprint, fp);
    assert_eq!(summary.is_ending(), cs.is_ending());

    // Same state, other spelling: same identity.
    let respelled = respell(state, true);
    let raw: &RawValue = serde_json::from_str(&respelled).expect("respelled state is JSON");
    let other = inspect_state(raw).unwrap_or_else(|e| panic!("respelled state rejected: {e:?}"));
    assert_eq!(
        other.fingerprint, fp,
        "fingerprint depends on spelling:\n  {state}\n  {respelled}"
    );
    assert_eq!(other.sequence_number, cs.sequence_number);
    assert_eq!(other.state_type, cs.state_type);

    // Same state, other envelope: the guide's bare form.
    let bare = format!(r#"{{"metadata":{meta},"state":{state}}}"#);
    same_call_state(cs, &bare, "bare form", false);

    // As a WebSocket frame, unless the body already was one (only one `data` level is unwrapped).
    if !is_data_frame(text) {
        let framed = format!(r#"{{"event":"Notification","eventId":"e","data":{text}}}"#);
        same_call_state(cs, &framed, "WebSocket frame", true);
    }
}

fn same_call_state(cs: &CallState<'_>, body: &str, what: &str, same_id: bool) {
    match parse(body.as_bytes()) {
        Ok(Notification::CallState(other)) => {
            assert_eq!(
                other.conversation_space_id, cs.conversation_space_id,
                "{what}"
            );
            assert_eq!(other.sequence_number, cs.sequence_number, "{what}");
            assert_eq!(other.state_type, cs.state_type, "{what}");
            assert_eq!(other.fingerprint().ok(), cs.fingerprint().ok(), "{what}");
            assert_eq!(other.state.get(), cs.state.get(), "{what}");
            assert_eq!(other.metadata.get(), cs.metadata.get(), "{what}");
            if same_id {
                assert_eq!(other.notification_id, cs.notification_id, "{what}");
            }
        }
        other => panic!("{what} of an accepted call state gives {other:?}"),
    }
}

/// The top level of `text` is a frame `parse` unwraps: `data` and none of the envelope members
/// (`null` counts as absent, as in `parse`).
fn is_data_frame(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
        #[serde(borrow, default)]
        source: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "type")]
        kind: Option<&'a RawValue>,
        #[serde(borrow, default)]
        content: Option<&'a RawValue>,
        #[serde(borrow, default)]
        metadata: Option<&'a RawValue>,
        #[serde(borrow, default)]
        state: Option<&'a RawValue>,
    }
    let top: Top<'_> = serde_json::from_str(text).expect("an accepted body is an object");
    top.data.is_some()
        && top.source.is_none()
        && top.kind.is_none()
        && top.content.is_none()
        && top.metadata.is_none()
        && top.state.is_none()
}

// ---- inspect_state on anything ------------------------------------------------------------------

fn check_inspect_state(body: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<&RawValue>(body) else {
        return;
    };
    if !raw.get().starts_with('{') {
        return;
    }
    if let Ok(s) = inspect_state(raw) {
        assert!(s.sequence_number >= 1, "inspect_state yields sequence 0");
        assert_eq!(
            state_fingerprint(raw).ok(),
            Some(s.fingerprint),
            "inspect_state and state_fingerprint disagree"
        );
    }
}

// ---- respelling -----------------------------------------------------------------------------------

/// `text` (valid JSON that serde_json can load as a `Value`) written another way that denotes the
/// same value: members in reverse order (duplicate keys collapsed to the last one, which is the
/// one a JSON reader keeps), whitespace everywhere, every string `\u`-escaped, integers below 2^53
/// written as `n.0` except the state's own `sequenceNumber` (which must stay an integer).
/// Other numbers are kept verbatim: serde_json's default float parsing is best-effort, so
/// re-printing a float could change its value.
fn respell(text: &str, top: bool) -> String {
    let mut out = String::new();
    respell_into(text, top, &mut out).expect("writing to a String");
    out
}

fn respell_into(text: &str, top: bool, out: &mut String) -> fmt::Result {
    match text.as_bytes().first() {
        Some(b'{') => {
            let Members(mut members) = serde_json::from_str(text).expect("object");
            // Keep the last occurrence of each key, then reverse.
            let mut seen = std::collections::HashSet::new();
            members.reverse();
            members.retain(|(k, _)| seen.insert(k.clone()));
            out.push_str("{\n ");
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,\t");
                }
                escape_all(key, out)?;
                out.push_str(" :\r\n");
                if top && key == "sequenceNumber" && !value.get().starts_with('"') {
                    // Must stay an integer token; a string form may still be escaped.
                    out.push_str(value.get());
                } else {
                    respell_into(value.get(), false, out)?;
                }
            }
            out.push_str("\n}");
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).expect("array");
            out.push_str("[ ");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                respell_into(item.get(), false, out)?;
            }
            out.push_str(" ]");
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).expect("string");
            escape_all(&s, out)?;
        }
        _ => out.push_str(&respell_number(text)),
    }
    Ok(())
}

fn respell_number(token: &str) -> String {
    let digits = token.strip_prefix('-').unwrap_or(token);
    let integral = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    match token.parse::<i64>() {
        Ok(n) if integral && n.unsigned_abs() < (1 << 53) => format!("{token}.0"),
        _ => token.to_owned(), // floats, huge integers, true/false/null
    }
}

/// A JSON string literal with every character escaped as `\uXXXX` (surrogate pairs above the BMP).
fn escape_all(s: &str, out: &mut String) -> fmt::Result {
    out.push('"');
    let mut buf = [0u16; 2];
    for c in s.chars() {
        for unit in c.encode_utf16(&mut buf) {
            write!(out, "\\u{unit:04x}")?;
        }
    }
    out.push('"');
    Ok(())
}

/// An object's members in document order, duplicates included.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}
