//! The Notification Channel API (`/notification-channel/v1/channels…`).
//!
//! Channels are the pipes every subscription points at, and their lifecycle (creation with a
//! verified webhook, lifetime countdown, refresh, expiry, deletion) is what the bridge's channel
//! keeper must get right. Shapes follow goto-api.md §2 exactly, including its oddities
//! (`channelType` moving inside `webhookChannelData` in responses); where GoTo is ambiguous the
//! variant is a setting in [`ChannelsConfig`](super::config::ChannelsConfig).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::config::{WebSocketSpelling, WebSocketUrlLocation, WebhookVerification};
use super::errors::{Api, ApiError};
use super::oauth::authorize;
use super::query::{decode_marker, encode_marker, Query};
use super::state::{Channel, ChannelKind, Sim};

const API: Api = Api::NotificationChannel;
const SCOPES: &[&str] = &[
    "call-events.v1.notifications.manage",
    "notification-channel.v1.manage",
];
const READ_SCOPES: &[&str] = &[
    "call-events.v1.notifications.manage",
    "notification-channel.v1.manage",
    "notification-channel.v1.read",
];

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        API,
        StatusCode::NOT_FOUND,
        "RTC-NOTIFICATION-CHANNEL-NOT-FOUND",
        format!("Notification channel does not exist {id}"),
    )
}

fn opaque_id() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JSON GoTo returns for a channel.
pub fn channel_json(sim: &Sim, ch: &Channel, now: Instant) -> Value {
    let resource = format!(
        "{}/notification-channel/v1/channels/{}/{}",
        sim.base_url,
        url_escape(&ch.nickname),
        ch.id
    );
    let mut body = json!({
        "channelId": ch.id,
        "channelNickname": ch.nickname,
        "channelLifetime": ch.remaining_secs(now),
        "resourceURL": resource,
        "doNotDisturbAware": false,
    });
    match &ch.kind {
        ChannelKind::Webhook {
            url,
            unreachable_since,
        } => {
            let mut data = json!({"webhook": {"url": url}, "channelType": "Webhook"});
            if let Some(t) = unreachable_since {
                data["unreachableTimestamp"] = json!(t);
            }
            body["webhookChannelData"] = data;
        }
        ChannelKind::WebSocket {
            requested_spelling,
            key,
            socket,
            ..
        } => {
            let spelling = match sim.config.channels.websocket_type_spelling {
                WebSocketSpelling::WebSockets => "WebSockets",
                WebSocketSpelling::WebSocket => "WebSocket",
                WebSocketSpelling::AsRequested => requested_spelling.as_str(),
            };
            // GoTo's channelURL holds the channel id
            // (`wss://…/notification-channel/v1/channels/{channelId}/…/ws`); so does this one,
            // inside the socket key (see `create`).
            let ws_url = format!(
                "{}/notification-channel/v1/ws/{key}",
                sim.base_url.replacen("http", "ws", 1)
            );
            let mut data = json!({"channelType": spelling, "isConnected": socket.is_some()});
            match sim.config.channels.websocket_url_location {
                WebSocketUrlLocation::ChannelData => data["channelURL"] = json!(ws_url),
                WebSocketUrlLocation::TopLevel => body["channelURL"] = json!(ws_url),
            }
            body["channelData"] = data;
        }
    }
    body
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The request body of create and refresh, validated.
struct ChannelRequest {
    websocket: Option<String>,
    webhook_url: Option<String>,
    lifetime: Option<u64>,
}

/// A WebSocket `channelType` spelling the configuration does not accept: 400, as GoTo would
/// answer a value it does not know.
fn refuse_unaccepted_spelling(
    cfg: &super::config::ChannelsConfig,
    req: &ChannelRequest,
) -> Result<(), ApiError> {
    match &req.websocket {
        Some(spelling) if !cfg.accepted_websocket_types.contains(spelling) => {
            Err(ApiError::field(API, "channelType", "INVALID"))
        }
        _ => Ok(()),
    }
}

fn parse_request(body: &[u8], require_type: bool) -> Result<Option<ChannelRequest>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) && !require_type {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::malformed(API, e))?;
    let Value::Object(obj) = &v else {
        return Err(ApiError::malformed(API, "body must be a JSON object"));
    };
    let mut violations = Vec::new();
    let channel_type = match obj.get("channelType") {
        None | Some(Value::Null) => {
            violations.push(("channelType".to_string(), "REQUIRED".to_string()));
            None
        }
        Some(Value::String(s)) if ["Webhook", "WebSocket", "WebSockets"].contains(&s.as_str()) => {
            Some(s.clone())
        }
        Some(_) => {
            violations.push(("channelType".to_string(), "INVALID".to_string()));
            None
        }
    };
    let lifetime = match obj.get("channelLifetime") {
        None | Some(Value::Null) => None,
        Some(l) => match l.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                violations.push(("channelLifetime".to_string(), "INVALID".to_string()));
                None
            }
        },
    };
    let mut webhook_url = None;
    if channel_type.as_deref() == Some("Webhook") {
        match v.pointer("/webhookChannelData/webhook/url") {
            Some(Value::String(u)) if url::Url::parse(u).is_ok() => webhook_url = Some(u.clone()),
            None | Some(Value::Null) => violations.push((
                "webhookChannelData.webhook.url".to_string(),
                "REQUIRED".to_string(),
            )),
            Some(_) => violations.push((
                "webhookChannelData.webhook.url".to_string(),
                "INVALID".to_string(),
            )),
        }
    }
    if !violations.is_empty() {
        return Err(ApiError::constraints(
            API,
            "BAD_REQUEST",
            "The request is invalid",
            violations,
        ));
    }
    let websocket = channel_type.filter(|t| t != "Webhook");
    Ok(Some(ChannelRequest {
        websocket,
        webhook_url,
        lifetime,
    }))
}

