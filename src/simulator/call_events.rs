//! The Call Events API (`/call-events/v1`): subscriptions, back-fill and active calls.
//!
//! Subscriptions answer 207 with a verdict per account key, so the bridge must read every item;
//! the simulator produces the failing items GoTo does (unknown key 404, forbidden key 403).
//! Back-fill is how the bridge repairs gaps, so it serves exactly what the ground truth says is
//! recoverable, in whichever response shape and last-page convention the settings pick
//! (GoTo unknown #7).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::config::{BackfillShape, LastPageMarker};
use super::errors::{Api, ApiError};
use super::oauth::authorize;
use super::query::{decode_marker, encode_marker, Query};
use super::state::Sim;

const API: Api = Api::CallEvents;
const MANAGE: &[&str] = &["call-events.v1.notifications.manage"];
const READ: &[&str] = &["call-events.v1.events.read"];
const EVENTS: [&str; 3] = ["STARTING", "ACTIVE", "ENDING"];

fn bad(field: String, constraint: &str) -> ApiError {
    ApiError::constraints(
        API,
        "BAD_REQUEST",
        "The request is invalid",
        vec![(field, constraint.to_string())],
    )
}

/// A validated subscription item.
struct Item {
    id: String,
    events: Vec<String>,
}

fn parse_subscribe(body: &[u8]) -> Result<(String, Vec<Item>), ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::malformed(API, e))?;
    let Value::Object(obj) = &v else {
        return Err(ApiError::malformed(API, "body must be a JSON object"));
    };
    let mut violations = Vec::new();
    let channel_id = match obj.get("channelId") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            violations.push(("channelId".to_string(), "REQUIRED".to_string()));
            None
        }
        Some(_) => {
            violations.push(("channelId".to_string(), "INVALID".to_string()));
            None
        }
    };
    let mut items = Vec::new();
    match obj.get("accountKeys") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, item) in list.iter().enumerate() {
                let id = match item.get("id") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::String(_)) | None | Some(Value::Null) => {
                        violations.push(("ID".to_string(), "REQUIRED".to_string()));
                        continue;
                    }
                    Some(_) => {
                        violations.push((format!("AccountKeys[{i}].ID"), "INVALID".to_string()));
                        continue;
                    }
                };
                let events = match item.get("events") {
                    None | Some(Value::Null) => EVENTS.iter().map(|e| e.to_string()).collect(),
                    Some(Value::Array(evs)) => {
                        let mut out = Vec::new();
                        for (j, e) in evs.iter().enumerate() {
                            match e.as_str() {
                                Some(s) if EVENTS.contains(&s) => out.push(s.to_string()),
                                _ => {
                                    violations.push((format!("Events[{j}]"), "INVALID".to_string()))
                                }
                            }
                        }
                        out
                    }
                    Some(_) => {
                        violations.push(("Events".to_string(), "INVALID".to_string()));
                        Vec::new()
                    }
                };
                items.push(Item { id, events });
            }
        }
        None | Some(Value::Null) => {
            violations.push(("accountKeys".to_string(), "REQUIRED".to_string()))
        }
        Some(Value::Array(_)) => {
            violations.push(("accountKeys".to_string(), "REQUIRED".to_string()))
        }
        Some(_) => violations.push(("accountKeys".to_string(), "INVALID".to_string())),
    }
    match channel_id {
        Some(c) if violations.is_empty() => Ok((c, items)),
        _ => Err(ApiError::constraints(
            API,
            "BAD_REQUEST",
            "The request is invalid",
            violations,
        )),
    }
}

