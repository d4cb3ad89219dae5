//! The control surface: `/_simulator/…` over HTTP and [`SimulatorControl`] in process.
//!
//! Tests, the demo and staging users drive the simulator the same way (faults, traffic, ground
//! truth, targeted disruptions), so both surfaces are thin wrappers over the same functions and
//! cannot drift apart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use super::actions;
use super::errors::SimulatorError;
use super::faults::FaultsConfig;
use super::ground_truth::GroundTruth;
use super::scheduler::{self, TrafficStatus};
use super::state::Sim;
use super::stats::Stats;

/// In-process twin of the control endpoint. Cheap to clone.
#[derive(Clone)]
pub struct SimulatorControl {
    sim: Arc<Sim>,
}

impl std::fmt::Debug for SimulatorControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorControl")
            .field("base_url", &self.sim.base_url)
            .finish()
    }
}

impl SimulatorControl {
    pub(crate) fn new(sim: Arc<Sim>) -> Self {
        Self { sim }
    }

    /// Current fault settings.
    pub fn faults(&self) -> FaultsConfig {
        self.sim.faults().config().clone()
    }

    /// Replace all fault settings.
    pub fn set_faults(&self, faults: FaultsConfig) -> Result<(), SimulatorError> {
        faults.validate().map_err(SimulatorError::Control)?;
        self.sim.faults().set(faults);
        self.sim.faults_changed.notify_waiters();
        Ok(())
    }

    /// Change only the fault settings named in `patch` (a JSON object; durations as "2s").
    pub fn patch_faults(&self, patch: &serde_json::Value) -> Result<FaultsConfig, SimulatorError> {
        let patched = self
            .sim
            .faults()
            .patch(patch)
            .map_err(SimulatorError::Control);
        self.sim.faults_changed.notify_waiters();
        patched
    }

    /// Start traffic (no-op when running).
    pub fn start_traffic(&self) {
        scheduler::start(&self.sim);
    }

    /// Stop starting new calls; open calls play to their end.
    pub fn stop_traffic(&self) {
        scheduler::stop(&self.sim);
    }

    /// Traffic counters.
    pub fn traffic_status(&self) -> TrafficStatus {
        scheduler::status(&self.sim)
    }

    /// Wait until traffic is done (see [`TrafficStatus::done`]) or `timeout` passes; returns the
    /// last status either way.
    pub async fn wait_until_done(&self, timeout: Duration) -> TrafficStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.sim.progress.notified();
            let status = self.traffic_status();
            if status.done || tokio::time::Instant::now() >= deadline {
                return status;
            }
            // The notify wakes us early; the short poll covers a wake-up raced before we waited.
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    /// A snapshot of the ground truth.
    pub fn ground_truth(&self) -> GroundTruth {
        let retention = self.sim.faults().config().retention;
        self.sim.world().ground_truth.snapshot(retention)
    }

    /// Write the ground truth to `ground_truth_path`; returns the path, None when not configured.
    pub fn flush_ground_truth(&self) -> Result<Option<PathBuf>, SimulatorError> {
        write_ground_truth(&self.sim)
    }

    /// Ids of the channels that exist now.
    pub fn channel_ids(&self) -> Vec<String> {
        self.sim.world().channels.keys().cloned().collect()
    }

    /// Ids of every channel created so far, in creation order, including those deleted or
    /// expired since.
    pub fn created_channel_ids(&self) -> Vec<String> {
        self.sim.world().created_channels.clone()
    }

    /// Invalidate every access token.
    pub fn revoke_tokens(&self) {
        actions::revoke_tokens(&self.sim);
    }

    /// Delete a channel; false when unknown.
    pub fn delete_channel(&self, channel_id: &str) -> bool {
        actions::delete_channel(&self.sim, channel_id)
    }

    /// Send `WEBSOCKET_TO_BE_CLOSED` then close; false when no socket is connected.
    pub fn send_to_be_closed(&self, channel_id: &str) -> bool {
        actions::to_be_closed(&self.sim, channel_id)
    }

    /// Cut a channel's socket without a close frame; false when none is connected.
    pub fn disconnect_socket(&self, channel_id: &str) -> bool {
        actions::disconnect(&self.sim, channel_id)
    }

