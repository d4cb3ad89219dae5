//! The simulator's clock: channel lifetimes and scheduled faults.
//!
//! Channels must count down and vanish, WebSockets must be warned before that happens, and the
//! `*_every` faults must fire on schedule even while the schedule is being changed through the
//! control endpoint. One task ticking every 50 ms does all of it by comparing "now" with the
//! state of the world, which keeps the rules in one place and survives settings changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::actions;
use super::state::{ChannelKind, Sim, World};
use super::websocket::{control_frame, REFRESH_REQUIRED};

const TICK: Duration = Duration::from_millis(50);

/// Run until shutdown.
pub async fn run(sim: Arc<Sim>) {
    let mut shutdown = sim.shutdown_signal();
    let mut last_fired: HashMap<&'static str, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        channel_countdown(&sim, now);
        scheduled_faults(&sim, now, &mut last_fired);
    }
}

fn channel_countdown(sim: &Sim, now: Instant) {
    let before = sim.config.channels.refresh_required_before;
    let mut world = sim.world();
    let World {
        channels, stats, ..
    } = &mut *world;
    let mut expired = Vec::new();
    for ch in channels.values_mut() {
        let Some(at) = ch.expires_at else { continue };
        if now >= at {
            expired.push(ch.id.clone());
            continue;
        }
        let id = ch.id.clone();
        if let ChannelKind::WebSocket {
            socket: Some(s),
            refresh_sent,
            ..
        } = &mut ch.kind
        {
            if !*refresh_sent && at.saturating_duration_since(now) <= before {
                let _ = s.tx.send(super::state::WsOut::Text(control_frame(
                    sim,
                    REFRESH_REQUIRED,
                    &id,
                )));
                *refresh_sent = true;
                stats.deliveries.control_messages += 1;
            }
        }
    }
    for id in expired {
        tracing::debug!(channel = %id, "channel expired");
        world.remove_channel(&id, sim.config.channels.remove_subscriptions_with_channel);
    }
}

/// Fire each `*_every` fault whose period has elapsed since it last fired (or since it was
/// first seen switched on).
fn scheduled_faults(sim: &Arc<Sim>, now: Instant, last: &mut HashMap<&'static str, Instant>) {
    let cfg = sim.faults().config().clone();
    let schedules: [(&'static str, Option<Duration>); 4] = [
        ("disconnect", cfg.websocket_disconnect_every),
        ("to_be_closed", cfg.websocket_to_be_closed_every),
        ("channel_delete", cfg.channel_delete_every),
        ("token_revoke", cfg.token_revoke_every),
    ];
    for (name, every) in schedules {
        let Some(every) = every else {
            last.remove(name);
            continue;
        };
        let since = *last.entry(name).or_insert(now);
        if now.saturating_duration_since(since) < every {
            continue;
        }
        last.insert(name, now);
        match name {
            "token_revoke" => actions::revoke_tokens(sim),
            "channel_delete" => {
                if let Some(id) = pick_channel(sim, false) {
                    actions::delete_channel(sim, &id);
                }
            }
            "disconnect" => {
                if let Some(id) = pick_channel(sim, true) {
                    actions::disconnect(sim, &id);
                }
            }
            _ => {
                if let Some(id) = pick_channel(sim, true) {
                    actions::to_be_closed(sim, &id);
                }
            }
        }
    }
}

/// A random channel; with `connected`, only WebSocket channels with a socket.
fn pick_channel(sim: &Sim, connected: bool) -> Option<String> {
    let ids: Vec<String> = sim
        .world()
        .channels
        .values()
        .filter(|c| !connected || c.socket().is_some())
        .map(|c| c.id.clone())
        .collect();
    let i = sim.faults().pick(ids.len())?;
    ids.into_iter().nth(i)
}
