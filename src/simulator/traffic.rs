//! Deterministic call generator.
//!
//! STAND-IN: the real generator is written in another branch and replaces this file at merge
//! with the same public signatures. This version only exists so the simulator compiles and its
//! tests have realistic-enough calls; it keeps to the agreed interface and nothing more.

use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// What calls look like; part of the simulator config (`[traffic]`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficConfig {
    /// Seed of every generated call.
    pub seed: u64,
    /// Account keys calls are spread over.
    pub account_keys: Vec<String>,
    /// Fewest states in a call (STARTING and ENDING included).
    pub min_states: u32,
    /// Most states in a call.
    pub max_states: u32,
    /// Mean gap between two states of one call.
    #[serde(with = "humantime_serde")]
    pub mean_state_interval: Duration,
    /// Sprinkle fields GoTo does not document, so pass-through is exercised.
    pub unknown_fields: bool,
    /// Which key carries a participant's id.
    pub participant_id_field: ParticipantIdField,
    /// Wall-clock epoch ms for timestamps; None = the caller passes "now".
    pub base_time_ms: Option<u64>,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            account_keys: vec![
                "1000000000000000001".into(),
                "1000000000000000002".into(),
                "1000000000000000003".into(),
            ],
            min_states: 3,
            max_states: 40,
            mean_state_interval: Duration::from_millis(200),
            unknown_fields: true,
            participant_id_field: ParticipantIdField::Id,
            base_time_ms: None,
        }
    }
}

/// The participant id key: `id` (observed in live payloads) or `participantId` (the guide).
#[derive(Clone, Copy, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ParticipantIdField {
    /// `"id"`
    Id,
    /// `"participantId"`
    ParticipantId,
}

/// One call: its metadata and every state in order.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedCall {
    /// The call's id.
    pub conversation_space_id: String,
    /// The account the call belongs to.
    pub account_key: String,
    /// The `metadata` object sent with every state.
    pub metadata: Value,
    /// States, STARTING first and ENDING last.
    pub states: Vec<GeneratedState>,
}

/// One state of a call.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedState {
    /// 1-based, contiguous.
    pub sequence_number: u64,
    /// STARTING, ACTIVE or ENDING.
    pub state_type: String,
    /// How long after the previous state this one happens.
    pub delay_after_previous: Duration,
    /// The full `state` object.
    pub state: Value,
}

fn uuid_from(rng: &mut ChaCha8Rng) -> String {
    let bytes: [u8; 16] = rng.gen();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn iso(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Deterministic in (config.seed, index) when base_time_ms is set.
pub fn generate_call(config: &TrafficConfig, base_time_ms: u64, index: u64) -> GeneratedCall {
    let mut rng =
        ChaCha8Rng::seed_from_u64(config.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let base = config.base_time_ms.unwrap_or(base_time_ms) + index * 1000;
    let account_key = if config.account_keys.is_empty() {
        "1000000000000000001".to_string()
    } else {
        config.account_keys[rng.gen_range(0..config.account_keys.len())].clone()
    };
    let csid = uuid_from(&mut rng);
    let inbound = rng.gen_bool(0.5);
    let mut metadata = json!({
        "conversationSpaceId": csid,
        "direction": if inbound { "INBOUND" } else { "OUTBOUND" },
        "accountKey": account_key,
        "callCreated": iso(base),
    });
    if config.unknown_fields && rng.gen_bool(0.5) {
        metadata["x-callbridge-sim-extra"] = json!({"n": rng.gen_range(0..100)});
    }
    let lo = config.min_states.max(2);
    let hi = config.max_states.max(lo);
    let n = rng.gen_range(lo..=hi) as u64;
    let id_key = match config.participant_id_field {
        ParticipantIdField::Id => "id",
        ParticipantIdField::ParticipantId => "participantId",
    };
    let ext_id = uuid_from(&mut rng);
    let line_id = uuid_from(&mut rng);
    let mut t = base;
    let mut states = Vec::with_capacity(n as usize);
    for seq in 1..=n {
        let delay = if seq == 1 {
            Duration::ZERO
        } else {
            let mean = config.mean_state_interval.as_millis() as f64;
            let u: f64 = rng.gen_range(0.0001..1.0);
            Duration::from_millis((-u.ln() * mean) as u64)
        };
        t += delay.as_millis() as u64;
        let ty = if seq == 1 {
            "STARTING"
        } else if seq == n {
            "ENDING"
        } else {
            "ACTIVE"
        };
        let participants = if ty == "ENDING" {
            json!([])
        } else {
            let status = if seq == 1 { "RINGING" } else { "CONNECTED" };
            let mut outside = json!({
                "legId": uuid_from(&mut rng), "originator": ext_id,
                "status": {"value": status},
                "type": {"value": "PHONE_NUMBER", "phoneNumberId": uuid_from(&mut rng),
                         "number": "+12015550100", "name": "+12015550100", "callProvider": "PSTN",
                         "caller": {"name": "Test Name", "number": "+12015550123"}}
            });
            outside[id_key] = json!(ext_id);
            let mut line = json!({
                "legId": uuid_from(&mut rng), "originator": ext_id,
                "status": {"value": status},
                "type": {"value": "LINE", "lineId": line_id, "deviceId": uuid_from(&mut rng),
                         "extensionNumber": "1090", "name": "Agent A"}
            });
            line[id_key] = json!(line_id);
            json!([outside, line])
        };
        let mut state = json!({
            "id": uuid_from(&mut rng),
            "sequenceNumber": seq,
            "type": ty,
            "timestamp": iso(t),
            "participants": participants,
        });
        if config.unknown_fields && rng.gen_bool(0.2) {
            state["qualityScore"] = json!(4.2);
        }
        states.push(GeneratedState {
            sequence_number: seq,
            state_type: ty.to_string(),
            delay_after_previous: delay,
            state,
        });
    }
    GeneratedCall {
        conversation_space_id: csid,
        account_key,
        metadata,
        states,
    }
}
