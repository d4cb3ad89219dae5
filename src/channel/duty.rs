//! What the channel owner does, started when this replica wins the election and stopped when it
//! loses it: set up the channel and subscriptions, catch up the active calls, then keep it alive
//! (webhook: the repair loop; WebSocket: the session).
//!
//! A new owner's catch-up lists the calls in progress and writes their latest state to raw, so
//! states GoTo sent while nobody held the socket are found by the sequencer as gaps and
//! back-filled: a handover loses nothing the REST API still has.
//!
//! An owner whose group session ran out (`Role::OwnerInDoubt`: Kafka unreachable, or the process
//! paused) keeps a WebSocket session it holds, so a Kafka outage does not also cost GoTo's
//! deliveries, but it starts nothing new (no reconnect, no channel created or recreated) until
//! the group answers: another replica may own the channel by then. Two sockets on one channel
//! for that while are harmless to the output (both only write raw; the sequencer drops what is
//! doubled). In webhook mode nothing is held that GoTo needs (it posts to every replica), so
//! doubt ends the duty like losing the election does.

use super::election::Role;
use super::sweep::ReportSweeper;
use super::DesiredChannel;
use super::{
    catchup, repair_loop, round_wait, websocket, ChannelError, ChannelKeeper, ChannelState,
};
use crate::config::bridge::{ChannelKind, ChannelSettings, WebhookSettings};
use crate::goto::{Channel, GotoClient};
use crate::ingest::Ingest;
use tokio::sync::watch;

/// Everything the owner needs to hold the channel.
#[derive(Clone)]
pub struct ChannelDuty {
    /// The GoTo client.
    pub client: GotoClient,
    /// Where notifications go.
    pub ingest: Ingest,
    /// `[channel]`.
    pub channel: ChannelSettings,
    /// `[webhook]` (webhook mode).
    pub webhook: WebhookSettings,
    /// Accounts to subscribe.
    pub account_keys: Vec<String>,
    /// Call-event types to subscribe.
    pub events: Vec<String>,
    /// Where outage windows go to be swept.
    pub sweeper: ReportSweeper,
}

impl ChannelDuty {
    fn keeper(&self) -> ChannelKeeper {
        let desired = match self.channel.kind {
            ChannelKind::Webhook => DesiredChannel::Webhook {
                url: crate::secret::Secret::new(format!(
                    "{}/{}",
                    self.webhook.public_url.trim_end_matches('/'),
                    self.webhook.secret.expose()
                )),
            },
            ChannelKind::Websocket => DesiredChannel::WebSocket,
        };
        ChannelKeeper::new(
            self.client.clone(),
            self.channel.nickname.clone(),
            desired,
            self.account_keys.clone(),
            self.events.clone(),
        )
    }
}

