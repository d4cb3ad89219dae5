//! Contract: the client under every simulator fault that touches the REST APIs or tokens.
//!
//! Injected 429 and 5xx answers (retried to success below rate 1, given up on with the endpoint
//! named at rate 1, never retried for channel creation), `Retry-After` present or not, channels
//! deleted behind the client's back, unrecoverable states and back-fill retention, and the
//! client-side rate limiter against the simulator's limit. Token revocation and expiry are in
//! `contract_auth.rs`.

mod contract_support;

use std::time::{Duration, SystemTime};

use callbridge::goto::{
    AccountSubscription, ChannelRequest, ConversationEvents, GotoClient, GotoError,
};
use callbridge::simulator::RunningSimulator;
use contract_support::*;
use serde_json::{json, Value};

const WEBSOCKET: ChannelRequest = ChannelRequest::WebSocket { lifetime: None };

/// A client with a token and one channel, created before any fault is switched on (channel
/// creation is deliberately not retried).
async fn client_with_channel(sim: &RunningSimulator, max_attempts: u32) -> (GotoClient, String) {
    let mut cfg = client_config(sim);
    cfg.max_attempts = max_attempts;
    let client = client_with(cfg);
    let channel = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap()
        .channel_id;
    (client, channel)
}

fn fault_count(sim: &RunningSimulator, name: &str) -> u64 {
    sim.control().ground_truth().fault_count(name)
}

#[tokio::test]
async fn injected_429s_below_rate_one_are_retried_to_success() {
    let sim = start(sim_config()).await;
    let (client, channel) = client_with_channel(&sim, 10).await;
    sim.control()
        .patch_faults(&json!({"seed": 7, "rest_429_rate": 0.3}))
        .unwrap();
    for _ in 0..30 {
        let got = client.get_channel("bridge-ws", &channel).await.unwrap();
        assert!(got.is_some());
    }
    let injected = fault_count(&sim, "rest429");
    assert!(injected > 0, "premise: some 429s were injected");
    assert_eq!(answered(&sim, "notification-channel", 429), injected);
    assert_eq!(answered(&sim, "notification-channel", 200), 30);
}

#[tokio::test]
async fn injected_5xx_below_rate_one_are_retried_to_success() {
    let sim = start(sim_config()).await;
    let (client, channel) = client_with_channel(&sim, 10).await;
    sim.control()
        .patch_faults(&json!({"seed": 7, "rest_5xx_rate": 0.3}))
        .unwrap();
    for _ in 0..30 {
        let got = client.get_channel("bridge-ws", &channel).await.unwrap();
        assert!(got.is_some());
    }
    let injected = fault_count(&sim, "rest5xx");
    assert!(injected > 0, "premise: some 503s were injected");
    assert_eq!(answered(&sim, "notification-channel", 503), injected);
    assert_eq!(answered(&sim, "notification-channel", 200), 30);
}

/// The token endpoint is behind the same faults: the first token is obtained anyway.
#[tokio::test]
async fn injected_faults_on_the_token_endpoint_are_retried_to_success() {
    let mut c = sim_config();
    c.faults.seed = 3;
    c.faults.rest_5xx_rate = 0.5;
    let sim = start(c).await;
    let mut cfg = client_config(&sim);
    cfg.max_attempts = 20;
    let client = client_with(cfg);
    client.check_credentials().await.unwrap();
    assert_eq!(client.token_refreshes(), 1);
    assert_eq!(answered(&sim, "oauth", 200), 1);
}

