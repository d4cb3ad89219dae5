//! The shared world: everything the simulated GoTo remembers, behind one lock.
//!
//! One `std::sync::Mutex` around plain data keeps every handler and background task honest about
//! consistency (a channel deletion and a delivery cannot interleave half-way), and it is never
//! held across an `.await`, so contention stays short. Things that are not "world" (the HTTP
//! client, the fault dice, shutdown signalling) sit beside it in [`Sim`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use super::config::SimulatorConfig;
use super::faults::Faults;
use super::ground_truth::GroundTruth;
use super::ratelimit::RateLimiter;
use super::stats::Stats;

/// Lock a mutex; a panic elsewhere must not take the whole simulator down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wall-clock epoch milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// ISO-8601 UTC with milliseconds, as GoTo writes timestamps.
pub fn iso_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// ISO-8601 of an epoch-ms instant.
pub fn iso_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The simulator's shared core, one per running simulator.
pub struct Sim {
    /// Settings fixed at start (faults live in `faults`, they change at run time).
    pub config: SimulatorConfig,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The remembered world.
    pub world: Mutex<World>,
    /// Fault knobs and dice.
    pub faults: Mutex<Faults>,
    /// Client for webhook POSTs and verification.
    pub http: reqwest::Client,
    /// Bounds concurrent webhook POSTs.
    pub webhook_slots: Arc<Semaphore>,
    /// Flips to true once on shutdown; every background task watches it.
    pub shutdown: watch::Sender<bool>,
    /// Deliveries dispatched but not finished (including held back ones).
    pub in_flight: AtomicUsize,
    /// Wakes waiters whenever traffic or in-flight counts change.
    pub progress: Notify,
    /// Wakes requests held by a fault (`active_calls_paused`) whenever the faults change.
    pub faults_changed: Notify,
    /// Whether the scheduler should be starting calls.
    pub traffic_wanted: watch::Sender<bool>,
}

impl Sim {
    /// Lock the world.
    pub fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// Lock the fault dice.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    /// A receiver that turns true on shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Count a delivery as in flight until the guard drops.
    pub fn in_flight_guard(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// Decrements the in-flight count when dropped, whichever way a delivery ends.
pub struct InFlight(Arc<Sim>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.progress.notify_waiters();
    }
}

/// An issued access token.
#[derive(Clone, Debug)]
pub struct Token {
    /// After this the token is expired (401 `AUTHN_EXPIRED_TOKEN`).
    pub expires_at: Instant,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

/// What goes down a connected WebSocket.
#[derive(Debug)]
pub enum WsOut {
    /// A text frame.
    Text(String),
    /// A close frame, then hang up.
    Close,
    /// Hang up without a close frame (network cut).
    Cut,
}

/// The one connected socket of a WebSocket channel.
#[derive(Clone, Debug)]
pub struct SocketHandle {
    /// Distinguishes a reconnect from the connection it replaced.
    pub conn_id: u64,
    /// Frames to send.
    pub tx: mpsc::UnboundedSender<WsOut>,
}

/// Kind-specific channel data.
#[derive(Clone, Debug)]
pub enum ChannelKind {
    /// POSTs to a URL.
    Webhook {
        /// The webhook URL.
        url: String,
        /// Set when the receiver answered 404/410; cleared by the next 2xx.
        unreachable_since: Option<String>,
    },
    /// Frames on a socket the client opens at `channelURL`.
    WebSocket {
        /// `"WebSocket"` or `"WebSockets"` as the client spelled it.
        requested_spelling: String,
        /// The opaque path key of `channelURL`.
        key: String,
        /// The connected socket, if any.
        socket: Option<SocketHandle>,
        /// `WEBSOCKET_REFRESH_REQUIRED` already sent for the current lifetime.
        refresh_sent: bool,
    },
}

/// A notification channel.
#[derive(Clone, Debug)]
pub struct Channel {
    /// `Webhook.<uuid>` or an opaque id.
    pub id: String,
    /// Client-chosen label.
    pub nickname: String,
    /// Webhook or WebSocket data.
    pub kind: ChannelKind,
    /// Lifetime granted at creation (and on each refresh).
    pub lifetime: Duration,
    /// When the channel disappears; None = never (beyond what `Instant` can hold).
    pub expires_at: Option<Instant>,
    /// Creation order, for stable paging.
    pub created_seq: u64,
}

impl Channel {
    /// Seconds of lifetime left, rounded up.
    pub fn remaining_secs(&self, now: Instant) -> u64 {
        match self.expires_at {
            None => self.lifetime.as_secs(),
            Some(at) => {
                let left = at.saturating_duration_since(now);
                left.as_secs() + u64::from(left.subsec_nanos() > 0)
            }
        }
    }