/// Follows `role` until `shutdown`: holds the channel while this replica is the owner.
pub async fn follow_election(
    duty: ChannelDuty,
    mut role: watch::Receiver<Role>,
    state: watch::Sender<ChannelState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // 1. Wait to be the owner.
        loop {
            let now = *role.borrow_and_update();
            match now {
                Role::Owner => break,
                Role::Standby | Role::OwnerInDoubt => {
                    let _ = state.send(ChannelState::Standby);
                }
                Role::Joining => {}
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
        tracing::info!("this replica owns the GoTo channel");
        let _ = state.send(ChannelState::Starting);
        // 2. Hold it until ownership or the process ends.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (doubt_tx, doubt_rx) = watch::channel(false);
        let mut task = tokio::spawn(hold(
            duty.clone(),
            state.clone(),
            stop_rx.clone(),
            doubt_rx.clone(),
        ));
        let mut shutting_down = false;
        let keeps_in_doubt = duty.channel.kind == ChannelKind::Websocket;
        loop {
            tokio::select! {
                changed = role.changed() => {
                    if changed.is_err() { break }
                    match *role.borrow() {
                        Role::Owner => {
                            let _ = doubt_tx.send(false);
                        }
                        Role::OwnerInDoubt if keeps_in_doubt => {
                            tracing::warn!("the channel election is unanswered (Kafka unreachable?): keeping the WebSocket, starting nothing new until it answers");
                            let _ = doubt_tx.send(true);
                        }
                        _ => break,
                    }
                }
                _ = shutdown.changed() => { shutting_down = true; break }
                ended = &mut task => {
                    // The duty ends only when stopped, so this is a panic. An owner holding
                    // nothing would keep its election and silence every replica: start again.
                    tracing::error!(error = ?ended.err(), retry_in = ?duty.channel.reconnect_max, "the channel duty ended unexpectedly; starting it again");
                    let (duty, state, stop, doubt) =
                        (duty.clone(), state.clone(), stop_rx.clone(), doubt_rx.clone());
                    task = tokio::spawn(async move {
                        let mut stopped = stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(duty.channel.reconnect_max) => {}
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                        hold(duty, state, stop, doubt).await
                    });
                }
            }
        }
        let _ = stop_tx.send(true);
        let _ = task.await;
        if shutting_down {
            return;
        }
        tracing::warn!("this replica no longer owns the GoTo channel");
    }
}

async fn hold(
    duty: ChannelDuty,
    state: watch::Sender<ChannelState>,
    stop: watch::Receiver<bool>,
    doubt: watch::Receiver<bool>,
) {
    let keeper = duty.keeper();
    match duty.channel.kind {
        ChannelKind::Webhook => {
            let Some(channel) = set_up(&keeper, &duty.channel, &state, stop.clone()).await else {
                return;
            };
            let _ = state.send(ChannelState::Ready(channel.channel_id.clone()));
            if !duty.channel.report_sweep_lookback.is_zero() {
                let now = std::time::SystemTime::now();
                duty.sweeper
                    .request((now - duty.channel.report_sweep_lookback, now));
            }
            // A stop does not wait for GoTo (a `Retry-After` can hold the listing for minutes):
            // a replica that lost the election would go on writing catch-up states, and keep
            // `follow_election` waiting for this duty to end, until GoTo answered. `biased`: a
            // stop given already wins over starting a listing. Abandoning the catch-up loses
            // nothing: the next owner catches up when it takes the channel.
            let mut stopped = stop.clone();
            let catching_up = duty.sweeper.activity().catchup_running();
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => return,
                _ = catchup::catch_up(keeper.client(), &duty.ingest, keeper.account_keys()) => {}
            }
            drop(catching_up);
            repair_loop(
                keeper,
                duty.ingest.clone(),
                channel,
                duty.channel.repair_interval,
                duty.sweeper.clone(),
                state,
                stop,
            )
            .await;
        }
        ChannelKind::Websocket => {
            websocket::run(
                keeper,
                duty.ingest.clone(),
                duty.channel.clone(),
                duty.sweeper.clone(),
                state,
                stop,
                doubt,
            )
            .await
        }
    }
}

/// Finds or creates the channel and its subscriptions, retrying every failure (not before
/// GoTo's `Retry-After`, when it sent one); `None` when stopped first. A permanent failure (bad
/// credentials, refused subscriptions) sets [`ChannelState::Failed`] with the fix, on which
/// start-up stops the process; a replica that became the owner later keeps trying every
/// `reconnect_max`, since an owner that gave up would keep its election and leave GoTo's
/// notifications with nobody.
async fn set_up(
    keeper: &ChannelKeeper,
    settings: &ChannelSettings,
    state: &watch::Sender<ChannelState>,
    mut stop: watch::Receiver<bool>,
) -> Option<Channel> {
    let mut delay = settings.reconnect_base;
    loop {
        let attempt = async {
            let c = keeper.ensure_channel().await?;
            keeper.ensure_subscriptions(&c).await?;
            Ok::<_, ChannelError>(c)
        };
        // `wait_for`, not `changed`: a stop given before this point still ends the set-up.
        let result = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return None,
            r = attempt => r,
        };
        // Not before GoTo's `Retry-After`: a round sooner would only be refused again.
        let wait = match result {
            Ok(c) => return Some(c),
            Err(e) if e.is_transient() => {
                let wait = round_wait(delay, &e);
                tracing::warn!(error = %e, retry_in = ?wait, "channel set-up failed; retrying");
                let _ = state.send(ChannelState::Down(e.set_up_failed_text()));
                wait
            }
            Err(e) => {
                delay = settings.reconnect_max;
                let wait = round_wait(delay, &e);
                tracing::error!(error = %e, retry_in = ?wait, "channel set-up refused; retrying until it is fixed");
                let _ = state.send(ChannelState::Failed(e.to_string()));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stop| *stop) => return None,
        }
        delay = (delay * 2).min(settings.reconnect_max);
    }
}
