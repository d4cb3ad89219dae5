//! Deterministic call traffic for the simulator: one call's complete list of GoTo call states,
//! computed from `(config, base_time_ms, index)` and nothing else.
//!
//! Why a pure function of the index: the simulator has to be able to replay any run exactly
//! (a failing end-to-end test is only useful if it can be rerun), to regenerate the ground
//! truth of a call instead of storing it, and to hand out calls in any order or in parallel.
//! So every call gets its own ChaCha8 stream seeded from `(seed, index)`; no state is shared
//! between calls.
//!
//! Why it builds JSON by hand instead of using the client's types: the simulator must speak
//! GoTo's wire format from its own code, so that a mistake in the client's model shows up as a
//! failing contract test rather than being mirrored on both sides. The shapes follow
//! `goto-api.md` §3.3 and the call-events guide (real captures), including the parts that vary
//! between sources (`id` vs `participantId` for participants) and the unknown fields GoTo is
//! allowed to add at any time.
//!
//! A call is produced in three steps: a scenario script mutates a small model of the call
//! (legs, IVR systems, recordings) and snapshots it after every change; the snapshot list is
//! clamped to the configured state count; the snapshots are then rendered with ids, sequence
//! numbers, delays and timestamps.

use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// Spacing between the nominal start times of consecutive call indices, in milliseconds.
///
/// Call `index` starts at `base_time_ms + index * CALL_SPACING_MS`, so timestamps of different
/// calls interleave realistically without any call depending on another one.
pub const CALL_SPACING_MS: u64 = 1_000;

/// Every undocumented field name the generator may add when `unknown_fields` is on.
///
/// Tests elsewhere (pass-through of unknown fields) can look for these names downstream.
pub const UNKNOWN_FIELD_NAMES: &[&str] = &[
    "x-callbridge-sim-extra",
    "qualityScore",
    "futureField",
    "futureTypeField",
    "futureIvrField",
];

/// Last millisecond `humantime` can format (9999-12-31T23:59:59.999Z); later instants are
/// clamped so an absurd `base_time_ms` cannot make formatting fail.
const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// Cap on a single delay, as a multiple of the mean, so one unlucky draw cannot stall a run.
const MAX_DELAY_FACTOR: f64 = 10.0;

/// Domain tags mixed into the rng seeds so the call streams and the per-account directory
/// streams can never coincide, whatever the seed and index.
const CALL_STREAM_TAG: &[u8; 16] = b"callbridge-call\0";
const DIRECTORY_STREAM_TAG: &[u8; 16] = b"callbridge-dir\0\0";

/// Settings of the traffic generator; the simulator embeds this in its own config.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficConfig {
    /// Root of all randomness; the same seed always produces the same traffic.
    pub seed: u64,
    /// Account keys calls are spread over (decimal strings, as GoTo sends them). An empty list
    /// falls back to the defaults rather than failing.
    pub account_keys: Vec<String>,
    /// Fewest states per call, STARTING and ENDING included (at least 2 is always used).
    pub min_states: u32,
    /// Most states per call, STARTING and ENDING included (never below `min_states`).
    pub max_states: u32,
    /// Mean of the (exponential, capped at 10x) delay between consecutive states.
    #[serde(with = "humantime_serde")]
    pub mean_state_interval: Duration,
    /// Sprinkle undocumented fields at several depths so pass-through gets exercised.
    pub unknown_fields: bool,
    /// Key used for a participant's id; GoTo's own sources disagree, so both must be testable.
    pub participant_id_field: ParticipantIdField,
    /// Wall-clock epoch milliseconds for timestamps; `None` means the caller passes "now".
    pub base_time_ms: Option<u64>,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            account_keys: default_account_keys(),
            min_states: 3,
            max_states: 40,
            mean_state_interval: Duration::from_millis(200),
            unknown_fields: true,
            participant_id_field: ParticipantIdField::Id,
            base_time_ms: None,
        }
    }
}

fn default_account_keys() -> Vec<String> {
    [
        "1000000000000000001",
        "1000000000000000002",
        "1000000000000000003",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect()
}

/// Which key carries a participant's id: real webhook captures use `id`, GoTo's guide uses
/// `participantId`.
#[derive(Clone, Copy, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ParticipantIdField {
    /// `"id": "…"` (webhook captures).
    Id,
    /// `"participantId": "…"` (developer guide examples).
    ParticipantId,
}

impl ParticipantIdField {
    fn key(self) -> &'static str {
        match self {
            ParticipantIdField::Id => "id",
            ParticipantIdField::ParticipantId => "participantId",
        }
    }
}

/// One simulated call: its metadata and every state GoTo would send for it, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedCall {
    /// `metadata.conversationSpaceId`, repeated here for routing without parsing.
    pub conversation_space_id: String,
    /// `metadata.accountKey`, repeated here for subscription filtering without parsing.
    pub account_key: String,
    /// The `metadata` object sent with every state of this call.
    pub metadata: Value,
    /// States in sequence order: STARTING first, ENDING last.
    pub states: Vec<GeneratedState>,
}

/// One call state as GoTo would put it in `content.state`.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedState {
    /// `state.sequenceNumber`, 1-based and contiguous.
    pub sequence_number: u64,
    /// `state.type`: `STARTING`, `ACTIVE` or `ENDING`.
    pub state_type: String,
    /// Time between the previous state and this one (zero for STARTING).
    pub delay_after_previous: Duration,
    /// The `state` object.
    pub state: Value,
}

