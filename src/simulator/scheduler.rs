//! The traffic scheduler: when calls start and when their states happen.
//!
//! Content comes from the deterministic generator ([`traffic::generate_call`]); this module only
//! decides timing (calls per second, how many open at once, how many in total) and plays each
//! call's states with their delays. Stopping traffic stops new calls; calls already open play
//! to their ENDING so no call is left without a tail.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::delivery::{dispatch, envelope, Outgoing};
use super::emit::{emit_state, CallContext};
use super::state::{iso_ms, wall_ms, Sim};
use super::traffic::{generate_call, CALL_SPACING_MS};

/// Answer of `GET /_simulator/traffic`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    /// Calls started.
    pub calls_started: u64,
    /// Calls that emitted their ENDING.
    pub calls_ended: u64,
    /// States emitted.
    pub states_generated: u64,
    /// Deliveries dispatched and not yet settled.
    pub deliveries_in_flight: u64,
    /// The scheduler is starting calls.
    pub running: bool,
    /// Traffic was started, is no longer running, every call ended and nothing is in flight.
    pub done: bool,
}

/// Current traffic status.
pub fn status(sim: &Sim) -> TrafficStatus {
    let in_flight = sim.in_flight.load(std::sync::atomic::Ordering::SeqCst) as u64;
    let world = sim.world();
    let t = &world.traffic;
    TrafficStatus {
        calls_started: t.calls_started,
        calls_ended: t.calls_ended,
        states_generated: t.states_generated,
        deliveries_in_flight: in_flight,
        running: t.running,
        done: t.ever_started && !t.running && t.calls_started == t.calls_ended && in_flight == 0,
    }
}

/// Start starting calls (no-op when already running).
pub fn start(sim: &Arc<Sim>) {
    // Set the wish first: a loop still winding down after a stop sees it and keeps going.
    sim.traffic_wanted.send_replace(true);
    {
        let mut world = sim.world();
        if world.traffic.running {
            return;
        }
        world.traffic.running = true;
        world.traffic.ever_started = true;
        if world.traffic.base_time_ms == 0 {
            world.traffic.base_time_ms = sim.config.traffic.base_time_ms.unwrap_or_else(wall_ms);
        }
    }
    tokio::spawn(run(sim.clone()));
}

/// Stop starting calls; open calls play to their end.
pub fn stop(sim: &Sim) {
    sim.traffic_wanted.send_replace(false);
}

async fn run(sim: Arc<Sim>) {
    let cfg = &sim.config.scheduler;
    let slots = Arc::new(Semaphore::new(cfg.max_concurrent_calls.max(1)));
    let period =
        (cfg.calls_per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.calls_per_second));
    let mut wanted = sim.traffic_wanted.subscribe();
    let mut shutdown = sim.shutdown_signal();
    let mut next_start = Instant::now();
    loop {
        loop {
            if !*wanted.borrow_and_update() || *shutdown.borrow() {
                break;
            }
            if cfg.calls > 0 && sim.world().traffic.calls_started >= cfg.calls {
                break;
            }
            if period.is_some() {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_start) => {}
                    _ = wanted.changed() => continue,
                    _ = shutdown.changed() => break,
                }
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p,
                _ = wanted.changed() => continue,
                _ = shutdown.changed() => break,
            };
            let Ok(permit) = permit else { break };
            if let Some(p) = period {
                // No catch-up burst after waiting for a free slot.
                next_start = (next_start + p).max(Instant::now());
            }
            let (index, base) = {
                let mut world = sim.world();
                let t = &mut world.traffic;
                let index = t.next_index;
                t.next_index += 1;
                t.calls_started += 1;
                (index, t.base_time_ms)
            };
            tokio::spawn(play_call(sim.clone(), index, base, permit));
        }
        // Decide to stop under the world lock, re-checking the wish: `start` sets the wish
        // before it looks at `running`, so a start racing this exit is never lost.
        let mut world = sim.world();
        let exhausted = cfg.calls > 0 && world.traffic.calls_started >= cfg.calls;
        if *sim.traffic_wanted.borrow() && !*sim.shutdown.borrow() && !exhausted {
            continue;
        }
        world.traffic.running = false;
        break;
    }
    sim.progress.notify_waiters();
}

async fn play_call(sim: Arc<Sim>, index: u64, base_time_ms: u64, _slot: OwnedSemaphorePermit) {
    // GoTo stamps `callCreated` when the call really starts, and the report sweep finds calls by
    // it: without a fixed `traffic.base_time_ms` (a replay), shift the call's nominal start
    // (`base + index × CALL_SPACING_MS`) onto now. Content is seeded by the index alone.
    let base_time_ms = match sim.config.traffic.base_time_ms {
        Some(_) => base_time_ms,
        None => wall_ms().saturating_sub(index.saturating_mul(CALL_SPACING_MS)),
    };
    let call = generate_call(&sim.config.traffic, base_time_ms, index);
    let ctx = CallContext {
        conversation_space_id: &call.conversation_space_id,
        account_key: &call.account_key,
        metadata: &call.metadata,
    };
    sim.world().ground_truth.start_call(
        index,
        &call.conversation_space_id,
        &call.account_key,
        call.metadata.clone(),
    );
    let mut shutdown = sim.shutdown_signal();
    let n = call.states.len();
    for (i, state) in call.states.iter().enumerate() {
        tokio::select! {
            _ = tokio::time::sleep(state.delay_after_previous) => {}
            _ = shutdown.changed() => return,
        }
        emit_state(&sim, &ctx, state, i + 1 == n);
    }
    {
        let mut world = sim.world();
        world
            .ground_truth
            .end_call(&call.conversation_space_id, wall_ms());
        world.traffic.calls_ended += 1;
    }
    notify_report_ready(
        &sim,
        &call.conversation_space_id,
        &call.account_key,
        &call.metadata,
    );
    sim.progress.notify_waiters();
}

/// Tell report subscribers that the call's report exists, after the configured delay.
fn notify_report_ready(
    sim: &Arc<Sim>,
    csid: &str,
    account_key: &str,
    metadata: &serde_json::Value,
) {
    let channels: Vec<String> = {
        let world = sim.world();
        world
            .report_subscriptions
            .iter()
            .filter(|(ch, accounts)| {
                world.channels.contains_key(*ch) && accounts.contains_key(account_key)
            })
            .map(|(ch, _)| ch.clone())
            .collect()
    };
    let content = json!({
        "conversationSpaceId": csid,
        "accountKey": account_key,
        "callCreated": metadata.get("callCreated"),
        "callEnded": iso_ms(wall_ms()),
        "direction": metadata.get("direction"),
    });
    let hold = Some(sim.config.reports.summary_delay).filter(|d| !d.is_zero());
    for channel_id in channels {
        let id = uuid::Uuid::new_v4().to_string();
        sim.world().stats.deliveries.report_notifications += 1;
        dispatch(
            sim,
            Outgoing {
                channel_id,
                body: envelope(&id, "call-events-report", "REPORT_SUMMARY", content.clone()),
                notification_id: id,
                state: None,
                hold,
            },
        );
    }
}
