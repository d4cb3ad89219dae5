//! Getting one notification to one channel, GoTo's way.
//!
//! Webhook: a JSON POST; 5xx or a transport failure gets a few quick retries and is then
//! dropped; 404/410 marks the channel unreachable until the next 2xx; bodies over the size cap
//! are never sent. WebSocket: one text frame if a socket is connected, otherwise the
//! notification is simply lost, as GoTo does. Each copy is its own task (webhook POSTs go out
//! concurrently, bounded by a semaphore) and is counted in flight until it settles, so a test
//! can await "nothing in flight". Every step is written to the ground truth.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::Envelope;
use super::ground_truth::{fault, ChannelDelivery};
use super::state::{iso_now, ChannelKind, Sim};
use super::websocket::{frame, send_to_channel};

/// Which state a notification carries, for the ground truth (None for report summaries).
pub type StateKey = Option<(String, u64)>;

/// One notification copy bound for one channel.
pub struct Outgoing {
    /// The channel.
    pub channel_id: String,
    /// Notification id (absent from the body with the bare envelope).
    pub notification_id: String,
    /// The notification body.
    pub body: Value,
    /// The state it carries.
    pub state: StateKey,
    /// Hold it back this long first (delay and burst faults).
    pub hold: Option<Duration>,
}

/// GoTo's notification envelope.
pub fn envelope(id: &str, source: &str, kind: &str, content: Value) -> Value {
    json!({
        "id": id,
        "source": source,
        "type": kind,
        "timestamp": iso_now(),
        "ttl": 600,
        "content": content,
        "bypassDoNotDisturb": false,
    })
}

/// A call-state notification body in the configured envelope.
pub fn call_state_body(sim: &Sim, id: &str, metadata: &Value, state: &Value) -> Value {
    let content = json!({"metadata": metadata, "state": state});
    match sim.config.delivery.envelope {
        Envelope::Full => envelope(id, "call-events", "call-state", content),
        Envelope::Bare => content,
    }
}

fn record(sim: &Sim, key: &StateKey, channel: &str, f: impl FnOnce(&mut ChannelDelivery)) {
    if let Some((csid, seq)) = key {
        let mut world = sim.world();
        if let Some(d) = world.ground_truth.delivery_mut(csid, *seq, channel) {
            f(d);
        }
    }
}

fn give_up(sim: &Sim, out: &Outgoing, reason: &str) {
    sim.world().stats.deliveries.dropped += 1;
    let reason = reason.to_string();
    record(sim, &out.state, &out.channel_id, |d| {
        d.dropped += 1;
        d.drop_reasons.push(reason);
    });
}

/// Start delivering one copy in the background.
pub fn dispatch(sim: &Arc<Sim>, out: Outgoing) {
    let guard = sim.in_flight_guard();
    let sim = sim.clone();
    record(&sim, &out.state, &out.channel_id, |d| {
        d.notification_ids.push(out.notification_id.clone())
    });
    tokio::spawn(async move {
        let _guard = guard;
        if let Some(hold) = out.hold {
            let mut shutdown = sim.shutdown_signal();
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = shutdown.changed() => return,
            }
        }
        deliver(&sim, out).await;
    });
}

async fn deliver(sim: &Arc<Sim>, out: Outgoing) {
    let kind = sim
        .world()
        .channels
        .get(&out.channel_id)
        .map(|c| c.kind.clone());
    match kind {
        None => give_up(sim, &out, "channelGone"),
        Some(ChannelKind::WebSocket { .. }) => {
            sim.world().stats.deliveries.attempted += 1;
            let sent = send_to_channel(sim, &out.channel_id, frame(sim, out.body.clone()));
            record(sim, &out.state, &out.channel_id, |d| {
                d.attempts += 1;
                if sent {
                    d.delivered += 1;
                } else {
                    d.failed_attempts += 1;
                }
            });
            if sent {
                sim.world().stats.deliveries.succeeded += 1;
            } else {
                sim.world().stats.deliveries.failed += 1;
                give_up(sim, &out, "noSocket");
            }
        }
        Some(ChannelKind::Webhook { url, .. }) => deliver_webhook(sim, &out, &url).await,
    }
}

