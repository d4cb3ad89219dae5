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

/// Lists the active calls of `account_keys` and writes their last states to the raw topic.
/// Returns how many were written. Errors are logged: catch-up is best effort on top of back-fill.
pub async fn catch_up(client: &GotoClient, ingest: &Ingest, account_keys: &[String]) -> usize {
    let items = match client.active_conversations(account_keys).await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "catch-up: listing active calls failed");
            return 0;
        }
    };
    let mut written = 0;
    for item in items {
        match ingest
            .accept(item.get().as_bytes(), Transport::Catchup)
            .await
        {
            Ok(Accepted::Raw) => written += 1,
            Ok(other) => tracing::debug!(?other, "catch-up item not routed to raw"),
            Err(e) => tracing::warn!(error = %e, "catch-up: writing an active call failed"),
        }
    }
    metrics::counter!("callbridge_catchup_states_total").increment(written as u64);
    tracing::info!(active_calls = written, "catch-up after (re)connect");
    written
}

/// Margin around an outage window: clocks differ, and GoTo stamps `callCreated` itself.
const SWEEP_MARGIN: Duration = Duration::from_secs(10);

/// Writes every state of every call created in `[from, to]` (and ended by now) to raw, from the
/// report summaries and the back-fill endpoint. Returns the number of calls found.
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
        let summaries = match client.report_summaries(account, from, to).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "report sweep: listing report summaries failed");
                continue;
            }
        };
        for summary in summaries {
            let Some(id) = conversation_id(summary.get()) else {
                continue;
            };
            calls += 1;
            match client.conversation_events(&id, None, None).await {
                Ok(ConversationEvents::Found(states)) => {
                    for s in states {
                        let body = notification(&id, s.metadata.as_deref(), &s.state);
                        match ingest.accept(body.as_bytes(), Transport::Catchup).await {
                            Ok(Accepted::Raw) => written += 1,
                            Ok(other) => tracing::debug!(?other, "report sweep item not routed"),
                            Err(e) => {
                                tracing::warn!(error = %e, "report sweep: writing a state failed")
                            }
                        }
                    }
                }
                Ok(ConversationEvents::NotFound) => {}
                Err(e) => {
                    tracing::warn!(error = %e, conversation = %id, "report sweep: fetching states failed")
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
        sweep_reports(&client, &ingest, &account_keys, window.0, window.1).await;
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
