//! Query-string reading that answers bad values the way GoTo does.
//!
//! axum's `Query` extractor rejects with its own plain-text 400 and cannot read repeated keys
//! (`accountKey=a&accountKey=b`, which GoTo uses for multi-valued filters). Parsing the raw
//! query here lets every handler turn a bad value into GoTo's constraint list.

use super::errors::{Api, ApiError};

/// The decoded `key=value` pairs of a request, in order.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parse a raw query string (None = no query).
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// First value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `key` as a number, if present; a non-number or a number below `min` is a 400 naming it.
    pub fn number(&self, api: Api, key: &str, min: u64) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(ApiError::field(api, key, "INVALID")),
            },
        }
    }

    /// A required non-empty value.
    pub fn required(&self, api: Api, key: &str) -> Result<&str, ApiError> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::field(api, key, "REQUIRED")),
        }
    }
}

/// Opaque page markers: an offset GoTo clients must not interpret.
pub fn encode_marker(offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{offset}"))
}

/// Decode a marker made by [`encode_marker`]; an unknown marker is a 400.
pub fn decode_marker(api: Api, marker: Option<&str>) -> Result<usize, ApiError> {
    use base64::Engine;
    let Some(m) = marker.filter(|m| !m.is_empty()) else {
        return Ok(0);
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(m)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::field(api, "pageMarker", "INVALID"))
}
