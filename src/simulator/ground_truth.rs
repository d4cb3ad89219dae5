//! Ground truth: what really happened, so a test can judge the bridge's output.
//!
//! The bridge claims a gap-free, exactly-once, ordered stream. That claim can only be checked
//! against an independent record of every state the simulator generated and every fault it
//! injected on it. This record is also the back-fill store (a state is returned by back-fill
//! iff it is recoverable and within retention), so "what back-fill returns" and "what the ground
//! truth says back-fill returns" cannot drift apart. Format documented in docs/simulator.md.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

/// Fault counter names, as they appear under `faultCounts`.
pub mod fault {
    /// State not delivered (still recoverable).
    pub const DROPPED: &str = "dropped";
    /// State neither delivered nor recoverable.
    pub const UNRECOVERABLE: &str = "unrecoverable";
    /// Extra copy, same notification id.
    pub const DUPLICATED: &str = "duplicated";
    /// Extra copy, new notification id.
    pub const DUPLICATED_NEW_ID: &str = "duplicatedNewId";
    /// State held back by a random delay.
    pub const DELAYED: &str = "delayed";
    /// State held in a burst window.
    pub const BURST_HELD: &str = "burstHeld";
    /// Webhook attempt lost in the network.
    pub const WEBHOOK_ATTEMPT_LOST: &str = "webhookAttemptLost";
    /// Webhook answer lost (receiver got it; retried).
    pub const WEBHOOK_RESPONSE_LOST: &str = "webhookResponseLost";
    /// WebSocket cut.
    pub const WEBSOCKET_DISCONNECT: &str = "websocketDisconnect";
    /// `WEBSOCKET_TO_BE_CLOSED` sent.
    pub const WEBSOCKET_TO_BE_CLOSED: &str = "websocketToBeClosed";
    /// Channel deleted.
    pub const CHANNEL_DELETED: &str = "channelDeleted";
    /// All access tokens revoked.
    pub const TOKENS_REVOKED: &str = "tokensRevoked";
    /// Injected 429.
    pub const REST_429: &str = "rest429";
    /// Injected 5xx.
    pub const REST_5XX: &str = "rest5xx";
}

/// What happened to one state on one channel.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelDelivery {
    /// Notification copies dispatched (1, or 2 when duplicated).
    pub copies: u32,
    /// Webhook HTTP attempts (incl. ones lost by fault) or WebSocket frame sends.
    pub attempts: u32,
    /// Attempts that reached the receiver (2xx, answer lost, or frame written to the socket).
    pub delivered: u32,
    /// Attempts the simulator saw acknowledged with 2xx.
    pub acknowledged: u32,
    /// Attempts that failed (5xx, 4xx, transport, lost).
    pub failed_attempts: u32,
    /// Copies given up on.
    pub dropped: u32,
    /// Why copies were given up on (e.g. `retriesExhausted`, `noSocket`, `oversize`).
    pub drop_reasons: Vec<String>,
    /// Notification ids used (a same-id duplicate repeats one).
    pub notification_ids: Vec<String>,
}

/// One generated state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRecord {
    /// 1-based.
    pub sequence_number: u64,
    /// `state.id`.
    pub state_id: String,
    /// STARTING / ACTIVE / ENDING.
    #[serde(rename = "type")]
    pub state_type: String,
    /// The full `state` object as generated.
    pub state: Value,
    /// Wall-clock time the simulator emitted it.
    pub emitted_at: String,
    /// Monotonic emission time, for retention.
    #[serde(skip)]
    pub emitted_instant: Option<Instant>,
    /// Not delivered on purpose (`dropped` or `unrecoverable` fault).
    pub dropped: bool,
    /// Never delivered and never returned by back-fill or report.
    pub unrecoverable: bool,
    /// Same-id duplicates dispatched.
    pub duplicated: u32,
    /// New-id duplicates dispatched.
    pub duplicated_new_id: u32,
    /// Delay fault applied, in ms.
    pub delay_ms: Option<u64>,
    /// Time held in a burst window, in ms.
    pub burst_held_ms: Option<u64>,
    /// Channels subscribed for this account and event type when it was emitted.
    pub subscribed_channels: Vec<String>,
    /// Per channel id.
    pub deliveries: BTreeMap<String, ChannelDelivery>,
}

/// One generated call.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Generator index (same seed + index → same content).
    pub index: u64,
    /// The call id.
    pub conversation_space_id: String,
    /// Its account.
    pub account_key: String,
    /// The `metadata` object.
    pub metadata: Value,
    /// ENDING was emitted.
    pub ended: bool,
    /// Wall-clock ms of the ENDING emission.
    pub ended_at_ms: Option<u64>,
    /// States emitted so far, in sequence order.
    pub states: Vec<StateRecord>,
}

/// Reference to one state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateRef {
    /// The call.
    pub conversation_space_id: String,
    /// The state's sequence number.
    pub sequence_number: u64,
    /// The state's id.
    pub state_id: String,
}

/// Totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Calls started.
    pub calls: u64,
    /// Calls ended.
    pub calls_ended: u64,
    /// States emitted.
    pub states: u64,
}

