//! Catch-up after an outage of the notification channel.
//!
//! While a WebSocket is down or a webhook channel is gone, GoTo delivers nothing. A call that had
//! at least one state delivered before or after the outage heals by itself (the sequencer sees
//! the gap and back-fills it); a call whose every state so far fell into the outage would be
//! invisible. So after every (re)connect and every channel recreation, callbridge lists the
//! active calls of its accounts and writes each one's last state into the raw topic like a
//! received notification: the sequencer then treats it as "first seen at k" and back-fills 1..k-1.
//! Duplicates of what was already seen are dropped by the sequencer as usual.
//!
//! A call that started AND ended entirely inside an outage is no longer active: the report sweep
//! finds those. Reports appear only once a call has ended (GoTo: minutes later), so after the
//! channel is back the sweep waits `channel.report_sweep_delay`, lists the report summaries of
//! calls created during the outage, fetches each one's states from the back-fill endpoint and
//! writes them to raw (one request per call in the window; calls the bridge already has are
//! dropped by the sequencer as duplicates). A replica that just became the channel owner does not
//! know when its predecessor lost the channel and sweeps the last `channel.report_sweep_lookback`.

use crate::goto::{ConversationEvents, GotoClient};
use crate::ingest::{Accepted, Ingest, Transport};
use std::time::{Duration, SystemTime};

/// Attempts per step of a catch-up or sweep (listing, one call's states, one raw write): a
/// catch-up that gives up on the first 429 or revoked token leaves a call that nobody else knows
/// about invisible for good (a CI run of the WebSocket fault suite lost two whole calls that way).
const ATTEMPTS: u32 = 6;
/// First pause between attempts; doubles each time (0.5 + 1 + 2 + 4 + 8 s in all).
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// Runs `step` until it succeeds or [`ATTEMPTS`] ran out, pausing with doubling backoff; each
/// failure is logged with `what`. Returns the last error when every attempt failed.
async fn retried<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut step: impl FnMut() -> F,
) -> Result<T, E> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// Writes one catch-up or sweep body to raw, retried (Kafka may be restarting).
async fn write_raw(ingest: &Ingest, body: &[u8], what: &str) -> bool {
    match retried(what, || ingest.accept(body, Transport::Catchup)).await {
        Ok(Accepted::Raw) => true,
        Ok(other) => {
            tracing::debug!(?other, "{what}: not routed to raw");
            false
        }
        Err(e) => {
            metrics::counter!("callbridge_catchup_failures_total").increment(1);
            tracing::error!(error = %e, "{what} failed for good; back-fill is the only way left");
            false
        }
    }
}

/// Lists the active calls of `account_keys` and writes their last states to the raw topic.
/// Returns how many were written. Each step is retried a few times; what still fails is logged
/// and counted (`callbridge_catchup_failures_total`): catch-up sits on top of back-fill.
pub async fn catch_up(client: &GotoClient, ingest: &Ingest, account_keys: &[String]) -> usize {
    let items = match retried("catch-up: listing active calls", || {
        client.active_conversations(account_keys)
    })
    .await
    {
        Ok(items) => items,
        Err(e) => {
            metrics::counter!("callbridge_catchup_failures_total").increment(1);
            tracing::error!(error = %e, "catch-up: listing active calls failed for good");
            return 0;
        }
    };
    let mut written = 0;
    for item in items {
        if write_raw(
            ingest,
            item.get().as_bytes(),
            "catch-up: writing an active call",
        )
        .await
        {
            written += 1;
        }
    }
    metrics::counter!("callbridge_catchup_states_total").increment(written as u64);
    tracing::info!(active_calls = written, "catch-up after (re)connect");
    written
}

/// Margin around an outage window: clocks differ, and GoTo stamps `callCreated` itself.
const SWEEP_MARGIN: Duration = Duration::from_secs(10);

