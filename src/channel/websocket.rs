//! The WebSocket notification channel: connect, keep alive, refresh, recreate, reconnect.
//!
//! GoTo's own demos ping every 8 s and reconnect after three unanswered pings; they PUT-refresh
//! the channel on `WEBSOCKET_REFRESH_REQUIRED` and tear everything down and recreate it on
//! `WEBSOCKET_TO_BE_CLOSED`. callbridge does the same, and also refreshes ahead of
//! `channelLifetime` on its own (the warning frame may be lost): the channel's expiry is noted
//! each time GoTo grants a lifetime (create, refresh; counted from when the request was sent),
//! and survives reconnects to the same channel.
//!
//! A failed refresh does not end a working socket: GoTo keeps delivering to it until the channel
//! expires, and a new channel would need the same REST API that just failed. A transient or auth
//! failure is retried with backoff (`reconnect_base` doubling up to `reconnect_max`) until half
//! the `refresh_margin` before expiry; the channel is recreated only when GoTo says it is gone
//! (404/410), on `WEBSOCKET_TO_BE_CLOSED`, or once it has expired. A lifetime GoTo never stated
//! is taken as the smallest one seen (1200 s, goto-api.md §2.2) for when to refresh, but such a
//! guessed expiry never ends the socket.
//!
//! A socket that cannot be opened sends the next round to GoTo's listing, which may hand the
//! same channel back. When GoTo's socket host refuses the upgrade itself (an HTTP answer instead
//! of `101 Switching Protocols`) with a 4xx but 429, the channel is replaced instead of dialled
//! for ever, after [`REFUSALS_BEFORE_RECREATE`] refusals in a row of the same channel, and at
//! most [`REPLACEMENTS_WITHOUT_A_SOCKET`] times until a socket opens (a refusal of every channel
//! would otherwise cost a new channel at every third try). A 404 or
//! 410 counts like the others: the listing, asked before each retry, says whether the channel
//! is really gone (then a new one is made at once), and a socket host answering 404 for a
//! channel GoTo still serves (a balancer not knowing a fresh channel yet) must not cost it. A
//! network failure, 429 or 5xx says nothing against the channel (a new one would meet the same
//! host or network), so it only reconnects, not before the answer's `Retry-After`; after a 429
//! the channel is kept without asking the listing, which would spend four REST requests on a
//! GoTo that just said it is busy.
//!
//! A set-up round, refresh or repair check that GoTo refused with a `Retry-After` is not tried
//! again before that (capped at [`MAX_RETRY_AFTER`](crate::goto::MAX_RETRY_AFTER)): the client
//! honours it only between its own attempts. The stop never waits for it.
//!
//! The channel id is part of the channel's URL: logs and states show only its tag
//! ([`Channel::tag`]).
//! Frames are written to Kafka concurrently, up to `channel.websocket_frames_in_flight`; a frame
//! Kafka cannot take is lost from the socket's point of view and comes back through back-fill,
//! which is why it is only logged.
//!
//! When every write is waiting for Kafka, the session stops reading the socket (GoTo's sends then
//! back up in TCP) but keeps its loop live: shutdown, pings, refreshes and repairs go on. Pongs
//! cannot be read while reading is paused, so pings sent meanwhile are not counted as missed;
//! and any frame read counts as a sign of life, since a pong can be queued behind data frames.

use super::keeper::ChannelKeeper;
use super::sweep::ReportSweeper;
use super::ChannelState;
use crate::config::bridge::ChannelSettings;
use crate::goto::{retry_after_header, Channel, MAX_RETRY_AFTER};
use crate::ingest::{Accepted, Ingest, Transport, WriteError};
use crate::notification::ControlMessage;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

/// A session whose socket stayed open this long was healthy: the next reconnect is immediate.
/// Counted from the socket's opening: a dial that takes long to fail (a slow refusal, the
/// connect timeout) is no healthy session, and must not undo the backoff.
const HEALTHY_SESSION: Duration = Duration::from_millis(500);

/// A pause of reading this long is logged as a warning, not only counted.
const LONG_READ_PAUSE: Duration = Duration::from_secs(1);

/// The lifetime assumed when GoTo never stated one: the smallest WebSocket `channelLifetime` seen
/// (≈1200 s observed; GoTo's example says 10800), so the proactive refresh comes too early rather
/// than after expiry.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(1200);

/// Longest wait before a proactive refresh, whatever the lifetime (webhook-like huge ones).
const LONGEST_REFRESH_WAIT: Duration = Duration::from_secs(86_400);

/// Refusals in a row of one channel's socket upgrade (a 4xx other than 404, 410 and 429) after
/// which the channel is replaced: GoTo may go on listing and refreshing a channel whose socket it
/// no longer serves, and the listing would hand it back at every round. More than one, so that a
/// refusal of a moment (a socket host restarting, say) does not cost a channel and its
/// subscriptions.
const REFUSALS_BEFORE_RECREATE: u32 = 3;

/// Channels replaced for refused upgrades, with no socket opened since, after which refusals
/// no longer replace the channel: a refusal of every channel (the account's, or a socket host
/// misconfigured for all) would otherwise have a channel created and deleted at every third
/// try for as long as it lasts. The session then goes on dialling the channel it has, with the
/// listing asked before each try, and the log says the refusal outlived new channels.
const REPLACEMENTS_WITHOUT_A_SOCKET: u32 = 2;

