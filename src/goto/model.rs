//! What GoTo answers, decoded leniently.
//!
//! GoTo's responses vary between documentation, samples and observed traffic (see
//! `goto-api.md`): `channelType` spelled `WebSocket` or `WebSockets` and found at the top level
//! or inside `webhookChannelData`/`channelData`; `channelURL` nested or top-level;
//! `nextPageMarker` absent or `""` on the last page; back-fill pages shaped as `states`,
//! `items` of `{metadata, state}` or `items` of bare states. GoTo also says new attributes may
//! appear at any time. So every wire struct here ignores unknown fields, accepts each
//! variant, and call states are never re-serialised: they are kept as the raw JSON text GoTo
//! sent ([`RawValue`]) with only `sequenceNumber` parsed out.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A notification channel as GoTo describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// `channelId`; webhook ids start with `Webhook.`.
    pub channel_id: String,
    /// `channelNickname` (the one requested, when a response omits it).
    pub nickname: String,
    /// Delivery kind and target.
    pub kind: ChannelKind,
    /// `channelLifetime` in seconds, when given. Webhooks report `2147483647`; WebSocket
    /// values vary (10800 and ≈1200 seen), so always read it rather than assume.
    pub lifetime_secs: Option<u64>,
    /// `webhookChannelData.unreachableTimestamp`: GoTo marked the webhook URL unreachable.
    pub unreachable_since: Option<String>,
}

/// How a channel delivers notifications.
///
/// `Debug` shows only the scheme and host of the URL: a WebSocket URL is itself the
/// credential to the channel (and holds the channel id, which is therefore logged only as
/// [`Channel::tag`]), and a webhook URL typically carries a shared secret in its path.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// GoTo POSTs each notification to `url` (absent only if GoTo omitted it).
    Webhook {
        /// `webhookChannelData.webhook.url`.
        url: Option<String>,
    },
    /// The client connects to `url` (`channelData.channelURL`, or top-level `channelURL`).
    WebSocket {
        /// The `wss://` URL; opaque, and itself the credential.
        url: Option<String>,
    },
    /// A channel type this client does not use (other apps' channels appear in listings).
    Other {
        /// The `channelType` as GoTo spelled it.
        channel_type: String,
    },
}

impl fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelKind::Webhook { url } => f
                .debug_struct("Webhook")
                .field("url", &url.as_deref().map(redact_url))
                .finish(),
            ChannelKind::WebSocket { url } => f
                .debug_struct("WebSocket")
                .field("url", &url.as_deref().map(redact_url))
                .finish(),
            ChannelKind::Other { channel_type } => f
                .debug_struct("Other")
                .field("channel_type", channel_type)
                .finish(),
        }
    }
}

/// `scheme://host/…` of a URL, or `…` when it does not parse.
fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "…".to_owned(),
    }
}

