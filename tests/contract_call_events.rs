//! Contract: the client's Call Events calls against the simulator's Call Events API.
//!
//! Subscriptions (207 with a verdict per account key), reading them back, back-fill across
//! several pages in both response shapes and both last-page conventions, participant `id` vs
//! `participantId`, Webhook channels refused, and active conversations. Back-filled states are
//! compared with the simulator's ground truth and with the bytes on the wire: the bridge must
//! pass GoTo's JSON on untouched, unknown fields included.

mod contract_support;

use std::time::Duration;

use callbridge::goto::{
    AccountSubscription, BackfilledState, ChannelRequest, ConversationEvents, GotoClient,
    GotoError, SubscriptionOutcome,
};
use callbridge::simulator::config::{BackfillShape, LastPageMarker};
use callbridge::simulator::traffic::{ParticipantIdField, UNKNOWN_FIELD_NAMES};
use callbridge::simulator::{GroundTruth, RunningSimulator, SimulatorConfig};
use contract_support::*;
use serde_json::value::RawValue;
use serde_json::Value;

const WEBSOCKET: ChannelRequest = ChannelRequest::WebSocket { lifetime: None };

async fn websocket_channel(client: &GotoClient) -> String {
    client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap()
        .channel_id
}

#[tokio::test]
async fn subscribe_reports_every_item_good_and_failing() {
    let mut c = sim_config();
    c.call_events.forbidden_account_keys = vec![A2.to_owned()];
    let sim = start(c).await;
    let client = client(&sim);
    let channel = websocket_channel(&client).await;
    let outcomes = client
        .subscribe_call_events(
            &channel,
            &[
                AccountSubscription {
                    account_key: A1.to_owned(),
                    events: Some(vec!["STARTING".into(), "ENDING".into()]),
                },
                AccountSubscription::all_events(A2),
                AccountSubscription::all_events("999"),
                AccountSubscription::all_events(A3),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            SubscriptionOutcome::Subscribed {
                account_key: A1.to_owned()
            },
            SubscriptionOutcome::Failed {
                account_key: A2.to_owned(),
                status: 403,
                error_code: Some("AUTHZ_INSUFFICIENT_SCOPE".into()),
                message: Some("Insufficient scope for this account".into()),
                permanent: true,
            },
            SubscriptionOutcome::Failed {
                account_key: "999".to_owned(),
                status: 404,
                error_code: Some("NOT_FOUND".into()),
                message: Some("Account not found".into()),
                permanent: true,
            },
            SubscriptionOutcome::Subscribed {
                account_key: A3.to_owned()
            },
        ]
    );
    assert_eq!(answered(&sim, "call-events", 207), 1);

    let mut subscribed = client.call_event_subscriptions(&channel).await.unwrap();
    subscribed.sort();
    assert_eq!(subscribed, vec![A1.to_owned(), A3.to_owned()]);
}

#[tokio::test]
async fn repeated_subscribe_is_harmless() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let channel = websocket_channel(&client).await;
    for _ in 0..2 {
        let outcomes = client
            .subscribe_call_events(&channel, &[AccountSubscription::all_events(A1)])
            .await
            .unwrap();
        assert!(outcomes[0].is_subscribed(), "{outcomes:?}");
    }
    assert_eq!(
        client.call_event_subscriptions(&channel).await.unwrap(),
        vec![A1.to_owned()]
    );
}

#[tokio::test]
async fn subscriptions_of_a_channel_without_any_are_empty() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let channel = websocket_channel(&client).await;
    assert!(client
        .call_event_subscriptions(&channel)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn subscribe_to_an_unknown_channel_is_a_404_error() {
    let sim = start(sim_config()).await;
    let err = client(&sim)
        .subscribe_call_events("no-such-channel", &[AccountSubscription::all_events(A1)])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some("NOT_FOUND"));
    assert!(
        err.to_string()
            .starts_with("POST /call-events/v1/subscriptions answered HTTP 404 NOT_FOUND"),
        "{err}"
    );
}