/// How long after the last such replacement, still without a socket, one more is allowed: the
/// channel left once the cap was reached may be the one broken while new ones would work, and
/// the listing hands it back (refreshed) at every round, so it never expires on its own.
const REPLACEMENT_AGAIN_AFTER: Duration = Duration::from_secs(3600);

/// 429s in a row on a channel's upgrade after which the next round asks GoTo's listing anyway:
/// a socket host answering 429 for a channel GoTo has deleted would otherwise keep it for good.
const BUSY_BEFORE_LISTING: u32 = 3;

/// How long opening the socket (TCP, TLS, HTTP upgrade) may take: a host that accepts and then
/// never answers would otherwise hold the owner without a socket, and without a reconnect, for
/// good.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What became of an attempt to open the socket.
enum Opened {
    Socket(Box<Socket>),
    /// Shutdown came first.
    Shutdown,
    /// The server answered the upgrade with this HTTP status instead of switching protocols:
    /// unlike a failure on the way, this is GoTo's socket host speaking about the channel.
    Refused {
        /// The answer's status.
        status: u16,
        /// The answer's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// Failed or timed out on the way: TCP, TLS, no answer (the reason, for the log).
    Failed(String),
}

/// Opens the socket within `timeout`, giving up at once on shutdown.
async fn open_socket(url: &str, timeout: Duration, shutdown: &mut watch::Receiver<bool>) -> Opened {
    tokio::select! {
        opened = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url)) => match opened {
            Ok(Ok((ws, _))) => Opened::Socket(Box::new(ws)),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(answer))) => Opened::Refused {
                status: answer.status().as_u16(),
                retry_after: retry_after_header(answer.headers(), std::time::SystemTime::now())
                    .map(|wait| wait.min(MAX_RETRY_AFTER)),
            },
            Ok(Err(e)) => Opened::Failed(e.to_string()),
            Err(_) => Opened::Failed(format!("no answer within {timeout:?}")),
        },
        _ = shutdown.changed() => Opened::Shutdown,
    }
}

/// A channel and when it expires.
#[derive(Clone, Debug)]
struct Held {
    channel: Channel,
    /// When GoTo's last granted lifetime ends, counted from when the grant was asked for.
    expires_at: Instant,
    /// GoTo stated that lifetime (`expires_at` is not a guess from [`ASSUMED_LIFETIME`]).
    expiry_known: bool,
}

impl Held {
    /// `channel`, as granted by an answer to a request sent at `asked`.
    fn granted(channel: Channel, asked: Instant) -> Self {
        // A lifetime of 0 (GoTo documents none; the client already reads it as not stated) is
        // not "expired now" either: that would have the channel recreated as fast as GoTo
        // answers.
        let stated = channel.lifetime_secs.filter(|&secs| secs > 0);
        let lifetime = stated.map_or(ASSUMED_LIFETIME, Duration::from_secs);
        // Far-future instants overflow; webhook-like lifetimes are capped.
        let expires_at = asked + lifetime.min(LONGEST_REFRESH_WAIT * 2);
        Self {
            expiry_known: stated.is_some(),
            channel,
            expires_at,
        }
    }
}

/// A control message read by a write task, with the channel whose socket it came from (a task
/// may outlive its session).
type Control = (String, ControlMessage);

/// What one session leaves to the next.
struct BetweenSessions {
    /// Since when GoTo may have had nobody to deliver to (swept once a socket is back).
    down_since: Option<std::time::SystemTime>,
    /// Catch-ups of the active calls, one at a time, asked for at every connect.
    catch_ups: super::catchup::CatchUps,
    /// Control messages from the write tasks: kept across sessions, so that a
    /// `WEBSOCKET_REFRESH_REQUIRED` still being written when its session ended reaches the next
    /// session on the same channel.
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    /// Refusals in a row of the socket upgrade: kept across sessions, since each refusal ends
    /// one.
    refusals: Refusals,
    /// The `Retry-After` of the last refused upgrade, for the pause before the next round.
    upgrade_retry_after: Option<Duration>,
    /// When the last session's socket opened, if it did.
    connected_at: Option<Instant>,
}

/// Refusals in a row of one channel's socket upgrade (see [`REFUSALS_BEFORE_RECREATE`]).
#[derive(Debug, Default)]
struct Refusals {
    /// The channel refused last, and how many times in a row.
    of: Option<(String, u32)>,
    /// Channels replaced for refused upgrades since a socket last opened, and when the last.
    replaced: u32,
    last_replaced: Option<Instant>,
    /// 429s in a row on the upgrade.
    busy: u32,
}

impl Refusals {
    /// Counts a refusal of `channel_id`'s upgrade; returns how many came in a row, this one
    /// included. A refusal of another channel (a new one, or another one the listing handed
    /// back) starts the count again.
    fn count(&mut self, channel_id: &str) -> u32 {
        match &mut self.of {
            Some((id, n)) if id == channel_id => {
                *n += 1;
                *n
            }
            other => {
                *other = Some((channel_id.to_owned(), 1));
                1
            }
        }
    }

    /// Counts a 429 on the upgrade; returns how many came in a row, this one included.
    fn busy(&mut self) -> u32 {
        self.busy += 1;
        self.busy
    }

    /// Whether a channel refused [`REFUSALS_BEFORE_RECREATE`] times may be replaced at `now`
    /// (counting it if so): [`REPLACEMENTS_WITHOUT_A_SOCKET`] times, then one more every
    /// [`REPLACEMENT_AGAIN_AFTER`].
    fn may_replace(&mut self, now: Instant) -> bool {
        let may = self.replaced < REPLACEMENTS_WITHOUT_A_SOCKET
            || self
                .last_replaced
                .is_some_and(|at| now.saturating_duration_since(at) >= REPLACEMENT_AGAIN_AFTER);
        if may {
            self.replaced += 1;
            self.last_replaced = Some(now);
        }
        may
    }