impl ChannelKind {
    /// The delivery URL, whatever the kind.
    pub fn url(&self) -> Option<&str> {
        match self {
            ChannelKind::Webhook { url } | ChannelKind::WebSocket { url } => url.as_deref(),
            ChannelKind::Other { .. } => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChannel {
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    channel_nickname: Option<String>,
    #[serde(default)]
    channel_type: Option<String>,
    #[serde(default, rename = "channelURL", alias = "channelUrl")]
    channel_url: Option<String>,
    #[serde(default)]
    channel_lifetime: Option<Value>,
    #[serde(default)]
    webhook_channel_data: Option<WireChannelData>,
    #[serde(default)]
    channel_data: Option<WireChannelData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChannelData {
    #[serde(default)]
    channel_type: Option<String>,
    #[serde(default, rename = "channelURL", alias = "channelUrl")]
    channel_url: Option<String>,
    #[serde(default)]
    webhook: Option<WireWebhook>,
    #[serde(default)]
    unreachable_timestamp: Option<Value>,
    #[serde(default)]
    channel_lifetime: Option<Value>,
}

#[derive(Deserialize)]
struct WireWebhook {
    #[serde(default)]
    url: Option<String>,
}

impl Channel {
    /// Decodes one channel object; `nickname_hint` fills a missing `channelNickname`. An object
    /// without `channelId` is an error.
    pub(crate) fn from_json(
        raw: &[u8],
        nickname_hint: Option<&str>,
    ) -> serde_json::Result<Channel> {
        Channel::from_json_about(raw, nickname_hint, None)
    }

    /// Decodes the answer about one known channel (a refresh, a read): `channel_id_hint` fills
    /// a missing `channelId` as `nickname_hint` fills a missing `channelNickname`. GoTo does
    /// not document the body of every such answer (a refresh may well answer only
    /// `{"channelLifetime": …}`), and the channel it is about is known anyway.
    pub(crate) fn from_json_about(
        raw: &[u8],
        nickname_hint: Option<&str>,
        channel_id_hint: Option<&str>,
    ) -> serde_json::Result<Channel> {
        let wire: WireChannel = serde_json::from_slice(raw)?;
        let Some(channel_id) = wire
            .channel_id
            .clone()
            .or_else(|| channel_id_hint.map(str::to_owned))
        else {
            return Err(serde::de::Error::missing_field("channelId"));
        };
        Ok(Channel::from_wire(wire, channel_id, nickname_hint))
    }

    /// A short tag of this channel's id, safe to log: see [`Channel::tag_of`].
    pub fn tag(&self) -> String {
        Channel::tag_of(&self.channel_id)
    }

    /// A short, non-reversible tag of a channel id, for logs, errors and `/readyz`:
    /// `ch-` and the first 8 hex digits (32 bits) of the id's FNV-1a-64 hash.
    ///
    /// A WebSocket channel's id is part of its `channelURL` (GoTo documents
    /// `wss://…/channels/{channelId}/…/ws`), so whoever reads it may be a step from reading
    /// the channel's notifications; a webhook channel's id opens nothing, but one rule for
    /// both kinds is easier to keep than two. 32 bits of a random id of 120 bits and more
    /// tell nothing about the rest of it, and are plenty to tell our channels apart in a log.
    pub fn tag_of(channel_id: &str) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in channel_id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("ch-{:08x}", hash >> 32)
    }

    fn from_wire(wire: WireChannel, channel_id: String, nickname_hint: Option<&str>) -> Channel {
        let datas = [
            wire.webhook_channel_data.as_ref(),
            wire.channel_data.as_ref(),
        ];
        let declared = wire
            .channel_type
            .clone()
            .or_else(|| datas.iter().flatten().find_map(|d| d.channel_type.clone()));
        let webhook_url = datas
            .iter()
            .flatten()
            .find_map(|d| d.webhook.as_ref().and_then(|w| w.url.clone()));
        let socket_url = wire
            .channel_url
            .clone()
            .or_else(|| datas.iter().flatten().find_map(|d| d.channel_url.clone()));

        let kind = match declared.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("webhook") | Some("webhooks") => ChannelKind::Webhook { url: webhook_url },
            Some("websocket") | Some("websockets") => ChannelKind::WebSocket { url: socket_url },
            Some(_) => ChannelKind::Other {
                channel_type: declared.unwrap_or_default(),
            },
            // No declared type: infer from what is there.
            None if wire.webhook_channel_data.is_some()
                || webhook_url.is_some()
                || channel_id.starts_with("Webhook.") =>
            {
                ChannelKind::Webhook { url: webhook_url }
            }
            None => ChannelKind::WebSocket { url: socket_url },
        };

        let lifetime_secs = wire
            .channel_lifetime
            .as_ref()
            .and_then(lifetime)
            .or_else(|| {
                datas
                    .iter()
                    .flatten()
                    .find_map(|d| d.channel_lifetime.as_ref().and_then(lifetime))
            });
        let unreachable_since = datas
            .iter()
            .flatten()
            .find_map(|d| d.unreachable_timestamp.as_ref().and_then(scalar_text));

        Channel {
            channel_id,
            nickname: wire
                .channel_nickname
                .or_else(|| nickname_hint.map(str::to_owned))
                .unwrap_or_default(),
            kind,
            lifetime_secs,
            unreachable_since,
        }
    }
}

/// One page of a GoTo list: `items` plus the marker of the next page, if any.
#[derive(Debug)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_page_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePage<'a> {
    #[serde(default, borrow)]
    items: Vec<&'a RawValue>,
    #[serde(default)]
    next_page_marker: Option<Value>,
}

/// Decodes a standard `{items, nextPageMarker}` page, keeping each item raw.
pub(crate) fn decode_raw_page(body: &[u8]) -> serde_json::Result<Page<Box<RawValue>>> {
    let wire: WirePage<'_> = serde_json::from_slice(body)?;
    Ok(Page {
        items: wire.items.into_iter().map(|r| r.to_owned()).collect(),
        next_page_marker: next_marker(wire.next_page_marker.as_ref()),
    })
}

/// Decodes a page of channels. The listing holds every channel of the token's user, of all
/// apps: an item that does not decode as a channel (another app's odd nickname, no
/// `channelId`) is skipped, counted in a debug log, and does not fail the page. Ours always
/// decode (GoTo answered our create with the same shape); an item without a readable
/// `channelId` could neither be reused nor deleted anyway.
pub(crate) fn decode_channel_page(body: &[u8]) -> serde_json::Result<Page<Channel>> {
    let raw = decode_raw_page(body)?;
    let mut skipped = 0usize;
    let items: Vec<Channel> = raw
        .items
        .iter()
        .filter_map(|item| match Channel::from_json(item.get().as_bytes(), None) {
            Ok(c) => Some(c),
            Err(e) => {
                skipped += 1;
                // The error's kind and position only: serde quotes values, which may be URLs.
                tracing::debug!(kind = ?e.classify(), line = e.line(), column = e.column(), "a listed notification channel does not decode; skipped");
                None
            }
        })
        .collect();
    if skipped > 0 {
        tracing::debug!(
            skipped,
            kept = items.len(),
            "skipped listed notification channels that do not decode (other apps' channels)"
        );
    }
    Ok(Page {
        items,
        next_page_marker: raw.next_page_marker,
    })
}

/// `nextPageMarker`: absent, `null` and `""` all mean "last page".
fn next_marker(v: Option<&Value>) -> Option<String> {
    v.and_then(scalar_text).filter(|m| !m.is_empty())
}

/// A call state fetched through the back-fill endpoint.
#[derive(Clone, Debug)]
pub struct BackfilledState {
    /// `state.sequenceNumber`: 1-based, per conversation space.
    pub sequence_number: u64,
    /// The `metadata` object that accompanied the state (per item or per page), raw.
    pub metadata: Option<Box<RawValue>>,
    /// The `state` object exactly as GoTo sent it.
    pub state: Box<RawValue>,
}

/// Result of a back-fill request.
#[derive(Clone, Debug)]
pub enum ConversationEvents {
    /// The states GoTo returned, all pages, in the order GoTo sent them.
    Found(Vec<BackfilledState>),
    /// GoTo does not know this conversation space (404): unknown id or past retention.
    NotFound,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEventsPage<'a> {
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow)]
    states: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    next_page_marker: Option<Value>,
}

