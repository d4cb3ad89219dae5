//! Contract: the client's Call Events Report calls against the simulator's report API.
//!
//! Reports are the bridge's long-term store once back-fill retention has passed, and report
//! summaries are how a restarted bridge finds the calls it missed; both must decode, page and
//! agree with what the simulator actually generated.

mod contract_support;

use std::time::{Duration, SystemTime};

use callbridge::goto::{ChannelRequest, GotoClient};
use callbridge::simulator::RunningSimulator;
use contract_support::*;
use serde_json::Value;

fn hour_window() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (
        now - Duration::from_secs(3600),
        now + Duration::from_secs(3600),
    )
}

async fn summary_ids(client: &GotoClient, account: &str) -> Vec<String> {
    let (start, end) = hour_window();
    let summaries = client.report_summaries(account, start, end).await.unwrap();
    let mut ids: Vec<String> = summaries
        .iter()
        .map(|raw| {
            let v: Value = serde_json::from_str(raw.get()).unwrap();
            assert_eq!(v["accountKey"], account, "{v}");
            v["conversationSpaceId"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids
}

fn ended_ids(sim: &RunningSimulator, account: &str) -> Vec<String> {
    let mut ids: Vec<String> = sim
        .control()
        .ground_truth()
        .calls
        .iter()
        .filter(|c| c.ended && c.account_key == account)
        .map(|c| c.conversation_space_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn report_is_none_before_the_call_ended_and_complete_after() {
    let mut c = with_traffic(sim_config(), 1, 8, 8);
    c.traffic.mean_state_interval = Duration::from_millis(100);
    let sim = start(c).await;
    let control = sim.control();
    let client = client(&sim);
    let csid = eventually(Duration::from_secs(5), async || {
        let truth = control.ground_truth();
        truth
            .calls
            .first()
            .filter(|c| !c.ended)
            .map(|c| c.conversation_space_id.clone())
    })
    .await;
    assert!(client.report(&csid).await.unwrap().is_none());
    assert!(answered(&sim, "call-events-report", 404) >= 1);

    let truth = traffic_done(&sim).await;
    let call = &truth.calls[0];
    assert!(call.ended);
    let report = client.report(&csid).await.unwrap().expect("report ready");
    let report: Value = serde_json::from_str(report.get()).unwrap();
    assert_eq!(report["conversationSpaceId"], csid.as_str());
    assert_eq!(report["accountKey"], call.account_key.as_str());
    let expected: Vec<Value> = call.states.iter().map(|s| s.state.clone()).collect();
    assert_eq!(report["callStates"], Value::Array(expected));
}

#[tokio::test]
async fn report_of_an_unknown_conversation_is_none() {
    let sim = start(sim_config()).await;
    assert!(client(&sim)
        .report("no-such-conversation")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn report_summaries_list_every_ended_call_of_the_account() {
    let sim = start(with_traffic(sim_config(), 9, 3, 5)).await;
    traffic_done(&sim).await;
    let client = client(&sim);
    for account in [A1, A2, A3] {
        assert_eq!(
            summary_ids(&client, account).await,
            ended_ids(&sim, account)
        );
    }
    assert_eq!(
        [A1, A2, A3]
            .iter()
            .map(|a| ended_ids(&sim, a).len())
            .sum::<usize>(),
        9
    );
}

#[tokio::test]
async fn report_summaries_outside_the_window_are_empty() {
    let sim = start(with_traffic(sim_config(), 3, 3, 4)).await;
    traffic_done(&sim).await;
    let client = client(&sim);
    let past = SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    let summaries = client
        .report_summaries(A1, past, past + Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(summaries.is_empty());
}

/// More summaries than the client's page size (1000): the client must follow the marker.
#[tokio::test]
async fn report_summaries_follow_page_markers() {
    let mut c = with_traffic(sim_config(), 1003, 2, 2);
    c.traffic.account_keys = vec![A1.to_owned()];
    c.traffic.mean_state_interval = Duration::from_millis(1);
    c.scheduler.max_concurrent_calls = 200;
    let sim = start(c).await;
    traffic_done(&sim).await;
    let client = client(&sim);
    let before = requests(&sim, "call-events-report");
    let ids = summary_ids(&client, A1).await;
    assert_eq!(
        requests(&sim, "call-events-report") - before,
        2,
        "two pages"
    );
    assert_eq!(ids.len(), 1003);
    assert_eq!(ids, ended_ids(&sim, A1));
}

/// A GoTo whose summaries page maximum is below the client's 1000 (unknown; "pageSize up to
/// 1000 used" is all goto-api.md §6 says) must still be readable.
#[tokio::test]
async fn report_summaries_follow_page_markers_with_a_small_server_page_size() {
    let mut c = with_traffic(sim_config(), 7, 3, 4);
    c.traffic.account_keys = vec![A1.to_owned()];
    c.reports.max_page_size = 2;
    let sim = start(c).await;
    traffic_done(&sim).await;
    let client = client(&sim);
    let before = requests(&sim, "call-events-report");
    let ids = summary_ids(&client, A1).await;
    assert_eq!(requests(&sim, "call-events-report") - before, 4);
    assert_eq!(ids, ended_ids(&sim, A1));
}

#[tokio::test]
async fn report_subscriptions_are_created_and_read_back() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let channel = client
        .create_channel("bridge-ws", &ChannelRequest::WebSocket { lifetime: None })
        .await
        .unwrap()
        .channel_id;
    let keys = vec![A1.to_owned(), A2.to_owned()];
    client.subscribe_reports(&channel, &keys).await.unwrap();
    // Repeating it is harmless.
    client.subscribe_reports(&channel, &keys).await.unwrap();
    assert_eq!(answered(&sim, "call-events-report", 201), 2);

    let token = raw_token(&sim).await;
    let (status, body) = raw_get(
        &sim,
        &token,
        &format!("/call-events-report/v1/subscriptions?channelId={channel}"),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut subscribed: Vec<&str> = v["accountKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    subscribed.sort();
    assert_eq!(subscribed, vec![A1, A2]);
}

#[tokio::test]
async fn report_subscription_for_an_unknown_account_is_a_404_error() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let channel = client
        .create_channel("bridge-ws", &ChannelRequest::WebSocket { lifetime: None })
        .await
        .unwrap()
        .channel_id;
    let err = client
        .subscribe_reports(&channel, &["999".to_owned()])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some("NOT_FOUND"));
    assert!(
        err.to_string()
            .starts_with("POST /call-events-report/v1/subscriptions answered HTTP 404 NOT_FOUND"),
        "{err}"
    );
}

#[tokio::test]
async fn report_without_the_read_scope_is_a_403_error() {
    let mut c = sim_config();
    c.auth.scopes = vec![
        "call-events.v1.notifications.manage".into(),
        "call-events.v1.events.read".into(),
    ];
    let sim = start(c).await;
    let err = client(&sim).report("any").await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.error_code(), Some("AUTHZ_INSUFFICIENT_SCOPE"));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "GET /call-events-report/v1/reports/{conversationSpaceId} answered HTTP 403 AUTHZ_INSUFFICIENT_SCOPE"
        ),
        "{text}"
    );
    assert_no_secrets(&format!("{err} {err:?}"));
}