    /// A socket was opened: refusals and replacements before it no longer count.
    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// Shutdown requested.
    Shutdown,
    /// Reconnect to the same channel (socket closed, pongs missed).
    Reconnect(&'static str),
    /// Recreate the channel (to-be-closed, gone, expired).
    Recreate(&'static str),
}

/// Runs the WebSocket channel until `shutdown` turns true. Every failure is retried with backoff,
/// like webhook mode's repair loop does: an owner that stopped holding the channel would keep its
/// election and silence every replica. A permanent one (bad credentials, refused subscriptions)
/// sets [`ChannelState::Failed`] with the fix, on which start-up stops the process; a replica that
/// became the owner later keeps trying every `reconnect_max` until the fix is made.
///
/// While `doubt` is true (the channel election is unanswered, see `duty`) a running session goes
/// on, but nothing new starts: no set-up, no reconnect, no repair, until it turns false.
pub async fn run(
    keeper: ChannelKeeper,
    ingest: Ingest,
    settings: ChannelSettings,
    sweeper: ReportSweeper,
    state: watch::Sender<ChannelState>,
    mut shutdown: watch::Receiver<bool>,
    mut doubt: watch::Receiver<bool>,
) {
    let mut backoff = settings.reconnect_base;
    // Reconnects in a row without a healthy session in between.
    let mut failures: u32 = 0;
    let mut channel: Option<Held> = None;
    let mut recreate = false;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    // Since when GoTo may have had nobody to deliver to: a new owner cannot know when its
    // predecessor lost the socket, so it looks back `report_sweep_lookback`.
    let mut between = BetweenSessions {
        down_since: (!settings.report_sweep_lookback.is_zero())
            .then(|| std::time::SystemTime::now() - settings.report_sweep_lookback),
        catch_ups: super::catchup::CatchUps::spawn(
            keeper.client().clone(),
            ingest.clone(),
            keeper.account_keys().to_vec(),
            sweeper.activity(),
            shutdown.clone(),
        ),
        control_tx,
        control_rx,
        refusals: Refusals::default(),
        upgrade_retry_after: None,
        connected_at: None,
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        if *doubt.borrow() {
            tracing::warn!("not reconnecting while the channel election is unanswered");
            let _ = state.send(ChannelState::Down("channel election unanswered".into()));
            let answered = tokio::select! {
                r = doubt.wait_for(|d| !*d) => r.is_ok(),
                _ = shutdown.changed() => true,
            };
            if !answered {
                return;
            }
            continue;
        }
        // 1. A channel with subscriptions. A stop does not wait for GoTo (a `Retry-After` can
        // hold a request for minutes): a replica that lost the election would go on making
        // channels beside the new owner's. A channel left half made is our nickname's, which
        // the next owner's listing finds.
        let asked = Instant::now();
        let setting_up = async {
            match (&channel, recreate) {
                (Some(held), true) => keeper
                    .recreate(Some(&held.channel))
                    .await
                    .map(|c| Held::granted(c, asked)),
                (None, _) => match keeper.ensure_channel().await {
                    Ok(c) => keeper
                        .ensure_subscriptions(&c)
                        .await
                        .map(|_| Held::granted(c, asked)),
                    Err(e) => Err(e),
                },
                (Some(held), false) => Ok(held.clone()),
            }
        };
        let ready = tokio::select! {
            ready = setting_up => ready,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let current = match ready {
            Ok(c) => c,
            Err(e) => {
                if !e.is_transient() {
                    // Only an operator can fix this: ask GoTo again only slowly.
                    backoff = settings.reconnect_max;
                }
                // Not before GoTo's `Retry-After`: a round sooner would only be refused again,
                // and spend the rate budget back-fill shares.
                let wait = super::round_wait(backoff, &e);
                if e.is_transient() {
                    tracing::warn!(error = %e, retry_in = ?wait, "channel set-up failed; retrying");
                    let _ = state.send(ChannelState::Down(e.set_up_failed_text()));
                } else {
                    // Only an operator can fix this: say so.
                    tracing::error!(error = %e, retry_in = ?wait, "channel set-up refused; retrying until it is fixed");
                    let _ = state.send(ChannelState::Failed(e.to_string()));
                }
                wait_or_shutdown(wait, &mut shutdown).await;
                backoff = (backoff * 2).min(settings.reconnect_max);
                continue;
            }
        };
        recreate = false;
        backoff = settings.reconnect_base;
        channel = Some(current.clone());
        // 2. A socket on it.
        let end = session(
            &keeper,
            &ingest,
            &settings,
            &sweeper,
            current,
            &state,
            &mut shutdown,
            &mut channel,
            &mut between,
            &doubt,
        )
        .await;
        if !matches!(end, SessionEnd::Shutdown) {
            between
                .down_since
                .get_or_insert_with(std::time::SystemTime::now);
        }
        // Every moment without a socket is a window of lost states, so the first reconnect or
        // recreation after a healthy session is immediate; only those that keep coming (a
        // session that ends at once counts as a failure) back off. A recreation too: GoTo
        // taking each new channel back at once (`WEBSOCKET_TO_BE_CLOSED` right after every
        // connect, a channel without a URL or with no lifetime left) would otherwise have
        // channels created and deleted as fast as GoTo answers, for as long as it lasts.
        if between
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= HEALTHY_SESSION)
        {
            failures = 0;
        }
        let pause = (failures > 0).then(|| {
            settings
                .reconnect_base
                .saturating_mul(1 << (failures - 1).min(16))
                .min(settings.reconnect_max)
        });
        // Not before the `Retry-After` of a refused upgrade (a 429 or 503 from the socket host).
        let pause = match (pause, between.upgrade_retry_after.take()) {
            (pause, None) => pause,
            (pause, Some(wait)) => Some(pause.map_or(wait, |p| p.max(wait))),
        };
        let why = match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Reconnect(why) => {
                tracing::warn!(reason = why, delay = ?pause, "WebSocket reconnecting");
                why
            }
            SessionEnd::Recreate(why) => {
                tracing::warn!(reason = why, delay = ?pause, "recreating the notification channel");
                recreate = true;
                backoff = settings.reconnect_base;
                why
            }
        };
        metrics::counter!("callbridge_channel_reconnects_total", "reason" => why).increment(1);
        let _ = state.send(ChannelState::Down(why.into()));
        if let Some(pause) = pause {
            wait_or_shutdown(pause, &mut shutdown).await;
        }
        failures += 1;
    }
}

async fn wait_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

/// When to refresh a channel expiring at `expires_at`, seen at `now`: `margin` before expiry, but
/// no later than half-way through what is left (a margin as long as the lifetime would refresh
/// at once, again and again), and within a day.
fn refresh_deadline(now: Instant, expires_at: Instant, margin: Duration) -> Instant {
    let left = expires_at.saturating_duration_since(now);
    now + left
        .saturating_sub(margin)
        .max(left / 2)
        .min(LONGEST_REFRESH_WAIT)
}

/// What a session does after a refresh failed at `now`.
#[derive(Debug, PartialEq, Eq)]
enum AfterFailedRefresh {
    /// Try again at this instant (the socket stays).
    RetryAt(Instant),
    /// Too close to expiry to try again: keep the socket until expiry, then recreate.
    WaitForExpiry(Instant),
    /// The channel is gone or expired: recreate it.
    Recreate(&'static str),
}

/// What a session does when GoTo answered the upgrade of `channel_id`'s socket with `status`
/// instead of switching protocols. A 4xx but 429 (404 and 410 included: the listing, not the
/// socket host, says whether a channel is gone) is counted in `refusals`: the channel is
/// replaced at the [`REFUSALS_BEFORE_RECREATE`]th in a row, and until then the next round
/// checks GoTo's listing (which may hand the same channel back, or show it gone, when a new
/// one is made at once). 429, 5xx and anything else say nothing against the channel (GoTo
/// busy or failing, a proxy): reconnect, and the count stays as it is.
fn after_refused_upgrade(
    status: u16,
    channel_id: &str,
    refusals: &mut Refusals,
    now: Instant,
) -> SessionEnd {
    match status {
        429 => SessionEnd::Reconnect("connect_failed"),
        400..=499 => {
            let in_a_row = refusals.count(channel_id);
            if in_a_row < REFUSALS_BEFORE_RECREATE {
                SessionEnd::Reconnect("upgrade_refused")
            } else if refusals.may_replace(now) {
                SessionEnd::Recreate("upgrade_refused")
            } else {
                if in_a_row == REFUSALS_BEFORE_RECREATE {
                    tracing::error!(status, replaced = refusals.replaced, "GoTo refuses the WebSocket upgrade of new channels too; keeping this one and trying again with backoff, and a new channel again within the hour (check GoTo's status and the account's access to notification channels)");
                }
                SessionEnd::Reconnect("upgrade_refused")
            }
        }
        _ => SessionEnd::Reconnect("connect_failed"),
    }
}

/// The policy: gone (404/410) or expired → recreate; otherwise retry after `delay` until half
/// the margin before expiry, the socket delivering meanwhile. With an expiry GoTo never stated
/// (`None`), retry for as long as it takes: a guessed expiry is no reason to drop a socket that
/// may still deliver (GoTo closes it, or says `WEBSOCKET_TO_BE_CLOSED`, when the channel ends).
fn after_failed_refresh(
    gone: bool,
    now: Instant,
    expires_at: Option<Instant>,
    margin: Duration,
    delay: Duration,
) -> AfterFailedRefresh {
    if gone {
        return AfterFailedRefresh::Recreate("channel_gone");
    }
    let Some(expires_at) = expires_at else {
        return AfterFailedRefresh::RetryAt(now + delay);
    };
    if now >= expires_at {
        return AfterFailedRefresh::Recreate("channel_expired");
    }
    let last_try = expires_at.checked_sub(margin / 2).unwrap_or(now);
    if now >= last_try {
        AfterFailedRefresh::WaitForExpiry(expires_at)
    } else {
        AfterFailedRefresh::RetryAt((now + delay).min(last_try))
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    keeper: &ChannelKeeper,
    ingest: &Ingest,
    settings: &ChannelSettings,
    sweeper: &ReportSweeper,
    held_now: Held,
    state: &watch::Sender<ChannelState>,
    shutdown: &mut watch::Receiver<bool>,
    channel_slot: &mut Option<Held>,
    between: &mut BetweenSessions,
    doubt: &watch::Receiver<bool>,
) -> SessionEnd {
    let Held {
        channel: mut current,
        mut expires_at,
        mut expiry_known,
    } = held_now;
    let Some(url) = current.kind.url().map(str::to_string) else {
        return SessionEnd::Recreate("no_channel_url");
    };
    let ws = match open_socket(&url, CONNECT_TIMEOUT, shutdown).await {
        Opened::Socket(ws) => ws,
        Opened::Shutdown => return SessionEnd::Shutdown,
        Opened::Refused {
            status,
            retry_after,
        } => {
            between.upgrade_retry_after = retry_after;
            let end = after_refused_upgrade(
                status,
                &current.channel_id,
                &mut between.refusals,
                Instant::now(),
            );
            // Busy: the channel is not in doubt, and asking the listing would cost four REST
            // requests of a GoTo that just said so; but not for ever (the channel may be gone
            // behind the 429s), nor past the channel's known expiry.
            let keep_while_busy = status == 429
                && between.refusals.busy() % BUSY_BEFORE_LISTING != 0
                && !(expiry_known && Instant::now() >= expires_at);
            if let SessionEnd::Recreate(why) = end {
                // The channel stays in `channel_slot`: the recreation deletes it.
                tracing::warn!(channel = %current.tag(), status, reason = why, "GoTo refused the WebSocket upgrade; replacing the channel");
            } else if keep_while_busy {
                tracing::warn!(channel = %current.tag(), status, ?retry_after, "GoTo refused the WebSocket upgrade as too many requests");
            } else {
                tracing::warn!(channel = %current.tag(), status, ?retry_after, "GoTo refused the WebSocket upgrade");
                // It may be gone: make the next round check the listing.
                *channel_slot = None;
            }
            return end;
        }
        Opened::Failed(e) => {
            tracing::warn!(error = %e, "WebSocket connect failed");
            // A channel whose socket cannot be opened may be gone: make the next round check.
            *channel_slot = None;
            return SessionEnd::Reconnect("connect_failed");
        }
    };
    between.refusals.reset();
    between.connected_at = Some(Instant::now());
    tracing::info!(channel = %current.tag(), "WebSocket connected");
    let _ = state.send(ChannelState::Ready(current.channel_id.clone()));
    // Whatever happened while we were not connected: active calls' last states to raw, one
    // catch-up at a time (a socket dropping every few seconds would otherwise pile catch-ups of
    // every active call up in the rate-limited queue that back-fill shares).
    if let Some(since) = between.down_since.take() {
        sweeper.request((since, std::time::SystemTime::now()));
    }
    between.catch_ups.ask();
    let (mut sink, mut stream) = (*ws).split();
    let control_tx = between.control_tx.clone();
    let control_rx = &mut between.control_rx;
    // Write tasks tag what they read with this channel's id: one still running from a session on
    // an earlier channel must not refresh or close this one.
    let channel_id: Arc<str> = Arc::from(current.channel_id.as_str());
    let permits = Arc::new(Semaphore::new(settings.websocket_frames_in_flight));
    // A frame read while every permit was taken, and since when: reading waits for a write to end.
    let mut held: Option<(bytes::Bytes, Instant)> = None;
    let mut ping = tokio::time::interval(settings.ping_interval);
    // After a long refresh or repair, one ping, not a burst that counts as several missed pongs.
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    let mut missed = 0u32;
    let mut refresh_at = refresh_deadline(Instant::now(), expires_at, settings.refresh_margin);
    // Delay before retrying a failed refresh; back to the base after a success.
    let mut refresh_retry = settings.reconnect_base;
    // The subscriptions can vanish while the socket stays up: check them like webhook mode does.
    let mut repair = tokio::time::interval(settings.repair_interval);
    repair.tick().await;
    let end = loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = sink.send(Message::Close(None)).await;
                break SessionEnd::Shutdown;
            }
            permit = permits.clone().acquire_owned(), if held.is_some() => {
                let Ok(permit) = permit else { break SessionEnd::Shutdown };
                if let Some((body, since)) = held.take() {
                    read_resumed(since.elapsed(), settings.websocket_frames_in_flight);
                    spawn_write(ingest, &control_tx, &channel_id, Some(permit), body);
                }
            }
            frame = stream.next(), if held.is_none() => match frame {
                Some(Ok(Message::Text(text))) => {
                    missed = 0;
                    held = write_or_hold(ingest, &control_tx, &channel_id, &permits, bytes::Bytes::from(text));
                }
                // Every documented frame is text; a binary one is taken the same way (ingest
                // dead-letters it if it is not a notification), never dropped.
                Some(Ok(Message::Binary(bin))) => {
                    missed = 0;
                    held = write_or_hold(ingest, &control_tx, &channel_id, &permits, bin);
                }
                Some(Ok(Message::Pong(_) | Message::Ping(_) | Message::Frame(_))) => missed = 0,
                Some(Ok(Message::Close(_))) | None => {
                    // The server closes the socket when the channel expires or is deleted:
                    // re-check the channel before reconnecting instead of dialling a dead URL.
                    *channel_slot = None;
                    break SessionEnd::Reconnect("closed_by_server");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "WebSocket error");
                    break SessionEnd::Reconnect("socket_error");
                }
            },
            _ = ping.tick() => {
                // While reading is paused a pong cannot be seen: ping anyway (proxies keep the
                // connection), but judge the socket only while it is read.
                if held.is_none() {
                    if missed >= settings.max_missed_pongs {
                        break SessionEnd::Reconnect("pong_timeout");
                    }
                    missed += 1;
                }
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break SessionEnd::Reconnect("socket_error");
                }
            }
            Some((about, control)) = control_rx.recv() => {
                if about != current.channel_id {
                    tracing::debug!(?control, "control message of an earlier channel ignored");
                    continue;
                }
                match control {
                    ControlMessage::RefreshRequired => {
                        tracing::info!("WEBSOCKET_REFRESH_REQUIRED received");
                        // Now, whatever a retry was waiting for.
                        refresh_at = Instant::now();
                    }
                    ControlMessage::ToBeClosed => break SessionEnd::Recreate("to_be_closed"),
                    ControlMessage::Other(kind) => tracing::info!(%kind, "unknown channel control message ignored"),
                }
            }
            // A repair may create a channel: not while another replica may own it.
            _ = repair.tick(), if !*doubt.borrow() => {
                let asked = Instant::now();
                let repaired = tokio::select! {
                    repaired = keeper.repair(&mut current) => Some(repaired),
                    _ = shutdown.wait_for(|stop| *stop) => None,
                };
                let Some(repaired) = repaired else {
                    let _ = sink.send(Message::Close(None)).await;
                    break SessionEnd::Shutdown;
                };
                // The next check a full interval after this one ended: one that outlasted the
                // interval (the client's own retries) is not followed at once.
                repair.reset();
                match repaired {
                    Ok(super::Repair::Healthy) => {}
                    Ok(super::Repair::Resubscribed(n)) => {
                        metrics::counter!("callbridge_channel_repairs_total").increment(1);
                        tracing::warn!(missing = n, "call-events subscriptions restored");
                    }
                    Ok(super::Repair::ChannelRecreated) => {
                        // A new channel has a new URL: connect to it.
                        metrics::counter!("callbridge_channel_repairs_total").increment(1);
                        *channel_slot = Some(Held::granted(current.clone(), asked));
                        break SessionEnd::Reconnect("channel_recreated");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "channel repair check failed; will retry");
                        // Not before GoTo's `Retry-After`, counted from the refusal.
                        if let Some(wait) = e.retry_after() {
                            repair.reset_after(wait.max(settings.repair_interval));
                        }
                    }
                }
            }
            _ = sleep_until(refresh_at) => {
                let asked = Instant::now();
                if expiry_known && asked >= expires_at {
                    break SessionEnd::Recreate("channel_expired");
                }
                let refreshed = tokio::select! {
                    refreshed = keeper.refresh(&current) => Some(refreshed),
                    _ = shutdown.wait_for(|stop| *stop) => None,
                };
                let Some(refreshed) = refreshed else {
                    let _ = sink.send(Message::Close(None)).await;
                    break SessionEnd::Shutdown;
                };
                match refreshed {
                    Ok(c) => {
                        let granted = Held::granted(c, asked);
                        expires_at = granted.expires_at;
                        expiry_known = granted.expiry_known;
                        refresh_at = refresh_deadline(Instant::now(), expires_at, settings.refresh_margin);
                        refresh_retry = settings.reconnect_base;
                        current = granted.channel.clone();
                        *channel_slot = Some(granted);
                    }
                    Err(e) => {
                        let now = Instant::now();
                        // Not before GoTo's `Retry-After` (still no later than the last try).
                        let delay = super::round_wait(refresh_retry, &e);
                        match after_failed_refresh(e.is_channel_gone(), now, expiry_known.then_some(expires_at), settings.refresh_margin, delay) {
                            AfterFailedRefresh::Recreate(why) => {
                                tracing::warn!(error = %e, reason = why, "channel refresh failed and the channel is gone or expired; recreating it");
                                break SessionEnd::Recreate(why);
                            }
                            AfterFailedRefresh::RetryAt(at) => {
                                metrics::counter!("callbridge_channel_refresh_failures_total").increment(1);
                                tracing::warn!(error = %e, retry_in = ?at.saturating_duration_since(now), expires_in = ?expires_at.saturating_duration_since(now), "channel refresh failed; the socket stays, retrying");
                                refresh_at = at;
                                refresh_retry = (refresh_retry * 2).min(settings.reconnect_max);
                            }
                            AfterFailedRefresh::WaitForExpiry(at) => {
                                metrics::counter!("callbridge_channel_refresh_failures_total").increment(1);
                                tracing::warn!(error = %e, expires_in = ?at.saturating_duration_since(now), "channel refresh failed too close to expiry; the socket stays until the channel expires, then the channel is recreated");
                                refresh_at = at;
                            }
                        }
                    }
                }
            }
        }
    };
    // The held frame was read off the socket: GoTo counts it delivered, so it is written (one
    // frame over the bound) rather than dropped with the session.
    if let Some((body, since)) = held {
        read_resumed(since.elapsed(), settings.websocket_frames_in_flight);
        spawn_write(ingest, &control_tx, &channel_id, None, body);
    }
    end
}

