//! Contract: what an operator reads when GoTo says no.
//!
//! Every API error the simulator can answer, per API and per status (400, 401, 403, 404, 429,
//! 503), must come out of the client as an error whose text names the endpoint, the HTTP
//! status and GoTo's `errorCode`, and never shows a credential or a token, in `Display` or
//! `Debug`, whichever credential the client was configured with.

mod contract_support;

use std::time::{Duration, SystemTime};

use callbridge::goto::{
    AccountSubscription, ChannelRequest, Credential, GotoClient, GotoError, Secret,
};
use callbridge::simulator::{RunningSimulator, SimulatorConfig};
use contract_support::*;
use serde_json::json;

const WEBSOCKET: ChannelRequest = ChannelRequest::WebSocket { lifetime: None };

/// One expected error: endpoint as `METHOD template`, status, errorCode.
struct Expected {
    endpoint: &'static str,
    status: u16,
    code: &'static str,
}

fn check(expected: &Expected, err: &GotoError) {
    let text = err.to_string();
    assert!(
        text.starts_with(expected.endpoint),
        "endpoint not named first: {text}"
    );
    assert!(
        text.contains(&format!("HTTP {} {}", expected.status, expected.code)),
        "status and errorCode not named: {text}"
    );
    assert_eq!(err.status(), Some(expected.status), "{text}");
    assert_eq!(err.error_code(), Some(expected.code), "{text}");
    assert_no_secrets(&format!("{err} {err:?}"));
}

fn both_credentials(sim: &RunningSimulator) -> [GotoClient; 2] {
    let pat = client(sim);
    let mut cfg = client_config(sim);
    cfg.credential = Credential::RefreshToken(Secret::new(REFRESH_TOKEN));
    [pat, client_with(cfg)]
}

#[tokio::test]
async fn bad_requests_of_every_api() {
    let sim = start(sim_config()).await;
    let receiver = Receiver::start(500).await;
    for client in both_credentials(&sim) {
        let channel = client
            .create_channel("bridge-ws", &WEBSOCKET)
            .await
            .unwrap()
            .channel_id;
        let err = client
            .create_channel(
                "bridge-hook",
                &ChannelRequest::Webhook {
                    url: receiver.url.clone(),
                },
            )
            .await
            .unwrap_err();
        check(
            &Expected {
                endpoint: "POST /notification-channel/v1/channels/{nickname}",
                status: 400,
                code: "BAD_REQUEST",
            },
            &err,
        );
        // goto-api.md §3.1: REPORT_SUMMARY is not a call-events event type.
        let err = client
            .subscribe_call_events(
                &channel,
                &[AccountSubscription {
                    account_key: A1.to_owned(),
                    events: Some(vec!["REPORT_SUMMARY".into()]),
                }],
            )
            .await
            .unwrap_err();
        check(
            &Expected {
                endpoint: "POST /call-events/v1/subscriptions",
                status: 400,
                code: "BAD_REQUEST",
            },
            &err,
        );
        assert!(err.to_string().contains("Events[0]: INVALID"), "{err}");
        let now = SystemTime::now();
        let err = client
            .report_summaries(A1, now, now - Duration::from_secs(60))
            .await
            .unwrap_err();
        check(
            &Expected {
                endpoint: "GET /call-events-report/v1/report-summaries",
                status: 400,
                code: "BAD_REQUEST",
            },
            &err,
        );
    }
}

/// Tokens the simulator refuses as soon as they are issued: the client refreshes once, is
/// refused again, and reports GoTo's 401.
#[tokio::test]
async fn unauthorized_on_every_api() {
    let mut c = sim_config();
    c.auth.access_token_lifetime = Duration::ZERO;
    let sim = start(c).await;
    for client in both_credentials(&sim) {
        let expected = |endpoint| Expected {
            endpoint,
            status: 401,
            code: "AUTHN_EXPIRED_TOKEN",
        };
        check(
            &expected("GET /notification-channel/v1/channels"),
            &client.list_channels().await.unwrap_err(),
        );
        check(
            &expected("GET /call-events/v1/conversation-spaces/{conversationSpaceId}/events"),
            &client
                .conversation_events("c", None, None)
                .await
                .unwrap_err(),
        );
        check(
            &expected("GET /call-events-report/v1/reports/{conversationSpaceId}"),
            &client.report("c").await.unwrap_err(),
        );
    }
    assert_eq!(
        answered(&sim, "notification-channel", 401),
        4,
        "one re-send after a refresh, per client"
    );
}