/// An `items` entry: either `{metadata, state}` or a bare state.
#[derive(Deserialize)]
struct WireEventItem<'a> {
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow)]
    state: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSequence {
    sequence_number: Value,
}

/// Decodes one back-fill page in any of the three known shapes (and a bare array).
///
/// Failures are serde errors (ours made with [`invalid`]), so that they become the caller's
/// error through `GotoError::decode` like every other decode failure.
pub(crate) fn decode_events_page(body: &[u8]) -> serde_json::Result<Page<BackfilledState>> {
    let page: WireEventsPage<'_> = if body.trim_ascii_start().starts_with(b"[") {
        // Not seen, but cheap to accept: a bare array of items.
        WireEventsPage {
            metadata: None,
            states: None,
            items: Some(serde_json::from_slice(body)?),
            next_page_marker: None,
        }
    } else {
        serde_json::from_slice(body)?
    };
    let page_metadata = page.metadata.filter(|m| is_object(m));
    let mut out = Vec::new();
    for raw in page.states.iter().flatten() {
        out.push(backfilled(raw, page_metadata)?);
    }
    for raw in page.items.iter().flatten() {
        let item: WireEventItem<'_> =
            serde_json::from_str(raw.get()).map_err(|e| invalid(format!("events item: {e}")))?;
        match item.state.filter(|s| is_object(s)) {
            Some(state) => {
                let metadata = item.metadata.filter(|m| is_object(m)).or(page_metadata);
                out.push(backfilled(state, metadata)?);
            }
            None => out.push(backfilled(raw, page_metadata)?),
        }
    }
    Ok(Page {
        items: out,
        next_page_marker: next_marker(page.next_page_marker.as_ref()),
    })
}