/// `POST /call-events/v1/subscriptions` → 207 with one verdict per account key.
pub async fn subscribe(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, MANAGE)?;
    let (channel_id, items) = parse_subscribe(&body)?;
    let cfg = &sim.config.call_events;
    // Read before the world is locked, so this handler never holds both locks.
    let (refused, request_refused, conflict_when_subscribed, empty_answer) = {
        let faults = sim.faults();
        let f = faults.config();
        (
            f.subscription_item_status,
            f.subscription_request_status,
            f.subscription_conflict_when_subscribed,
            f.subscription_empty_answer,
        )
    };
    if let Some(status) = request_refused {
        return Err(refused_request(status));
    }
    let mut world = sim.world();
    let Some(channel) = world.channels.get(&channel_id) else {
        return Err(ApiError::not_found(
            API,
            format!("Notification channel {channel_id} not found"),
        ));
    };
    if cfg.require_websocket_channel && !channel.is_websocket() {
        return Err(ApiError::constraints(
            API,
            "BAD_REQUEST",
            "The Notification Channel must be a WebSocket channel",
            vec![("channelId".to_string(), "INVALID".to_string())],
        ));
    }
    let known = &sim.config.traffic.account_keys;
    let subs = world.subscriptions.entry(channel_id).or_default();
    let verdicts: Vec<Value> = items
        .into_iter()
        .map(|item| {
            if let Some(status) = refused {
                let (code, message) = match status {
                    403 => ("AUTHZ_INSUFFICIENT_SCOPE", "Insufficient scope for this account"),
                    429 => ("TOO_MANY_REQUESTS", "Too many requests"),
                    _ => ("UNKNOWN_ERROR", "An unexpected error occurred"),
                };
                json!({"id": item.id, "status": status, "message": message, "errorCode": code})
            } else if cfg.forbidden_account_keys.contains(&item.id) {
                json!({"id": item.id, "status": 403, "message": "Insufficient scope for this account",
                       "errorCode": "AUTHZ_INSUFFICIENT_SCOPE"})
            } else if !known.contains(&item.id) {
                json!({"id": item.id, "status": 404, "message": "Account not found",
                       "errorCode": "NOT_FOUND"})
            } else if conflict_when_subscribed && subs.contains_key(&item.id) {
                duplicate_item(&item.id)
            } else {
                // A repeat subscribe is harmless and keeps the first event list.
                subs.entry(item.id.clone()).or_insert(item.events);
                json!({"id": item.id, "status": 200, "message": "Success"})
            }
        })
        .collect();
    if empty_answer {
        return Ok(StatusCode::CREATED.into_response());
    }
    Ok((
        StatusCode::MULTI_STATUS,
        Json(json!({ "accountKeys": verdicts })),
    )
        .into_response())
}

/// `GET /call-events/v1/subscriptions?channelId=`.
pub async fn list_subscriptions(
    State(sim): State<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, MANAGE)?;
    let q = Query::parse(raw.as_deref());
    let channel_id = q.required(API, "channelId")?;
    let world = sim.world();
    let keys: Vec<&String> = world
        .subscriptions
        .get(channel_id)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    Ok(Json(json!({ "accountKeys": keys })).into_response())
}

/// `DELETE /call-events/v1/subscriptions?channelId&accountKey` → 204, 404 when none.
pub async fn unsubscribe(
    State(sim): State<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, MANAGE)?;
    let q = Query::parse(raw.as_deref());
    let channel_id = q.required(API, "channelId")?;
    let account_key = q.required(API, "accountKey")?;
    let mut world = sim.world();
    let removed = world
        .subscriptions
        .get_mut(channel_id)
        .and_then(|m| m.remove(account_key))
        .is_some();
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(API, "Subscription not found"))
    }
}

fn page_size(sim: &Sim, q: &Query) -> Result<usize, ApiError> {
    let cap = sim.config.call_events.page_size_cap.max(1);
    Ok(q.number(API, "pageSize", 1)?
        .map_or(cap, |n| (n as usize).min(cap)))
}

fn put_marker(sim: &Sim, body: &mut Value, next: Option<usize>) {
    match (next, sim.config.call_events.last_page_marker) {
        (Some(offset), _) => body["nextPageMarker"] = json!(encode_marker(offset)),
        (None, LastPageMarker::Empty) => body["nextPageMarker"] = json!(""),
        (None, LastPageMarker::Absent) => {}
    }
}

/// `GET /call-events/v1/conversation-spaces/{id}/events?sequenceFrom&sequenceTo&pageSize&pageMarker`.
pub async fn backfill(
    State(sim): State<Arc<Sim>>,
    Path(csid): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ)?;
    let q = Query::parse(raw.as_deref());
    let from = q.number(API, "sequenceFrom", 0)?.unwrap_or(0);
    let to = q.number(API, "sequenceTo", 0)?.unwrap_or(u64::MAX);
    if from > to {
        return Err(bad("sequenceFrom".into(), "INVALID"));
    }
    let size = page_size(&sim, &q)?;
    let offset = decode_marker(API, q.get("pageMarker"))?;
    let (retention, empty_after_retention) = {
        let faults = sim.faults();
        let c = faults.config();
        (c.retention, c.backfill_empty_after_retention)
    };
    let world = sim.world();
    let (call, states) =
        match world
            .ground_truth
            .recoverable_states(&csid, retention, Instant::now())
        {
            Some(found) => found,
            // Past retention, answered as "no states" rather than "not found".
            None => match world.ground_truth.call(&csid) {
                Some(call) if empty_after_retention => (call, Vec::new()),
                _ => {
                    return Err(ApiError::not_found(
                        API,
                        format!("Conversation space {csid} not found"),
                    ))
                }
            },
        };
    let selected: Vec<&Value> = states
        .iter()
        .filter(|s| (from..=to).contains(&s.sequence_number))
        .map(|s| &s.state)
        .collect();
    let page: Vec<&Value> = selected.iter().skip(offset).take(size).copied().collect();
    let next = (offset + size < selected.len()).then_some(offset + size);
    let mut body = match sim.config.call_events.backfill_shape {
        BackfillShape::States => json!({
            "pageSize": size,
            "metadata": call.metadata,
            "states": page,
        }),
        BackfillShape::Items => json!({
            "items": page
                .iter()
                .map(|s| json!({"metadata": call.metadata, "state": s}))
                .collect::<Vec<_>>(),
        }),
    };
    put_marker(&sim, &mut body, next);
    Ok(Json(body).into_response())
}

