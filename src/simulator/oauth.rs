//! The OAuth token endpoint and bearer-token checks of every API call.
//!
//! Token handling is where an unattended daemon most often dies quietly (expired token, revoked
//! token, rotated refresh token), so the simulator implements GoTo's grants and failure answers
//! faithfully: HTTP Basic client auth, PAT / refresh / single-use authorization codes, the
//! refresh answer without `refresh_token` unless rotated, and 401/403 bodies on API calls.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::errors::{oauth_error, Api, ApiError};
use super::state::{Sim, Token};

fn random_token(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn client_authenticated(sim: &Sim, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((id, secret)) = text.split_once(':') else {
        return false;
    };
    let auth = &sim.config.auth;
    ct_eq(id, &auth.client_id) & ct_eq(secret, &auth.client_secret)
}

/// `POST /oauth/token`.
pub async fn token(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    if !client_authenticated(&sim, &headers) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(grant) = get("grant_type") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required",
        );
    };
    let auth = &sim.config.auth;
    let scope = auth.scopes.join(" ");
    let lifetime = auth.access_token_lifetime;
    let access = random_token("sim-at-");
    let mut world = sim.world();
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": scope,
        "principal": auth.principal,
    });
    match grant.as_str() {
        "personal_access_token" => {
            let ok = get("pat").is_some_and(|p| {
                auth.personal_access_tokens
                    .iter()
                    .fold(false, |acc, known| acc | ct_eq(&p, known))
            });
            if !ok {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid personal access token",
                );
            }
            body["loa"] = json!(3);
        }
        "refresh_token" => {
            let Some(rt) = get("refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                );
            };
            if !world.refresh_tokens.contains(&rt) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid refresh token",
                );
            }
            // GoTo's refresh answer normally carries neither refresh_token nor token_type; both
            // appear only when a new refresh token is issued.
            if auth.rotate_refresh_token {
                let new_rt = random_token("sim-rt-");
                world.refresh_tokens.remove(&rt);
                world.refresh_tokens.insert(new_rt.clone());
                body["refresh_token"] = json!(new_rt);
            } else if let Some(obj) = body.as_object_mut() {
                obj.remove("token_type");
            }
        }
        "authorization_code" => {
            let Some(code) = get("code") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code is required",
                );
            };
            if !world.codes.remove(&code) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid or already used authorization code",
                );
            }
            let rt = random_token("sim-rt-");
            world.refresh_tokens.insert(rt.clone());
            body["refresh_token"] = json!(rt);
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant type {other} is not supported"),
            );
        }
    }
    let expires_at = Instant::now() + lifetime;
    world.tokens.insert(
        access,
        Token {
            expires_at,
            scopes: auth.scopes.clone(),
        },
    );
    (StatusCode::OK, Json(body)).into_response()
}

/// Check the bearer token of an API call and that it carries one of `scopes`.
pub fn authorize(
    sim: &Sim,
    api: Api,
    headers: &HeaderMap,
    scopes: &[&str],
) -> Result<(), ApiError> {
    let invalid = |code: &str, msg: &str| ApiError::new(api, StatusCode::UNAUTHORIZED, code, msg);
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(invalid("AUTHN_INVALID_TOKEN", "Missing bearer token"));
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(invalid(
            "AUTHN_MALFORMED_TOKEN",
            "Malformed authorization header",
        ));
    };
    let world = sim.world();
    let Some(t) = world.tokens.get(token.trim()) else {
        return Err(invalid("AUTHN_INVALID_TOKEN", "Invalid token"));
    };
    if Instant::now() >= t.expires_at {
        return Err(invalid("AUTHN_EXPIRED_TOKEN", "Token expired"));
    }
    if !scopes.iter().any(|s| t.scopes.iter().any(|g| g == s)) {
        return Err(ApiError::new(
            api,
            StatusCode::FORBIDDEN,
            "AUTHZ_INSUFFICIENT_SCOPE",
            format!("Token lacks scope {}", scopes.join(" or ")),
        ));
    }
    Ok(())
}
