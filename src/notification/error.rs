//! Why a notification body could not be routed.
//!
//! Bodies may carry personal data (phone numbers, names), so no variant ever holds a copy of the
//! body or of a JSON value from it: errors name the field (by its full dotted path) and, for a bad
//! sequence number, at most a short prefix of the offending token.

/// A notification body that cannot be turned into a [`super::Notification`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not valid JSON (or not UTF-8). `detail` holds only the error category and
    /// position, never body text.
    #[error("notification is not valid JSON: {detail}")]
    InvalidJson {
        /// Category and line/column of the syntax error.
        detail: String,
    },
    /// The body is valid JSON but not an object (nor a known bare control string).
    #[error("notification is not a JSON object")]
    NotAnObject,
    /// A field routing needs is absent (or `null`).
    #[error("notification field `{path}` is missing")]
    MissingField {
        /// Full dotted path, e.g. `content.metadata.conversationSpaceId`.
        path: String,
    },
    /// A field has the wrong JSON type, or (`conversationSpaceId`) a value that cannot be a
    /// conversation id ([`super::RESERVED_ID_RULE`]).
    #[error("notification field `{path}` is not {expected}")]
    WrongType {
        /// Full dotted path of the field.
        path: String,
        /// What the field should have been ("a string", "an object", …).
        expected: &'static str,
    },
    /// `sequenceNumber` is present but not an integer ≥ 1 that fits in 64 bits.
    #[error("notification sequenceNumber `{value}` is not an integer >= 1")]
    InvalidSequenceNumber {
        /// The offending token, cut to a short prefix.
        value: String,
    },
}

/// Longest prefix of a bad sequence-number token kept in an error.
const MAX_ECHO: usize = 24;

impl ParseError {
    /// Every code [`ParseError::reason_code`] can return (metrics register them up front; the
    /// fuzz target checks nothing else comes out).
    pub const REASON_CODES: &'static [&'static str] = &[
        "invalid_json",
        "not_an_object",
        "missing_conversation_space_id",
        "missing_sequence_number",
        "missing_metadata",
        "missing_state",
        "missing_field",
        "invalid_conversation_space_id",
        "invalid_type_field",
        "invalid_metadata",
        "invalid_state",
        "invalid_content",
        "invalid_data",
        "wrong_type",
        "invalid_sequence_number",
    ];

    /// A short, stable code for Kafka headers and metric labels. Codes never change meaning;
    /// new failure kinds get new codes.
    pub fn reason_code(&self) -> &'static str {
        match self {
            ParseError::InvalidJson { .. } => "invalid_json",
            ParseError::NotAnObject => "not_an_object",
            ParseError::MissingField { path } => match last_segment(path) {
                "conversationSpaceId" => "missing_conversation_space_id",
                "sequenceNumber" => "missing_sequence_number",
                "metadata" => "missing_metadata",
                "state" => "missing_state",
                _ => "missing_field",
            },
            ParseError::WrongType { path, .. } => match last_segment(path) {
                "conversationSpaceId" => "invalid_conversation_space_id",
                "type" => "invalid_type_field",
                "metadata" => "invalid_metadata",
                "state" => "invalid_state",
                "content" => "invalid_content",
                "data" => "invalid_data",
                _ => "wrong_type",
            },
            ParseError::InvalidSequenceNumber { .. } => "invalid_sequence_number",
        }
    }

    pub(crate) fn missing(prefix: &str, field: &str) -> Self {
        ParseError::MissingField {
            path: join(prefix, field),
        }
    }

    pub(crate) fn wrong_type(prefix: &str, field: &str, expected: &'static str) -> Self {
        ParseError::WrongType {
            path: join(prefix, field),
            expected,
        }
    }

    pub(crate) fn bad_sequence(token: &str) -> Self {
        let mut end = token.len().min(MAX_ECHO);
        while !token.is_char_boundary(end) {
            end -= 1;
        }
        let mut value = token[..end].to_owned();
        if end < token.len() {
            value.push('…');
        }
        ParseError::InvalidSequenceNumber { value }
    }

    /// Builds `InvalidJson` from a serde_json error without its message: serde_json messages can
    /// quote values from the input ("invalid type: string \"…\"").
    pub(crate) fn from_json(err: &serde_json::Error) -> Self {
        let category = match err.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        };
        ParseError::InvalidJson {
            detail: format!("{category} at line {} column {}", err.line(), err.column()),
        }
    }
}

/// `prefix.field`, or `field` at the top level.
pub(crate) fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_follow_the_last_path_segment() {
        let e = ParseError::missing("data.content.metadata", "conversationSpaceId");
        assert_eq!(e.reason_code(), "missing_conversation_space_id");
        assert_eq!(
            e.to_string(),
            "notification field `data.content.metadata.conversationSpaceId` is missing"
        );
        let e = ParseError::missing("state", "sequenceNumber");
        assert_eq!(e.reason_code(), "missing_sequence_number");
        let e = ParseError::wrong_type("", "content", "an object");
        assert_eq!(e.reason_code(), "invalid_content");
        assert_eq!(
            e.to_string(),
            "notification field `content` is not an object"
        );
    }

    #[test]
    fn bad_sequence_echo_is_bounded_and_char_safe() {
        let long = "é".repeat(100);
        let ParseError::InvalidSequenceNumber { value } = ParseError::bad_sequence(&long) else {
            panic!("wrong variant");
        };
        assert!(value.len() <= MAX_ECHO + '…'.len_utf8());
        assert!(value.ends_with('…'));
    }

    #[test]
    fn json_errors_do_not_quote_input() {
        let err = serde_json::from_str::<u64>("\"secret-phone-+12015550123\"").unwrap_err();
        let ours = ParseError::from_json(&err);
        assert!(!ours.to_string().contains("12015550123"), "{ours}");
    }
}
