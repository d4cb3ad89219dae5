//! GoTo's error bodies, and the simulator's own error type.
//!
//! GoTo's REST APIs do not agree on one error shape: call-events lists bad fields under
//! `constraints`, notification-channel under `constraintViolations` (always present, even
//! empty), and the token endpoint speaks OAuth (`error`/`error_description`). The bridge must
//! cope with each, so the simulator reproduces each exactly, per API.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Errors of starting, running and stopping the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// The ground truth file could not be written.
    #[error("cannot write ground truth to {path}: {source}")]
    GroundTruthWrite {
        /// The configured path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A control request was refused (bad fault patch, unknown channel…).
    #[error("{0}")]
    Control(String),
}

/// Which GoTo API a request belongs to; rate limits and error shapes are per API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// `/oauth/token`.
    OAuth,
    /// `/notification-channel/v1`.
    NotificationChannel,
    /// `/call-events/v1`.
    CallEvents,
    /// `/call-events-report/v1`.
    CallEventsReport,
}

impl Api {
    /// Stable name used in stats and docs.
    pub fn name(self) -> &'static str {
        match self {
            Api::OAuth => "oauth",
            Api::NotificationChannel => "notification-channel",
            Api::CallEvents => "call-events",
            Api::CallEventsReport => "call-events-report",
        }
    }

    /// Which API a path belongs to; None for the control endpoint and the WebSocket server.
    pub fn of_path(path: &str) -> Option<Api> {
        if path.starts_with("/oauth/") {
            Some(Api::OAuth)
        } else if path.starts_with("/notification-channel/v1/ws/") {
            None
        } else if path.starts_with("/notification-channel/") {
            Some(Api::NotificationChannel)
        } else if path.starts_with("/call-events-report/") {
            Some(Api::CallEventsReport)
        } else if path.starts_with("/call-events/") {
            Some(Api::CallEvents)
        } else {
            None
        }
    }
}

/// A GoTo REST error answer.
#[derive(Debug)]
pub struct ApiError {
    api: Api,
    status: StatusCode,
    code: String,
    message: String,
    constraints: Vec<(String, String)>,
}

impl ApiError {
    /// An error without field constraints.
    pub fn new(api: Api, status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            api,
            status,
            code: code.to_string(),
            message: message.into(),
            constraints: Vec::new(),
        }
    }

    /// 400 with a list of `(field, constraint)` pairs.
    pub fn constraints(api: Api, code: &str, message: &str, list: Vec<(String, String)>) -> Self {
        Self {
            constraints: list,
            ..Self::new(api, StatusCode::BAD_REQUEST, code, message)
        }
    }

    /// 400 `MALFORMED_REQUEST` for a body that is not the JSON expected.
    pub fn malformed(api: Api, why: impl std::fmt::Display) -> Self {
        Self::new(
            api,
            StatusCode::BAD_REQUEST,
            "MALFORMED_REQUEST",
            format!("Malformed request: {why}"),
        )
    }

    /// 400 `BAD_REQUEST` naming one field.
    pub fn field(api: Api, field: &str, constraint: &str) -> Self {
        Self::constraints(
            api,
            "BAD_REQUEST",
            "The request is invalid",
            vec![(field.to_string(), constraint.to_string())],
        )
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(api: Api, message: impl Into<String>) -> Self {
        Self::new(api, StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 429 `TOO_MANY_REQUESTS`.
    pub fn too_many(api: Api) -> Self {
        Self::new(
            api,
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "Rate limit exceeded",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let list: Vec<_> = self
            .constraints
            .iter()
            .map(|(f, c)| json!({"field": f, "constraint": c}))
            .collect();
        let reference = uuid::Uuid::new_v4().to_string();
        let body = match self.api {
            Api::OAuth => {
                let error = match self.status {
                    StatusCode::UNAUTHORIZED => "invalid_client",
                    StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
                    s if s.is_server_error() => "server_error",
                    _ => "invalid_request",
                };
                json!({"error": error, "error_description": self.message})
            }
            Api::NotificationChannel => json!({
                "reference": reference,
                "constraintViolations": list,
                "errorCode": self.code,
                "message": self.message,
            }),
            Api::CallEvents | Api::CallEventsReport => {
                let mut b = json!({
                    "reference": reference,
                    "errorCode": self.code,
                    "message": self.message,
                });
                if !list.is_empty() {
                    b["constraints"] = serde_json::Value::Array(list);
                }
                b
            }
        };
        (self.status, Json(body)).into_response()
    }
}

/// An OAuth token-endpoint error: `{"error", "error_description"}`.
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}
