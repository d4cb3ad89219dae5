//! Disruptions the simulator can inflict on demand: one implementation shared by the control
//! endpoint, [`SimulatorControl`](super::SimulatorControl) and the fault schedules, so a test
//! that triggers one by hand sees exactly what a scheduled fault would do.

use std::sync::Arc;

use super::ground_truth::fault;
use super::state::{ChannelKind, Sim, WsOut};
use super::websocket::{control_frame, TO_BE_CLOSED};

/// Invalidate every access token (API calls answer 401 until the client gets a new one).
pub fn revoke_tokens(sim: &Sim) {
    let mut world = sim.world();
    world.tokens.clear();
    world.ground_truth.count_fault(fault::TOKENS_REVOKED);
}

/// Delete a channel as if GoTo had; false when it does not exist.
pub fn delete_channel(sim: &Sim, channel_id: &str) -> bool {
    let mut world = sim.world();
    let removed = world.remove_channel(
        channel_id,
        sim.config.channels.remove_subscriptions_with_channel,
    );
    if removed {
        world.ground_truth.count_fault(fault::CHANNEL_DELETED);
    }
    removed
}

/// Cut a channel's socket without a close frame; false when none is connected.
pub fn disconnect(sim: &Sim, channel_id: &str) -> bool {
    let mut world = sim.world();
    let Some(ch) = world.channels.get_mut(channel_id) else {
        return false;
    };
    let ChannelKind::WebSocket { socket, .. } = &mut ch.kind else {
        return false;
    };
    let Some(s) = socket.take() else {
        return false;
    };
    let _ = s.tx.send(WsOut::Cut);
    world.ground_truth.count_fault(fault::WEBSOCKET_DISCONNECT);
    true
}

/// Send `WEBSOCKET_TO_BE_CLOSED`, then after the grace close the socket (and by setting delete
/// the channel). False when no socket is connected.
pub fn to_be_closed(sim: &Arc<Sim>, channel_id: &str) -> bool {
    let text = control_frame(sim, TO_BE_CLOSED, channel_id);
    let conn_id = {
        let mut world = sim.world();
        let Some(socket) = world
            .channels
            .get(channel_id)
            .and_then(|c| c.socket())
            .cloned()
        else {
            return false;
        };
        if socket.tx.send(WsOut::Text(text)).is_err() {
            return false;
        }
        world
            .ground_truth
            .count_fault(fault::WEBSOCKET_TO_BE_CLOSED);
        world.stats.deliveries.control_messages += 1;
        socket.conn_id
    };
    let sim = sim.clone();
    let channel_id = channel_id.to_string();
    tokio::spawn(async move {
        let mut shutdown = sim.shutdown_signal();
        tokio::select! {
            _ = tokio::time::sleep(sim.config.channels.to_be_closed_grace) => {}
            _ = shutdown.changed() => return,
        }
        let mut world = sim.world();
        if sim.config.channels.to_be_closed_deletes_channel {
            world.remove_channel(
                &channel_id,
                sim.config.channels.remove_subscriptions_with_channel,
            );
        } else if let Some(ch) = world.channels.get_mut(&channel_id) {
            if let ChannelKind::WebSocket { socket, .. } = &mut ch.kind {
                if socket.as_ref().is_some_and(|s| s.conn_id == conn_id) {
                    if let Some(s) = socket.take() {
                        let _ = s.tx.send(WsOut::Close);
                    }
                }
            }
        }
    });
    true
}
