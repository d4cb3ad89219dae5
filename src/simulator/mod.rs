//! A GoTo Connect you can run locally (`callbridge simulate`).
//!
//! It is the test bed for every other part of callbridge, the engine of `callbridge demo`, and a
//! product feature (rehearse outages in staging). It serves GoTo's OAuth, Notification Channel,
//! Call Events and Call Events Report APIs over real HTTP and WebSocket on one listener, plays
//! deterministic call traffic, injects faults on demand and records the ground truth of what it
//! did. It speaks GoTo's JSON from its own code and never uses the client's types (`crate::goto`),
//! so contract tests running the client against it catch a mismatch on either side.
//!
//! # Layout
//! - [`config`]: every setting; GoTo's unknowns are settings.
//! - `state`: the shared world behind one lock; `errors`: GoTo's error bodies.
//! - `oauth`, `channels`, `websocket`, `call_events`, `reports`: the APIs.
//! - `guard` + `ratelimit` + `stats`: per-API rate limit, injected REST faults, counters.
//! - `scheduler` → `emit` → `delivery`: calls are played, each state's fate is rolled and it
//!   is fanned out to subscribed channels.
//! - [`traffic`]: the deterministic call generator; [`faults`]: knobs and dice.
//! - [`ground_truth`]: what really happened; `lifecycle`: channel expiry and fault schedules;
//!   `actions` + `control`: disruptions on demand and the `/_simulator` endpoint.

mod actions;
mod call_events;
mod channels;
pub mod cli;
pub mod config;
mod control;
mod delivery;
mod emit;
mod errors;
pub mod faults;
pub mod ground_truth;
mod guard;
mod lifecycle;
mod oauth;
mod query;
mod ratelimit;
mod reports;
mod scheduler;
mod state;
mod stats;
pub mod traffic;
mod websocket;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

pub use config::SimulatorConfig;
pub use control::SimulatorControl;
pub use errors::SimulatorError;
pub use faults::FaultsConfig;
pub use ground_truth::GroundTruth;
pub use scheduler::TrafficStatus;
pub use stats::{ListingStats, Stats};

use state::{Sim, World};

/// How long shutdown waits for open HTTP connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A simulator serving on its listener until [`RunningSimulator::shutdown`].
pub struct RunningSimulator {
    addr: SocketAddr,
    sim: Arc<Sim>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for RunningSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSimulator")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RunningSimulator {
    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: base URL of the APIs and of OAuth alike.
    pub fn base_url(&self) -> String {
        self.sim.base_url.clone()
    }

    /// In-process control handle.
    pub fn control(&self) -> SimulatorControl {
        SimulatorControl::new(self.sim.clone())
    }

    /// Stop traffic and every task, close sockets, wait for the server, write the ground truth
    /// file if configured.
    pub async fn shutdown(self) {
        scheduler::stop(&self.sim);
        self.sim.shutdown.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, self.server)
            .await
            .is_err()
        {
            tracing::warn!("simulator server did not stop within the grace period");
        }
        match control::write_ground_truth(&self.sim) {
            Ok(Some(path)) => tracing::info!(path = %path.display(), "ground truth written"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "ground truth not written"),
        }
    }
}

/// Bind, start serving and (with `scheduler.autostart`) start traffic.
pub async fn start(config: SimulatorConfig) -> Result<RunningSimulator, SimulatorError> {
    config.faults.validate().map_err(SimulatorError::Config)?;
    if config.traffic.account_keys.is_empty() {
        return Err(SimulatorError::Config(
            "traffic.account_keys must not be empty".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimulatorError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SimulatorError::Bind {
            addr: config.listen,
            source,
        })?;
    let reachable = if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .user_agent("GoTo Notifications")
        .build()
        .map_err(|e| SimulatorError::Config(format!("HTTP client: {e}")))?;
    let world = World {
        codes: config.auth.authorization_codes.iter().cloned().collect(),
        refresh_tokens: config.auth.refresh_tokens.iter().cloned().collect(),
        ..World::default()
    };
    let sim = Arc::new(Sim {
        base_url: format!("http://{reachable}"),
        world: Mutex::new(world),
        faults: Mutex::new(faults::Faults::new(config.faults.clone())),
        http,
        webhook_slots: Arc::new(Semaphore::new(
            config.delivery.max_concurrent_webhooks.max(1),
        )),
        shutdown: watch::channel(false).0,
        in_flight: AtomicUsize::new(0),
        progress: Notify::new(),
        faults_changed: Notify::new(),
        traffic_wanted: watch::channel(false).0,
        config,
    });
    let app = router(sim.clone());
    let mut stop = sim.shutdown_signal();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
    tokio::spawn(lifecycle::run(sim.clone()));
    if sim.config.scheduler.autostart {
        scheduler::start(&sim);
    }
    tracing::info!(%addr, "GoTo simulator listening");
    Ok(RunningSimulator { addr, sim, server })
}

async fn unknown_route() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"errorCode": "NOT_FOUND", "message": "No such resource"})),
    )
}

fn router(sim: Arc<Sim>) -> Router {
    const CH: &str = "/notification-channel/v1/channels";
    Router::new()
        .route("/oauth/token", post(oauth::token))
        .route(CH, get(channels::list))
        .route(&format!("{CH}/{{nickname}}"), post(channels::create))
        .route(
            &format!("{CH}/{{nickname}}/{{channel_id}}"),
            get(channels::get_one)
                .put(channels::refresh)
                .delete(channels::delete),
        )
        .route(
            &format!("{CH}/{{nickname}}/{{channel_id}}/channel-lifetime"),
            get(channels::get_lifetime).put(channels::extend_lifetime),
        )
        .route("/notification-channel/v1/ws/{key}", get(websocket::connect))
        .route(
            "/call-events/v1/subscriptions",
            post(call_events::subscribe)
                .get(call_events::list_subscriptions)
                .delete(call_events::unsubscribe),
        )
        .route(
            "/call-events/v1/conversation-spaces",
            get(call_events::active_calls),
        )
        .route(
            "/call-events/v1/conversation-spaces/{id}/events",
            get(call_events::backfill),
        )
        .route(
            "/call-events-report/v1/reports/{id}",
            get(reports::get_report),
        )
        .route(
            "/call-events-report/v1/report-summaries",
            get(reports::summaries),
        )
        .route(
            "/call-events-report/v1/subscriptions",
            post(reports::subscribe)
                .get(reports::list_subscriptions)
                .delete(reports::unsubscribe),
        )
        .merge(control::routes())
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            guard::guard,
        ))
        .with_state(sim)
}
