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
//! Not covered: a call that started AND ended entirely inside an outage is no longer active;
//! finding those needs the Call Events Report API's summaries (documented as a known limit).

use crate::goto::GotoClient;
use crate::ingest::{Accepted, Ingest, Transport};

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