/// `GET /call-events/v1/conversation-spaces?accountKey=…&pageSize&pageMarker`: the last state
/// of each active call.
pub async fn active_calls(
    State(sim): State<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ)?;
    let q = Query::parse(raw.as_deref());
    let accounts = q.all("accountKey");
    if accounts.iter().all(String::is_empty) {
        return Err(bad("accountKey".into(), "REQUIRED"));
    }
    let size = page_size(&sim, &q)?;
    let offset = decode_marker(API, q.get("pageMarker"))?;
    let _listing = Listing::enter(&sim);
    if !held_while_paused(&sim).await {
        return Err(ApiError::new(
            API,
            StatusCode::SERVICE_UNAVAILABLE,
            "UNKNOWN_ERROR",
            "Service shutting down",
        ));
    }
    let world = sim.world();
    let active: Vec<Value> = world
        .ground_truth
        .calls
        .iter()
        .filter(|c| !c.ended && accounts.contains(&c.account_key))
        .filter_map(|c| {
            c.states
                .last()
                .map(|s| json!({"metadata": c.metadata, "state": s.state}))
        })
        .collect();
    let page: Vec<&Value> = active.iter().skip(offset).take(size).collect();
    let next = (offset + size < active.len()).then_some(offset + size);
    let mut body = json!({"pageSize": size, "items": page});
    if let Some(n) = next {
        body["nextPageMarker"] = json!(encode_marker(n));
    }
    Ok(Json(body).into_response())
}

// --- Subscribe answers GoTo's docs leave open (fault knobs) -------------------------------------

/// The item GoTo's messaging API answers for a subscription that already exists (goto-api.md
/// §5: 409 "Subscription already exists"); whether Call Events does the same is unknown.
fn duplicate_item(account_key: &str) -> Value {
    json!({"id": account_key, "status": 409, "message": "Subscription already exists",
           "errorCode": "CONFLICT"})
}

/// The answer of the `subscription_request_status` fault: the whole subscribe refused, in the
/// error shape of the Call Events API.
fn refused_request(status: u16) -> ApiError {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status {
        429 => ApiError::too_many(API),
        401 => ApiError::new(API, code, "AUTHN_INVALID_TOKEN", "Invalid token"),
        403 => ApiError::new(API, code, "AUTHZ_INSUFFICIENT_SCOPE", "Insufficient scope"),
        400 => ApiError::new(API, code, "BAD_REQUEST", "The request is invalid"),
        _ => ApiError::new(API, code, "UNKNOWN_ERROR", "An unexpected error occurred"),
    }
}

// --- A slow GoTo for active-call listings (fault knob `active_calls_paused`) --------------------

/// One listing of active calls in flight, counted until answered or dropped (a client that
/// gives up closes the connection, and the server drops the handler).
struct Listing(Arc<Sim>);

impl Listing {
    fn enter(sim: &Arc<Sim>) -> Self {
        let mut world = sim.world();
        let stats = &mut world.stats.active_call_listings;
        stats.requests += 1;
        stats.in_flight += 1;
        stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
        Listing(sim.clone())
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        let mut world = self.0.world();
        let stats = &mut world.stats.active_call_listings;
        stats.in_flight = stats.in_flight.saturating_sub(1);
    }
}

/// Waits while `active_calls_paused` is set; false when the simulator shuts down meanwhile.
async fn held_while_paused(sim: &Sim) -> bool {
    let mut shutdown = sim.shutdown_signal();
    loop {
        // Registered before the check, so a change made in between still wakes it.
        let changed = sim.faults_changed.notified();
        if !sim.faults().config().active_calls_paused {
            return true;
        }
        tokio::select! {
            _ = changed => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
    }
}