/// Writes a frame just read if a permit is free; otherwise returns it to be held (reading
/// pauses until a write ends).
fn write_or_hold(
    ingest: &Ingest,
    control_tx: &mpsc::UnboundedSender<Control>,
    channel_id: &Arc<str>,
    permits: &Arc<Semaphore>,
    body: bytes::Bytes,
) -> Option<(bytes::Bytes, Instant)> {
    match permits.clone().try_acquire_owned() {
        Ok(permit) => {
            spawn_write(ingest, control_tx, channel_id, Some(permit), body);
            None
        }
        Err(_) => Some((body, Instant::now())),
    }
}

/// Writes one frame to Kafka in its own task, holding `permit` (if any) until the write ends.
fn spawn_write(
    ingest: &Ingest,
    control_tx: &mpsc::UnboundedSender<Control>,
    channel_id: &Arc<str>,
    permit: Option<OwnedSemaphorePermit>,
    body: bytes::Bytes,
) {
    let (ingest, control_tx, channel_id) = (ingest.clone(), control_tx.clone(), channel_id.clone());
    tokio::spawn(async move {
        let _permit = permit;
        match ingest.accept(&body, Transport::WebSocket).await {
            Ok(Accepted::Control(c)) => {
                let _ = control_tx.send((channel_id.to_string(), c));
            }
            Ok(_) => {}
            Err(e @ WriteError::AckTimeout(_)) => {
                tracing::warn!(error = %e, "a WebSocket notification is not acknowledged yet; it stays queued and is written once Kafka is back")
            }
            Err(e) => {
                tracing::warn!(error = %e, "a WebSocket notification could not be written to Kafka; back-fill will recover it")
            }
        }
    });
}