/// Writes every state of every call created in `[from, to]` (and ended by now) to raw, from the
/// report summaries and the back-fill endpoint. Returns the number of calls found. Every step is
/// retried like [`catch_up`]'s.
pub async fn sweep_reports(
    client: &GotoClient,
    ingest: &Ingest,
    account_keys: &[String],
    from: SystemTime,
    to: SystemTime,
) -> usize {
    let (from, to) = (from - SWEEP_MARGIN, to + SWEEP_MARGIN);
    let mut calls = 0;
    let mut written = 0u64;
    for account in account_keys {
        let summaries = match retried("report sweep: listing report summaries", || {
            client.report_summaries(account, from, to)
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("callbridge_catchup_failures_total").increment(1);
                tracing::error!(error = %e, account = %account, "report sweep: listing report summaries failed for good");
                continue;
            }
        };
        for summary in summaries {
            let Some(id) = conversation_id(summary.get()) else {
                continue;
            };
            calls += 1;
            match retried("report sweep: fetching a call's states", || {
                client.conversation_events(&id, None, None)
            })
            .await
            {
                Ok(ConversationEvents::Found(states)) => {
                    for s in states {
                        let body = notification(&id, s.metadata.as_deref(), &s.state);
                        if write_raw(ingest, body.as_bytes(), "report sweep: writing a state").await
                        {
                            written += 1;
                        }
                    }
                }
                Ok(ConversationEvents::NotFound) => {}
                Err(e) => {
                    metrics::counter!("callbridge_catchup_failures_total").increment(1);
                    tracing::error!(error = %e, conversation = %id, "report sweep: fetching a call's states failed for good")
                }
            }
        }
    }
    metrics::counter!("callbridge_report_sweep_states_total").increment(written);
    tracing::info!(calls, states = written, "report sweep of an outage window");
    calls
}

/// Runs [`sweep_reports`] for `[from, to]` after `delay` (reports appear once calls end), unless
/// `stop` turns true first.
pub fn spawn_sweep(
    client: GotoClient,
    ingest: Ingest,
    account_keys: Vec<String>,
    window: (SystemTime, SystemTime),
    delay: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        // A sweep cut short by shutdown ends with the process anyway; stopping here also lets
        // the producer it holds go when the bridge stops inside a longer-lived process (demo).
        tokio::select! {
            _ = sweep_reports(&client, &ingest, &account_keys, window.0, window.1) => {}
            _ = stop.changed() => {}
        }
    });
}

fn conversation_id(summary: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Summary {
        conversation_space_id: String,
    }
    serde_json::from_str::<Summary>(summary)
        .ok()
        .map(|s| s.conversation_space_id)
        .filter(|id| !id.is_empty())
}

/// A back-filled state as the notification GoTo would have sent (metadata synthesised from the
/// id when the back-fill answer carried none).
fn notification(
    id: &str,
    metadata: Option<&serde_json::value::RawValue>,
    state: &serde_json::value::RawValue,
) -> String {
    let metadata = match metadata {
        Some(m) => m.get().to_string(),
        None => serde_json::json!({ "conversationSpaceId": id }).to_string(),
    };
    format!(
        r#"{{"source":"call-events","type":"call-state","content":{{"metadata":{metadata},"state":{}}}}}"#,
        state.get()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn steps_are_retried_with_backoff_then_given_up() {
        let calls = std::cell::Cell::new(0u32);
        let started = tokio::time::Instant::now();
        let r: Result<u32, String> = retried("flaky", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(format!("failure {n}"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(started.elapsed(), FIRST_PAUSE * 3, "0.5 s then 1 s");

        calls.set(0);
        let r: Result<(), String> = retried("broken", || {
            calls.set(calls.get() + 1);
            async { Err("down".to_string()) }
        })
        .await;
        assert_eq!(r, Err("down".into()));
        assert_eq!(calls.get(), ATTEMPTS);
    }

    #[test]
    fn swept_states_are_routable_notifications() {
        let state = serde_json::value::RawValue::from_string(
            r#"{"sequenceNumber":4,"type":"ENDING","extra":{"kept":true}}"#.into(),
        )
        .unwrap();
        let body = notification("c-9", None, &state);
        match crate::ingest::route::route(body.as_bytes()) {
            crate::ingest::route::Disposition::Raw {
                conversation_space_id,
            } => assert_eq!(conversation_space_id, "c-9"),
            other => panic!("not routable: {other:?}"),
        }
        assert!(
            body.contains(r#""extra":{"kept":true}"#),
            "unknown fields must survive"
        );
        assert_eq!(
            conversation_id(r#"{"conversationSpaceId":"c-9","callEnded":"x"}"#).as_deref(),
            Some("c-9")
        );
        assert_eq!(conversation_id(r#"{"conversationSpaceId":""}"#), None);
    }
}
