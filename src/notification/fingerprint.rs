//! A stable identity for a call state, independent of how it travelled.
//!
//! The same state reaches us by webhook, by WebSocket and from the REST back-fill, each with its
//! own serializer: key order, whitespace and string escapes can differ. The sequencer must tell
//! "the same state again" (drop it) from "a different state with the same sequence number" (a
//! conflict to dead-letter), so it compares a hash of a canonical form instead of bytes:
//! object keys sorted (by UTF-8 bytes) at every depth, no whitespace, strings re-escaped the one
//! way serde_json writes them, integral numbers written as integers (`1.0` == `1`).
//!
//! The hash is FNV-1a 64, written out here rather than std's `DefaultHasher`, whose algorithm
//! may change between Rust releases; fingerprints end up in Kafka and must survive upgrades.

use std::io;

use serde_json::value::RawValue;
use serde_json::Value;

use super::ParseError;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.feed(bytes);
    h.0
}

/// Fingerprint of a call-state object: FNV-1a 64 over its canonical JSON form.
///
/// Use this for back-filled states, so they compare equal to the same state received live
/// (whose fingerprint [`super::parse`] computes the same way).
pub fn state_fingerprint(state: &RawValue) -> Result<u64, ParseError> {
    fingerprint_at(state, "state")
}

pub(crate) fn fingerprint_at(state: &RawValue, path: &str) -> Result<u64, ParseError> {
    // A borrowed tree rather than `serde_json::Value`: same parser (same limits, same
    // acceptance), same canonical bytes, but no allocation per key and per unescaped string;
    // the fingerprint was most of the sequencer's parsing cost (docs/performance.md).
    let node: Node<'_> =
        serde_json::from_str(state.get()).map_err(|e| ParseError::from_json(&e))?;
    if !matches!(node, Node::Object(_)) {
        return Err(ParseError::wrong_type("", path, "an object"));
    }
    let mut h = Fnv1a::new();
    node.write_canonical(&mut h)
        .map_err(|_| ParseError::InvalidJson {
            detail: "cannot canonicalise".to_owned(),
        })?;
    Ok(h.0)
}

/// A JSON value borrowing its strings from the text where it can.
enum Node<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(std::borrow::Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(std::borrow::Cow<'a, str>, Node<'a>)>),
}

impl<'de> serde::Deserialize<'de> for Node<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// A string borrowed when it has no escapes.
struct Text<'a>(std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Node::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // JSON text cannot spell NaN or infinities; serde_json's `Value` maps them to null.
        Ok(serde_json::Number::from_f64(v).map_or(Node::Null, Node::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Node::String(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Node::String(std::borrow::Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Node::String(std::borrow::Cow::Owned(v)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A call state's objects mostly have up to eight keys: one allocation each, where
        // growing from empty took up to three (the fingerprint's allocations were the
        // sequencer's largest count per state in heaptrack; docs/microbenchmarks.md).
        // An empty object allocates nothing.
        let Some(Text(first)) = map.next_key()? else {
            return Ok(Node::Object(Vec::new()));
        };
        let mut entries: Vec<(std::borrow::Cow<'de, str>, Node<'de>)> = Vec::with_capacity(8);
        entries.push((first, map.next_value()?));
        while let Some(Text(key)) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        // Sorted by key bytes (a stable sort: repeated keys stay in document order); of repeated
        // keys the last one wins, as in `serde_json::Value`, deduplicated in place: `dedup_by`
        // keeps the first of a run, so each later copy is swapped into the kept slot first.
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Ok(Node::Object(entries))
    }
}

impl Node<'_> {
    /// The same bytes as [`write_canonical`] writes for the equivalent `Value`.
    fn write_canonical<W: io::Write>(&self, out: &mut W) -> io::Result<()> {
        match self {
            Node::Null => out.write_all(b"null"),
            Node::Bool(true) => out.write_all(b"true"),
            Node::Bool(false) => out.write_all(b"false"),
            Node::Number(n) => write_number(n, out),
            Node::String(s) => serde_json::to_writer(out, s.as_ref()).map_err(io::Error::other),
            Node::Array(items) => {
                out.write_all(b"[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    item.write_canonical(out)?;
                }
                out.write_all(b"]")
            }
            Node::Object(entries) => {
                out.write_all(b"{")?;
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *out, key.as_ref()).map_err(io::Error::other)?;
                    out.write_all(b":")?;
                    item.write_canonical(out)?;
                }
                out.write_all(b"}")
            }
        }
    }
}

/// The canonical text itself, for tests and debugging.
pub fn canonical_json(value: &RawValue) -> Result<String, ParseError> {
    let value: Value = serde_json::from_str(value.get()).map_err(|e| ParseError::from_json(&e))?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out).map_err(|_| ParseError::InvalidJson {
        detail: "cannot canonicalise".to_owned(),
    })?;
    String::from_utf8(out).map_err(|_| ParseError::InvalidJson {
        detail: "canonical form is not UTF-8".to_owned(),
    })
}

/// Streams the canonical form into `out`. Recursion depth is bounded by serde_json's own
/// nesting limit (128) applied when `value` was parsed.
fn write_canonical<W: io::Write>(value: &Value, out: &mut W) -> io::Result<()> {
    match value {
        Value::Null => out.write_all(b"null"),
        Value::Bool(true) => out.write_all(b"true"),
        Value::Bool(false) => out.write_all(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => serde_json::to_writer(out, s).map_err(io::Error::other),
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        Value::Object(map) => {
            // serde_json's map is only sorted when its `preserve_order` feature is off, and any
            // crate in the build can turn it on: sort explicitly.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.write_all(b"{")?;
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, key).map_err(io::Error::other)?;
                out.write_all(b":")?;
                write_canonical(item, out)?;
            }
            out.write_all(b"}")
        }
    }
}