/// Every idempotent call gives up after `max_attempts` with an error naming its endpoint.
async fn every_call_gives_up(fault: &str, status: u16, code: &str) {
    let sim = start(sim_config()).await;
    let (client, channel) = client_with_channel(&sim, 3).await;
    sim.control().patch_faults(&json!({ fault: 1.0 })).unwrap();
    let (start_time, end_time) = (SystemTime::now(), SystemTime::now());
    let keys = [A1.to_owned()];
    let results: Vec<(&str, GotoError)> = vec![
        (
            "GET /notification-channel/v1/channels/{nickname}/{channelId}",
            client
                .get_channel("bridge-ws", &channel)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "GET /notification-channel/v1/channels",
            client.list_channels().await.map(|_| ()).unwrap_err(),
        ),
        (
            "PUT /notification-channel/v1/channels/{nickname}/{channelId}",
            client
                .refresh_channel("bridge-ws", &channel, &WEBSOCKET)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "PUT /notification-channel/v1/channels/{nickname}/{channelId}/channel-lifetime",
            client
                .extend_channel_lifetime("bridge-ws", &channel)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "DELETE /notification-channel/v1/channels/{nickname}/{channelId}",
            client
                .delete_channel("bridge-ws", &channel)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "POST /call-events/v1/subscriptions",
            client
                .subscribe_call_events(&channel, &[AccountSubscription::all_events(A1)])
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "GET /call-events/v1/subscriptions",
            client
                .call_event_subscriptions(&channel)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "GET /call-events/v1/conversation-spaces/{conversationSpaceId}/events",
            client
                .conversation_events("c", None, None)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "GET /call-events/v1/conversation-spaces",
            client
                .active_conversations(&keys)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "GET /call-events-report/v1/reports/{conversationSpaceId}",
            client.report("c").await.map(|_| ()).unwrap_err(),
        ),
        (
            "GET /call-events-report/v1/report-summaries",
            client
                .report_summaries(A1, start_time, end_time)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "POST /call-events-report/v1/subscriptions",
            client
                .subscribe_reports(&channel, &keys)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
    ];
    for (template, err) in &results {
        match err {
            GotoError::RetriesExhausted {
                endpoint, attempts, ..
            } => {
                assert_eq!(endpoint.template, template.split_once(' ').unwrap().1);
                assert_eq!(*attempts, 3);
            }
            other => panic!("{template}: expected RetriesExhausted, got {other:?}"),
        }
        assert_eq!(err.status(), Some(status), "{template}");
        assert_eq!(err.error_code(), Some(code), "{template}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{template}: gave up after 3 attempts")),
            "{text}"
        );
        assert!(text.contains(&format!("HTTP {status} {code}")), "{text}");
        assert_no_secrets(&format!("{err} {err:?}"));
    }
    let total: u64 = ["notification-channel", "call-events", "call-events-report"]
        .iter()
        .map(|api| answered(&sim, api, status))
        .sum();
    assert_eq!(total, 3 * results.len() as u64, "three attempts per call");
}

#[tokio::test]
async fn injected_429_at_rate_one_exhausts_retries_naming_the_endpoint() {
    every_call_gives_up("rest_429_rate", 429, "TOO_MANY_REQUESTS").await;
}

#[tokio::test]
async fn injected_5xx_at_rate_one_exhausts_retries_naming_the_endpoint() {
    every_call_gives_up("rest_5xx_rate", 503, "UNKNOWN_ERROR").await;
}

#[tokio::test]
async fn token_endpoint_failing_for_good_exhausts_retries() {
    let mut c = sim_config();
    c.faults.rest_5xx_rate = 1.0;
    let sim = start(c).await;
    let err = client(&sim).check_credentials().await.unwrap_err();
    assert!(
        matches!(&err, GotoError::RetriesExhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(503));
    let text = err.to_string();
    assert!(
        text.starts_with("POST /oauth/token: gave up after 4 attempts"),
        "{text}"
    );
    assert_no_secrets(&format!("{err} {err:?}"));
    assert_eq!(answered(&sim, "oauth", 503), 4);
}

/// A failed create may or may not have made the channel, so it is not repeated blindly.
#[tokio::test]
async fn channel_creation_is_not_retried_on_5xx() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.check_credentials().await.unwrap();
    sim.control()
        .patch_faults(&json!({"rest_5xx_rate": 1.0}))
        .unwrap();
    let err = client
        .create_channel("bridge-ws", &WEBSOCKET)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GotoError::Api { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(requests(&sim, "notification-channel"), 1);
}

#[tokio::test]
async fn retry_after_header_is_honoured() {
    let mut c = sim_config();
    c.rate_limit.retry_after_seconds = Some(1);
    let sim = start(c).await;
    let (client, channel) = client_with_channel(&sim, 2).await;
    sim.control()
        .patch_faults(&json!({"rest_429_rate": 1.0}))
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = client.get_channel("bridge-ws", &channel).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    assert_eq!(answered(&sim, "notification-channel", 429), 2);
}

#[tokio::test]
async fn missing_retry_after_header_falls_back_to_backoff() {
    let sim = start(sim_config()).await;
    let (client, channel) = client_with_channel(&sim, 2).await;
    sim.control()
        .patch_faults(&json!({"rest_429_rate": 1.0}))
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = client.get_channel("bridge-ws", &channel).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), None);
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    assert_eq!(answered(&sim, "notification-channel", 429), 2);
}