    /// Restart the lifetime countdown.
    pub fn restart_lifetime(&mut self, now: Instant) {
        self.expires_at = now.checked_add(self.lifetime);
        if let ChannelKind::WebSocket { refresh_sent, .. } = &mut self.kind {
            *refresh_sent = false;
        }
    }

    /// True for WebSocket channels.
    pub fn is_websocket(&self) -> bool {
        matches!(self.kind, ChannelKind::WebSocket { .. })
    }

    /// The connected socket, if any.
    pub fn socket(&self) -> Option<&SocketHandle> {
        match &self.kind {
            ChannelKind::WebSocket { socket, .. } => socket.as_ref(),
            ChannelKind::Webhook { .. } => None,
        }
    }
}

/// Scheduler counters shown by `GET /_simulator/traffic`.
#[derive(Clone, Debug, Default)]
pub struct TrafficState {
    /// The scheduler loop is starting calls.
    pub running: bool,
    /// Traffic was started at least once.
    pub ever_started: bool,
    /// Calls started so far.
    pub calls_started: u64,
    /// Calls whose ENDING was emitted.
    pub calls_ended: u64,
    /// States emitted so far.
    pub states_generated: u64,
    /// Index of the next call to generate.
    pub next_index: u64,
    /// Base wall-clock time handed to the generator.
    pub base_time_ms: u64,
}

/// Everything the simulated GoTo remembers.
#[derive(Default)]
pub struct World {
    /// Issued access tokens.
    pub tokens: HashMap<String, Token>,
    /// Valid refresh tokens.
    pub refresh_tokens: HashSet<String>,
    /// Authorization codes not yet used.
    pub codes: HashSet<String>,
    /// Channels by id.
    pub channels: BTreeMap<String, Channel>,
    /// Next channel creation number.
    pub channel_seq: u64,
    /// Every channel ever created, in creation order (deleted and expired ones too): what a
    /// test counts to prove a client leaves nothing behind.
    pub created_channels: Vec<String>,
    /// Next WebSocket connection id.
    pub conn_seq: u64,
    /// WebSocket path key → channel id.
    pub ws_keys: HashMap<String, String>,
    /// Call-events subscriptions: channel id → account key → event types.
    pub subscriptions: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// Report subscriptions: channel id → account key → subscription id.
    pub report_subscriptions: HashMap<String, BTreeMap<String, String>>,
    /// Every generated call and state, and what happened to it.
    pub ground_truth: GroundTruth,
    /// Request and delivery counters.
    pub stats: Stats,
    /// Per-API request windows.
    pub rate: RateLimiter,
    /// Scheduler counters.
    pub traffic: TrafficState,
}

impl World {
    /// Remove a channel, its socket and (by setting) its subscriptions. Returns whether it existed.
    pub fn remove_channel(&mut self, id: &str, remove_subscriptions: bool) -> bool {
        let Some(ch) = self.channels.remove(id) else {
            return false;
        };
        if let ChannelKind::WebSocket { key, socket, .. } = ch.kind {
            self.ws_keys.remove(&key);
            if let Some(s) = socket {
                let _ = s.tx.send(WsOut::Close);
            }
        }
        if remove_subscriptions {
            self.subscriptions.remove(id);
            self.report_subscriptions.remove(id);
        }
        true
    }

    /// Channels subscribed to `event` for `account_key`.
    pub fn subscribers(&self, account_key: &str, event: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(ch, accounts)| {
                self.channels.contains_key(*ch)
                    && accounts
                        .get(account_key)
                        .is_some_and(|evs| evs.iter().any(|e| e == event))
            })
            .map(|(ch, _)| ch.clone())
            .collect();
        out.sort();
        out
    }
}
