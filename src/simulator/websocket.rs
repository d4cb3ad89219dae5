//! The WebSocket server behind each WebSocket channel's `channelURL`.
//!
//! GoTo pushes notifications and two control messages (`WEBSOCKET_REFRESH_REQUIRED`,
//! `WEBSOCKET_TO_BE_CLOSED`) down a socket the client opens at an opaque URL; no auth header,
//! the URL is the credential. One socket per channel: a new connection replaces the old one, as
//! a reconnecting client expects. The socket task only pumps frames; what to send is decided
//! elsewhere and handed over through an unbounded queue so no lock is held across a send.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::config::WebSocketFrame;
use super::faults::FaultsConfig;
use super::state::{iso_now, ChannelKind, Sim, SocketHandle, WsOut};

/// `WEBSOCKET_REFRESH_REQUIRED`: sent a configurable time before a channel expires.
pub const REFRESH_REQUIRED: &str = "WEBSOCKET_REFRESH_REQUIRED";
/// `WEBSOCKET_TO_BE_CLOSED`: sent before the simulator closes a socket on purpose.
pub const TO_BE_CLOSED: &str = "WEBSOCKET_TO_BE_CLOSED";

/// Wrap a notification in the configured frame shape.
pub fn frame(sim: &Sim, data: Value) -> String {
    let frame = match sim.config.delivery.websocket_frame {
        WebSocketFrame::Data => json!({ "data": data }),
        WebSocketFrame::Event => json!({
            "event": "Notification",
            "eventId": uuid::Uuid::new_v4().to_string(),
            "timestamp": iso_now(),
            "data": data,
        }),
    };
    frame.to_string()
}

/// A control message frame (`data.type` = `kind`, `data.source` = `notification-websocket`).
pub fn control_frame(sim: &Sim, kind: &str, channel_id: &str) -> String {
    frame(
        sim,
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "source": "notification-websocket",
            "type": kind,
            "timestamp": iso_now(),
            "content": {"channelId": channel_id},
        }),
    )
}

/// Queue a frame on a channel's socket; false when no socket is connected.
pub fn send_to_channel(sim: &Sim, channel_id: &str, text: String) -> bool {
    let world = sim.world();
    match world.channels.get(channel_id).and_then(|c| c.socket()) {
        Some(s) => s.tx.send(WsOut::Text(text)).is_ok(),
        None => false,
    }
}

/// `GET /notification-channel/v1/ws/{key}`: upgrade to the channel's socket, unless the fault
/// `websocket_upgrade_status` refuses it; either answer comes only after the fault
/// `websocket_upgrade_delay`.
pub async fn connect(
    State(sim): State<Arc<Sim>>,
    Path(key): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let channel_id = sim.world().ws_keys.get(&key).cloned();
    let Some(id) = channel_id else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(delay) = upgrade_delay(&sim, &id) {
        // A slow socket host; a shutdown does not wait for it.
        let mut shutdown = sim.shutdown_signal();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
    }
    if let Some(status) = upgrade_refused(&sim, &id) {
        sim.world().stats.websocket_upgrades_refused += 1;
        return refused_upgrade(status, &id);
    }
    upgrade.on_upgrade(move |socket| pump(sim, id, socket))
}

/// The status the `websocket_upgrade_status` fault answers the upgrade of `channel_id`'s socket
/// with, if it applies to that channel.
fn upgrade_refused(sim: &Sim, channel_id: &str) -> Option<u16> {
    let faults = sim.faults();
    let c = faults.config();
    let status = c.websocket_upgrade_status?;
    upgrade_fault_applies(c, channel_id).then_some(status)
}

/// How long the `websocket_upgrade_delay` fault holds the answer to the upgrade of
/// `channel_id`'s socket, if it applies to that channel.
fn upgrade_delay(sim: &Sim, channel_id: &str) -> Option<Duration> {
    let faults = sim.faults();
    let c = faults.config();
    let delay = c.websocket_upgrade_delay.filter(|d| !d.is_zero())?;
    upgrade_fault_applies(c, channel_id).then_some(delay)
}

/// The upgrade faults apply to `channel_id`: it is in `websocket_upgrade_channels`, or that is
/// empty.
fn upgrade_fault_applies(c: &FaultsConfig, channel_id: &str) -> bool {
    c.websocket_upgrade_channels.is_empty()
        || c.websocket_upgrade_channels
            .iter()
            .any(|id| id == channel_id)
}

/// An upgrade refused with `status`, in GoTo's error body shape (a 404 or 410 names the channel,
/// as its REST answers do).
fn refused_upgrade(status: u16, channel_id: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (error_code, message) = match status {
        404 => (
            "RTC-NOTIFICATION-CHANNEL-NOT-FOUND",
            format!("Notification channel does not exist {channel_id}"),
        ),
        410 => ("GONE", format!("Notification channel expired {channel_id}")),
        401 => ("AUTHN_INVALID_TOKEN", "Invalid token".to_owned()),
        403 => ("AUTHZ_INSUFFICIENT_SCOPE", "Insufficient scope".to_owned()),
        429 => ("TOO_MANY_REQUESTS", "Too many requests".to_owned()),
        _ => (
            "UNKNOWN_ERROR",
            "Service temporarily unavailable".to_owned(),
        ),
    };
    let body = json!({
        "reference": uuid::Uuid::new_v4().to_string(),
        "constraintViolations": [],
        "errorCode": error_code,
        "message": message,
    });
    let mut answer = (code, axum::Json(body)).into_response();
    if matches!(status, 429 | 503) {
        // A busy or failing GoTo says when to come back, as its REST answers do.
        answer.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    answer
}

async fn pump(sim: Arc<Sim>, channel_id: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn_id = {
        let mut world = sim.world();
        world.conn_seq += 1;
        world.stats.websocket_connections += 1;
        let conn_id = world.conn_seq;
        let Some(ch) = world.channels.get_mut(&channel_id) else {
            return;
        };
        if let ChannelKind::WebSocket { socket: slot, .. } = &mut ch.kind {
            if let Some(old) = slot.replace(SocketHandle { conn_id, tx }) {
                let _ = old.tx.send(WsOut::Close);
            }
        }
        conn_id
    };
    tracing::debug!(channel = %channel_id, conn_id, "websocket connected");
    let mut shutdown = sim.shutdown_signal();
    let mut cut = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(WsOut::Text(t)) => {
                    let message = if sim.config.delivery.websocket_binary {
                        Message::Binary(t.into_bytes().into())
                    } else {
                        Message::Text(t.into())
                    };
                    if socket.send(message).await.is_err() {
                        break;
                    }
                }
                Some(WsOut::Cut) => {
                    cut = true;
                    break;
                }
                Some(WsOut::Close) | None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
            incoming = socket.recv() => match incoming {
                // tungstenite queues the pong itself; flushing sends it now.
                Some(Ok(Message::Ping(_))) => {
                    sim.world().stats.websocket_pings += 1;
                    let _ = socket.flush().await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = shutdown.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
        }
    }
    if cut {
        // Dropping the socket without a close frame is what a network cut looks like.
        drop(socket);
    }
    let mut world = sim.world();
    if let Some(ch) = world.channels.get_mut(&channel_id) {
        if let ChannelKind::WebSocket { socket: slot, .. } = &mut ch.kind {
            if slot.as_ref().is_some_and(|s| s.conn_id == conn_id) {
                *slot = None;
            }
        }
    }
    tracing::debug!(channel = %channel_id, conn_id, "websocket closed");
}