#[tokio::test]
async fn channel_deleted_behind_the_clients_back() {
    let sim = start(sim_config()).await;
    let (client, channel) = client_with_channel(&sim, 3).await;
    assert!(sim.control().delete_channel(&channel));
    assert!(client
        .get_channel("bridge-ws", &channel)
        .await
        .unwrap()
        .is_none());
    assert!(!client.delete_channel("bridge-ws", &channel).await.unwrap());
    assert!(client.list_channels().await.unwrap().is_empty());
    let err = client
        .subscribe_call_events(&channel, &[AccountSubscription::all_events(A1)])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn scheduled_channel_deletion_is_seen_by_get() {
    let mut c = sim_config();
    c.faults.channel_delete_every = Some(Duration::from_millis(100));
    let sim = start(c).await;
    let (client, channel) = client_with_channel(&sim, 3).await;
    eventually(Duration::from_secs(5), async || {
        client
            .get_channel("bridge-ws", &channel)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(fault_count(&sim, "channelDeleted") >= 1);
    assert!(!client.delete_channel("bridge-ws", &channel).await.unwrap());
}

#[tokio::test]
async fn backfill_and_report_leave_out_exactly_the_unrecoverable_states() {
    let mut c = with_traffic(sim_config(), 4, 8, 12);
    c.faults.seed = 11;
    c.faults.unrecoverable_rate = 0.3;
    c.call_events.page_size_cap = 3;
    let sim = start(c).await;
    let truth = traffic_done(&sim).await;
    assert!(
        !truth.unrecoverable.is_empty(),
        "premise: some states are unrecoverable"
    );
    let client = client(&sim);
    for call in &truth.calls {
        let csid = &call.conversation_space_id;
        let lost: Vec<u64> = truth
            .unrecoverable
            .iter()
            .filter(|r| &r.conversation_space_id == csid)
            .map(|r| r.sequence_number)
            .collect();
        let expected: Vec<u64> = call
            .states
            .iter()
            .map(|s| s.sequence_number)
            .filter(|n| !lost.contains(n))
            .collect();
        let ConversationEvents::Found(states) =
            client.conversation_events(csid, None, None).await.unwrap()
        else {
            panic!("{csid} not found");
        };
        let got: Vec<u64> = states.iter().map(|s| s.sequence_number).collect();
        assert_eq!(got, expected, "back-fill of {csid}");
        for s in &states {
            let v: Value = serde_json::from_str(s.state.get()).unwrap();
            let record = call
                .states
                .iter()
                .find(|r| r.sequence_number == s.sequence_number)
                .unwrap();
            assert_eq!(v, record.state);
        }
        let report: Value =
            serde_json::from_str(client.report(csid).await.unwrap().unwrap().get()).unwrap();
        let in_report: Vec<u64> = report["callStates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sequenceNumber"].as_u64().unwrap())
            .collect();
        assert_eq!(in_report, expected, "report of {csid}");
    }
}

#[tokio::test]
async fn backfill_past_retention_is_not_found_and_returns_within_it() {
    let sim = start(with_traffic(sim_config(), 2, 4, 6)).await;
    let truth = traffic_done(&sim).await;
    let client = client(&sim);
    sim.control()
        .patch_faults(&json!({"retention": "1h"}))
        .unwrap();
    for call in &truth.calls {
        let events = client
            .conversation_events(&call.conversation_space_id, None, None)
            .await
            .unwrap();
        let ConversationEvents::Found(states) = events else {
            panic!("within retention, yet not found");
        };
        assert_eq!(states.len(), call.states.len());
    }
    sim.control()
        .patch_faults(&json!({"retention": "1ms"}))
        .unwrap();
    for call in &truth.calls {
        eventually(Duration::from_secs(2), async || {
            matches!(
                client
                    .conversation_events(&call.conversation_space_id, None, None)
                    .await
                    .unwrap(),
                ConversationEvents::NotFound
            )
            .then_some(())
        })
        .await;
    }
    assert_eq!(sim.control().ground_truth().retention_ms, Some(1));
}

/// Sends `n` concurrent reads of one channel; returns the simulator's notification-channel
/// counters (429s, busiest second), the client's limiter waits and the time it all took.
async fn burst(sim_rps: u32, client_rps: u32, n: usize) -> (u64, usize, u64, Duration) {
    let mut c = sim_config();
    c.rate_limit.requests_per_second = sim_rps;
    let sim = start(c).await;
    let mut cfg = client_config(&sim);
    cfg.requests_per_second_per_api = client_rps;
    let client = client_with(cfg);
    client.check_credentials().await.unwrap();
    let started = tokio::time::Instant::now();
    let calls = (0..n).map(|_| client.list_channels());
    for result in futures_util::future::join_all(calls).await {
        result.unwrap();
    }
    let took = started.elapsed();
    let stats = sim.control().stats();
    let api = &stats.apis["notification-channel"];
    assert_eq!(api.by_status.get(&200).copied(), Some(n as u64));
    (
        api.too_many_requests,
        api.max_requests_in_one_second,
        client.rate_limit_waits(callbridge::goto::Api::NotificationChannel),
        took,
    )
}

/// GoTo allows 10 requests per second per API (goto-api.md §5); a client limited to the same
/// 10 rps must never be answered 429, whatever window GoTo counts in.
#[tokio::test]
async fn client_rate_limit_keeps_the_simulator_from_answering_429() {
    let (too_many, busiest, waits, _) = burst(10, 10, 40).await;
    assert!(waits > 0, "premise: the client limiter had to wait");
    assert_eq!(too_many, 0, "busiest second held {busiest} requests");
    assert!(busiest <= 10, "{busiest}");
}

/// What the client limiter does guarantee today: requests are paced at its rate after a
/// burst of one second's worth, so a server allowing more never answers 429.
#[tokio::test]
async fn client_rate_limit_paces_requests_under_a_looser_simulator_limit() {
    let (too_many, busiest, waits, took) = burst(30, 10, 25).await;
    assert!(
        waits >= 10,
        "requests beyond the burst of 10 waited: {waits}"
    );
    assert_eq!(too_many, 0);
    // 10 at once, then one per 100 ms: the 25th leaves at 1.5 s.
    assert!(took >= Duration::from_millis(1450), "{took:?}");
    // The bucket's bound is 2 x rate in a sliding second; one extra for arrival jitter.
    assert!(busiest <= 21, "{busiest}");
}

/// Back-fill past its retention is answered from the call's report, which keeps every state:
/// the sequencer's source must not declare a gap GoTo can still fill.
#[tokio::test]
async fn a_gap_past_backfill_retention_is_filled_from_the_report() {
    use callbridge::sequencer::shell::{BackfillSource, Fetched};
    let sim = start(with_traffic(sim_config(), 2, 4, 6)).await;
    let truth = traffic_done(&sim).await;
    let client = client(&sim);
    sim.control()
        .patch_faults(&json!({"retention": "1ms"}))
        .unwrap();
    for call in &truth.calls {
        let csid = call.conversation_space_id.as_str();
        eventually(Duration::from_secs(2), async || {
            matches!(
                client.conversation_events(csid, None, None).await.unwrap(),
                ConversationEvents::NotFound
            )
            .then_some(())
        })
        .await;
        let last = call.states.len() as u64;
        // A gap of states 2..=last-1, as the sequencer would ask.
        let Fetched::States(states) = client.fetch(csid, 2, Some(last - 1)).await else {
            panic!("{csid}: not filled from the report");
        };
        let seqs: Vec<u64> = states.iter().map(|s| s.sequence_number).collect();
        assert_eq!(seqs, (2..last).collect::<Vec<_>>(), "{csid}");
        for s in &states {
            let expected = &call.states[(s.sequence_number - 1) as usize].state;
            let got: Value = serde_json::from_str(s.state.get()).unwrap();
            assert_eq!(&got, expected, "{csid} state {}", s.sequence_number);
        }
    }
    assert!(answered(&sim, "call-events-report", 200) >= truth.calls.len() as u64);
}