fn write_number<W: io::Write>(n: &serde_json::Number, out: &mut W) -> io::Result<()> {
    if let Some(u) = n.as_u64() {
        return write!(out, "{u}");
    }
    if let Some(i) = n.as_i64() {
        return write!(out, "{i}");
    }
    match n.as_f64() {
        // 2^53: every integer below it is exact in an f64, so `3.0` and `3` are one number.
        Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
            // The guard above keeps the value inside i64, so the cast is exact.
            write!(out, "{}", f as i64)
        }
        _ => write!(out, "{n}"),
    }
}

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(FNV_OFFSET)
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
}

impl io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn canonical_form_sorts_keys_at_every_depth_and_drops_whitespace() {
        let a = raw(r#"{ "b": 1, "a": { "z": [ {"y":2, "x":1} ], "m": null } }"#);
        assert_eq!(
            canonical_json(a).unwrap(),
            r#"{"a":{"m":null,"z":[{"x":1,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn same_state_in_different_spellings_has_one_fingerprint() {
        let a = raw(r#"{"sequenceNumber":3,"type":"ACTIVE","name":"Zoë/é","n":2.0}"#);
        let b = raw(
            "{\n  \"n\": 2, \"name\": \"Zo\\u00eb\\/\\u00e9\",\n  \"type\": \"ACTIVE\", \"sequenceNumber\": 3\n}",
        );
        assert_eq!(state_fingerprint(a).unwrap(), state_fingerprint(b).unwrap());
    }

    #[test]
    fn different_states_with_the_same_sequence_differ() {
        let a = raw(r#"{"sequenceNumber":3,"type":"ACTIVE","participants":[]}"#);
        let b = raw(r#"{"sequenceNumber":3,"type":"ENDING","participants":[]}"#);
        let c = raw(r#"{"sequenceNumber":3,"type":"ACTIVE","participants":[{}]}"#);
        let fa = state_fingerprint(a).unwrap();
        assert_ne!(fa, state_fingerprint(b).unwrap());
        assert_ne!(fa, state_fingerprint(c).unwrap());
        // Array order is meaningful, unlike key order.
        let d = raw(r#"{"p":[1,2]}"#);
        let e = raw(r#"{"p":[2,1]}"#);
        assert_ne!(state_fingerprint(d).unwrap(), state_fingerprint(e).unwrap());
    }

    /// The fingerprint through the borrowed tree must equal FNV-1a of the `Value`-based
    /// canonical text, byte for byte: fingerprints live in Kafka (changelog, dedupe) and a
    /// change would make every stored one disagree with a new copy of the same state.
    #[test]
    fn borrowed_tree_fingerprint_equals_the_value_based_canonical_form() {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e12f64..1e12).prop_map(serde_json::Value::from),
            prop_oneof![Just(2.0f64), Just(-0.0), Just(1e300), Just(0.1)]
                .prop_map(serde_json::Value::from),
            "(?s).{0,12}".prop_map(serde_json::Value::from),
            "[a\\\"/é\u{1F600}\n\t]{0,6}".prop_map(serde_json::Value::from),
        ];
        let tree = leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::vec(("[a-c\"\\\\é]{0,3}", inner), 0..6)
                    .prop_map(|kv| { serde_json::Value::Object(kv.into_iter().collect()) }),
            ]
        });
        let objects = prop::collection::vec(("[a-zA-Z\\\\é]{0,4}", tree), 0..8);
        proptest!(ProptestConfig::with_cases(2000), |(kv in objects, copies in 0usize..4)| {
            let mut text = serde_json::to_string(&serde_json::Value::Object(kv.into_iter().collect())).unwrap();
            if copies > 0 && text.len() > 2 {
                // A key repeated two to four times: the last one wins in both.
                let repeated = [r#""k":1,"#, r#""k":[true],"#, r#""k":{"k":2,"k":3},"#, r#""k":"x","#];
                text.insert_str(1, &repeated[..=copies].concat());
            }
            let state: &RawValue = serde_json::from_str(&text).unwrap();
            let reference = fnv1a64(canonical_json(state).unwrap().as_bytes());
            prop_assert_eq!(state_fingerprint(state).unwrap(), reference, "{}", text);
        });
        // Escapes in the text (not only in the value) take the owned path.
        let escaped = raw(r#"{"k\u00e9y":"v\u00e9\n","b":[1.0,-0,1e2]}"#);
        assert_eq!(
            state_fingerprint(escaped).unwrap(),
            fnv1a64(canonical_json(escaped).unwrap().as_bytes())
        );
    }

    #[test]
    fn a_long_integral_number_is_one_number_however_spelled() {
        // 16 significant digits: serde_json's default float parsing is best-effort there and
        // read `7777777777777772.0` as a neighbouring value, so the same state spelled by
        // another serializer fingerprinted differently (found by the `parse_notification`
        // fuzz target); the `float_roundtrip` feature parses it exactly.
        let integer = state_fingerprint(raw(r#"{"x":[7777777777777772]}"#)).unwrap();
        for spelling in [
            r#"{"x":[7777777777777772.0]}"#,
            r#"{"x":[7.777777777777772e15]}"#,
            r#"{"x":[77777777777777720e-1]}"#,
        ] {
            assert_eq!(
                state_fingerprint(raw(spelling)).unwrap(),
                integer,
                "{spelling}"
            );
        }
    }

    #[test]
    fn non_object_state_is_rejected() {
        let err = state_fingerprint(raw("[1,2]")).unwrap_err();
        assert_eq!(
            err,
            ParseError::WrongType {
                path: "state".into(),
                expected: "an object"
            }
        );
    }
}
