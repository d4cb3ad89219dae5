//! The GoTo side: the notification channel and its subscriptions, kept alive.
//!
//! - [`keeper`]: find-or-create, subscribe (checking every 207 item), refresh, recreate, repair.
//! - [`websocket`]: the WebSocket session (pings, reconnects, control messages).
//! - [`catchup`]: after an outage, the active calls' last states go to the raw topic.
//! - [`sweep`]: after an outage, calls that started and ended inside it, from GoTo's reports.
//! - [`activity`]: how many catch-ups and sweeps are running or waiting.
//! - [`election`]: which replica owns the channel (a Kafka consumer group).
//! - [`duty`]: what the owner runs while it owns it.
//!
//! The webhook side has no session: the HTTP server lives in [`crate::ingest::webhook`], and the
//! keeper's repair loop is all it needs.

pub mod activity;
pub mod catchup;
pub mod duty;
pub mod election;
pub mod keeper;
pub mod sweep;
pub mod websocket;

pub use keeper::{ChannelError, ChannelKeeper, DesiredChannel, Repair};

use std::time::Duration;

/// How long to wait before the next round after a round failed with `error`: the caller's
/// `backoff`, or GoTo's `Retry-After` when that is longer. The client honours a `Retry-After`
/// between its own attempts only; a round started sooner would only be refused again, and spend
/// the rate budget that back-fill shares. Callers still wait for it beside their stop.
pub(crate) fn round_wait(backoff: Duration, error: &ChannelError) -> Duration {
    error
        .retry_after()
        .map_or(backoff, |wait| wait.max(backoff))
}

/// What readiness reports about the channel.
///
/// `Debug` (what `/readyz` and logs show) gives a `Ready` channel's id as its tag only
/// ([`Channel::tag_of`](crate::goto::Channel::tag_of)): a WebSocket channel's id is part of the
/// URL that reads its notifications.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Not set up yet.
    Starting,
    /// Channel and subscriptions in place (WebSocket: connected); holds the channel id.
    Ready(String),
    /// Temporarily down, being repaired; holds the reason.
    Down(String),
    /// A permanent problem stopped it; holds the error.
    Failed(String),
    /// Another replica owns the channel; this one only ingests and sequences.
    Standby,
}

impl std::fmt::Debug for ChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelState::Starting => f.write_str("Starting"),
            ChannelState::Ready(id) => f
                .debug_tuple("Ready")
                .field(&format_args!("{}", crate::goto::Channel::tag_of(id)))
                .finish(),
            ChannelState::Down(why) => f.debug_tuple("Down").field(why).finish(),
            ChannelState::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
            ChannelState::Standby => f.write_str("Standby"),
        }
    }
}

/// Repairs the channel every `interval` until `shutdown`; webhook mode's keep-alive. After a
/// repair that changed something, the active calls are caught up. A pass GoTo refused with a
/// `Retry-After` puts the next one off until then, counted from the refusal (and never sooner
/// than `interval`).
pub async fn repair_loop(
    keeper: ChannelKeeper,
    ingest: crate::ingest::Ingest,
    mut channel: crate::goto::Channel,
    interval: std::time::Duration,
    sweeper: sweep::ReportSweeper,
    state: tokio::sync::watch::Sender<ChannelState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    // The last time the channel was seen healthy: a repair means GoTo may have had nowhere to
    // deliver since then.
    let mut healthy_at = std::time::SystemTime::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        // A stop does not wait for GoTo (a `Retry-After` can hold a request for minutes): a
        // replica that lost the election would go on repairing, and creating, channels.
        let repaired = tokio::select! {
            repaired = keeper.repair(&mut channel) => repaired,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        // The next pass a full interval after this one ended: one that outlasted the interval
        // (the client's own retries, `Retry-After` waits included) is not followed at once.
        tick.reset();
        match repaired {
            Ok(Repair::Healthy) => {
                healthy_at = std::time::SystemTime::now();
                let _ = state.send(ChannelState::Ready(channel.channel_id.clone()));
            }
            Ok(r) => {
                metrics::counter!("callbridge_channel_repairs_total").increment(1);
                tracing::warn!(repair = ?r, "channel repaired");
                let _ = state.send(ChannelState::Ready(channel.channel_id.clone()));
                let now = std::time::SystemTime::now();
                sweeper.request((healthy_at, now));
                healthy_at = now;
                let _catching_up = sweeper.activity().catchup_running();
                tokio::select! {
                    _ = catchup::catch_up(keeper.client(), &ingest, keeper.account_keys()) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "channel repair failed; will retry");
                let _ = state.send(ChannelState::Down(e.to_string()));
                if let Some(wait) = e.retry_after() {
                    tick.reset_after(wait.max(interval));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goto::endpoint::LIST_CHANNELS;
    use crate::goto::GotoError;
    use crate::goto::MAX_RETRY_AFTER;

    fn refused(status: u16, retry_after: Option<Duration>) -> GotoError {
        GotoError::from_api_response(LIST_CHANNELS, status, b"{}", retry_after)
    }

    #[test]
    fn the_next_round_waits_for_gotos_retry_after() {
        let backoff = Duration::from_millis(500);
        let listing = |source| ChannelError::Goto {
            context: "listing notification channels",
            source,
        };
        // Longer than the backoff: GoTo's wait.
        let busy = listing(refused(429, Some(Duration::from_secs(7))));
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(round_wait(backoff, &busy), Duration::from_secs(7));
        // Shorter: the backoff.
        let brief = listing(refused(429, Some(Duration::from_millis(100))));
        assert_eq!(round_wait(backoff, &brief), backoff);
        // None given: the backoff.
        assert_eq!(round_wait(backoff, &listing(refused(503, None))), backoff);
        // Given on the last of the client's attempts.
        let exhausted = listing(GotoError::RetriesExhausted {
            endpoint: LIST_CHANNELS,
            attempts: 4,
            last: Box::new(refused(429, Some(Duration::from_secs(3)))),
        });
        assert_eq!(round_wait(backoff, &exhausted), Duration::from_secs(3));
        // Capped like the client caps it.
        let hours = listing(refused(429, Some(Duration::from_secs(7200))));
        assert_eq!(round_wait(backoff, &hours), MAX_RETRY_AFTER);
        // On a call about our channel too.
        let gone = ChannelError::ChannelGone {
            context: "subscribing to call events",
            channel_id: "c".into(),
            source: refused(404, Some(Duration::from_secs(2))),
        };
        assert_eq!(round_wait(backoff, &gone), Duration::from_secs(2));
        let pending = ChannelError::SubscriptionsPending {
            accounts: "a (429 TOO_MANY_REQUESTS)".into(),
            attempts: 5,
        };
        assert_eq!(round_wait(backoff, &pending), backoff);
    }
}
