//! `callbridge run`: wires config, GoTo, ingest, the sequencer and the admin endpoints together
//! and shuts them down in order.
//!
//! Start-up order matters: the admin server answers first (alive, not ready), topics are checked
//! next, waiting for Kafka while it cannot be reached (nothing is accepted that cannot be written),
//! the webhook server listens before the channel is created (GoTo verifies the URL at creation),
//! and the sequencer starts independently of the GoTo side (it only needs Kafka and the REST API).
//! Shutdown: readiness goes false, the channel is handed over, the sequencer drains, checkpoints
//! and leaves the group, and only then does the webhook stop accepting and what it accepted is
//! flushed (see `RunningBridge::shutdown` for why the webhook goes last).

use crate::channel::duty::ChannelDuty;
use crate::channel::election::{ChannelElection, Role};
use crate::channel::sweep::ReportSweeper;
use crate::channel::{self, ChannelState};
use crate::config::bridge::{ChannelKind, WebhookAnswer};
use crate::config::BridgeConfig;
use crate::goto::{Credential, GotoClient, GotoClientConfig, GotoError, WebSocketTypeSpelling};
use crate::ingest::{webhook, Ingest, RawWriter};
use crate::kafka::{ensure_topics, TopicError, TopicLayout};
use crate::ops::{self, Readiness};
use crate::sequencer::shell::{self, ShellConfig, ShellStats};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the bridge could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Topics missing, not co-partitioned, broker unreachable.
    #[error(transparent)]
    Topics(#[from] TopicError),
    /// The GoTo client could not be built.
    #[error("GoTo client: {0}")]
    Goto(#[from] GotoError),
    /// The channel or subscriptions could not be set up for a reason retrying cannot fix.
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    /// Kafka client creation failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}; change the address or free the port")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Pre-bound listeners (tests and the demo bind port 0 first to learn the port).
#[derive(Default)]
pub struct Listeners {
    /// Webhook listener; `webhook.listen` is bound when `None`.
    pub webhook: Option<TcpListener>,
    /// Admin listener; `admin.listen` is bound when `None`.
    pub admin: Option<TcpListener>,
}

/// The most of `shutdown.timeout` kept for the webhook server's last answers and the final
/// flush of raw (a fifth of it when that is less).
const FLUSH_RESERVE: Duration = Duration::from_secs(5);

/// A running bridge, for the demo and tests to observe.
pub struct RunningBridge {
    /// Where the webhook server listens.
    pub webhook_addr: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz`, `/readyz` listen.
    pub admin_addr: SocketAddr,
    /// The channel's state.
    pub channel: watch::Receiver<ChannelState>,
    /// The sequencer's counters.
    pub sequencer: Arc<ShellStats>,
    /// Catch-ups and report sweeps running or waiting.
    pub discovery: channel::activity::DiscoveryActivity,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The webhook and admin servers: stopped last, by `stop_servers` (see `shutdown`).
    servers: Vec<tokio::task::JoinHandle<()>>,
    stop_servers: watch::Sender<bool>,
    sequencer_handle: Option<shell::SequencerHandle>,
    role: watch::Receiver<Role>,
    election: Option<ChannelElection>,
    ingest: Ingest,
    readiness: Readiness,
    drain_timeout: Duration,
}

/// Builds the GoTo client from `[goto]`.
pub fn goto_client(config: &BridgeConfig) -> Result<GotoClient, GotoError> {
    let g = &config.goto;
    let uses_refresh_token = g.personal_access_token.is_empty();
    let credential = if uses_refresh_token {
        Credential::RefreshToken(g.refresh_token.clone())
    } else {
        Credential::PersonalAccessToken(g.personal_access_token.clone())
    };
    let mut c = GotoClientConfig::new(g.client_id.clone(), g.client_secret.clone(), credential);
    if uses_refresh_token {
        c.refresh_token_file = g.refresh_token_file.clone();
    }
    c.api_base_url = g.api_base_url.clone();
    c.auth_base_url = g.auth_base_url.clone();
    c.requests_per_second_per_api = g.requests_per_second;
    c.websocket_channel_type = if config.channel.websocket_type == "WebSocket" {
        WebSocketTypeSpelling::WebSocket
    } else {
        WebSocketTypeSpelling::WebSockets
    };
    GotoClient::new(c)
}

/// Checks (and creates) the topics, waiting with backoff while Kafka cannot be reached; what
/// waiting cannot fix (a missing topic with creation off, partition counts that differ, a
/// refused creation, bad credentials) stops start-up with its fix.
async fn topics_when_kafka_answers(config: &BridgeConfig) -> Result<TopicLayout, AppError> {
    let mut pause = Duration::from_millis(500);
    loop {
        // librdkafka's metadata calls block (up to 10 s each): off the runtime's workers, which
        // serve `/healthz` meanwhile.
        let kafka = config.kafka.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(ensure_topics(&kafka))
        })
        .await;
        let checked = match attempt {
            Ok(checked) => checked,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match checked {
            Ok(layout) => return Ok(layout),
            Err(e) if e.is_transient() => {
                metrics::gauge!("callbridge_kafka_reachable").set(0.0);
                tracing::warn!(error = %e, retry_in = ?pause, "kafka cannot be reached at start-up; waiting for it");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn bind(pre: Option<TcpListener>, addr: SocketAddr) -> Result<TcpListener, AppError> {
    match pre {
        Some(l) => Ok(l),
        None => TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source }),
    }
}

/// Starts everything; returns once the bridge is up (channel set up, sequencer started).
pub async fn start(config: BridgeConfig, listeners: Listeners) -> Result<RunningBridge, AppError> {
    let mut bridge = launch(config, listeners).await?;
    bridge.started().await?;
    Ok(bridge)
}

/// Starts everything and returns at once, before the channel is up: [`RunningBridge::started`]
/// waits for that. Split so that `run` can take a SIGTERM while the channel is still being set
/// up, which can last as long as GoTo is unreachable.
async fn launch(config: BridgeConfig, listeners: Listeners) -> Result<RunningBridge, AppError> {
    // The recorder first: a task that takes a metric handle before it exists (the back-fill
    // worker's queue gauge) would keep a no-op handle for good.
    crate::ops::prometheus();
    let client = goto_client(&config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_servers, stop_servers_rx) = watch::channel(false);
    let (channel_tx, channel_rx) = watch::channel(ChannelState::Starting);
    let mut tasks = Vec::new();
    let mut servers = Vec::new();
    let readiness = Readiness::new(channel_rx.clone());
    if config.channel.kind == ChannelKind::Webhook {
        readiness.expect_webhook_listener();
    }

    // The admin server first: while Kafka is unreachable at start-up, `/healthz` says the
    // process is alive and `/readyz` says why it is not ready, instead of a crash loop whose
    // back-off outlasts the outage.
    let admin_listener = bind(listeners.admin, config.admin.listen).await?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| AppError::Bind {
            addr: config.admin.listen,
            source,
        })?;
    servers.push(tokio::spawn(ops::serve(
        admin_listener,
        readiness.clone(),
        stop_servers_rx.clone(),
    )));
    let layout = topics_when_kafka_answers(&config).await?;
    tracing::info!(partitions = layout.partitions, "kafka topics ready");
    let mut ingest = Ingest::new(RawWriter::new(&config.kafka)?);
    if config.webhook.answer == WebhookAnswer::OnReceipt {
        ingest = ingest.answering_on_receipt(config.webhook.on_receipt_limit);
    }

    let member = member_name();
    let shell_config = ShellConfig {
        kafka: config.kafka.clone(),
        sequencer: config.sequencer.clone(),
        checkpoint_interval: config.sequencer_io.checkpoint_interval,
        takeover_timeout: config.sequencer_io.takeover_timeout,
        backfill_concurrency: config.sequencer_io.backfill_concurrency,
        member: member.clone(),
        session_timeout: config.sequencer_io.session_timeout,
    };
    let sequencer_handle = shell::spawn(
        shell_config,
        Arc::new(client.clone()),
        tokio::runtime::Handle::current(),
    );
    let sequencer = sequencer_handle.stats.clone();
    readiness.set_sequencer(sequencer.clone());
    tasks.push(tokio::spawn(watch_kafka(
        ingest.clone(),
        readiness.clone(),
        stop_rx.clone(),
    )));

    let mut webhook_addr = None;
    if config.channel.kind == ChannelKind::Webhook {
        // Every replica serves webhooks, owner or not: GoTo posts to the Service.
        let listener = bind(listeners.webhook, config.webhook.listen).await?;
        readiness.set_webhook_listening();
        webhook_addr = listener.local_addr().ok();
        let router = webhook::router(
            ingest.clone(),
            &config.webhook.path_prefix,
            config.webhook.secret.clone(),
        );
        let mut stop = stop_servers_rx.clone();
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.changed().await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "webhook server failed");
            }
        }));
    }

    // One sweeper for the process: outage windows from every source are merged and each call
    // is fetched once (see channel::sweep).
    let sweeper = ReportSweeper::spawn(
        client.clone(),
        ingest.clone(),
        config.goto.account_keys.clone(),
        config.channel.report_sweep_delay,
        stop_rx.clone(),
    );
    sweeper.set_sequencer_retention(config.sequencer.closed_retention);
    tasks.push(tokio::spawn(sweep_unwritten_windows(
        ingest.clone(),
        sweeper.clone(),
        stop_rx.clone(),
    )));

    let discovery = sweeper.activity();
    let election =
        ChannelElection::start(&config.kafka, &member, config.channel.owner_session_timeout)?;
    let role = election.role();
    let duty = ChannelDuty {
        client: client.clone(),
        ingest: ingest.clone(),
        channel: config.channel.clone(),
        webhook: config.webhook.clone(),
        account_keys: config.goto.account_keys.clone(),
        events: config.goto.events.clone(),
        sweeper,
    };
    // GoTo checks a webhook URL when the channel is created: not before the URL reaches a
    // replica (see `ops::after_webhook_route`).
    tasks.push(tokio::spawn(ops::after_webhook_route(
        config.channel.kind,
        config.webhook.clone(),
        stop_rx.clone(),
        channel::duty::follow_election(duty, election.role(), channel_tx, stop_rx.clone()),
    )));
    Ok(RunningBridge {
        webhook_addr,
        admin_addr,
        channel: channel_rx,
        sequencer,
        discovery,
        stop: stop_tx,
        tasks,
        servers,
        stop_servers,
        sequencer_handle: Some(sequencer_handle),
        role,
        election: Some(election),
        ingest,
        readiness,
        drain_timeout: config.shutdown.timeout,
    })
}

/// Every 5 s: windows in which this replica could not write notifications to Kafka, now over,
/// are swept from GoTo's report summaries (calls wholly inside them left nothing in raw). Every
/// replica does this for its own ingest, owner or not (webhooks reach any replica).
async fn sweep_unwritten_windows(
    ingest: Ingest,
    sweeper: ReportSweeper,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        for window in ingest.take_unwritten_windows() {
            tracing::warn!(
                seconds = window
                    .1
                    .duration_since(window.0)
                    .unwrap_or_default()
                    .as_secs(),
                "notifications could not be written for a while; sweeping GoTo's reports for it"
            );
            sweeper.request(window);
        }
    }
}

/// Every 2 s: is Kafka reachable (for `/readyz` and `/readyz/traffic`), and how deep is ingest's producer queue.
async fn watch_kafka(ingest: Ingest, readiness: Readiness, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let writer = ingest.writer().clone();
        metrics::gauge!("callbridge_kafka_producer_queue_depth").set(f64::from(writer.in_flight()));
        metrics::gauge!("callbridge_webhook_answered_unacknowledged")
            .set(ingest.answered_unacknowledged() as f64);
        let ok =
            tokio::task::spawn_blocking(move || writer.kafka_reachable(Duration::from_secs(2)))
                .await
                .unwrap_or(false);
        readiness.set_kafka_reachable(ok);
        ingest.end_quiet_window(ok);
    }
}

fn member_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "callbridge".into());
    format!("{host}/{}", std::process::id())
}

impl RunningBridge {
    /// Waits until this replica knows its role and, as the owner, has the channel up; fails
    /// when the channel failed for good (a missing scope or bad credentials: the error gives the
    /// fix).
    pub async fn started(&mut self) -> Result<(), AppError> {
        let mut state = self.channel.clone();
        loop {
            let r = *self.role.borrow_and_update();
            let c = state.borrow_and_update().clone();
            match (r, c) {
                (Role::Standby, _) | (Role::Owner, ChannelState::Ready(_)) => return Ok(()),
                (Role::Owner, ChannelState::Failed(e)) => {
                    return Err(AppError::Channel(channel::ChannelError::Goto {
                        context: "setting up the notification channel",
                        source: GotoError::Config { detail: e },
                    }))
                }
                _ => {}
            }
            tokio::select! {
                changed = self.role.changed() => if changed.is_err() { return Ok(()) },
                changed = state.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }

    /// Stops in order: not ready, channel duty and background tasks, hand the channel over,
    /// drain the sequencer, then no new webhooks, and flush what was accepted.
    ///
    /// The webhook server goes last: `/readyz/traffic` turns 503 at once, but endpoints and
    /// ingress controllers take seconds to stop routing to this pod (and a Service that
    /// publishes not-ready addresses never stops). Refusing POSTs while the rest drains would
    /// cost each one a retry, or a back-fill; answering costs nothing, since what this replica
    /// writes to raw now is sequenced by the partition's next owner.
    pub async fn shutdown(mut self) {
        // One deadline for the whole sequence, so it fits terminationGracePeriodSeconds. What
        // does not finish in time is not lost: it is either not yet acknowledged to GoTo
        // (retried, then back-filled) or re-derived from Kafka by the next owner.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // Kept for the webhooks' last answers and the final flush.
        let reserve = (self.drain_timeout / 5).min(FLUSH_RESERVE);
        let before_reserve = || left().saturating_sub(reserve);
        self.readiness.set_draining();
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(before_reserve(), t).await;
        }
        // Hand the channel over early: the next owner can set it up while this one drains.
        if let Some(e) = self.election.take() {
            let _ = tokio::time::timeout(
                before_reserve(),
                tokio::task::spawn_blocking(move || e.shutdown()),
            )
            .await;
        }
        if let Some(h) = self.sequencer_handle.take() {
            let _ = tokio::time::timeout(
                before_reserve(),
                tokio::task::spawn_blocking(move || h.shutdown()),
            )
            .await;
        }
        // Requests in progress are answered; new connections are refused from here on. (The
        // admin server stops with it: `/readyz` says 503 and `/metrics` answers to the end.)
        let _ = self.stop_servers.send(true);
        for server in self.servers.drain(..) {
            let _ = tokio::time::timeout(left(), server).await;
        }
        let writer = self.ingest.writer().clone();
        let flush_for = left();
        let flushing = writer.clone();
        let _ = tokio::time::timeout(
            left(),
            tokio::task::spawn_blocking(move || flushing.flush(flush_for)),
        )
        .await;
        // Dropping the producer discards what Kafka has not acknowledged: states answered on
        // receipt (left to back-fill) or dead letters GoTo was answered 503 for. Say how many.
        let unacknowledged = writer.unacknowledged();
        if unacknowledged > 0 {
            tracing::error!(
                records = unacknowledged,
                "shutdown: records Kafka had not acknowledged are dropped with the producer; states among them are back-filled by the sequencer"
            );
        }
        if left().is_zero() {
            tracing::warn!(timeout = ?self.drain_timeout, "shutdown did not finish within shutdown.timeout");
        }
    }
}

/// `callbridge run`: starts, waits for `shutdown`, stops.
///
/// `shutdown` is watched from the first moment, start-up included: in a container the process
/// is PID 1, which the kernel gives no default action for SIGTERM, so a signal that arrives
/// before a handler exists is ignored, and a pod whose owner waits for an unreachable GoTo
/// would sit out its grace period and be killed without leaving its consumer groups.
pub async fn run(config: BridgeConfig, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    run_on(config, Listeners::default(), shutdown).await
}

/// [`run`] on pre-bound listeners.
pub async fn run_on(
    config: BridgeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    tokio::pin!(shutdown);
    let mut bridge = tokio::select! {
        launched = launch(config, listeners) => launched?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested while checking Kafka's topics; stopping");
            return Ok(());
        }
    };
    let started = tokio::select! {
        started = bridge.started() => Some(started),
        () = &mut shutdown => None,
    };
    match started {
        Some(Ok(())) => {
            tracing::info!(webhook = ?bridge.webhook_addr, admin = %bridge.admin_addr, "callbridge running");
            shutdown.await;
            tracing::info!("shutting down");
        }
        Some(Err(e)) => {
            // Leave the consumer groups and the election cleanly before reporting the fix.
            bridge.shutdown().await;
            return Err(e);
        }
        None => tracing::info!(
            channel = ?*bridge.channel.borrow(),
            "shutdown requested before start-up finished; shutting down"
        ),
    }
    bridge.shutdown().await;
    Ok(())
}