/// Check a webhook URL the way GoTo does before accepting the channel.
async fn verify_webhook(sim: &Sim, url: &str) -> Result<(), ApiError> {
    let bad = |why: String| {
        ApiError::constraints(
            API,
            "BAD_REQUEST",
            &format!("Webhook URL verification failed: {why}"),
            vec![(
                "webhookChannelData.webhook.url".to_string(),
                "INVALID".to_string(),
            )],
        )
    };
    if sim.config.channels.require_https_443 {
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() != "https" || parsed.port_or_known_default() != Some(443) {
            return Err(bad("only https on port 443 is allowed".into()));
        }
    }
    let request = match sim.config.channels.webhook_verification {
        WebhookVerification::None => return Ok(()),
        WebhookVerification::Options => sim.http.request(Method::OPTIONS, url),
        WebhookVerification::Get => sim
            .http
            .get(url)
            .header(reqwest::header::USER_AGENT, "GoTo Notifications"),
    };
    let answer = request
        .timeout(sim.config.delivery.webhook_timeout)
        .send()
        .await
        .map_err(|e| bad(format!("request failed: {}", e.without_url())))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(bad(format!("answered {}", answer.status().as_u16())))
    }
}

/// `POST /notification-channel/v1/channels/{nickname}`.
pub async fn create(
    State(sim): State<Arc<Sim>>,
    Path(nickname): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, SCOPES)?;
    let Some(req) = parse_request(&body, true)? else {
        return Err(ApiError::malformed(API, "empty body"));
    };
    let cfg = &sim.config.channels;
    refuse_unaccepted_spelling(cfg, &req)?;
    let (id, kind, max) = match (&req.websocket, &req.webhook_url) {
        (Some(spelling), _) => {
            let id = opaque_id();
            // The socket key (the channelURL's last segment) starts with the channel id, as
            // GoTo's channelURL holds it: a client that logs its URL logs the id.
            let key = format!("{id}.{}", opaque_id());
            (
                id,
                ChannelKind::WebSocket {
                    requested_spelling: spelling.clone(),
                    key,
                    socket: None,
                    refresh_sent: false,
                },
                cfg.websocket_lifetime,
            )
        }
        (None, Some(url)) => {
            verify_webhook(&sim, url).await?;
            (
                format!("Webhook.{}", uuid::Uuid::new_v4()),
                ChannelKind::Webhook {
                    url: url.clone(),
                    unreachable_since: None,
                },
                cfg.webhook_lifetime,
            )
        }
        (None, None) => return Err(ApiError::field(API, "channelType", "INVALID")),
    };
    let lifetime = req
        .lifetime
        .map(|s| Duration::from_secs(s).min(max))
        .unwrap_or(max);
    let now = Instant::now();
    let mut world = sim.world();
    world.channel_seq += 1;
    let created_seq = world.channel_seq;
    if let ChannelKind::WebSocket { key, .. } = &kind {
        world.ws_keys.insert(key.clone(), id.clone());
    }
    let mut ch = Channel {
        id: id.clone(),
        nickname,
        kind,
        lifetime,
        expires_at: None,
        created_seq,
    };
    ch.restart_lifetime(now);
    let body = channel_json(&sim, &ch, now);
    world.created_channels.push(id.clone());
    world.channels.insert(id, ch);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn find<'a>(
    world: &'a mut super::state::World,
    nickname: &str,
    id: &str,
) -> Result<&'a mut Channel, ApiError> {
    match world.channels.get_mut(id) {
        Some(ch) if ch.nickname == nickname => Ok(ch),
        _ => Err(not_found(id)),
    }
}

