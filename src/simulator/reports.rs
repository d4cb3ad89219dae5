//! The Call Events Report API (`/call-events-report/v1`): per-call reports once a call has
//! ended, report summaries over a time window, and report-ready subscriptions.
//!
//! Reports are the long-term store the bridge can catch up from after downtime, so they are
//! built from the same ground truth as back-fill: every state except the ones made
//! unrecoverable on purpose (otherwise "unrecoverable" would not mean anything).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::{Api, ApiError};
use super::ground_truth::CallRecord;
use super::oauth::authorize;
use super::query::{decode_marker, encode_marker, Query};
use super::state::{iso_ms, Sim};

const API: Api = Api::CallEventsReport;
const READ: &[&str] = &["cr.v1.read"];
const MANAGE: &[&str] = &["call-events.v1.notifications.manage"];
const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

fn participant_key(p: &Value) -> Option<String> {
    p.get("id")
        .or_else(|| p.get("participantId"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn ended_at(call: &CallRecord) -> Value {
    call.states
        .last()
        .and_then(|s| s.state.get("timestamp").cloned())
        .or_else(|| call.ended_at_ms.map(|ms| json!(iso_ms(ms))))
        .unwrap_or(Value::Null)
}

/// Participants across all states, last version of each, in first-seen order.
fn participants(call: &CallRecord, field: &str) -> Vec<Value> {
    let mut order = Vec::new();
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for s in &call.states {
        for p in s
            .state
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(k) = participant_key(p) else {
                continue;
            };
            if !latest.contains_key(&k) {
                order.push(k.clone());
            }
            latest.insert(k, p.clone());
        }
    }
    order
        .into_iter()
        .filter_map(|k| latest.remove(&k))
        .collect()
}

fn report(call: &CallRecord) -> Value {
    let m = &call.metadata;
    json!({
        "conversationSpaceId": call.conversation_space_id,
        "accountKey": call.account_key,
        "callCreated": m.get("callCreated"),
        "callEnded": ended_at(call),
        "callInitiator": m.get("callInitiator").cloned().unwrap_or(json!("DIRECT")),
        "direction": m.get("direction"),
        "participants": participants(call, "participants"),
        "interactiveVoiceResponseSystems": participants(call, "interactiveVoiceResponseSystems"),
        "associatedConversations": m.get("associatedConversations").cloned().unwrap_or(json!([])),
        "callStates": call.states.iter().filter(|s| !s.unrecoverable).map(|s| &s.state).collect::<Vec<_>>(),
    })
}

fn summary(call: &CallRecord) -> Value {
    let m = &call.metadata;
    let people: Vec<Value> = participants(call, "participants")
        .iter()
        .map(|p| {
            let ty = p.get("type").cloned().unwrap_or(Value::Null);
            json!({
                "name": ty.get("name").cloned().unwrap_or(Value::Null),
                "number": ty.get("number").or_else(|| ty.get("extensionNumber")).cloned().unwrap_or(Value::Null),
                "legId": p.get("legId"),
                "type": {"value": ty.get("value")},
            })
        })
        .collect();
    let mut s = json!({
        "conversationSpaceId": call.conversation_space_id,
        "accountKey": call.account_key,
        "callCreated": m.get("callCreated"),
        "callEnded": ended_at(call),
        "callInitiator": m.get("callInitiator").cloned().unwrap_or(json!("DIRECT")),
        "direction": m.get("direction"),
        "callerOutcome": "NORMAL",
        "participants": people,
    });
    if let Some(first) = people.first() {
        s["caller"] = first.clone();
    }
    s
}

/// `GET /call-events-report/v1/reports/{conversationSpaceId}`: 404 until the call ended.
pub async fn get_report(
    State(sim): State<Arc<Sim>>,
    Path(csid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ)?;
    let world = sim.world();
    match world.ground_truth.call(&csid) {
        Some(call) if call.ended => Ok(Json(report(call)).into_response()),
        _ => Err(ApiError::not_found(API, format!("Report {csid} not found"))),
    }
}

fn parse_time(q: &Query, key: &str, violations: &mut Vec<(String, String)>) -> Option<SystemTime> {
    match q.get(key) {
        None | Some("") => {
            violations.push((key.to_string(), "REQUIRED".to_string()));
            None
        }
        Some(v) => match humantime::parse_rfc3339_weak(v) {
            Ok(t) => Some(t),
            Err(_) => {
                violations.push((key.to_string(), "INVALID".to_string()));
                None
            }
        },
    }
}

/// `GET /call-events-report/v1/report-summaries?accountKey&startTime&endTime&pageSize&pageMarker`.
pub async fn summaries(
    State(sim): State<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, READ)?;
    let q = Query::parse(raw.as_deref());
    let mut violations = Vec::new();
    let start = parse_time(&q, "startTime", &mut violations);
    let end = parse_time(&q, "endTime", &mut violations);
    if let (Some(s), Some(e)) = (start, end) {
        match e.duration_since(s) {
            Ok(w) if w <= MAX_WINDOW => {}
            _ => violations.push(("endTime".to_string(), "INVALID".to_string())),
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
    let (Some(start), Some(end)) = (start, end) else {
        return Err(ApiError::field(API, "startTime", "REQUIRED"));
    };
    let max = sim.config.reports.max_page_size.max(1);
    let size = q
        .number(API, "pageSize", 1)?
        .map_or(100.min(max), |n| (n as usize).min(max));
    let offset = decode_marker(API, q.get("pageMarker"))?;
    let account = q.get("accountKey").filter(|a| !a.is_empty());
    let world = sim.world();
    let matching: Vec<Value> = world
        .ground_truth
        .calls
        .iter()
        .filter(|c| c.ended && account.is_none_or(|a| a == c.account_key))
        .filter(|c| {
            c.metadata
                .get("callCreated")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .is_some_and(|t| t >= start && t < end)
        })
        .map(summary)
        .collect();
    let page: Vec<&Value> = matching.iter().skip(offset).take(size).collect();
    let mut body = json!({"pageSize": size, "items": page});
    if offset + size < matching.len() {
        body["nextPageMarker"] = json!(encode_marker(offset + size));
    }
    Ok(Json(body).into_response())
}

/// `POST /call-events-report/v1/subscriptions` → 201.
pub async fn subscribe(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, MANAGE)?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::malformed(API, e))?;
    let mut violations = Vec::new();
    let channel_id = v.get("channelId").and_then(Value::as_str).unwrap_or("");
    if channel_id.is_empty() {
        violations.push(("channelId".to_string(), "REQUIRED".to_string()));
    }
    let mut keys = Vec::new();
    match v.get("accountKeys") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, k) in list.iter().enumerate() {
                match k.as_str() {
                    Some(s) if !s.is_empty() => keys.push(s.to_string()),
                    _ => violations.push((format!("accountKeys[{i}]"), "INVALID".to_string())),
                }
            }
        }
        _ => violations.push(("accountKeys".to_string(), "REQUIRED".to_string())),
    }
    match v.get("eventTypes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, e) in list.iter().enumerate() {
                if e.as_str() != Some("REPORT_SUMMARY") {
                    violations.push((format!("eventTypes[{i}]"), "INVALID".to_string()));
                }
            }
        }
        Some(_) => violations.push(("eventTypes".to_string(), "INVALID".to_string())),
    }
    if !violations.is_empty() {
        return Err(ApiError::constraints(
            API,
            "BAD_REQUEST",
            "The request is invalid",
            violations,
        ));
    }
    let known = &sim.config.traffic.account_keys;
    if let Some(unknown) = keys.iter().find(|k| !known.contains(k)) {
        return Err(ApiError::not_found(
            API,
            format!("Account {unknown} not found"),
        ));
    }
    let mut world = sim.world();
    if !world.channels.contains_key(channel_id) {
        return Err(ApiError::not_found(
            API,
            format!("Notification channel {channel_id} not found"),
        ));
    }
    let subs = world
        .report_subscriptions
        .entry(channel_id.to_string())
        .or_default();
    let items: Vec<Value> = keys
        .iter()
        .map(|k| {
            let id = subs
                .entry(k.clone())
                .or_insert_with(|| uuid::Uuid::new_v4().to_string());
            json!({"id": id, "channelId": channel_id, "value": k, "eventTypes": ["REPORT_SUMMARY"]})
        })
        .collect();
    Ok((StatusCode::CREATED, Json(json!({ "items": items }))).into_response())
}

/// `GET /call-events-report/v1/subscriptions?channelId=`.
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
        .report_subscriptions
        .get(channel_id)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    Ok(
        Json(json!({"accountKeys": keys, "userKeys": [], "lineIds": [], "phoneNumberIds": []}))
            .into_response(),
    )
}

/// `DELETE /call-events-report/v1/subscriptions?channelId&accountKey[&eventType]` → 204 / 404.
pub async fn unsubscribe(
    State(sim): State<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&sim, API, &headers, MANAGE)?;
    let q = Query::parse(raw.as_deref());
    let channel_id = q.required(API, "channelId")?;
    let account_key = q.required(API, "accountKey")?;
    if q.get("eventType").is_some_and(|e| e != "REPORT_SUMMARY") {
        return Err(ApiError::field(API, "eventType", "INVALID"));
    }
    let mut world = sim.world();
    let removed = world
        .report_subscriptions
        .get_mut(channel_id)
        .and_then(|m| m.remove(account_key))
        .is_some();
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(API, "Subscription not found"))
    }
}