/// Records a pause of reading that just ended, and says so when it was long.
fn read_resumed(paused: Duration, in_flight: usize) {
    metrics::histogram!("callbridge_websocket_read_pause_seconds").record(paused.as_secs_f64());
    if paused >= LONG_READ_PAUSE {
        tracing::warn!(
            ?paused,
            frames_in_flight = in_flight,
            "WebSocket reading was paused: every frame in flight was waiting for Kafka"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goto::ChannelKind;

    fn channel(lifetime_secs: Option<u64>) -> Channel {
        Channel {
            channel_id: "c".into(),
            nickname: "bridge".into(),
            kind: ChannelKind::WebSocket {
                url: Some("ws://h/c/ws".into()),
            },
            lifetime_secs,
            unreachable_since: None,
        }
    }

    #[test]
    fn the_refresh_after_a_reconnect_comes_before_the_granted_expiry() {
        // Granted 1200 s; the socket drops at 590 s and the same channel is reused: the
        // refresh is due 60 s (the margin) before the expiry GoTo granted, not a whole
        // lifetime after the reconnect.
        let granted_at = Instant::now();
        let held = Held::granted(channel(Some(1200)), granted_at);
        let margin = Duration::from_secs(60);
        let reconnect = granted_at + Duration::from_secs(590);
        let at = refresh_deadline(reconnect, held.expires_at, margin);
        assert_eq!(at, granted_at + Duration::from_secs(1140));
        assert_eq!(
            refresh_deadline(granted_at, held.expires_at, margin),
            granted_at + Duration::from_secs(1140)
        );
        // Past expiry: at once.
        let late = granted_at + Duration::from_secs(1300);
        assert_eq!(refresh_deadline(late, held.expires_at, margin), late);
    }

    #[test]
    fn a_lifetime_never_stated_is_the_smallest_seen() {
        let now = Instant::now();
        let held = Held::granted(channel(None), now);
        assert_eq!(held.expires_at, now + Duration::from_secs(1200));
        assert!(!held.expiry_known);
        // A lifetime of 0 is not "expired now": it would have the channel recreated at once.
        let zero = Held::granted(channel(Some(0)), now);
        assert_eq!(zero.expires_at, now + Duration::from_secs(1200));
        assert!(!zero.expiry_known);
        let huge = Held::granted(channel(Some(2_147_483_647)), now);
        assert!(
            refresh_deadline(now, huge.expires_at, Duration::from_secs(120))
                <= now + LONGEST_REFRESH_WAIT
        );
    }

    #[test]
    fn a_failed_refresh_keeps_the_socket_until_gone_or_expired() {
        let now = Instant::now();
        let expires = now + Duration::from_secs(600);
        let margin = Duration::from_secs(120);
        let delay = Duration::from_secs(1);
        assert_eq!(
            after_failed_refresh(false, now, Some(expires), margin, delay),
            AfterFailedRefresh::RetryAt(now + delay)
        );
        // Retries stop half the margin before expiry; the socket stays until then.
        let late = expires - Duration::from_secs(61);
        assert_eq!(
            after_failed_refresh(false, late, Some(expires), margin, Duration::from_secs(30)),
            AfterFailedRefresh::RetryAt(expires - Duration::from_secs(60))
        );
        assert_eq!(
            after_failed_refresh(
                false,
                expires - Duration::from_secs(10),
                Some(expires),
                margin,
                delay
            ),
            AfterFailedRefresh::WaitForExpiry(expires)
        );
        assert_eq!(
            after_failed_refresh(false, expires, Some(expires), margin, delay),
            AfterFailedRefresh::Recreate("channel_expired")
        );
        assert_eq!(
            after_failed_refresh(true, now, Some(expires), margin, delay),
            AfterFailedRefresh::Recreate("channel_gone")
        );
        // An expiry GoTo never stated is not acted on: past the guess, the socket stays and the
        // refresh is retried.
        let past_guess = expires + Duration::from_secs(3600);
        assert_eq!(
            after_failed_refresh(false, past_guess, None, margin, delay),
            AfterFailedRefresh::RetryAt(past_guess + delay)
        );
    }

    #[test]
    fn a_refused_upgrade_replaces_the_channel_at_the_third_and_twice_an_hour_at_most_without_a_socket(
    ) {
        let mut refusals = Refusals::default();
        let now = Instant::now();
        // Refused, "gone" included (the listing decides that): the third in a row of one
        // channel.
        for status in [404, 410] {
            assert_eq!(
                after_refused_upgrade(status, "a", &mut refusals, now),
                SessionEnd::Reconnect("upgrade_refused")
            );
        }
        assert_eq!(REFUSALS_BEFORE_RECREATE, 3);
        // Busy or failing says nothing against the channel, and leaves the count as it is.
        for status in [429, 500, 502, 503] {
            assert_eq!(
                after_refused_upgrade(status, "a", &mut refusals, now),
                SessionEnd::Reconnect("connect_failed")
            );
        }
        assert_eq!(
            after_refused_upgrade(401, "a", &mut refusals, now),
            SessionEnd::Recreate("upgrade_refused")
        );
        // Another channel starts again.
        assert_eq!(
            after_refused_upgrade(403, "b", &mut refusals, now),
            SessionEnd::Reconnect("upgrade_refused")
        );
        after_refused_upgrade(403, "b", &mut refusals, now);
        assert_eq!(
            after_refused_upgrade(403, "b", &mut refusals, now),
            SessionEnd::Recreate("upgrade_refused"),
            "the second replacement"
        );
        // Refused again on a third channel: every channel is refused, and no more are made
        // until a socket opens.
        for _ in 0..REFUSALS_BEFORE_RECREATE * 2 {
            assert_eq!(
                after_refused_upgrade(403, "c", &mut refusals, now),
                SessionEnd::Reconnect("upgrade_refused")
            );
        }
        // An hour on, still without a socket: the channel left may be the broken one, so one
        // more replacement, and then again only an hour later.
        let later = now + REPLACEMENT_AGAIN_AFTER;
        assert_eq!(
            after_refused_upgrade(403, "c", &mut refusals, later),
            SessionEnd::Recreate("upgrade_refused"),
            "one more after an hour"
        );
        for _ in 0..REFUSALS_BEFORE_RECREATE {
            assert_eq!(
                after_refused_upgrade(403, "d", &mut refusals, later),
                SessionEnd::Reconnect("upgrade_refused")
            );
        }
        refusals.reset();
        for _ in 1..REFUSALS_BEFORE_RECREATE {
            after_refused_upgrade(403, "c", &mut refusals, now);
        }
        assert_eq!(
            after_refused_upgrade(403, "c", &mut refusals, now),
            SessionEnd::Recreate("upgrade_refused"),
            "replaced again once a socket opened"
        );
        refusals.reset();
        // So does a socket opened.
        after_refused_upgrade(403, "b", &mut refusals, now);
        refusals.reset();
        assert_eq!(
            after_refused_upgrade(403, "b", &mut refusals, now),
            SessionEnd::Reconnect("upgrade_refused")
        );
    }

    /// A host that answers every upgrade with `status` and no body.
    async fn refusing_host(status: u16) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/socket", listener.local_addr().unwrap());
        let host = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                // The whole request, up to its blank line.
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                // A busy or failing host says when to come back.
                let retry_after = if matches!(status, 429 | 503) {
                    "Retry-After: 7\r\n"
                } else {
                    ""
                };
                let answer =
                    format!("HTTP/1.1 {status} Refused\r\n{retry_after}Content-Length: 0\r\n\r\n");
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        (url, host)
    }

    #[tokio::test]
    async fn an_upgrade_answered_with_a_status_is_a_refusal_with_that_status() {
        for status in [403, 404, 429, 503] {
            let (url, _host) = refusing_host(status).await;
            let (_tx, mut shutdown) = watch::channel(false);
            match open_socket(&url, Duration::from_secs(10), &mut shutdown).await {
                Opened::Refused {
                    status: refused,
                    retry_after,
                } => {
                    assert_eq!(refused, status);
                    let expected = matches!(status, 429 | 503).then(|| Duration::from_secs(7));
                    assert_eq!(retry_after, expected, "{status}");
                }
                Opened::Failed(why) => panic!("{status} taken for a failure on the way: {why}"),
                Opened::Socket(_) => panic!("a refusing host gave a socket"),
                Opened::Shutdown => panic!("no shutdown was asked"),
            }
        }
    }

    /// A host that accepts the TCP connection and then says nothing (a hung node or balancer).
    async fn silent_host() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/socket", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        (url, held)
    }

    #[tokio::test]
    async fn a_host_that_never_answers_the_upgrade_is_a_failed_connect() {
        let (url, _host) = silent_host().await;
        let (_tx, mut shutdown) = watch::channel(false);
        match open_socket(&url, Duration::from_millis(200), &mut shutdown).await {
            Opened::Failed(why) => assert!(why.contains("no answer within"), "{why}"),
            Opened::Refused { status, .. } => panic!("a silent host refused with {status}"),
            Opened::Socket(_) => panic!("a silent host gave a socket"),
            Opened::Shutdown => panic!("no shutdown was asked"),
        }
    }

    #[tokio::test]
    async fn shutdown_ends_a_connect_that_hangs() {
        let (url, _host) = silent_host().await;
        let (tx, mut shutdown) = watch::channel(false);
        let opening = tokio::spawn(async move {
            open_socket(&url, Duration::from_secs(3600), &mut shutdown).await
        });
        tx.send(true).unwrap();
        let opened = tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .expect("shutdown ends the connect")
            .unwrap();
        assert!(matches!(opened, Opened::Shutdown));
    }

    #[tokio::test]
    async fn a_host_that_refuses_the_connection_is_a_failure_on_the_way() {
        // A port nobody listens on: TCP refused, which says nothing about the channel.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/socket", listener.local_addr().unwrap());
        drop(listener);
        let (_tx, mut shutdown) = watch::channel(false);
        let opened = open_socket(&url, Duration::from_secs(10), &mut shutdown).await;
        assert!(matches!(opened, Opened::Failed(_)));
    }
}
