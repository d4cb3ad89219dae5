//! Operations endpoints on the admin port: `/metrics`, `/healthz`, `/readyz`.
//!
//! Kept off the webhook port so the public surface is only the webhook path.

use crate::channel::ChannelState;
use crate::sequencer::shell::ShellStats;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often histogram samples are folded into their summaries when nobody scrapes.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once; later calls share it).
///
/// The exporter keeps every histogram sample until a scrape or an upkeep folds it in, and
/// `build_recorder` (unlike `install`) runs no upkeep: without a scrape, each state's latency
/// samples stayed in memory for good (the bench's memory phase saw ~150 bytes per state; RSS
/// grew with traffic, not with open calls). A thread runs the upkeep on the exporter's own
/// default period.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests): then this handle only renders ours.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(METRICS_UPKEEP);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started: histogram samples are kept until /metrics is scraped");
        }
        handle
    })
}

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    channel: watch::Receiver<ChannelState>,
    sequencer: Arc<Mutex<Option<Arc<ShellStats>>>>,
    draining: Arc<AtomicBool>,
    kafka: Arc<AtomicBool>,
}

impl Readiness {
    /// Readiness over the channel's state.
    pub fn new(channel: watch::Receiver<ChannelState>) -> Self {
        Self {
            channel,
            sequencer: Arc::new(Mutex::new(None)),
            draining: Arc::new(AtomicBool::new(false)),
            kafka: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records the latest Kafka reachability check.
    pub fn set_kafka_reachable(&self, ok: bool) {
        self.kafka.store(ok, Ordering::SeqCst);
        metrics::gauge!("callbridge_kafka_reachable").set(if ok { 1.0 } else { 0.0 });
    }

    /// Adds the sequencer's counters (partitions owned).
    pub fn set_sequencer(&self, stats: Arc<ShellStats>) {
        if let Ok(mut s) = self.sequencer.lock() {
            *s = Some(stats);
        }
    }

    /// Shutdown started: not ready any more, so the load balancer stops sending.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn report(&self) -> (bool, serde_json::Value) {
        let channel = self.channel.borrow().clone();
        // A standby replica does not hold the channel, yet serves webhooks and its partitions.
        let channel_ok = matches!(channel, ChannelState::Ready(_) | ChannelState::Standby);
        let (joined, partitions) = self
            .sequencer
            .lock()
            .ok()
            .and_then(|s| {
                s.as_ref().map(|s| {
                    (
                        s.group_joined.load(Ordering::SeqCst),
                        s.partitions_owned.load(Ordering::Relaxed),
                    )
                })
            })
            .unwrap_or((false, 0));
        let kafka_ok = self.kafka.load(Ordering::SeqCst);
        let draining = self.draining.load(Ordering::SeqCst);
        let ok = channel_ok && kafka_ok && joined && !draining;
        let body = json!({
            "ready": ok,
            "checks": {
                "kafka": {"ok": kafka_ok},
                "channel": {"ok": channel_ok, "state": format!("{channel:?}")},
                "sequencer": {"ok": joined, "partitions_owned": partitions},
                "shutdown": {"ok": !draining},
            }
        });
        (ok, body)
    }
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    let (ok, body) = r.report();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// A consumer loop that has not turned for this long is stuck (a takeover phase is bounded by
/// `sequencer_io.takeover_timeout`, 30 s by default, and runs for all partitions at once).
const STUCK_AFTER_MS: u64 = 90_000;

/// Alive when the process answers and the sequencer's loop is turning (a restart is the fix for
/// a stuck loop, which is what a failing liveness probe triggers).
async fn healthz(State(r): State<Readiness>) -> impl IntoResponse {
    let heartbeat = r
        .sequencer
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| s.heartbeat_ms.load(Ordering::Relaxed)))
        .unwrap_or(0);
    let now = crate::sequencer::shell::runner::epoch_ms();
    // 0: the loop has not started yet (start-up), which is not a failure.
    let since = if heartbeat == 0 {
        0
    } else {
        now.saturating_sub(heartbeat)
    };
    let alive = since < STUCK_AFTER_MS;
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "alive": alive,
            "checks": {"sequencer_loop": {"ok": alive, "last_turn_ms_ago": since}}
        })),
    )
}

async fn metrics_text(State(r): State<Readiness>) -> impl IntoResponse {
    let (ready, _) = r.report();
    let channel_ready = matches!(*r.channel.borrow(), ChannelState::Ready(_));
    metrics::gauge!("callbridge_channel_ready").set(if channel_ready { 1.0 } else { 0.0 });
    metrics::gauge!("callbridge_ready").set(if ready { 1.0 } else { 0.0 });
    prometheus().render()
}

/// Serves the admin endpoints until `stop` turns true.
pub async fn serve(listener: TcpListener, readiness: Readiness, mut stop: watch::Receiver<bool>) {
    prometheus();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(readiness);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}