/// Generates call number `index`.
///
/// Deterministic in (config, base_time_ms, index): the same inputs always give the same call,
/// and a call does not depend on any other index having been generated. `base_time_ms` is the
/// epoch-millisecond origin of the run; call `index` starts `index * CALL_SPACING_MS` later.
pub fn generate_call(config: &TrafficConfig, base_time_ms: u64, index: u64) -> GeneratedCall {
    let mut rng = stream_rng(config.seed, index, CALL_STREAM_TAG);
    let account_keys = if config.account_keys.is_empty() {
        default_account_keys()
    } else {
        config.account_keys.clone()
    };
    let account_key = account_keys[rng.gen_range(0..account_keys.len())].clone();
    let directory = Directory::generate(config.seed, &account_key);
    let min_states = config.min_states.max(2) as usize;
    let max_states = (config.max_states as usize).max(min_states);

    let scenario = Scenario::pick(&mut rng);
    let conversation_space_id = uuid_from(&mut rng);
    let mut script = Script::new(
        rng,
        config.unknown_fields,
        directory,
        conversation_space_id.clone(),
    );
    let direction = scenario.run(&mut script, max_states.saturating_sub(2));

    let Script {
        mut rng,
        snapshots,
        associated,
        dial_string,
        ..
    } = script;
    let snapshots = clamp(snapshots, min_states, max_states);

    let start_ms = base_time_ms
        .saturating_add(index.saturating_mul(CALL_SPACING_MS))
        .min(MAX_TIMESTAMP_MS);
    let delays: Vec<Duration> = (0..snapshots.len() + 1)
        .map(|i| {
            if i == 0 {
                Duration::ZERO
            } else {
                draw_delay(&mut rng, config.mean_state_interval)
            }
        })
        .collect();

    let call_initiator = rng.gen_bool(0.7);
    let mut metadata = Map::new();
    metadata.insert("conversationSpaceId".into(), json!(conversation_space_id));
    metadata.insert("direction".into(), json!(direction));
    metadata.insert("accountKey".into(), json!(account_key));
    metadata.insert("callCreated".into(), json!(format_ms(start_ms)));
    if call_initiator {
        metadata.insert("callInitiator".into(), json!("DIRECT"));
    }
    if let Some(dial_string) = dial_string {
        metadata.insert("dialString".into(), json!(dial_string));
    }
    if !associated.is_empty() {
        metadata.insert("associatedConversations".into(), json!(associated));
    }

    let id_key = config.participant_id_field.key();
    let mut states = Vec::with_capacity(snapshots.len() + 1);
    let mut recording_starts: Vec<(String, String)> = Vec::new();
    let mut now_ms = start_ms;
    let mut any_unknown = false;
    let last = snapshots.len();
    for (i, delay) in delays.iter().enumerate() {
        now_ms = now_ms
            .saturating_add(delay.as_millis().try_into().unwrap_or(u64::MAX))
            .min(MAX_TIMESTAMP_MS);
        let timestamp = format_ms(now_ms);
        let state_type = match i {
            0 => "STARTING",
            i if i == last => "ENDING",
            _ => "ACTIVE",
        };
        let mut state = Map::new();
        state.insert("id".into(), json!(uuid_from(&mut rng)));
        state.insert("sequenceNumber".into(), json!(i as u64 + 1));
        state.insert("type".into(), json!(state_type));
        state.insert("timestamp".into(), json!(timestamp));
        match snapshots.get(i) {
            Some(snapshot) => {
                any_unknown |= snapshot.has_unknown();
                snapshot.render_into(&mut state, id_key, &timestamp, &mut recording_starts);
            }
            None => {
                state.insert("participants".into(), json!([]));
            }
        }
        if config.unknown_fields && rng.gen_bool(0.25) {
            any_unknown = true;
            state.insert("qualityScore".into(), json!(quality_score(&mut rng)));
        }
        states.push(GeneratedState {
            sequence_number: i as u64 + 1,
            state_type: state_type.to_owned(),
            delay_after_previous: *delay,
            state: Value::Object(state),
        });
    }

    // Guarantee at least one unknown field per call when asked, so every call exercises
    // pass-through, not just most of them.
    if config.unknown_fields && (rng.gen_bool(0.5) || !any_unknown) {
        metadata.insert(
            "x-callbridge-sim-extra".into(),
            json!({ "generator": "callbridge-simulate", "callIndex": index,
                    "nested": { "flag": true, "list": [1, 2, 3] } }),
        );
    }

    GeneratedCall {
        conversation_space_id,
        account_key,
        metadata: Value::Object(metadata),
        states,
    }
}

/// A ChaCha8 stream keyed by `(seed, discriminator, tag)`.
fn stream_rng(seed: u64, discriminator: u64, tag: &[u8; 16]) -> ChaCha8Rng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&discriminator.to_le_bytes());
    bytes[16..].copy_from_slice(tag);
    ChaCha8Rng::from_seed(bytes)
}

fn uuid_from(rng: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .to_string()
}

fn format_ms(ms: u64) -> String {
    let instant = UNIX_EPOCH + Duration::from_millis(ms.min(MAX_TIMESTAMP_MS));
    humantime::format_rfc3339_millis(instant).to_string()
}

/// Exponential delay around `mean`, capped, in whole milliseconds so timestamps (which carry
/// milliseconds) advance by exactly the reported delay.
fn draw_delay(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    let mean_ms = mean.as_secs_f64() * 1000.0;
    let u: f64 = rng.gen();
    let ms = (-(1.0 - u).ln() * mean_ms).min(mean_ms * MAX_DELAY_FACTOR);
    // `as` saturates (and maps NaN to 0), which is what we want for absurd means.
    Duration::from_millis(ms.round() as u64)
}

fn quality_score(rng: &mut ChaCha8Rng) -> f64 {
    f64::from(rng.gen_range(10u32..=50)) / 10.0
}

/// Fits the scenario into `[min_states, max_states]` (ENDING is added later, so the snapshots
/// must number `min_states - 1 ..= max_states - 1`). Too long: keep the beginning and the final
/// hang-up snapshot, as if the middle had been faster. Too short: repeat the last snapshot, as
/// GoTo does when it re-sends an unchanged call.
fn clamp(mut snapshots: Vec<Snapshot>, min_states: usize, max_states: usize) -> Vec<Snapshot> {
    let lo = min_states.saturating_sub(1).max(1);
    let hi = max_states.saturating_sub(1).max(lo);
    if snapshots.len() > hi {
        if hi == 1 {
            snapshots.truncate(1);
        } else {
            let last = snapshots.pop();
            snapshots.truncate(hi - 1);
            snapshots.extend(last);
        }
    }
    while snapshots.len() < lo {
        match snapshots.last() {
            Some(last) => {
                let repeat = last.clone();
                let at = if snapshots.len() > 1 {
                    snapshots.len() - 1
                } else {
                    1
                };
                snapshots.insert(at, repeat);
            }
            None => snapshots.push(Snapshot::default()),
        }
    }
    snapshots
}

/// The account's phone system: lines, company numbers, queues. Derived from `(seed, account)`
/// so the same agent keeps the same `lineId` across calls, as in a real account.
struct Directory {
    lines: Vec<Line>,
    dids: Vec<(String, String)>,
    queues: Vec<Queue>,
    dial_plan_id: String,
    voicemail_box_id: String,
}

#[derive(Clone)]
struct Line {
    line_id: String,
    device_id: String,
    extension: String,
    name: String,
    model: &'static str,
    user_id: String,
}

#[derive(Clone)]
struct Queue {
    queue_id: String,
    name: &'static str,
    queue_type: &'static str,
    wrap_up: u32,
}

const AGENT_NAMES: &[&str] = &[
    "Avery Stone",
    "Blake Rivera",
    "Casey Morgan",
    "Drew Patel",
    "Emery Chen",
    "Finley Okafor",
    "Harper Novak",
    "Jordan Silva",
];
const DEVICE_MODELS: &[&str] = &[
    "yealink.sip.t46s",
    "yealink.sip.t48s",
    "polycom.vvx450",
    "goto.softphone.desktop",
];
const QUEUE_NAMES: &[&str] = &["Sales", "Support", "Billing"];
const OUTSIDE_NAMES: &[&str] = &[
    "Test Caller",
    "Pat Example",
    "WIRELESS CALLER",
    "Sam Sample",
    "",
];

