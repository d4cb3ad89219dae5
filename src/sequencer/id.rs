//! Conversation ids as the core holds them: 16 bytes inline for GoTo's UUIDs, a shared string
//! for anything else.
//!
//! A partition may remember hundreds of thousands of conversations, and the id is the largest
//! thing each one would otherwise allocate: an `Arc<str>` of a 36-character UUID is a 52-byte
//! heap block (64 with the allocator's rounding) plus a 16-byte pointer. Stored as its 16 bytes,
//! a UUID costs nothing on the heap. Only the canonical form (lowercase, hyphenated) is packed,
//! because it is the only one that prints back byte for byte: every output carries the id
//! exactly as GoTo sent it, whatever its form.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A conversation (`conversationSpaceId`), cheap to clone (a copy or an `Arc` bump).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConversationId(Repr);

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Repr {
    /// A canonical UUID's bytes.
    Uuid([u8; 16]),
    /// Anything else, verbatim.
    Text(Arc<str>),
}

/// A borrowed id, for lookups without allocating. Hashes like the [`ConversationId`] it matches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum IdKey<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> IdKey<'a> {
    pub(crate) fn parse(s: &'a str) -> IdKey<'a> {
        match pack_uuid(s) {
            Some(b) => IdKey::Uuid(b),
            None => IdKey::Text(s),
        }
    }
}

impl Hash for IdKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            IdKey::Uuid(b) => {
                state.write_u8(0);
                state.write(b);
            }
            IdKey::Text(s) => {
                state.write_u8(1);
                state.write(s.as_bytes());
            }
        }
    }
}

impl ConversationId {
    /// The borrowed form, for hashing and comparing with a parsed [`IdKey`].
    pub(crate) fn key(&self) -> IdKey<'_> {
        match &self.0 {
            Repr::Uuid(b) => IdKey::Uuid(*b),
            Repr::Text(s) => IdKey::Text(s),
        }
    }

    pub(crate) fn from_key(key: IdKey<'_>) -> ConversationId {
        match key {
            IdKey::Uuid(b) => ConversationId(Repr::Uuid(b)),
            IdKey::Text(s) => ConversationId(Repr::Text(Arc::from(s))),
        }
    }

    /// The id as text, exactly as it arrived (no allocation).
    pub fn as_text(&self) -> IdText<'_> {
        match &self.0 {
            Repr::Uuid(b) => IdText::Uuid(unpack_uuid(b)),
            Repr::Text(s) => IdText::Text(s),
        }
    }
}

impl Hash for ConversationId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl From<&str> for ConversationId {
    fn from(s: &str) -> Self {
        ConversationId::from_key(IdKey::parse(s))
    }
}

impl From<String> for ConversationId {
    fn from(s: String) -> Self {
        // `Arc<str>` copies the text into its own block either way: nothing to reuse.
        ConversationId::from(s.as_str())
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_text())
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.as_text(), f)
    }
}

impl PartialEq<str> for ConversationId {
    fn eq(&self, other: &str) -> bool {
        self.key() == IdKey::parse(other)
    }
}

impl PartialEq<&str> for ConversationId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

/// A [`ConversationId`] as text; derefs to `str`.
pub enum IdText<'a> {
    /// A UUID printed into a buffer.
    Uuid([u8; 36]),
    /// The stored text.
    Text(&'a str),
}

impl Deref for IdText<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            // The buffer holds only ASCII hex digits and hyphens, so this never falls back.
            IdText::Uuid(b) => std::str::from_utf8(b).unwrap_or_default(),
            IdText::Text(s) => s,
        }
    }
}

impl fmt::Display for IdText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// The 16 bytes of `s` if it is a UUID in canonical form (36 characters, lowercase hex,
/// hyphens at 8, 13, 18 and 23), else `None`.
fn pack_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibble = 0;
    for (i, &c) in s.iter().enumerate() {
        if HYPHENS.contains(&i) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[nibble / 2] |= if nibble % 2 == 0 { v << 4 } else { v };
        nibble += 1;
    }
    Some(out)
}

fn unpack_uuid(b: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut i = 0;
    for byte in b {
        for v in [byte >> 4, byte & 0xf] {
            if HYPHENS.contains(&i) {
                i += 1;
            }
            out[i] = HEX[usize::from(v)];
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;

    #[test]
    fn canonical_uuids_are_packed_and_print_back_byte_for_byte() {
        let s = "0f8e2c3a-95b1-4c7d-8e6f-a1b2c3d4e5f6";
        let id = ConversationId::from(s);
        assert!(matches!(id.0, Repr::Uuid(_)));
        assert_eq!(&*id.as_text(), s);
        assert_eq!(id.to_string(), s);
        assert_eq!(id, *s);
    }

    #[test]
    fn every_other_form_is_kept_verbatim() {
        for s in [
            "0F8E2C3A-95B1-4C7D-8E6F-A1B2C3D4E5F6",
            "0f8e2c3a95b14c7d8e6fa1b2c3d4e5f6",
            "{0f8e2c3a-95b1-4c7d-8e6f-a1b2c3d4e5f6}",
            "0f8e2c3a-95b1-4c7d-8e6f-a1b2c3d4e5fg",
            "0f8e2c3a-95b1-4c7d-8e6fa-1b2c3d4e5f6",
            "c1",
            "",
            "é",
        ] {
            let id = ConversationId::from(s);
            assert!(matches!(id.0, Repr::Text(_)), "{s} packed");
            assert_eq!(&*id.as_text(), s);
            assert_eq!(ConversationId::from(s.to_string()), id);
        }
    }

    #[test]
    fn an_id_and_its_borrowed_key_hash_alike() {
        let h = RandomState::new();
        for s in ["0f8e2c3a-95b1-4c7d-8e6f-a1b2c3d4e5f6", "c1"] {
            assert_eq!(
                h.hash_one(ConversationId::from(s)),
                h.hash_one(IdKey::parse(s))
            );
        }
    }

    #[test]
    fn packing_round_trips_every_nibble() {
        // Each position takes each hex digit once across the 16 ids.
        for d in 0..16u8 {
            let digit = char::from(b"0123456789abcdef"[usize::from(d)]);
            let s: String = (0..36)
                .map(|i| if HYPHENS.contains(&i) { '-' } else { digit })
                .collect();
            assert_eq!(&*ConversationId::from(s.as_str()).as_text(), s);
        }
    }

    #[test]
    fn an_id_is_no_bigger_than_three_words() {
        assert_eq!(std::mem::size_of::<ConversationId>(), 24);
    }
}