/// GoTo unknown #2: call-events may refuse Webhook channels. The operator must be able to see
/// why from the error alone (message and constraints).
#[tokio::test]
async fn webhook_channel_refused_by_call_events_explains_why() {
    let mut c = sim_config();
    c.call_events.require_websocket_channel = true;
    let sim = start(c).await;
    let receiver = Receiver::start(200).await;
    let client = client(&sim);
    let hook = client
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: receiver.url.clone(),
            },
        )
        .await
        .unwrap();
    let err = client
        .subscribe_call_events(&hook.channel_id, &[AccountSubscription::all_events(A1)])
        .await
        .unwrap_err();
    match &err {
        GotoError::Api {
            status,
            error_code,
            message,
            constraints,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error_code.as_deref(), Some("BAD_REQUEST"));
            assert_eq!(
                message.as_deref(),
                Some("The Notification Channel must be a WebSocket channel")
            );
            assert_eq!(constraints.len(), 1);
            assert_eq!(constraints[0].field.as_deref(), Some("channelId"));
            assert_eq!(constraints[0].constraint, "INVALID");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("must be a WebSocket channel"), "{text}");
    assert!(text.contains("[constraints: channelId: INVALID]"), "{text}");
    assert!(!err.is_retryable());

    // The same simulator accepts a WebSocket channel.
    let ws = websocket_channel(&client).await;
    let outcomes = client
        .subscribe_call_events(&ws, &[AccountSubscription::all_events(A1)])
        .await
        .unwrap();
    assert!(outcomes[0].is_subscribed());
}

#[tokio::test]
async fn webhook_channel_accepted_by_call_events_when_allowed() {
    let sim = start(sim_config()).await;
    let receiver = Receiver::start(200).await;
    let client = client(&sim);
    let hook = client
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: receiver.url.clone(),
            },
        )
        .await
        .unwrap();
    let outcomes = client
        .subscribe_call_events(&hook.channel_id, &[AccountSubscription::all_events(A1)])
        .await
        .unwrap();
    assert!(outcomes[0].is_subscribed(), "{outcomes:?}");
}

/// Three calls of 6..10 states, back-fill pages of two states.
fn backfill_config() -> SimulatorConfig {
    let mut c = with_traffic(sim_config(), 3, 6, 10);
    c.call_events.page_size_cap = 2;
    c
}

fn values(states: &[BackfilledState]) -> Vec<Value> {
    states
        .iter()
        .map(|s| serde_json::from_str(s.state.get()).unwrap())
        .collect()
}

/// Back-fills every call in full and compares with the ground truth: same sequence numbers,
/// same state JSON, same metadata, and several pages followed.
async fn assert_backfill_matches_ground_truth(sim: &RunningSimulator, truth: &GroundTruth) {
    let client = client(sim);
    assert_eq!(truth.calls.len(), 3);
    for call in &truth.calls {
        let before = requests(sim, "call-events");
        let ConversationEvents::Found(states) = client
            .conversation_events(&call.conversation_space_id, None, None)
            .await
            .unwrap()
        else {
            panic!("call {} not found", call.conversation_space_id);
        };
        let pages = requests(sim, "call-events") - before;
        assert_eq!(
            pages as usize,
            call.states.len().div_ceil(2),
            "pages of two followed to the end"
        );
        let seqs: Vec<u64> = states.iter().map(|s| s.sequence_number).collect();
        let expected: Vec<u64> = call.states.iter().map(|s| s.sequence_number).collect();
        assert_eq!(seqs, expected);
        let expected_states: Vec<Value> = call.states.iter().map(|s| s.state.clone()).collect();
        assert_eq!(values(&states), expected_states);
        for s in &states {
            let metadata: Value =
                serde_json::from_str(s.metadata.as_ref().expect("metadata").get()).unwrap();
            assert_eq!(metadata, call.metadata);
        }
    }
}

/// Premise check: the simulator really ends a one-page answer the configured way.
async fn assert_last_page_marker(sim: &RunningSimulator, truth: &GroundTruth, empty: bool) {
    let token = raw_token(sim).await;
    let csid = &truth.calls[0].conversation_space_id;
    let (status, body) = raw_get(
        sim,
        &token,
        &format!("/call-events/v1/conversation-spaces/{csid}/events?sequenceFrom=1&sequenceTo=1"),
    )
    .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    if empty {
        assert_eq!(page["nextPageMarker"], "", "{body}");
    } else {
        assert!(page.get("nextPageMarker").is_none(), "{body}");
    }
}