impl Directory {
    fn generate(seed: u64, account_key: &str) -> Self {
        let mut rng = stream_rng(seed, fnv1a(account_key), DIRECTORY_STREAM_TAG);
        let lines = AGENT_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let device_id = uuid_from(&mut rng);
                Line {
                    line_id: uuid_from(&mut rng),
                    device_id,
                    extension: format!("{}", 1001 + i),
                    name: (*name).to_owned(),
                    model: DEVICE_MODELS[rng.gen_range(0..DEVICE_MODELS.len())],
                    user_id: uuid_from(&mut rng),
                }
            })
            .collect();
        let dids = (0..2)
            .map(|_| {
                let number = format!(
                    "+1{}555{:04}",
                    rng.gen_range(201..990),
                    rng.gen_range(100..200)
                );
                (uuid_from(&mut rng), number)
            })
            .collect();
        let queues = QUEUE_NAMES
            .iter()
            .map(|name| Queue {
                queue_id: uuid_from(&mut rng),
                name,
                queue_type: if rng.gen_bool(0.7) {
                    "BASIC"
                } else {
                    "ADVANCED"
                },
                wrap_up: [0, 30, 60, 90][rng.gen_range(0..4)],
            })
            .collect();
        Self {
            lines,
            dids,
            queues,
            dial_plan_id: uuid_from(&mut rng),
            voicemail_box_id: uuid_from(&mut rng),
        }
    }
}

/// FNV-1a, to turn an account key into a seed discriminator (stable across Rust versions,
/// unlike `DefaultHasher`).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A participant's `status`.
#[derive(Clone, Debug)]
enum Status {
    Ringing,
    Connected,
    InIvr,
    Disconnecting,
    InWarmTransfer(Box<[TransferRef; 3]>),
}

/// One side of a warm transfer: `{participantId, conversationSpaceId, extensionNumber, name}`.
#[derive(Clone, Debug)]
struct TransferRef {
    participant_id: String,
    conversation_space_id: String,
    extension: String,
    name: String,
}

#[derive(Clone)]
enum LegKind {
    Phone {
        phone_number_id: String,
        number: String,
        /// `caller` on inbound legs, `callee` on outbound ones.
        party_key: &'static str,
        party_name: String,
        party_number: String,
        contact: bool,
    },
    Line(Line),
}

/// A participant leg as it stands at one moment.
#[derive(Clone)]
struct Leg {
    id: String,
    leg_id: String,
    originator: String,
    status: Status,
    kind: LegKind,
    future_field: Option<Value>,
    future_type_field: Option<Value>,
}

#[derive(Clone)]
enum IvrKind {
    DialPlan {
        dial_plan_id: String,
        execution_id: String,
        current: (String, &'static str, Option<&'static str>),
        previous: (String, &'static str),
    },
    Queue(Queue),
    Voicemail {
        box_id: String,
        number: String,
    },
}

#[derive(Clone)]
struct Ivr {
    id: String,
    originator: String,
    disconnecting: bool,
    kind: IvrKind,
    future: Option<Value>,
}

#[derive(Clone)]
struct Recording {
    id: String,
    transcript_enabled: bool,
}

/// The call as it stands after one change; becomes one ACTIVE (or the STARTING) state.
#[derive(Clone, Default)]
struct Snapshot {
    legs: Vec<Leg>,
    ivrs: Vec<Ivr>,
    recordings: Vec<Recording>,
}

impl Snapshot {
    fn has_unknown(&self) -> bool {
        self.legs
            .iter()
            .any(|l| l.future_field.is_some() || l.future_type_field.is_some())
            || self.ivrs.iter().any(|i| i.future.is_some())
    }

    /// Adds `participants`, `interactiveVoiceResponseSystems` and `recordings` to a state.
    /// A recording's `startTimestamp` is the timestamp of the first state showing it.
    fn render_into(
        &self,
        state: &mut Map<String, Value>,
        id_key: &str,
        timestamp: &str,
        recording_starts: &mut Vec<(String, String)>,
    ) {
        let participants: Vec<Value> = self.legs.iter().map(|l| l.render(id_key)).collect();
        state.insert("participants".into(), Value::Array(participants));
        if !self.ivrs.is_empty() {
            let ivrs: Vec<Value> = self.ivrs.iter().map(Ivr::render).collect();
            state.insert("interactiveVoiceResponseSystems".into(), Value::Array(ivrs));
        }
        if !self.recordings.is_empty() {
            let recordings: Vec<Value> = self
                .recordings
                .iter()
                .map(|r| {
                    let start = match recording_starts.iter().find(|(id, _)| *id == r.id) {
                        Some((_, start)) => start.clone(),
                        None => {
                            recording_starts.push((r.id.clone(), timestamp.to_owned()));
                            timestamp.to_owned()
                        }
                    };
                    json!({ "id": r.id, "startTimestamp": start,
                            "transcriptEnabled": r.transcript_enabled })
                })
                .collect();
            state.insert("recordings".into(), Value::Array(recordings));
        }
    }
}

impl TransferRef {
    fn render(&self) -> Value {
        json!({ "participantId": self.participant_id,
                "conversationSpaceId": self.conversation_space_id,
                "extensionNumber": self.extension, "name": self.name })
    }
}

impl Leg {
    fn render(&self, id_key: &str) -> Value {
        let status = match &self.status {
            Status::Ringing => json!({ "value": "RINGING" }),
            Status::Connected => json!({ "value": "CONNECTED" }),
            Status::InIvr => json!({ "value": "IN_INTERACTIVE_VOICE_RESPONSE" }),
            Status::Disconnecting => json!({ "value": "DISCONNECTING" }),
            Status::InWarmTransfer(refs) => json!({
                "value": "IN_WARM_TRANSFER",
                "initiator": refs[0].render(),
                "transferrer": refs[1].render(),
                "destination": refs[2].render(),
            }),
        };
        let mut kind = match &self.kind {
            LegKind::Phone {
                phone_number_id,
                number,
                party_key,
                party_name,
                party_number,
                contact,
            } => {
                let mut m = Map::new();
                m.insert("value".into(), json!("PHONE_NUMBER"));
                m.insert("phoneNumberId".into(), json!(phone_number_id));
                m.insert("number".into(), json!(number));
                m.insert("name".into(), json!(number));
                m.insert("callProvider".into(), json!("PSTN"));
                m.insert(
                    (*party_key).into(),
                    json!({ "name": party_name, "number": party_number }),
                );
                if *contact {
                    m.insert("contact".into(), json!({ "notAddedReason": "NO_CONTACT" }));
                }
                m
            }
            LegKind::Line(line) => {
                let mut m = Map::new();
                m.insert("value".into(), json!("LINE"));
                m.insert("lineId".into(), json!(line.line_id));
                m.insert("deviceId".into(), json!(line.device_id));
                m.insert("extensionNumber".into(), json!(line.extension));
                m.insert("name".into(), json!(line.name));
                m.insert(
                    "device".into(),
                    json!({ "id": line.device_id, "model": line.model,
                            "user": { "id": line.user_id } }),
                );
                m
            }
        };
        if let Some(extra) = &self.future_type_field {
            kind.insert("futureTypeField".into(), extra.clone());
        }
        let mut leg = Map::new();
        leg.insert(id_key.into(), json!(self.id));
        leg.insert("legId".into(), json!(self.leg_id));
        leg.insert("originator".into(), json!(self.originator));
        leg.insert("status".into(), status);
        leg.insert("type".into(), Value::Object(kind));
        if let Some(extra) = &self.future_field {
            leg.insert("futureField".into(), extra.clone());
        }
        Value::Object(leg)
    }
}

impl Ivr {
    fn render(&self) -> Value {
        let kind = match &self.kind {
            IvrKind::DialPlan {
                dial_plan_id,
                execution_id,
                current,
                previous,
            } => {
                let mut node = Map::new();
                node.insert("id".into(), json!(current.0));
                node.insert("type".into(), json!(current.1));
                if let Some(result) = current.2 {
                    node.insert("result".into(), json!(result));
                }
                json!({ "value": "DIAL_PLAN", "dialPlanId": dial_plan_id,
                        "executionId": execution_id, "currentNode": node,
                        "previousNode": { "id": previous.0, "connector": previous.1 } })
            }
            IvrKind::Queue(queue) => json!({
                "value": "CALL_QUEUE", "queueId": queue.queue_id, "queueName": queue.name,
                "queueType": queue.queue_type, "configuredWrapUpDuration": queue.wrap_up }),
            IvrKind::Voicemail { box_id, number } => {
                json!({ "value": "VOICEMAIL", "voicemailBoxId": box_id, "number": number })
            }
        };
        let status = if self.disconnecting {
            "DISCONNECTING"
        } else {
            "CONNECTED"
        };
        let mut ivr = Map::new();
        ivr.insert("id".into(), json!(self.id));
        ivr.insert("originator".into(), json!(self.originator));
        ivr.insert("status".into(), json!({ "value": status }));
        ivr.insert("type".into(), kind);
        if let Some(extra) = &self.future {
            ivr.insert("futureIvrField".into(), extra.clone());
        }
        Value::Object(ivr)
    }
}

/// The mutable model a scenario drives; `emit` records one state's worth of it.
struct Script {
    rng: ChaCha8Rng,
    /// This call's own id, needed where a state refers back to its conversation.
    conversation_space_id: String,
    unknown_fields: bool,
    directory: Directory,
    current: Snapshot,
    snapshots: Vec<Snapshot>,
    associated: Vec<String>,
    dial_string: Option<String>,
}

impl Script {
    fn new(
        rng: ChaCha8Rng,
        unknown_fields: bool,
        directory: Directory,
        conversation_space_id: String,
    ) -> Self {
        Self {
            rng,
            conversation_space_id,
            unknown_fields,
            directory,
            current: Snapshot::default(),
            snapshots: Vec::new(),
            associated: Vec::new(),
            dial_string: None,
        }
    }