fn backfilled(
    state: &RawValue,
    metadata: Option<&RawValue>,
) -> serde_json::Result<BackfilledState> {
    let seq: WireSequence =
        serde_json::from_str(state.get()).map_err(|e| invalid(format!("call state: {e}")))?;
    let sequence_number = unsigned(&seq.sequence_number).ok_or_else(|| {
        invalid(format!(
            "call state: sequenceNumber {} is not a non-negative integer",
            seq.sequence_number
        ))
    })?;
    Ok(BackfilledState {
        sequence_number,
        metadata: metadata.map(RawValue::to_owned),
        state: state.to_owned(),
    })
}

/// The `callStates[]` of a Call Events Report (`GET /call-events-report/v1/reports/{id}`): every
/// state of an ended call, kept after back-fill's retention. A report without the array has
/// none; an item without a usable `sequenceNumber` is an error, as in back-fill.
pub(crate) fn decode_report_states(body: &[u8]) -> serde_json::Result<Vec<BackfilledState>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct WireReport<'a> {
        #[serde(borrow, default)]
        call_states: Option<Vec<&'a RawValue>>,
    }
    let report: WireReport<'_> = serde_json::from_slice(body)?;
    report
        .call_states
        .into_iter()
        .flatten()
        .filter(|s| is_object(s))
        .map(|s| backfilled(s, None))
        .collect()
}

/// A decode failure of ours, as a serde error.
fn invalid(message: String) -> serde_json::Error {
    serde::de::Error::custom(message)
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// One account key's result of a Call Events subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionOutcome {
    /// GoTo confirmed the subscription (item status 2xx).
    Subscribed {
        /// The account key.
        account_key: String,
    },
    /// GoTo refused it.
    Failed {
        /// The account key.
        account_key: String,
        /// The item's `status`.
        status: u16,
        /// The item's `errorCode`.
        error_code: Option<String>,
        /// The item's `message`.
        message: Option<String>,
        /// A 4xx other than 429: repeating the same request will not help. (A 409, "already
        /// exists", may still mean subscribed: the keeper reads the subscriptions back.)
        permanent: bool,
    },
    /// The response did not mention this account key; whether it is subscribed is unknown
    /// (read the subscriptions back, or retry).
    Unconfirmed {
        /// The account key.
        account_key: String,
    },
}

impl SubscriptionOutcome {
    /// The account key this outcome is about.
    pub fn account_key(&self) -> &str {
        match self {
            SubscriptionOutcome::Subscribed { account_key }
            | SubscriptionOutcome::Failed { account_key, .. }
            | SubscriptionOutcome::Unconfirmed { account_key } => account_key,
        }
    }