/// The whole record; serialises to the ground-truth file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroundTruth {
    /// Format version.
    pub version: u32,
    /// Backfill retention in force when the snapshot was taken, in ms (None = forever).
    pub retention_ms: Option<u64>,
    /// Counts of every fault injected, by name.
    pub fault_counts: BTreeMap<String, u64>,
    /// Totals.
    pub totals: Totals,
    /// Every state made unrecoverable, in emission order.
    pub unrecoverable: Vec<StateRef>,
    /// Every call, in start order.
    pub calls: Vec<CallRecord>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

impl GroundTruth {
    /// Count one injected fault.
    pub fn count_fault(&mut self, name: &str) {
        *self.fault_counts.entry(name.to_string()).or_default() += 1;
    }

    /// A fault count (0 when never injected).
    pub fn fault_count(&self, name: &str) -> u64 {
        self.fault_counts.get(name).copied().unwrap_or(0)
    }

    /// Record a new call.
    pub fn start_call(&mut self, index: u64, csid: &str, account_key: &str, metadata: Value) {
        self.version = 1;
        self.index.insert(csid.to_string(), self.calls.len());
        self.calls.push(CallRecord {
            index,
            conversation_space_id: csid.to_string(),
            account_key: account_key.to_string(),
            metadata,
            ended: false,
            ended_at_ms: None,
            states: Vec::new(),
        });
        self.totals.calls += 1;
    }

    /// Record an emitted state.
    pub fn record_state(&mut self, csid: &str, record: StateRecord) {
        if record.unrecoverable {
            self.unrecoverable.push(StateRef {
                conversation_space_id: csid.to_string(),
                sequence_number: record.sequence_number,
                state_id: record.state_id.clone(),
            });
        }
        if let Some(call) = self.call_mut(csid) {
            call.states.push(record);
            self.totals.states += 1;
        }
    }

    /// Mark a call ended.
    pub fn end_call(&mut self, csid: &str, at_ms: u64) {
        if let Some(call) = self.call_mut(csid) {
            call.ended = true;
            call.ended_at_ms = Some(at_ms);
            self.totals.calls_ended += 1;
        }
    }

    /// A call by id.
    pub fn call(&self, csid: &str) -> Option<&CallRecord> {
        self.index.get(csid).and_then(|i| self.calls.get(*i))
    }

    fn call_mut(&mut self, csid: &str) -> Option<&mut CallRecord> {
        let i = *self.index.get(csid)?;
        self.calls.get_mut(i)
    }

    /// One state.
    pub fn state_mut(&mut self, csid: &str, seq: u64) -> Option<&mut StateRecord> {
        self.call_mut(csid)?
            .states
            .iter_mut()
            .find(|s| s.sequence_number == seq)
    }

    /// One state's delivery record on one channel (created on first use).
    pub fn delivery_mut(
        &mut self,
        csid: &str,
        seq: u64,
        channel: &str,
    ) -> Option<&mut ChannelDelivery> {
        Some(
            self.state_mut(csid, seq)?
                .deliveries
                .entry(channel.to_string())
                .or_default(),
        )
    }

    /// States back-fill may return for a call: recoverable and not aged out. None when the
    /// call is unknown or every state has aged out.
    pub fn recoverable_states(
        &self,
        csid: &str,
        retention: Option<Duration>,
        now: Instant,
    ) -> Option<(&CallRecord, Vec<&StateRecord>)> {
        let call = self.call(csid)?;
        let retained = |s: &StateRecord| match (retention, s.emitted_instant) {
            (Some(r), Some(at)) => now.saturating_duration_since(at) < r,
            _ => true,
        };
        if !call.states.iter().any(retained) {
            return None;
        }
        let states = call
            .states
            .iter()
            .filter(|s| !s.unrecoverable && retained(s))
            .collect();
        Some((call, states))
    }

    /// Snapshot for serving / writing, with the current retention stamped on.
    pub fn snapshot(&self, retention: Option<Duration>) -> GroundTruth {
        let mut g = self.clone();
        g.version = 1;
        g.retention_ms = retention.map(|r| r.as_millis() as u64);
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(seq: u64, unrecoverable: bool) -> StateRecord {
        StateRecord {
            sequence_number: seq,
            state_id: format!("s{seq}"),
            state_type: "ACTIVE".into(),
            state: serde_json::json!({"sequenceNumber": seq}),
            emitted_at: String::new(),
            emitted_instant: Some(Instant::now()),
            dropped: unrecoverable,
            unrecoverable,
            duplicated: 0,
            duplicated_new_id: 0,
            delay_ms: None,
            burst_held_ms: None,
            subscribed_channels: Vec::new(),
            deliveries: BTreeMap::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backfill_skips_unrecoverable_and_ages_out_with_retention() {
        let mut g = GroundTruth::default();
        g.start_call(0, "c", "a", serde_json::json!({}));
        g.record_state("c", state(1, false));
        tokio::time::advance(Duration::from_secs(5)).await;
        g.record_state("c", state(2, true));
        g.record_state("c", state(3, false));
        let keep = Some(Duration::from_secs(3));
        let (_, s) = g.recoverable_states("c", keep, Instant::now()).unwrap();
        let seqs: Vec<u64> = s.iter().map(|s| s.sequence_number).collect();
        assert_eq!(seqs, vec![3], "1 aged out, 2 unrecoverable");
        assert_eq!(g.unrecoverable.len(), 1);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(g.recoverable_states("c", keep, Instant::now()).is_none());
        assert!(g.recoverable_states("c", None, Instant::now()).is_some());
        assert!(g
            .recoverable_states("other", None, Instant::now())
            .is_none());
    }
}