#[tokio::test]
async fn backfill_states_shape_with_absent_last_marker() {
    let mut c = backfill_config();
    c.call_events.backfill_shape = BackfillShape::States;
    c.call_events.last_page_marker = LastPageMarker::Absent;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    assert_last_page_marker(&sim, &truth, false).await;
    assert_backfill_matches_ground_truth(&sim, &truth).await;
}

#[tokio::test]
async fn backfill_states_shape_with_empty_last_marker() {
    let mut c = backfill_config();
    c.call_events.backfill_shape = BackfillShape::States;
    c.call_events.last_page_marker = LastPageMarker::Empty;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    assert_last_page_marker(&sim, &truth, true).await;
    assert_backfill_matches_ground_truth(&sim, &truth).await;
}

#[tokio::test]
async fn backfill_items_shape_with_absent_last_marker() {
    let mut c = backfill_config();
    c.call_events.backfill_shape = BackfillShape::Items;
    c.call_events.last_page_marker = LastPageMarker::Absent;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    assert_last_page_marker(&sim, &truth, false).await;
    assert_backfill_matches_ground_truth(&sim, &truth).await;
}

#[tokio::test]
async fn backfill_items_shape_with_empty_last_marker() {
    let mut c = backfill_config();
    c.call_events.backfill_shape = BackfillShape::Items;
    c.call_events.last_page_marker = LastPageMarker::Empty;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    assert_last_page_marker(&sim, &truth, true).await;
    assert_backfill_matches_ground_truth(&sim, &truth).await;
}

#[tokio::test]
async fn backfill_with_participant_id_field() {
    let mut c = backfill_config();
    c.traffic.participant_id_field = ParticipantIdField::ParticipantId;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    let has_participant_id = truth.calls.iter().flat_map(|c| &c.states).any(|s| {
        s.state["participants"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.get("participantId").is_some()))
    });
    assert!(
        has_participant_id,
        "premise: participants keyed participantId"
    );
    assert_backfill_matches_ground_truth(&sim, &truth).await;
}

#[tokio::test]
async fn backfill_with_participant_id_field_id() {
    let mut c = backfill_config();
    c.traffic.participant_id_field = ParticipantIdField::Id;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    let has_id = truth.calls.iter().flat_map(|c| &c.states).any(|s| {
        s.state["participants"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.get("id").is_some()))
    });
    assert!(has_id, "premise: participants keyed id");
    assert_backfill_matches_ground_truth(&sim, &truth).await;
}

#[tokio::test]
async fn backfill_bounds_are_inclusive_across_pages() {
    let sim = start(backfill_config()).await;
    let truth = traffic_done(&sim).await;
    let client = client(&sim);
    let call = &truth.calls[0];
    let before = requests(&sim, "call-events");
    let ConversationEvents::Found(states) = client
        .conversation_events(&call.conversation_space_id, Some(2), Some(5))
        .await
        .unwrap()
    else {
        panic!("not found");
    };
    assert_eq!(
        requests(&sim, "call-events") - before,
        2,
        "two pages of two"
    );
    let seqs: Vec<u64> = states.iter().map(|s| s.sequence_number).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    let expected: Vec<Value> = call.states[1..5].iter().map(|s| s.state.clone()).collect();
    assert_eq!(values(&states), expected);

    // A single state, GoTo's guide style (from = to = n).
    let ConversationEvents::Found(one) = client
        .conversation_events(&call.conversation_space_id, Some(6), Some(6))
        .await
        .unwrap()
    else {
        panic!("not found");
    };
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].sequence_number, 6);
}

#[tokio::test]
async fn backfill_of_an_unknown_conversation_is_not_found() {
    let sim = start(sim_config()).await;
    let events = client(&sim)
        .conversation_events("no-such-conversation", None, None)
        .await
        .unwrap();
    assert!(matches!(events, ConversationEvents::NotFound), "{events:?}");
}

#[derive(serde::Deserialize)]
struct RawStatesPage<'a> {
    #[serde(borrow)]
    states: Vec<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct RawItem<'a> {
    #[serde(borrow)]
    state: &'a RawValue,
}

