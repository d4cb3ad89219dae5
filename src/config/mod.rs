//! Configuration errors that explain themselves.
//!
//! A bad setting is reported as the key, the value found and what would be valid. A key of the
//! wrong type, an unknown key or a TOML syntax error stops loading at the first one (serde and
//! figment stop there), so those come one at a time; once every key has its type, every bad
//! value is reported at once, so an operator fixes those in one pass.

use std::fmt;

pub mod bridge;
pub use bridge::{BridgeConfig, LoadError};

/// A value whose consumer takes text (a secret, a librdkafka property), read from any scalar:
/// `password = 1234` or the Helm chart's `linger.ms: 5` is that text, not a type error (which for
/// a secret would print it). A list or a table is still a type error, without the value.
pub(crate) struct ScalarText(pub(crate) String);

impl<'de> serde::Deserialize<'de> for ScalarText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarTextVisitor)
    }
}

struct ScalarTextVisitor;

impl serde::de::Visitor<'_> for ScalarTextVisitor {
    type Value = ScalarText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (or a number or boolean, taken as its text)")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ScalarText, E> {
        Ok(ScalarText(v))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
    fn visit_char<E: serde::de::Error>(self, v: char) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
}

/// One bad setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key, e.g. `kafka.topics.partitions`.
    pub key: String,
    /// The value found (never a secret: callers pass `<set>`/`<unset>`/`<redacted>` for those).
    pub value: String,
    /// What would be valid, phrased as the fix.
    pub expected: String,
}

impl Invalid {
    /// A bad `key` holding `value`; `expected` says what to put instead.
    pub fn new(key: &str, value: &str, expected: &str) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?} is not valid; expected {}",
            self.key, self.value, self.expected
        )
    }
}

/// Every bad setting found by one validation pass.
#[derive(Clone, Debug, Default)]
pub struct InvalidReport(Vec<Invalid>);

impl InvalidReport {
    /// Records one problem.
    pub fn push(&mut self, invalid: Invalid) {
        self.0.push(invalid);
    }
    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for InvalidReport {
    type Item = Invalid;
    type IntoIter = std::vec::IntoIter<Invalid>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for InvalidReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
