//! Start-up gate of webhook mode: wait until the public webhook URL reaches a replica.
//!
//! GoTo verifies a webhook URL (an OPTIONS, or a GET) when the channel is created and refuses the
//! channel when that check fails. Behind a Kubernetes Service that routes only to ready pods, the
//! first pod of a fresh install is reachable only once its readiness probe passed and the ingress
//! controller picked up the endpoint, a few seconds after the process listens; the channel owner
//! may get there first. So before taking part in the channel election, a webhook replica sends
//! GoTo's check itself to `webhook.public_url` and waits for a 2xx (from itself or any other
//! replica), within [`WEBHOOK_ROUTE_WAIT`]. When the URL cannot be reached from inside (a network
//! policy, split DNS), the wait ends at that bound with a warning and start-up goes on as before.

use crate::config::bridge::{ChannelKind, WebhookSettings};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest wait for the public webhook URL at start-up.
pub const WEBHOOK_ROUTE_WAIT: Duration = Duration::from_secs(30);

/// Between two checks.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// One check's time limit.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `duty` (the channel duty: `channel::duty::follow_election`) once
/// [`wait_for_webhook_route`] returned, unless `stop` turns true first (then `duty` never runs).
pub async fn after_webhook_route(
    kind: ChannelKind,
    webhook: WebhookSettings,
    mut stop: watch::Receiver<bool>,
    duty: impl Future<Output = ()>,
) {
    tokio::select! {
        _ = wait_for_webhook_route(kind, &webhook) => {}
        _ = stop.wait_for(|stopped| *stopped) => return,
    }
    duty.await
}

/// Webhook mode: returns once `{webhook.public_url}/{secret}` answers an OPTIONS with a 2xx, or
/// after [`WEBHOOK_ROUTE_WAIT`] (logged as a warning); `true` when it answered. WebSocket mode:
/// returns `true` at once.
pub async fn wait_for_webhook_route(kind: ChannelKind, webhook: &WebhookSettings) -> bool {
    if kind != ChannelKind::Webhook {
        return true;
    }
    let url = format!(
        "{}/{}",
        webhook.public_url.trim_end_matches('/'),
        webhook.secret.expose()
    );
    let public_url = webhook.public_url.as_str();
    match wait_for_url(&url, WEBHOOK_ROUTE_WAIT, RETRY_EVERY).await {
        Ok(waited) => {
            tracing::info!(
                public_url,
                waited_ms = waited.as_millis() as u64,
                "the public webhook URL answers; setting up the channel"
            );
            true
        }
        Err(last) => {
            tracing::warn!(
                public_url,
                last_answer = %last,
                waited = ?WEBHOOK_ROUTE_WAIT,
                "the public webhook URL did not answer from inside; going on (GoTo's check of the URL at channel creation may fail: allow egress to the public webhook host, or check the ingress)"
            );
            false
        }
    }
}

/// Sends OPTIONS to `url` every `every` until a 2xx, for at most `bound`; the time it took, or
/// the last answer (never the URL: it carries the webhook secret).
pub(crate) async fn wait_for_url(
    url: &str,
    bound: Duration,
    every: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let http = match reqwest::Client::builder().timeout(CHECK_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return Err(format!("no HTTP client: {}", e.without_url())),
    };
    loop {
        let last = match http.request(reqwest::Method::OPTIONS, url).send().await {
            Ok(r) if r.status().is_success() => return Ok(started.elapsed()),
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) => e.without_url().to_string(),
        };
        if started.elapsed() + every > bound {
            return Err(last);
        }
        tokio::time::sleep(every).await;
    }
}