/// `GET /notification-channel/v1/channels/{nickname}/{channelId}`.
pub async fn get_one(
    State(sim): State<Arc<Sim>>,
    Path((nickname, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ_SCOPES)?;
    if sim.faults().config().channel_get_not_found {
        return Err(ApiError::not_found(API, "Not found"));
    }
    if let Some(status) = sim.faults().config().channel_get_status {
        return Err(refused_get(status, &id));
    }
    let mut world = sim.world();
    let ch = find(&mut world, &nickname, &id)?;
    Ok(Json(channel_json(&sim, ch, Instant::now())).into_response())
}

/// `PUT /notification-channel/v1/channels/{nickname}/{channelId}`: refresh, restarting the
/// lifetime countdown.
pub async fn refresh(
    State(sim): State<Arc<Sim>>,
    Path((nickname, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, SCOPES)?;
    let req = parse_request(&body, false)?;
    if let Some(req) = &req {
        refuse_unaccepted_spelling(&sim.config.channels, req)?;
    }
    let now = Instant::now();
    let (refused, lifetime_only) = {
        let faults = sim.faults();
        let c = faults.config();
        (c.channel_refresh_status, c.channel_refresh_lifetime_only)
    };
    let mut world = sim.world();
    let ch = find(&mut world, &nickname, &id)?;
    if let Some(status) = refused {
        return Err(refused_on_channel(status, &id));
    }
    if let Some(req) = req {
        if req.websocket.is_some() != ch.is_websocket() {
            return Err(ApiError::field(API, "channelType", "INVALID"));
        }
        if let Some(l) = req.lifetime {
            ch.lifetime = Duration::from_secs(l).min(max_lifetime(&sim, ch));
        }
    }
    ch.restart_lifetime(now);
    if sim.config.channels.refresh_empty_body {
        return Ok(StatusCode::OK.into_response());
    }
    if lifetime_only {
        return Ok(Json(json!({"channelLifetime": ch.remaining_secs(now)})).into_response());
    }
    Ok(Json(channel_json(&sim, ch, now)).into_response())
}

/// The answer of the `channel_refresh_status` and `channel_delete_status` faults.
fn refused_on_channel(status: u16, id: &str) -> ApiError {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status {
        404 => not_found(id),
        410 => ApiError::new(
            API,
            code,
            "GONE",
            format!("Notification channel expired {id}"),
        ),
        400 => ApiError::new(API, code, "BAD_REQUEST", "The request is invalid"),
        401 => ApiError::new(API, code, "AUTHN_INVALID_TOKEN", "Invalid token"),
        403 => ApiError::new(API, code, "AUTHZ_INSUFFICIENT_SCOPE", "Insufficient scope"),
        429 => ApiError::new(API, code, "TOO_MANY_REQUESTS", "Too many requests"),
        _ => ApiError::new(
            API,
            code,
            "UNKNOWN_ERROR",
            "Service temporarily unavailable",
        ),
    }
}

fn max_lifetime(sim: &Sim, ch: &Channel) -> Duration {
    if ch.is_websocket() {
        sim.config.channels.websocket_lifetime
    } else {
        sim.config.channels.webhook_lifetime
    }
}

/// `PUT …/{channelId}/channel-lifetime`: extend by the default lifetime ("extends by the default
/// value"): the countdown restarts at the type's default, whatever lifetime the channel was
/// created with.
pub async fn extend_lifetime(
    State(sim): State<Arc<Sim>>,
    Path((nickname, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, SCOPES)?;
    let now = Instant::now();
    let mut world = sim.world();
    let ch = find(&mut world, &nickname, &id)?;
    ch.lifetime = max_lifetime(&sim, ch);
    ch.restart_lifetime(now);
    Ok(Json(json!({"channelLifetime": ch.remaining_secs(now)})).into_response())
}

/// `GET …/{channelId}/channel-lifetime`: seconds left.
pub async fn get_lifetime(
    State(sim): State<Arc<Sim>>,
    Path((nickname, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ_SCOPES)?;
    let mut world = sim.world();
    let ch = find(&mut world, &nickname, &id)?;
    Ok(Json(json!({"channelLifetime": ch.remaining_secs(Instant::now())})).into_response())
}

/// `DELETE /notification-channel/v1/channels/{nickname}/{channelId}`.
pub async fn delete(
    State(sim): State<Arc<Sim>>,
    Path((nickname, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, SCOPES)?;
    let refused = sim.faults().config().channel_delete_status;
    let mut world = sim.world();
    find(&mut world, &nickname, &id)?;
    if let Some(status) = refused {
        return Err(refused_on_channel(status, &id));
    }
    world.remove_channel(&id, sim.config.channels.remove_subscriptions_with_channel);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /notification-channel/v1/channels?pageSize&pageMarker`.
pub async fn list(
    State(sim): State<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ_SCOPES)?;
    let q = Query::parse(raw.as_deref());
    let max = sim.config.channels.max_page_size.max(1);
    // A larger pageSize than the server allows is served at the server's maximum (GoTo's
    // behaviour above its maximum is undocumented; clamping is what its paged APIs are seen to do).
    let page_size = q
        .number(API, "pageSize", 1)?
        .map_or(max, |n| (n as usize).min(max));
    let offset = decode_marker(API, q.get("pageMarker"))?;
    let now = Instant::now();
    let world = sim.world();
    let mut all: Vec<&Channel> = world.channels.values().collect();
    all.sort_by_key(|c| c.created_seq);
    let items: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|c| channel_json(&sim, c, now))
        .collect();
    let mut body = json!({ "items": items });
    if offset + page_size < all.len() {
        body["nextPageMarker"] = json!(encode_marker(offset + page_size));
    }
    Ok(Json(body).into_response())
}

// --- Reading one channel refused (fault knob `channel_get_status`) ------------------------------

/// What a `GET …/channels/{nickname}/{channelId}` route that does not behave as claimed might
/// answer: the method not allowed there, a scope the token lacks, the channel expired (410,
/// whose message names the channel as GoTo's 404 does), or some other refusal.
fn refused_get(status: u16, id: &str) -> ApiError {
    if status == 410 {
        return refused_on_channel(status, id);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let (code, message) = match status.as_u16() {
        405 => ("METHOD_NOT_ALLOWED", "Method not allowed"),
        403 => ("AUTHZ_INSUFFICIENT_SCOPE", "Insufficient scope"),
        _ => ("BAD_REQUEST", "The request is invalid"),
    };
    ApiError::new(API, status, code, message)
}
