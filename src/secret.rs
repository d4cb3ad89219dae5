//! Secrets that must never reach a log line, an error message or a metrics label.
//!
//! Every credential callbridge holds (GoTo client secret, personal access token, refresh token,
//! webhook path secret, Kafka SASL password, TLS key password) is a [`Secret`]: its `Debug` and `Display` print
//! `***`, and the only way to read it is the explicit [`Secret::expose`], so a leak is greppable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A string that prints as `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call it only where the value leaves the process for its peer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// Accepts any scalar as its string form: a password of digits written unquoted in TOML
/// (`password = 1234`) is the password `"1234"`, not a type error that would print it. (The
/// environment gives secrets as their exact text, see `config::bridge`, so `0123` keeps its zero
/// there; TOML itself normalises unquoted numbers, which is why docs/configuration.md says to
/// quote secrets.) Type errors (a list, a table) never carry the value.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::config::ScalarText::deserialize(d).map(|t| Secret(t.0))
    }
}

/// Serialises as `***` so a dumped configuration never carries the value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            s.serialize_str("")
        } else {
            s.serialize_str("***")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn any_scalar_is_taken_as_its_text() {
        for (json, text) in [
            ("\"hunter2\"", "hunter2"),
            ("424242", "424242"),
            ("-17", "-17"),
            ("4.25", "4.25"),
            ("true", "true"),
        ] {
            let s: Secret = serde_json::from_str(json).unwrap();
            assert_eq!(s.expose(), text, "{json}");
        }
        let err = serde_json::from_str::<Secret>("[\"hunter2\"]")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
