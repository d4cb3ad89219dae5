//! What stands in front of every GoTo API route: rate limit, injected REST faults, statistics.
//!
//! GoTo limits each API separately (10 requests/second by default) and answers 429 beyond; the
//! bridge must back off. This layer applies that limit, injects random 429/5xx answers when the
//! faults say so, and counts every answer per API and status so tests can prove the bridge
//! stayed within its budget. The control endpoint and WebSocket upgrades are not GoTo APIs and
//! pass straight through.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::errors::{Api, ApiError};
use super::ground_truth::fault;
use super::state::Sim;

fn too_many(sim: &Sim, api: Api) -> Response {
    let mut r = ApiError::too_many(api).into_response();
    if let Some(secs) = sim.config.rate_limit.retry_after_seconds {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The middleware.
pub async fn guard(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let Some(api) = Api::of_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let admission = sim.world().rate.check(
        api,
        sim.config.rate_limit.requests_per_second,
        Instant::now(),
    );
    let response = if !admission.admitted {
        too_many(&sim, api)
    } else {
        let (inject_429, inject_5xx) = {
            let mut f = sim.faults();
            let c = f.config().clone();
            (f.roll(c.rest_429_rate), f.roll(c.rest_5xx_rate))
        };
        if inject_429 {
            sim.world().ground_truth.count_fault(fault::REST_429);
            too_many(&sim, api)
        } else if inject_5xx {
            sim.world().ground_truth.count_fault(fault::REST_5XX);
            ApiError::new(
                api,
                StatusCode::SERVICE_UNAVAILABLE,
                "UNKNOWN_ERROR",
                "Service temporarily unavailable",
            )
            .into_response()
        } else {
            next.run(req).await
        }
    };
    sim.world().stats.record_request(
        api.name(),
        response.status().as_u16(),
        admission.seen_in_window,
    );
    response
}