    fn uuid(&mut self) -> String {
        uuid_from(&mut self.rng)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    fn emit(&mut self) {
        self.snapshots.push(self.current.clone());
    }

    fn maybe_unknown(&mut self, p: f64, value: Value) -> Option<Value> {
        (self.unknown_fields && self.rng.gen_bool(p)).then_some(value)
    }

    /// Adds a leg and returns its participant id. `originator: None` means it originated
    /// itself (the first leg of a call).
    fn add_leg(
        &mut self,
        id: Option<String>,
        originator: Option<&str>,
        status: Status,
        kind: LegKind,
    ) -> String {
        let id = id.unwrap_or_else(|| self.uuid());
        let leg_id = self.uuid();
        let version = self.rng.gen_range(1..=9);
        let future_field = self.maybe_unknown(
            0.2,
            json!({ "kind": "simulated", "version": version, "tags": ["a", "b"] }),
        );
        let future_type_field = self.maybe_unknown(0.15, json!("reserved-for-later"));
        self.current.legs.push(Leg {
            originator: originator.map_or_else(|| id.clone(), str::to_owned),
            id: id.clone(),
            leg_id,
            status,
            kind,
            future_field,
            future_type_field,
        });
        id
    }

    fn outside_party(&mut self) -> (String, String) {
        let name = OUTSIDE_NAMES[self.rng.gen_range(0..OUTSIDE_NAMES.len())].to_owned();
        let number = format!(
            "+1{}555{:04}",
            self.rng.gen_range(201..990),
            self.rng.gen_range(100..200)
        );
        (name, number)
    }

    fn phone_leg(&mut self, originator: Option<&str>, status: Status, inbound: bool) -> String {
        let (phone_number_id, number) =
            self.directory.dids[self.rng.gen_range(0..self.directory.dids.len())].clone();
        let (party_name, party_number) = self.outside_party();
        if !inbound {
            // What the agent dialled: national digits without the `+1`.
            self.dial_string = Some(party_number.trim_start_matches("+1").to_owned());
        }
        let contact = self.chance(0.3);
        let kind = LegKind::Phone {
            phone_number_id,
            number,
            party_key: if inbound { "caller" } else { "callee" },
            party_name,
            party_number,
            contact,
        };
        self.add_leg(None, originator, status, kind)
    }

    fn pick_line(&mut self) -> Line {
        self.directory.lines[self.rng.gen_range(0..self.directory.lines.len())].clone()
    }

    /// `count` distinct lines.
    fn pick_lines(&mut self, count: usize) -> Vec<Line> {
        let mut picked: Vec<Line> = Vec::new();
        while picked.len() < count.min(self.directory.lines.len()) {
            let line = self.pick_line();
            if picked.iter().all(|p| p.line_id != line.line_id) {
                picked.push(line);
            }
        }
        picked
    }

    fn line_leg(&mut self, line: Line, originator: Option<&str>, status: Status) -> String {
        self.add_leg(None, originator, status, LegKind::Line(line))
    }

    fn set_status(&mut self, id: &str, status: Status) {
        if let Some(leg) = self.current.legs.iter_mut().find(|l| l.id == id) {
            leg.status = status;
        }
    }

    fn remove_leg(&mut self, id: &str) {
        self.current.legs.retain(|l| l.id != id);
    }

    fn add_ivr(&mut self, originator: &str, kind: IvrKind) -> String {
        let id = self.uuid();
        let future = self.maybe_unknown(0.2, json!({ "hint": "not documented" }));
        self.current.ivrs.push(Ivr {
            id: id.clone(),
            originator: originator.to_owned(),
            disconnecting: false,
            kind,
            future,
        });
        id
    }

    fn remove_ivr(&mut self, id: &str) {
        self.current.ivrs.retain(|i| i.id != id);
    }

    fn maybe_start_recording(&mut self) {
        if self.chance(0.35) {
            let id = self.uuid();
            let transcript_enabled = self.chance(0.5);
            self.current.recordings.push(Recording {
                id,
                transcript_enabled,
            });
            self.emit();
        }
    }

    /// Steps the caller through a dial plan: each node is entered (one state) and, for some
    /// nodes, left with a result (another state), as GoTo reports node by node. Returns the
    /// dial plan's IVR id so the caller can hand over to a queue or voicemail.
    fn dial_plan_walk(&mut self, caller: &str, steps: usize) -> String {
        const NODES: &[(&str, Option<&str>, &str)] = &[
            ("ModifyCallerIdNode", Some("CONTINUE"), "nextNode"),
            ("ScheduleNode", Some("OPEN_SCHEDULE"), "onOpen"),
            ("PlaySoundClipNode", None, "nextNode"),
            ("MenuNode", Some("DIGIT_1"), "onDigit1"),
            ("JumpToDialPlanNode", None, "nextNode"),
            ("PasswordNode", Some("SUCCEED"), "onSucceed"),
        ];
        self.set_status(caller, Status::InIvr);
        let execution_id = self.uuid();
        let dial_plan_id = self.directory.dial_plan_id.clone();
        let mut previous = (String::new(), "");
        let mut ivr_id = String::new();
        for step in 0..steps.max(1) {
            let (node_type, result, connector) = NODES[self.rng.gen_range(0..NODES.len())];
            let node_id = format!("{node_type}_{}", 1003 + step * 2);
            let kind = IvrKind::DialPlan {
                dial_plan_id: dial_plan_id.clone(),
                execution_id: execution_id.clone(),
                current: (node_id.clone(), node_type, None),
                previous: previous.clone(),
            };
            if step == 0 {
                ivr_id = self.add_ivr(caller, kind);
            } else if let Some(ivr) = self.current.ivrs.iter_mut().find(|i| i.id == ivr_id) {
                ivr.kind = kind;
            }
            self.emit();
            if let Some(result) = result {
                if self.chance(0.6) {
                    if let Some(IvrKind::DialPlan { current, .. }) = self
                        .current
                        .ivrs
                        .iter_mut()
                        .find(|i| i.id == ivr_id)
                        .map(|i| &mut i.kind)
                    {
                        current.2 = Some(result);
                    }
                    self.emit();
                }
            }
            previous = (node_id, connector);
        }
        ivr_id
    }

    /// Someone hangs up: their leg goes DISCONNECTING in one last ACTIVE state.
    fn hang_up(&mut self, who: &str) {
        self.set_status(who, Status::Disconnecting);
        self.emit();
    }
}

/// The kinds of call the generator knows how to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    InboundDirect,
    InboundQueue,
    Outbound,
    WarmTransfer,
    Voicemail,
    Abandoned,
}

impl Scenario {
    fn pick(rng: &mut ChaCha8Rng) -> Self {
        match rng.gen_range(0..100) {
            0..=29 => Scenario::InboundDirect,
            30..=54 => Scenario::InboundQueue,
            55..=74 => Scenario::Outbound,
            75..=84 => Scenario::WarmTransfer,
            85..=92 => Scenario::Voicemail,
            _ => Scenario::Abandoned,
        }
    }