    /// Makes a state GoTo "has" but did not deliver known to the REST API, so back-fill can
    /// return it. The benchmark's load generator POSTs states itself and registers here the ones
    /// it withholds (its injected drops); the call is created on first use and counts as ended
    /// (never listed among active calls).
    pub fn record_withheld_state(
        &self,
        conversation_space_id: &str,
        account_key: &str,
        metadata: &serde_json::Value,
        sequence_number: u64,
        state: serde_json::Value,
    ) {
        let mut world = self.sim.world();
        let truth = &mut world.ground_truth;
        if truth.call(conversation_space_id).is_none() {
            truth.start_call(
                u64::MAX,
                conversation_space_id,
                account_key,
                metadata.clone(),
            );
            truth.end_call(conversation_space_id, super::state::wall_ms());
        }
        let text = |k: &str| {
            state
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let record = super::ground_truth::StateRecord {
            sequence_number,
            state_id: text("id"),
            state_type: text("type"),
            emitted_at: super::state::iso_now(),
            emitted_instant: Some(tokio::time::Instant::now()),
            dropped: true,
            unrecoverable: false,
            duplicated: 0,
            duplicated_new_id: 0,
            delay_ms: None,
            burst_held_ms: None,
            subscribed_channels: Vec::new(),
            deliveries: Default::default(),
            state,
        };
        truth.record_state(conversation_space_id, record);
    }

    /// Request and delivery counters.
    pub fn stats(&self) -> Stats {
        self.sim.world().stats.clone()
    }
}

/// Write the ground truth file if configured (write to a temp file, then rename).
pub fn write_ground_truth(sim: &Sim) -> Result<Option<PathBuf>, SimulatorError> {
    let Some(path) = sim.config.ground_truth_path.clone() else {
        return Ok(None);
    };
    let retention = sim.faults().config().retention;
    let snapshot = sim.world().ground_truth.snapshot(retention);
    let io = |source| SimulatorError::GroundTruthWrite {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(&snapshot).map_err(|e| io(e.into()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(Some(path))
}

fn done_or_404(found: bool) -> Response {
    if found {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such channel (or no socket connected)"})),
        )
            .into_response()
    }
}

type S = State<Arc<Sim>>;

async fn get_faults(State(sim): S) -> Response {
    Json(SimulatorControl::new(sim).faults()).into_response()
}

async fn patch_faults(State(sim): S, body: Bytes) -> Response {
    let patch: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    };
    match SimulatorControl::new(sim).patch_faults(&patch) {
        Ok(f) => Json(f).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn traffic(State(sim): S) -> Response {
    Json(scheduler::status(&sim)).into_response()
}

async fn traffic_start(State(sim): S) -> Response {
    scheduler::start(&sim);
    Json(scheduler::status(&sim)).into_response()
}

async fn traffic_stop(State(sim): S) -> Response {
    scheduler::stop(&sim);
    Json(scheduler::status(&sim)).into_response()
}

async fn ground_truth(State(sim): S) -> Response {
    Json(SimulatorControl::new(sim).ground_truth()).into_response()
}

async fn flush(State(sim): S) -> Response {
    match write_ground_truth(&sim) {
        Ok(path) => Json(json!({"written": path})).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn revoke(State(sim): S) -> Response {
    actions::revoke_tokens(&sim);
    StatusCode::NO_CONTENT.into_response()
}

async fn to_be_closed(State(sim): S, Path(id): Path<String>) -> Response {
    done_or_404(actions::to_be_closed(&sim, &id))
}

async fn disconnect(State(sim): S, Path(id): Path<String>) -> Response {
    done_or_404(actions::disconnect(&sim, &id))
}

async fn delete_channel(State(sim): S, Path(id): Path<String>) -> Response {
    done_or_404(actions::delete_channel(&sim, &id))
}

async fn stats(State(sim): S) -> Response {
    Json(sim.world().stats.clone()).into_response()
}

/// The `/_simulator` routes.
pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/_simulator/faults", get(get_faults).patch(patch_faults))
        .route("/_simulator/traffic", get(traffic))
        .route("/_simulator/traffic/start", post(traffic_start))
        .route("/_simulator/traffic/stop", post(traffic_stop))
        .route("/_simulator/ground-truth", get(ground_truth))
        .route("/_simulator/ground-truth/flush", post(flush))
        .route("/_simulator/tokens/revoke", post(revoke))
        .route("/_simulator/channels/{id}/to-be-closed", post(to_be_closed))
        .route("/_simulator/channels/{id}/disconnect", post(disconnect))
        .route("/_simulator/channels/{id}", delete(delete_channel))
        .route("/_simulator/stats", get(stats))
}