    /// True when GoTo confirmed the subscription.
    pub fn is_subscribed(&self) -> bool {
        matches!(self, SubscriptionOutcome::Subscribed { .. })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMultiStatus {
    #[serde(default)]
    account_keys: Vec<WireStatusItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatusItem {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_code: Option<Value>,
}

/// Maps a subscribe response onto the requested account keys, in request order. An empty
/// body (some 200/201 answers) leaves every key unconfirmed; the keeper then reads the
/// subscriptions back (`GET /call-events/v1/subscriptions?channelId=`).
pub(crate) fn decode_subscription_outcomes(
    body: &[u8],
    requested: &[&str],
) -> serde_json::Result<Vec<SubscriptionOutcome>> {
    let wire: WireMultiStatus = if body.iter().all(u8::is_ascii_whitespace) {
        WireMultiStatus {
            account_keys: Vec::new(),
        }
    } else {
        serde_json::from_slice(body)?
    };
    let outcomes = requested
        .iter()
        .map(|key| {
            let item = wire
                .account_keys
                .iter()
                .find(|i| i.id.as_ref().and_then(scalar_text).as_deref() == Some(*key));
            let account_key = (*key).to_owned();
            let Some(item) = item else {
                return SubscriptionOutcome::Unconfirmed { account_key };
            };
            match item
                .status
                .as_ref()
                .and_then(unsigned)
                .and_then(|s| u16::try_from(s).ok())
            {
                Some(status) if (200..300).contains(&status) => {
                    SubscriptionOutcome::Subscribed { account_key }
                }
                Some(status) => SubscriptionOutcome::Failed {
                    account_key,
                    status,
                    error_code: item.error_code.as_ref().and_then(scalar_text),
                    message: item.message.clone(),
                    permanent: (400..500).contains(&status) && status != 429,
                },
                // An item without a usable status says nothing reliable.
                None => SubscriptionOutcome::Unconfirmed { account_key },
            }
        })
        .collect();
    Ok(outcomes)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSubscriptions {
    #[serde(default)]
    account_keys: Vec<Value>,
    #[serde(default)]
    items: Vec<Value>,
}

/// The account keys of `GET …/subscriptions?channelId=`: `accountKeys` as strings or objects
/// with `id` (or `accountKey`/`value`), or `items` of such objects.
pub(crate) fn decode_subscribed_account_keys(body: &[u8]) -> serde_json::Result<Vec<String>> {
    let wire: WireSubscriptions = serde_json::from_slice(body)?;
    Ok(wire
        .account_keys
        .iter()
        .chain(wire.items.iter())
        .filter_map(|v| match v {
            Value::Object(map) => ["id", "accountKey", "value"]
                .iter()
                .find_map(|k| map.get(*k).and_then(scalar_text)),
            other => scalar_text(other),
        })
        .collect())
}

/// The new lifetime from `PUT …/channel-lifetime`: `{"channelLifetime": n}` or a bare number.
pub(crate) fn decode_lifetime(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match &v {
        Value::Object(map) => map.get("channelLifetime").and_then(lifetime),
        other => lifetime(other),
    }
}

/// A `channelLifetime`: a positive number of seconds. GoTo documents INT32 max for "no expiry"
/// and never 0; read as "expires now", a 0 would have the channel refreshed or replaced as fast
/// as GoTo answers, so it counts as not stated (the WebSocket session then assumes the smallest
/// lifetime seen, `ASSUMED_LIFETIME`).
fn lifetime(v: &Value) -> Option<u64> {
    unsigned(v).filter(|&secs| secs > 0)
}

/// A non-negative integer given as a JSON number or a numeric string.
fn unsigned(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON string or number as text; other types have no text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_response_with_type_inside_webhook_channel_data() {
        let body = br#"{ "channelId": "Webhook.6050752e-78dd-47af-8e22-552d3d6e3326",
          "channelNickname": "my-nickname",
          "webhookChannelData": { "webhook": { "url": "https://example.com/goto/hook" },
                                  "channelType": "Webhook" },
          "channelLifetime": 2147483647,
          "resourceURL": "https://webrtc.jive.com/notification-channel/v1/channels/my-nickname/Webhook.6050",
          "doNotDisturbAware": false, "somethingNew": {"x": 1} }"#;
        let ch = Channel::from_json(body, None).unwrap();
        assert_eq!(
            ch.channel_id,
            "Webhook.6050752e-78dd-47af-8e22-552d3d6e3326"
        );
        assert_eq!(ch.nickname, "my-nickname");
        assert_eq!(
            ch.kind,
            ChannelKind::Webhook {
                url: Some("https://example.com/goto/hook".into())
            }
        );
        assert_eq!(ch.lifetime_secs, Some(2_147_483_647));
        assert_eq!(ch.unreachable_since, None);
    }

    #[test]
    fn webhook_unreachable_and_top_level_type() {
        let body = br#"{"channelId":"Webhook.1","channelType":"Webhook",
          "webhookChannelData":{"webhook":{"url":"https://h/x"},"unreachableTimestamp":"2026-01-01T00:00:00Z"}}"#;
        let ch = Channel::from_json(body, Some("hint")).unwrap();
        assert_eq!(
            ch.nickname, "hint",
            "missing nickname filled from the request"
        );
        assert_eq!(ch.kind.url(), Some("https://h/x"));
        assert_eq!(
            ch.unreachable_since.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(ch.lifetime_secs, None, "channelLifetime may be absent");
        let numeric = br#"{"channelId":"Webhook.1","webhookChannelData":{"unreachableTimestamp":1767225600000}}"#;
        let ch = Channel::from_json(numeric, None).unwrap();
        assert_eq!(ch.unreachable_since.as_deref(), Some("1767225600000"));
        assert_eq!(
            ch.kind,
            ChannelKind::Webhook { url: None },
            "inferred from the data block"
        );
    }

    #[test]
    fn websocket_variants() {
        let nested = br#"{ "channelId": "0vTpo-UTMtHMl3lE4", "channelNickname": "screen-pop-demo",
          "channelData": { "channelType": "WebSockets",
                           "channelURL": "wss://webrtc.jive.com/notification-channel/v1/channels/0vTpo/channelId/ws",
                           "isConnected": false },
          "channelLifetime": 10800 }"#;
        let ch = Channel::from_json(nested, None).unwrap();
        assert_eq!(
            ch.kind,
            ChannelKind::WebSocket {
                url: Some(
                    "wss://webrtc.jive.com/notification-channel/v1/channels/0vTpo/channelId/ws"
                        .into()
                )
            }
        );
        assert_eq!(ch.lifetime_secs, Some(10800));

        let top = br#"{"channelId":"c2","channelType":"WebSocket","channelURL":"wss://x/ws","channelLifetime":"1200"}"#;
        let ch = Channel::from_json(top, None).unwrap();
        assert_eq!(ch.kind.url(), Some("wss://x/ws"));
        assert_eq!(ch.lifetime_secs, Some(1200));

        // Undocumented, and "expires now" would have the channel replaced as fast as GoTo
        // answers: a 0 is a lifetime not stated.
        let zero = br#"{"channelId":"c3","channelType":"WebSocket","channelURL":"wss://x/ws","channelLifetime":0}"#;
        assert_eq!(Channel::from_json(zero, None).unwrap().lifetime_secs, None);

        let untyped = br#"{"channelId":"c3","channelURL":"wss://y"}"#;
        let ch = Channel::from_json(untyped, None).unwrap();
        assert_eq!(
            ch.kind,
            ChannelKind::WebSocket {
                url: Some("wss://y".into())
            }
        );

        let other = br#"{"channelId":"c4","channelType":"Sms"}"#;
        let ch = Channel::from_json(other, None).unwrap();
        assert_eq!(
            ch.kind,
            ChannelKind::Other {
                channel_type: "Sms".into()
            }
        );
    }

    #[test]
    fn debug_hides_channel_url_paths() {
        let ch = Channel::from_json(
            br#"{"channelId":"c","channelURL":"wss://webrtc.jive.com/notification-channel/v1/channels/SECRETPATH/ws"}"#,
            None,
        )
        .unwrap();
        let shown = format!("{ch:?}");
        assert!(!shown.contains("SECRETPATH"), "{shown}");
        assert!(shown.contains("wss://webrtc.jive.com/…"), "{shown}");
        let hook = ChannelKind::Webhook {
            url: Some("https://h.example/hook/s3cr3t".into()),
        };
        assert!(!format!("{hook:?}").contains("s3cr3t"));
        assert_eq!(hook.url(), Some("https://h.example/hook/s3cr3t"));
    }

    #[test]
    fn channel_without_id_is_an_error() {
        assert!(Channel::from_json(br#"{"channelNickname":"n"}"#, None).is_err());
    }

    #[test]
    fn a_listed_channel_that_does_not_decode_is_skipped_not_the_page() {
        // Other apps' channels share the listing: one odd item must not hide ours.
        let page = decode_channel_page(
            br#"{"items":[
                {"channelId":"other","channelNickname":42},
                {"channelNickname":"no-id"},
                "not an object",
                {"channelId":"ours","channelNickname":"bridge","channelType":"WebSockets"}
            ],"nextPageMarker":"m"}"#,
        )
        .unwrap();
        let ids: Vec<&str> = page.items.iter().map(|c| c.channel_id.as_str()).collect();
        assert_eq!(ids, ["ours"]);
        assert_eq!(page.next_page_marker.as_deref(), Some("m"));
        assert!(
            decode_channel_page(b"not json").is_err(),
            "a broken page still fails"
        );
    }

    #[test]
    fn an_answer_about_a_known_channel_may_omit_its_id() {
        let ch = Channel::from_json_about(br#"{"channelLifetime":1200}"#, Some("n"), Some("c1"))
            .unwrap();
        assert_eq!(ch.channel_id, "c1");
        assert_eq!(ch.nickname, "n");
        assert_eq!(ch.lifetime_secs, Some(1200));
        assert_eq!(ch.kind, ChannelKind::WebSocket { url: None });
        let given = Channel::from_json_about(br#"{"channelId":"c2"}"#, None, Some("c1")).unwrap();
        assert_eq!(given.channel_id, "c2", "GoTo's own id wins");
    }

    #[test]
    fn a_channel_tag_is_short_stable_and_not_the_id() {
        let id = "0vTpo-UTMtHMl3lE4";
        let tag = Channel::tag_of(id);
        assert_eq!(tag, Channel::tag_of(id));
        assert_ne!(tag, Channel::tag_of("0vTpo-UTMtHMl3lE5"));
        assert_eq!(tag.len(), "ch-".len() + 8, "{tag}");
        assert!(!tag.contains("0vTpo"), "{tag}");
    }

    #[test]
    fn page_markers() {
        let last_absent = decode_channel_page(br#"{"items":[{"channelId":"a"}]}"#).unwrap();
        assert_eq!(last_absent.items.len(), 1);
        assert_eq!(last_absent.next_page_marker, None);
        let last_empty = decode_channel_page(br#"{"items":[],"nextPageMarker":""}"#).unwrap();
        assert_eq!(last_empty.next_page_marker, None);
        let last_null = decode_raw_page(br#"{"items":[],"nextPageMarker":null}"#).unwrap();
        assert_eq!(last_null.next_page_marker, None);
        let more = decode_raw_page(br#"{"pageSize":100,"items":[{"a":1}],"nextPageMarker":"abc"}"#)
            .unwrap();
        assert_eq!(more.next_page_marker.as_deref(), Some("abc"));
        assert_eq!(more.items[0].get(), r#"{"a":1}"#);
        let no_items = decode_raw_page(br#"{}"#).unwrap();
        assert!(no_items.items.is_empty());
    }

    const STATE3: &str = r#"{ "id": "0d48", "sequenceNumber": 3, "type": "ACTIVE",  "participants": [ {"participantId":"5472","unknownField":[1, 2]} ], "timestamp": "2023-04-24T17:12:21.921Z" }"#;
    const META: &str = r#"{ "conversationSpaceId": "convid", "direction": "OUTBOUND", "accountKey": "1234567890123456789" }"#;

    #[test]
    fn events_official_states_shape_keeps_raw_bytes() {
        let body = format!(
            r#"{{"pageSize":100,"nextPageMarker":"","metadata":{META},"states":[{STATE3}]}}"#
        );
        let page = decode_events_page(body.as_bytes()).unwrap();
        assert_eq!(page.next_page_marker, None);
        assert_eq!(page.items.len(), 1);
        let s = &page.items[0];
        assert_eq!(s.sequence_number, 3);
        assert_eq!(
            s.state.get(),
            STATE3,
            "state bytes untouched, whitespace and unknown fields included"
        );
        assert_eq!(s.metadata.as_ref().map(|m| m.get()), Some(META));
    }

    #[test]
    fn events_items_of_metadata_and_state() {
        let body = format!(
            r#"{{"items":[{{"metadata":{META},"state":{STATE3}}},{{"state":{{"sequenceNumber":"4","type":"ENDING","participants":[]}}}}],"nextPageMarker":"p2"}}"#
        );
        let page = decode_events_page(body.as_bytes()).unwrap();
        assert_eq!(page.next_page_marker.as_deref(), Some("p2"));
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[0].sequence_number, 3);
        assert_eq!(page.items[0].state.get(), STATE3);
        assert_eq!(page.items[0].metadata.as_ref().map(|m| m.get()), Some(META));
        assert_eq!(page.items[1].sequence_number, 4);
        assert!(page.items[1].metadata.is_none());
    }

    #[test]
    fn events_items_of_bare_states() {
        let body = format!(r#"{{"items":[{STATE3}]}}"#);
        let page = decode_events_page(body.as_bytes()).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].sequence_number, 3);
        assert_eq!(page.items[0].state.get(), STATE3);
        assert!(page.items[0].metadata.is_none());
        assert_eq!(page.next_page_marker, None);
    }

    #[test]
    fn events_without_sequence_number_fail() {
        let err = decode_events_page(br#"{"states":[{"type":"ACTIVE"}]}"#).unwrap_err();
        assert!(err.to_string().contains("sequenceNumber"), "{err}");
        let err = decode_events_page(br#"{"states":[{"sequenceNumber":-1}]}"#).unwrap_err();
        assert!(err.to_string().contains("sequenceNumber"), "{err}");
        assert!(decode_events_page(br#""states""#).is_err());
        let bare = decode_events_page(br#"[{"sequenceNumber":7}]"#).unwrap();
        assert_eq!(bare.items[0].sequence_number, 7);
    }

    #[test]
    fn subscription_outcomes_per_key() {
        let body = br#"{"accountKeys":[
            {"id":"111","status":200,"message":"Success"},
            {"id":"222","status":403,"message":"Forbidden","errorCode":"AUTHZ_INSUFFICIENT_SCOPE"},
            {"id":"333","status":429,"message":"Slow down"},
            {"id":"444","status":"500"}]}"#;
        let out = decode_subscription_outcomes(body, &["111", "222", "333", "444", "555"]).unwrap();
        assert_eq!(
            out[0],
            SubscriptionOutcome::Subscribed {
                account_key: "111".into()
            }
        );
        assert_eq!(
            out[1],
            SubscriptionOutcome::Failed {
                account_key: "222".into(),
                status: 403,
                error_code: Some("AUTHZ_INSUFFICIENT_SCOPE".into()),
                message: Some("Forbidden".into()),
                permanent: true
            }
        );
        assert!(matches!(
            &out[2],
            SubscriptionOutcome::Failed {
                permanent: false,
                status: 429,
                ..
            }
        ));
        assert!(matches!(
            &out[3],
            SubscriptionOutcome::Failed {
                permanent: false,
                status: 500,
                ..
            }
        ));
        assert_eq!(
            out[4],
            SubscriptionOutcome::Unconfirmed {
                account_key: "555".into()
            }
        );
        assert!(out[0].is_subscribed() && !out[1].is_subscribed());
        assert_eq!(out[4].account_key(), "555");

        let empty = decode_subscription_outcomes(b"", &["1"]).unwrap();
        assert_eq!(
            empty,
            vec![SubscriptionOutcome::Unconfirmed {
                account_key: "1".into()
            }]
        );
        let numeric_id = decode_subscription_outcomes(
            br#"{"accountKeys":[{"id":1234,"status":200}]}"#,
            &["1234"],
        )
        .unwrap();
        assert!(numeric_id[0].is_subscribed());
    }

    #[test]
    fn subscribed_keys_as_strings_or_objects() {
        assert_eq!(
            decode_subscribed_account_keys(br#"{"accountKeys":["1","2"]}"#).unwrap(),
            vec!["1", "2"]
        );
        assert_eq!(
            decode_subscribed_account_keys(br#"{"accountKeys":[{"id":"1","events":["ENDING"]},{"accountKey":"2"}],"userKeys":[]}"#).unwrap(),
            vec!["1", "2"]
        );
        assert_eq!(
            decode_subscribed_account_keys(br#"{"items":[{"value":"9"}]}"#).unwrap(),
            vec!["9"]
        );
        assert!(decode_subscribed_account_keys(br#"{}"#).unwrap().is_empty());
    }

    #[test]
    fn lifetime_body_variants() {
        assert_eq!(decode_lifetime(br#"{"channelLifetime":1200}"#), Some(1200));
        assert_eq!(decode_lifetime(b"3600"), Some(3600));
        assert_eq!(decode_lifetime(br#"{"other":1}"#), None);
        assert_eq!(decode_lifetime(b""), None);
        assert_eq!(
            decode_lifetime(br#"{"channelLifetime":0}"#),
            None,
            "0 is not stated"
        );
        assert_eq!(decode_lifetime(b"0"), None);
    }
}