    /// Plays the scenario into `script` (STARTING snapshot first, no ENDING) and returns the
    /// call's direction. `budget` is the number of ACTIVE states the call may have; only
    /// the open-ended parts (dial-plan steps) use it, the clamp handles the rest.
    fn run(self, s: &mut Script, budget: usize) -> &'static str {
        match self {
            Scenario::InboundDirect => {
                let caller = s.phone_leg(None, Status::Ringing, true);
                s.emit();
                let line = s.pick_line();
                let agent = s.line_leg(line, Some(&caller), Status::Ringing);
                s.emit();
                s.set_status(&agent, Status::Connected);
                s.set_status(&caller, Status::Connected);
                s.emit();
                s.maybe_start_recording();
                let who = if s.chance(0.5) { caller } else { agent };
                s.hang_up(&who);
                "INBOUND"
            }
            Scenario::InboundQueue => {
                let caller = s.phone_leg(None, Status::Ringing, true);
                s.emit();
                let room = budget.saturating_sub(8) / 2;
                let steps = s.rng.gen_range(1..=room.clamp(1, 12));
                let dial_plan = s.dial_plan_walk(&caller, steps);
                let queue =
                    s.directory.queues[s.rng.gen_range(0..s.directory.queues.len())].clone();
                let queue_ivr = s.add_ivr(&caller, IvrKind::Queue(queue));
                s.emit();
                let ringing = s.rng.gen_range(1..=3);
                let lines = s.pick_lines(ringing);
                let agents: Vec<String> = lines
                    .into_iter()
                    .map(|line| s.line_leg(line, Some(&caller), Status::Ringing))
                    .collect();
                s.emit();
                if s.chance(0.15) {
                    // Caller gives up while the agents ring.
                    s.hang_up(&caller);
                    return "INBOUND";
                }
                let answering = agents[s.rng.gen_range(0..agents.len())].clone();
                for agent in agents.iter().filter(|a| **a != answering) {
                    s.remove_leg(agent);
                }
                s.set_status(&answering, Status::Connected);
                s.set_status(&caller, Status::Connected);
                s.remove_ivr(&dial_plan);
                if let Some(ivr) = s.current.ivrs.iter_mut().find(|i| i.id == queue_ivr) {
                    ivr.disconnecting = true;
                }
                s.emit();
                s.remove_ivr(&queue_ivr);
                s.emit();
                s.maybe_start_recording();
                let who = if s.chance(0.6) { caller } else { answering };
                s.hang_up(&who);
                "INBOUND"
            }
            Scenario::Outbound => {
                let line = s.pick_line();
                let agent = s.line_leg(line, None, Status::Ringing);
                s.emit();
                s.set_status(&agent, Status::Connected);
                let callee = s.phone_leg(Some(&agent), Status::Ringing, false);
                s.emit();
                if s.chance(0.25) {
                    // Nobody picks up; the agent gives up.
                    s.hang_up(&agent);
                    return "OUTBOUND";
                }
                s.set_status(&callee, Status::Connected);
                s.emit();
                s.maybe_start_recording();
                let who = if s.chance(0.5) { callee } else { agent };
                s.hang_up(&who);
                "OUTBOUND"
            }
            Scenario::WarmTransfer => {
                let caller = s.phone_leg(None, Status::Ringing, true);
                s.emit();
                let lines = s.pick_lines(2);
                let (first, second) = match (lines.first(), lines.get(1)) {
                    (Some(a), Some(b)) => (a.clone(), b.clone()),
                    _ => return Scenario::InboundDirect.run(s, budget),
                };
                let agent = s.line_leg(first.clone(), Some(&caller), Status::Ringing);
                s.emit();
                s.set_status(&agent, Status::Connected);
                s.set_status(&caller, Status::Connected);
                s.emit();
                // The consultation happens in a second conversation space; GoTo links it
                // through `associatedConversations` and the transfer status refs.
                let consult = s.uuid();
                s.associated.push(consult.clone());
                let transferrer = s.uuid();
                let destination = s.uuid();
                let refs = [
                    TransferRef {
                        participant_id: agent.clone(),
                        conversation_space_id: s.conversation_space_id.clone(),
                        extension: first.extension.clone(),
                        name: first.name.clone(),
                    },
                    TransferRef {
                        participant_id: transferrer.clone(),
                        conversation_space_id: consult.clone(),
                        extension: first.extension.clone(),
                        name: first.name.clone(),
                    },
                    TransferRef {
                        participant_id: destination.clone(),
                        conversation_space_id: consult,
                        extension: second.extension.clone(),
                        name: second.name.clone(),
                    },
                ];
                s.set_status(&caller, Status::InWarmTransfer(Box::new(refs)));
                let target = s.add_leg(
                    Some(destination),
                    Some(&transferrer),
                    Status::Ringing,
                    LegKind::Line(second),
                );
                s.emit();
                s.set_status(&target, Status::Connected);
                s.emit();
                s.set_status(&agent, Status::Disconnecting);
                s.emit();
                s.remove_leg(&agent);
                s.set_status(&caller, Status::Connected);
                s.emit();
                let who = if s.chance(0.5) { caller } else { target };
                s.hang_up(&who);
                "INBOUND"
            }
            Scenario::Voicemail => {
                let caller = s.phone_leg(None, Status::Ringing, true);
                s.emit();
                let room = budget.saturating_sub(6) / 2;
                let steps = s.rng.gen_range(1..=room.clamp(1, 4));
                let dial_plan = s.dial_plan_walk(&caller, steps);
                let line = s.pick_line();
                let agent = s.line_leg(line.clone(), Some(&caller), Status::Ringing);
                s.emit();
                s.remove_leg(&agent);
                s.remove_ivr(&dial_plan);
                let box_id = s.directory.voicemail_box_id.clone();
                s.add_ivr(
                    &caller,
                    IvrKind::Voicemail {
                        box_id,
                        number: line.extension,
                    },
                );
                s.emit();
                s.hang_up(&caller);
                "INBOUND"
            }
            Scenario::Abandoned => {
                let caller = s.phone_leg(None, Status::Ringing, true);
                s.emit();
                if s.chance(0.5) {
                    let line = s.pick_line();
                    s.line_leg(line, Some(&caller), Status::Ringing);
                    s.emit();
                }
                if s.chance(0.5) {
                    s.hang_up(&caller);
                }
                "INBOUND"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};
    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::*;

    const BASE: u64 = 1_790_000_000_000;

    fn config() -> TrafficConfig {
        TrafficConfig {
            base_time_ms: Some(BASE),
            ..TrafficConfig::default()
        }
    }

    fn calls(config: &TrafficConfig, n: u64) -> Vec<GeneratedCall> {
        (0..n).map(|i| generate_call(config, BASE, i)).collect()
    }

    /// Every object key path under `value`, array elements collapsed to `[]`.
    fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = format!("{prefix}.{key}");
                    out.insert(path.clone());
                    key_paths(child, &path, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn call_paths(call: &GeneratedCall, out: &mut BTreeSet<String>) {
        key_paths(&call.metadata, "metadata", out);
        for state in &call.states {
            key_paths(&state.state, "state", out);
        }
    }

    fn participants(state: &GeneratedState) -> &[Value] {
        state.state["participants"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
    }

    fn ms_since_epoch(timestamp: &str) -> u64 {
        let parsed = humantime::parse_rfc3339(timestamp).unwrap();
        parsed.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    /// The structural promises every call keeps, whatever the config.
    fn check_invariants(config: &TrafficConfig, base: u64, index: u64, call: &GeneratedCall) {
        let lo = config.min_states.max(2) as usize;
        let hi = (config.max_states as usize).max(lo);
        let n = call.states.len();
        assert!((lo..=hi).contains(&n), "{n} states not in {lo}..={hi}");

        for (i, state) in call.states.iter().enumerate() {
            assert_eq!(state.sequence_number, i as u64 + 1);
            assert_eq!(state.state["sequenceNumber"], json!(i as u64 + 1));
            assert_eq!(state.state["type"], json!(state.state_type));
            let expected = match i {
                0 => "STARTING",
                i if i == n - 1 => "ENDING",
                _ => "ACTIVE",
            };
            assert_eq!(state.state_type, expected);
        }
        assert_eq!(call.states[n - 1].state["participants"], json!([]));
        assert!(call.states[n - 1]
            .state
            .get("interactiveVoiceResponseSystems")
            .is_none());
        assert!(!participants(&call.states[0]).is_empty());
        assert_eq!(call.states[0].delay_after_previous, Duration::ZERO);

        let ids: HashSet<&str> = call
            .states
            .iter()
            .map(|s| s.state["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), n, "state ids must be unique");

        assert_eq!(
            call.metadata["conversationSpaceId"],
            json!(call.conversation_space_id)
        );
        assert_eq!(call.metadata["accountKey"], json!(call.account_key));
        assert_eq!(
            call.metadata["callCreated"],
            call.states[0].state["timestamp"]
        );

        // Timestamps parse, never go backwards, and advance by exactly the reported delays.
        let start = base
            .saturating_add(index.saturating_mul(CALL_SPACING_MS))
            .min(MAX_TIMESTAMP_MS);
        let mut expected_ms = start;
        let mut previous = 0;
        for state in &call.states {
            expected_ms = expected_ms
                .saturating_add(state.delay_after_previous.as_millis() as u64)
                .min(MAX_TIMESTAMP_MS);
            let ms = ms_since_epoch(state.state["timestamp"].as_str().unwrap());
            assert_eq!(ms, expected_ms);
            assert!(ms >= previous);
            previous = ms;
        }
    }

    proptest! {
        #[test]
        fn invariants_hold_for_any_config(
            seed in any::<u64>(),
            index in any::<u64>(),
            min_states in 0u32..12,
            max_states in 0u32..60,
            mean_ms in 0u64..5_000,
            base in 0u64..4_000_000_000_000,
            unknown_fields in any::<bool>(),
            participant_id in any::<bool>(),
        ) {
            let config = TrafficConfig {
                seed,
                min_states,
                max_states,
                mean_state_interval: Duration::from_millis(mean_ms),
                unknown_fields,
                participant_id_field: if participant_id {
                    ParticipantIdField::ParticipantId
                } else {
                    ParticipantIdField::Id
                },
                ..TrafficConfig::default()
            };
            let call = generate_call(&config, base, index);
            check_invariants(&config, base, index, &call);
            prop_assert_eq!(&call, &generate_call(&config, base, index));
        }
    }

    #[test]
    fn default_config_keeps_invariants_over_many_calls() {
        let config = config();
        for (index, call) in calls(&config, 500).iter().enumerate() {
            check_invariants(&config, BASE, index as u64, call);
        }
    }

    #[test]
    fn same_inputs_give_the_same_call_in_any_generation_order() {
        let config = config();
        let forward = calls(&config, 20);
        let backward: Vec<GeneratedCall> = (0..20)
            .rev()
            .map(|i| generate_call(&config, BASE, i))
            .collect();
        for (i, call) in forward.iter().enumerate() {
            assert_eq!(call, &backward[19 - i]);
        }
    }

    #[test]
    fn different_indices_and_seeds_give_different_ids() {
        let config = config();
        let all = calls(&config, 200);
        let conversations: HashSet<&str> = all
            .iter()
            .map(|c| c.conversation_space_id.as_str())
            .collect();
        assert_eq!(conversations.len(), all.len());
        let state_ids: Vec<&str> = all
            .iter()
            .flat_map(|c| c.states.iter().map(|s| s.state["id"].as_str().unwrap()))
            .collect();
        let unique: HashSet<&str> = state_ids.iter().copied().collect();
        assert_eq!(unique.len(), state_ids.len());

        let other_seed = TrafficConfig {
            seed: 43,
            ..config.clone()
        };
        assert_ne!(
            generate_call(&config, BASE, 0).conversation_space_id,
            generate_call(&other_seed, BASE, 0).conversation_space_id
        );
    }

    #[test]
    fn ids_are_uuids() {
        let call = generate_call(&config(), BASE, 3);
        assert!(uuid::Uuid::parse_str(&call.conversation_space_id).is_ok());
        for state in &call.states {
            assert!(uuid::Uuid::parse_str(state.state["id"].as_str().unwrap()).is_ok());
        }
    }

    #[test]
    fn every_account_key_is_used_and_no_other() {
        let config = config();
        let used: BTreeSet<String> = calls(&config, 100)
            .into_iter()
            .map(|c| c.account_key)
            .collect();
        let configured: BTreeSet<String> = config.account_keys.iter().cloned().collect();
        assert_eq!(used, configured);
    }

    #[test]
    fn participant_id_key_follows_the_setting() {
        for (setting, key, other) in [
            (ParticipantIdField::Id, "id", "participantId"),
            (ParticipantIdField::ParticipantId, "participantId", "id"),
        ] {
            let config = TrafficConfig {
                participant_id_field: setting,
                ..config()
            };
            let mut checked = 0;
            for call in calls(&config, 50) {
                for state in &call.states {
                    for participant in participants(state) {
                        assert!(participant[key].is_string(), "{participant}");
                        assert!(participant.get(other).is_none(), "{participant}");
                        checked += 1;
                    }
                }
            }
            assert!(checked > 100);
        }
    }

    #[test]
    fn originators_point_at_participants_of_the_call() {
        let config = config();
        for call in calls(&config, 200) {
            let mut known: HashSet<String> = HashSet::new();
            for state in &call.states {
                for p in participants(state) {
                    known.insert(p["id"].as_str().unwrap().to_owned());
                    if let Some(t) = p["status"].get("transferrer") {
                        known.insert(t["participantId"].as_str().unwrap().to_owned());
                    }
                }
            }
            for state in &call.states {
                for p in participants(state) {
                    assert!(known.contains(p["originator"].as_str().unwrap()), "{p}");
                }
                for ivr in state.state["interactiveVoiceResponseSystems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    assert!(known.contains(ivr["originator"].as_str().unwrap()), "{ivr}");
                }
            }
        }
    }

    #[test]
    fn starting_state_matches_direction() {
        for call in calls(&config(), 200) {
            let expected = match call.metadata["direction"].as_str().unwrap() {
                "INBOUND" => "PHONE_NUMBER",
                "OUTBOUND" => "LINE",
                other => panic!("unexpected direction {other}"),
            };
            for p in participants(&call.states[0]) {
                assert_eq!(p["type"]["value"], json!(expected));
                assert_eq!(p["status"]["value"], json!("RINGING"));
            }
            let outbound = call.metadata["direction"] == json!("OUTBOUND");
            assert_eq!(call.metadata.get("dialString").is_some(), outbound);
        }
    }

    #[test]
    fn warm_transfers_refer_to_both_conversations() {
        let mut seen = 0;
        for call in calls(&config(), 300) {
            for state in &call.states {
                for p in participants(state) {
                    let status = &p["status"];
                    if status["value"] != json!("IN_WARM_TRANSFER") {
                        continue;
                    }
                    seen += 1;
                    assert_eq!(
                        status["initiator"]["conversationSpaceId"],
                        json!(call.conversation_space_id)
                    );
                    let consult = &status["transferrer"]["conversationSpaceId"];
                    assert_eq!(call.metadata["associatedConversations"], json!([consult]));
                    assert_eq!(status["destination"]["conversationSpaceId"], *consult);
                    let destination = &status["destination"]["participantId"];
                    let ringing = participants(state)
                        .iter()
                        .find(|q| q["id"] == *destination)
                        .unwrap();
                    assert_eq!(
                        ringing["originator"],
                        status["transferrer"]["participantId"]
                    );
                }
            }
        }
        assert!(seen > 0, "no warm transfer in 300 calls");
    }

    #[test]
    fn recordings_keep_their_start_time() {
        let mut seen = 0;
        for call in calls(&config(), 200) {
            let mut starts: Vec<(Value, Value)> = Vec::new();
            for state in &call.states {
                for r in state.state["recordings"].as_array().into_iter().flatten() {
                    seen += 1;
                    let start = ms_since_epoch(r["startTimestamp"].as_str().unwrap());
                    assert!(start <= ms_since_epoch(state.state["timestamp"].as_str().unwrap()));
                    match starts.iter().find(|(id, _)| *id == r["id"]) {
                        Some((_, first)) => assert_eq!(*first, r["startTimestamp"]),
                        None => starts.push((r["id"].clone(), r["startTimestamp"].clone())),
                    }
                }
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn all_scenarios_and_values_show_up() {
        let mut statuses = BTreeSet::new();
        let mut ivr_types = BTreeSet::new();
        let mut directions = BTreeSet::new();
        let mut lengths = BTreeSet::new();
        for call in calls(&config(), 300) {
            directions.insert(call.metadata["direction"].as_str().unwrap().to_owned());
            lengths.insert(call.states.len());
            for state in &call.states {
                for p in participants(state) {
                    statuses.insert(p["status"]["value"].as_str().unwrap().to_owned());
                }
                for ivr in state.state["interactiveVoiceResponseSystems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    ivr_types.insert(ivr["type"]["value"].as_str().unwrap().to_owned());
                }
            }
        }
        let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            statuses,
            set(&[
                "CONNECTED",
                "DISCONNECTING",
                "IN_INTERACTIVE_VOICE_RESPONSE",
                "IN_WARM_TRANSFER",
                "RINGING"
            ])
        );
        assert_eq!(ivr_types, set(&["CALL_QUEUE", "DIAL_PLAN", "VOICEMAIL"]));
        assert_eq!(directions, set(&["INBOUND", "OUTBOUND"]));
        // Short abandoned calls and long IVR walks both occur.
        assert!(lengths.contains(&3), "{lengths:?}");
        assert!(lengths.iter().any(|&n| n >= 20), "{lengths:?}");
    }

    fn has_unknown_field(value: &Value) -> bool {
        match value {
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| UNKNOWN_FIELD_NAMES.contains(&k.as_str()) || has_unknown_field(v)),
            Value::Array(items) => items.iter().any(has_unknown_field),
            _ => false,
        }
    }

    #[test]
    fn unknown_fields_appear_in_every_call_when_on_at_every_depth() {
        let config = config();
        let mut names = BTreeSet::new();
        for call in calls(&config, 200) {
            let mut paths = BTreeSet::new();
            call_paths(&call, &mut paths);
            let unknown: Vec<&String> = paths
                .iter()
                .filter(|p| {
                    UNKNOWN_FIELD_NAMES
                        .iter()
                        .any(|n| p.ends_with(&format!(".{n}")))
                })
                .collect();
            assert!(!unknown.is_empty(), "call without unknown fields");
            for path in unknown {
                names.insert(path.rsplit('.').next().unwrap().to_owned());
            }
        }
        let all: BTreeSet<String> = UNKNOWN_FIELD_NAMES
            .iter()
            .map(|n| (*n).to_owned())
            .collect();
        assert_eq!(names, all);
    }

    #[test]
    fn unknown_fields_never_appear_when_off() {
        let config = TrafficConfig {
            unknown_fields: false,
            ..config()
        };
        for call in calls(&config, 300) {
            assert!(!has_unknown_field(&call.metadata));
            for state in &call.states {
                assert!(!has_unknown_field(&state.state), "{}", state.state);
            }
        }
    }

    /// The `content` objects (`metadata` + `state`) of the real-shaped fixtures.
    fn fixture_contents() -> Vec<(&'static str, Value)> {
        let files = [
            (
                "webhook-inbound-starting",
                include_str!("../../tests/fixtures/goto/webhook-inbound-starting.json"),
            ),
            (
                "websocket-inbound-starting",
                include_str!("../../tests/fixtures/goto/websocket-inbound-starting.json"),
            ),
            (
                "guide-outbound-starting",
                include_str!("../../tests/fixtures/goto/guide-outbound-starting.content.json"),
            ),
            (
                "guide-backfill",
                include_str!("../../tests/fixtures/goto/guide-backfill-events-response.json"),
            ),
            (
                "outbound-active",
                include_str!(
                    "../../tests/fixtures/goto/webhook-outbound-active-disconnecting.json"
                ),
            ),
            (
                "warm-transfer",
                include_str!("../../tests/fixtures/goto/webhook-active-warm-transfer.json"),
            ),
            (
                "voicemail",
                include_str!("../../tests/fixtures/goto/webhook-active-voicemail.json"),
            ),
            (
                "ending",
                include_str!("../../tests/fixtures/goto/webhook-ending.json"),
            ),
        ];
        let mut contents = Vec::new();
        for (name, text) in files {
            let body: Value = serde_json::from_str(text).unwrap();
            let notification = body.get("data").unwrap_or(&body);
            if let Some(states) = notification.get("states").and_then(Value::as_array) {
                for state in states {
                    contents.push((
                        name,
                        json!({ "metadata": notification["metadata"], "state": state }),
                    ));
                }
            } else {
                let content = notification.get("content").unwrap_or(notification);
                contents.push((name, content.clone()));
            }
        }
        contents
    }

    /// Both directions of the shape contract with the real-shaped fixtures: the generator
    /// produces every key path they contain, and (unknown fields off) nothing else.
    #[test]
    fn generated_shapes_match_the_fixtures() {
        let mut fixture_paths = BTreeSet::new();
        for (name, content) in fixture_contents() {
            assert!(content["metadata"].is_object(), "{name}");
            assert!(content["state"].is_object(), "{name}");
            key_paths(&content["metadata"], "metadata", &mut fixture_paths);
            key_paths(&content["state"], "state", &mut fixture_paths);
        }

        let mut generated = BTreeSet::new();
        for setting in [ParticipantIdField::Id, ParticipantIdField::ParticipantId] {
            let config = TrafficConfig {
                unknown_fields: false,
                participant_id_field: setting,
                ..config()
            };
            for call in calls(&config, 300) {
                call_paths(&call, &mut generated);
            }
        }
        let missing: Vec<&String> = fixture_paths.difference(&generated).collect();
        assert!(missing.is_empty(), "never generated: {missing:?}");
        let extra: Vec<&String> = generated.difference(&fixture_paths).collect();
        assert!(extra.is_empty(), "not in any fixture: {extra:?}");
    }

    #[test]
    fn delays_average_around_the_mean() {
        let config = config();
        let delays: Vec<Duration> = calls(&config, 300)
            .iter()
            .flat_map(|c| c.states.iter().skip(1).map(|s| s.delay_after_previous))
            .collect();
        let mean_ms = delays.iter().map(Duration::as_millis).sum::<u128>() / delays.len() as u128;
        assert!((150..=250).contains(&mean_ms), "mean {mean_ms} ms");
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(2_000)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(50)));

        let instant = TrafficConfig {
            mean_state_interval: Duration::ZERO,
            ..config
        };
        for call in calls(&instant, 20) {
            assert!(call.states.iter().all(|s| s.delay_after_previous.is_zero()));
        }
    }

    #[test]
    fn calls_are_spaced_by_index() {
        let config = config();
        let first = generate_call(&config, BASE, 0);
        let tenth = generate_call(&config, BASE, 10);
        let created =
            |c: &GeneratedCall| ms_since_epoch(c.metadata["callCreated"].as_str().unwrap());
        assert_eq!(created(&first), BASE);
        assert_eq!(created(&tenth), BASE + 10 * CALL_SPACING_MS);
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        let tiny = TrafficConfig {
            min_states: 0,
            max_states: 0,
            account_keys: Vec::new(),
            mean_state_interval: Duration::MAX,
            ..config()
        };
        for index in [0, 1, u64::MAX] {
            let call = generate_call(&tiny, u64::MAX, index);
            assert_eq!(call.states.len(), 2);
            assert!(default_account_keys().contains(&call.account_key));
            check_invariants(&tiny, u64::MAX, index, &call);
            let ts = call.states[1].state["timestamp"].as_str().unwrap();
            assert!(humantime::parse_rfc3339(ts).unwrap() > SystemTime::UNIX_EPOCH);
        }

        let inverted = TrafficConfig {
            min_states: 12,
            max_states: 5,
            ..config()
        };
        for call in calls(&inverted, 30) {
            assert_eq!(call.states.len(), 12);
        }

        let exact = TrafficConfig {
            min_states: 3,
            max_states: 3,
            ..config()
        };
        for call in calls(&exact, 50) {
            assert_eq!(call.states.len(), 3);
        }
    }

    #[test]
    fn config_deserialises_with_defaults_and_rejects_unknown_keys() {
        let parsed: TrafficConfig = serde_json::from_str(
            r#"{"seed": 7, "mean_state_interval": "1s 500ms",
                "participant_id_field": "participantId"}"#,
        )
        .unwrap();
        assert_eq!(parsed.seed, 7);
        assert_eq!(parsed.mean_state_interval, Duration::from_millis(1_500));
        assert_eq!(
            parsed.participant_id_field,
            ParticipantIdField::ParticipantId
        );
        assert_eq!(parsed.account_keys, default_account_keys());
        assert_eq!((parsed.min_states, parsed.max_states), (3, 40));
        assert!(parsed.unknown_fields);
        assert_eq!(parsed.base_time_ms, None);

        let round_trip: TrafficConfig =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(round_trip.mean_state_interval, parsed.mean_state_interval);

        assert!(serde_json::from_str::<TrafficConfig>(r#"{"sed": 7}"#).is_err());
        assert!(
            serde_json::from_str::<TrafficConfig>(r#"{"participant_id_field": "uuid"}"#).is_err()
        );
    }
}
