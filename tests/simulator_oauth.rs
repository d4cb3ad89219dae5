//! The simulator's OAuth token endpoint and bearer-token checks.

mod simulator_support;

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use simulator_support::*;

async fn grant(base: &str, user: &str, pass: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/oauth/token"))
        .basic_auth(user, Some(pass))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn pat_grant_has_loa_and_no_refresh_token() {
    let sim = start(fast_config()).await;
    let (s, v) = grant(
        &sim.base_url(),
        "callbridge-demo",
        "demo-secret",
        &[("grant_type", "personal_access_token"), ("pat", "demo-pat")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["loa"], 3);
    assert!(v.get("refresh_token").is_none());
    assert!(v["scope"]
        .as_str()
        .unwrap()
        .contains("call-events.v1.events.read"));
    assert_eq!(v["principal"], "demo@example.com");
    sim.shutdown().await;
}

#[tokio::test]
async fn grant_errors_are_oauth_shaped() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let (s, v) = grant(
        &base,
        "callbridge-demo",
        "wrong",
        &[("grant_type", "personal_access_token"), ("pat", "demo-pat")],
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    let (s, v) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[("grant_type", "personal_access_token"), ("pat", "nope")],
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    let (s, v) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    assert!(v["error_description"].is_string());
    let (s, v) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "unknown"),
        ],
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_code_is_single_use_and_its_refresh_token_works() {
    let sim = start(fast_config()).await;
    let base = sim.base_url();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "demo-code"),
        ("redirect_uri", "http://localhost/cb"),
    ];
    let (s, v) = grant(&base, "callbridge-demo", "demo-secret", &form).await;
    assert_eq!(s, 200);
    let rt = v["refresh_token"].as_str().unwrap().to_string();
    let (s, v) = grant(&base, "callbridge-demo", "demo-secret", &form).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    let (s, v) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["access_token"].is_string());
    assert!(v.get("refresh_token").is_none(), "no rotation by default");
    sim.shutdown().await;
}

#[tokio::test]
async fn rotation_issues_a_new_refresh_token_and_retires_the_old() {
    let mut c = fast_config();
    c.auth.rotate_refresh_token = true;
    let sim = start(c).await;
    let base = sim.base_url();
    let (s, v) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "demo-refresh"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    let new_rt = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(v["token_type"], "Bearer");
    let (s, _) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "demo-refresh"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = grant(
        &base,
        "callbridge-demo",
        "demo-secret",
        &[("grant_type", "refresh_token"), ("refresh_token", &new_rt)],
    )
    .await;
    assert_eq!(s, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn api_calls_need_a_valid_unexpired_unrevoked_token_with_scope() {
    let mut c = fast_config();
    c.auth.access_token_lifetime = Duration::from_millis(300);
    let sim = start(c).await;
    let base = sim.base_url();
    let list = format!("{base}/notification-channel/v1/channels");
    let (s, v) = call(Method::GET, &list, "garbage", None).await;
    assert_eq!(
        (s, v["errorCode"].as_str()),
        (401, Some("AUTHN_INVALID_TOKEN"))
    );
    assert!(v["reference"].is_string());

    let t = token(&base).await;
    assert_eq!(call(Method::GET, &list, &t, None).await.0, 200);
    // The token expires by the clock: poll until it is refused, within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let (s, v) = loop {
        let (s, v) = call(Method::GET, &list, &t, None).await;
        if s != 200 || tokio::time::Instant::now() > deadline {
            break (s, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (s, v["errorCode"].as_str()),
        (401, Some("AUTHN_EXPIRED_TOKEN"))
    );

    let t = token(&base).await;
    sim.control().revoke_tokens();
    let (s, v) = call(Method::GET, &list, &t, None).await;
    assert_eq!(
        (s, v["errorCode"].as_str()),
        (401, Some("AUTHN_INVALID_TOKEN"))
    );
    assert_eq!(
        sim.control().ground_truth().fault_counts["tokensRevoked"],
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_scope_is_403() {
    let mut c = fast_config();
    c.auth.scopes = vec!["cr.v1.read".into()];
    let sim = start(c).await;
    let base = sim.base_url();
    let t = token(&base).await;
    let (s, v) = call(
        Method::GET,
        &format!("{base}/notification-channel/v1/channels"),
        &t,
        None,
    )
    .await;
    assert_eq!(
        (s, v["errorCode"].as_str()),
        (403, Some("AUTHZ_INSUFFICIENT_SCOPE"))
    );
    sim.shutdown().await;
}