#[tokio::test]
async fn forbidden_without_the_scope() {
    let mut c = sim_config();
    c.auth.scopes = vec!["call-events.v1.notifications.manage".into()];
    let sim = start(c).await;
    for client in both_credentials(&sim) {
        let expected = |endpoint| Expected {
            endpoint,
            status: 403,
            code: "AUTHZ_INSUFFICIENT_SCOPE",
        };
        check(
            &expected("GET /call-events/v1/conversation-spaces/{conversationSpaceId}/events"),
            &client
                .conversation_events("c", None, None)
                .await
                .unwrap_err(),
        );
        check(
            &expected("GET /call-events/v1/conversation-spaces"),
            &client
                .active_conversations(&[A1.to_owned()])
                .await
                .unwrap_err(),
        );
        let now = SystemTime::now();
        check(
            &expected("GET /call-events-report/v1/report-summaries"),
            &client
                .report_summaries(A1, now - Duration::from_secs(60), now)
                .await
                .unwrap_err(),
        );
    }
}

#[tokio::test]
async fn not_found_on_every_api() {
    let sim = start(sim_config()).await;
    for client in both_credentials(&sim) {
        let channel = client
            .create_channel("bridge-ws", &WEBSOCKET)
            .await
            .unwrap()
            .channel_id;
        check(
            &Expected {
                endpoint: "PUT /notification-channel/v1/channels/{nickname}/{channelId}",
                status: 404,
                code: "RTC-NOTIFICATION-CHANNEL-NOT-FOUND",
            },
            &client
                .refresh_channel("bridge-ws", "gone", &WEBSOCKET)
                .await
                .unwrap_err(),
        );
        check(
            &Expected {
                endpoint: "POST /call-events/v1/subscriptions",
                status: 404,
                code: "NOT_FOUND",
            },
            &client
                .subscribe_call_events("gone", &[AccountSubscription::all_events(A1)])
                .await
                .unwrap_err(),
        );
        check(
            &Expected {
                endpoint: "POST /call-events-report/v1/subscriptions",
                status: 404,
                code: "NOT_FOUND",
            },
            &client
                .subscribe_reports(&channel, &["999".to_owned()])
                .await
                .unwrap_err(),
        );
    }
}

async fn exhausted(config: SimulatorConfig, fault: &str, status: u16, code: &'static str) {
    let sim = start(config).await;
    for client in both_credentials(&sim) {
        client.check_credentials().await.unwrap();
        sim.control().patch_faults(&json!({ fault: 1.0 })).unwrap();
        let err = client.list_channels().await.unwrap_err();
        assert!(matches!(err, GotoError::RetriesExhausted { .. }), "{err:?}");
        check(
            &Expected {
                endpoint: "GET /notification-channel/v1/channels",
                status,
                code,
            },
            &err,
        );
        sim.control().patch_faults(&json!({ fault: 0.0 })).unwrap();
    }
}

#[tokio::test]
async fn too_many_requests_with_retry_after() {
    let mut c = sim_config();
    c.rate_limit.retry_after_seconds = Some(0);
    exhausted(c, "rest_429_rate", 429, "TOO_MANY_REQUESTS").await;
}

#[tokio::test]
async fn service_unavailable() {
    exhausted(sim_config(), "rest_5xx_rate", 503, "UNKNOWN_ERROR").await;
}

/// GoTo's messages may quote what the request sent. A channel create refused with a message and
/// a constraint that quote the webhook URL (whose last segment is the webhook's shared secret)
/// must not carry the secret into the error, whose text goes to the log and, as the channel's
/// failure, to `/readyz`. The simulator answers the token; a stand-in for GoTo's channel API
/// answers the refusal (the simulator's own refusal does not quote the URL).
#[tokio::test]
async fn a_refusal_quoting_the_webhook_url_does_not_show_its_secret() {
    use axum::routing::post;
    const WEBHOOK_SECRET: &str = "0123456789abcdef0123456789abcdef-webhook";
    let sim = start(sim_config()).await;
    let refuse = |body: axum::body::Bytes| async move {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let url = v["webhookChannelData"]["webhook"]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "reference": "ref-1",
                "errorCode": "BAD_REQUEST",
                "message": format!("Webhook URL {url} could not be verified"),
                "constraints": [{"field": "webhookChannelData.webhook.url", "constraint": url}],
            })),
        )
    };
    let app =
        axum::Router::new().route("/notification-channel/v1/channels/{nickname}", post(refuse));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let goto = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut cfg = client_config(&sim);
    cfg.api_base_url = goto;
    let err = client_with(cfg)
        .create_channel(
            "bridge-hook",
            &ChannelRequest::Webhook {
                url: format!("https://bridge.example.com/goto/webhook/{WEBHOOK_SECRET}"),
            },
        )
        .await
        .unwrap_err();
    check(
        &Expected {
            endpoint: "POST /notification-channel/v1/channels/{nickname}",
            status: 400,
            code: "BAD_REQUEST",
        },
        &err,
    );
    let shown = format!("{err} / {err:?}");
    assert!(
        !shown.contains(WEBHOOK_SECRET),
        "the webhook secret leaked into the error"
    );
    assert!(
        shown.contains("Webhook URL https://bridge.example.com/… could not be verified"),
        "the quoted URL keeps its host: {err}"
    );
    sim.shutdown().await;
}