#[derive(serde::Deserialize)]
struct RawItemsPage<'a> {
    #[serde(borrow)]
    items: Vec<RawItem<'a>>,
}

/// The state text the client returns is byte-for-byte the text on the wire (not a
/// re-serialisation), and the undocumented fields the simulator sprinkles are in it.
async fn assert_raw_bytes_survive(shape: BackfillShape) {
    let mut c = with_traffic(sim_config(), 3, 6, 10);
    c.call_events.backfill_shape = shape;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    let client = client(&sim);
    let token = raw_token(&sim).await;
    let mut unknown_seen = 0;
    for call in &truth.calls {
        let csid = &call.conversation_space_id;
        let ConversationEvents::Found(states) =
            client.conversation_events(csid, None, None).await.unwrap()
        else {
            panic!("not found");
        };
        let (status, body) = raw_get(
            &sim,
            &token,
            &format!("/call-events/v1/conversation-spaces/{csid}/events?pageSize=100"),
        )
        .await;
        assert_eq!(status, 200);
        let wire: Vec<&str> = match shape {
            BackfillShape::States => serde_json::from_str::<RawStatesPage<'_>>(&body)
                .unwrap()
                .states
                .iter()
                .map(|r| r.get())
                .collect(),
            BackfillShape::Items => serde_json::from_str::<RawItemsPage<'_>>(&body)
                .unwrap()
                .items
                .iter()
                .map(|i| i.state.get())
                .collect(),
        };
        let from_client: Vec<&str> = states.iter().map(|s| s.state.get()).collect();
        assert_eq!(from_client, wire);
        unknown_seen += from_client
            .iter()
            .filter(|text| UNKNOWN_FIELD_NAMES.iter().any(|n| text.contains(n)))
            .count();
    }
    assert!(unknown_seen > 0, "no state carried an undocumented field");
}

#[tokio::test]
async fn backfilled_state_bytes_are_the_wire_bytes_states_shape() {
    assert_raw_bytes_survive(BackfillShape::States).await;
}

#[tokio::test]
async fn backfilled_state_bytes_are_the_wire_bytes_items_shape() {
    assert_raw_bytes_survive(BackfillShape::Items).await;
}

/// Active conversations: the last state of each open call of the given accounts, every page.
#[tokio::test]
async fn active_conversations_lists_every_open_call_across_pages() {
    let mut c = sim_config();
    c.scheduler.autostart = true;
    c.scheduler.calls = 5;
    c.scheduler.calls_per_second = 0.0;
    // Long calls: they stay open for the whole test.
    c.traffic.min_states = 40;
    c.traffic.max_states = 40;
    c.traffic.mean_state_interval = Duration::from_secs(2);
    c.call_events.page_size_cap = 2;
    let sim = start(c).await;
    let control = sim.control();
    eventually(Duration::from_secs(5), async || {
        (control.traffic_status().calls_started == 5).then_some(())
    })
    .await;
    let truth = control.ground_truth();
    let client = client(&sim);
    let all_keys: Vec<String> = [A1, A2, A3].iter().map(|k| (*k).to_owned()).collect();
    let before = requests(&sim, "call-events");
    let items = client.active_conversations(&all_keys).await.unwrap();
    assert_eq!(requests(&sim, "call-events") - before, 3, "pages of two");
    let mut listed: Vec<String> = items
        .iter()
        .map(|raw| {
            let v: Value = serde_json::from_str(raw.get()).unwrap();
            assert!(v["state"]["sequenceNumber"].as_u64().unwrap() >= 1);
            v["metadata"]["conversationSpaceId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    listed.sort();
    let mut open: Vec<String> = truth
        .calls
        .iter()
        .filter(|c| !c.ended)
        .map(|c| c.conversation_space_id.clone())
        .collect();
    open.sort();
    assert_eq!(listed, open);

    // Filtering by one account key.
    let only_a1 = client.active_conversations(&[A1.to_owned()]).await.unwrap();
    let expected = truth
        .calls
        .iter()
        .filter(|c| !c.ended && c.account_key == A1)
        .count();
    assert_eq!(only_a1.len(), expected);
}