enum Attempt {
    Acked,
    Lost,
    AnswerLost,
    Gone,
    Rejected,
    Retryable,
}

async fn deliver_webhook(sim: &Arc<Sim>, out: &Outgoing, url: &str) {
    let bytes = match serde_json::to_vec(&out.body) {
        Ok(b) => b,
        Err(_) => return give_up(sim, out, "unserialisable"),
    };
    if bytes.len() > sim.config.delivery.max_body_bytes {
        sim.world().stats.deliveries.oversize += 1;
        return give_up(sim, out, "oversize");
    }
    let cfg = &sim.config.delivery;
    for attempt in 0..=cfg.webhook_retries {
        if attempt > 0 {
            tokio::time::sleep(cfg.webhook_retry_spacing).await;
        }
        let outcome = attempt_once(sim, url, &bytes).await;
        let failed = !matches!(outcome, Attempt::Acked);
        {
            let mut world = sim.world();
            world.stats.deliveries.attempted += 1;
            if failed {
                world.stats.deliveries.failed += 1;
            } else {
                world.stats.deliveries.succeeded += 1;
            }
            match outcome {
                Attempt::Lost => world.ground_truth.count_fault(fault::WEBHOOK_ATTEMPT_LOST),
                Attempt::AnswerLost => world.ground_truth.count_fault(fault::WEBHOOK_RESPONSE_LOST),
                _ => {}
            }
            if let Some(ch) = world.channels.get_mut(&out.channel_id) {
                if let ChannelKind::Webhook {
                    unreachable_since, ..
                } = &mut ch.kind
                {
                    match outcome {
                        Attempt::Acked | Attempt::AnswerLost => *unreachable_since = None,
                        Attempt::Gone if unreachable_since.is_none() => {
                            *unreachable_since = Some(iso_now())
                        }
                        _ => {}
                    }
                }
            }
        }
        record(sim, &out.state, &out.channel_id, |d| {
            d.attempts += 1;
            match outcome {
                Attempt::Acked => {
                    d.delivered += 1;
                    d.acknowledged += 1;
                }
                Attempt::AnswerLost => {
                    d.delivered += 1;
                    d.failed_attempts += 1;
                }
                _ => d.failed_attempts += 1,
            }
        });
        match outcome {
            Attempt::Acked => return,
            Attempt::Gone => return give_up(sim, out, "gone"),
            Attempt::Rejected => return give_up(sim, out, "rejected"),
            Attempt::Lost | Attempt::AnswerLost | Attempt::Retryable => {}
        }
    }
    give_up(sim, out, "retriesExhausted");
}

async fn attempt_once(sim: &Sim, url: &str, bytes: &[u8]) -> Attempt {
    let (lost, answer_lost) = {
        let mut f = sim.faults();
        let c = f.config().clone();
        (
            f.roll(c.webhook_attempt_lost_rate),
            f.roll(c.webhook_response_lost_rate),
        )
    };
    if lost {
        return Attempt::Lost;
    }
    let Ok(_permit) = sim.webhook_slots.clone().acquire_owned().await else {
        return Attempt::Retryable;
    };
    let sent = sim
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes.to_vec())
        .timeout(sim.config.delivery.webhook_timeout)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            if answer_lost {
                Attempt::AnswerLost
            } else {
                Attempt::Acked
            }
        }
        Ok(r) if r.status().as_u16() == 404 || r.status().as_u16() == 410 => Attempt::Gone,
        Ok(r) if r.status().is_server_error() => Attempt::Retryable,
        Ok(_) => Attempt::Rejected,
        Err(e) => {
            tracing::debug!(error = %e.without_url(), "webhook attempt failed");
            Attempt::Retryable
        }
    }
}
