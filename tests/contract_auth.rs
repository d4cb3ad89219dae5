//! Contract: the client's token manager against the simulator's OAuth token endpoint.
//!
//! Token handling is where an unattended daemon dies quietly, so each grant, each refusal and
//! each way an access token stops working (revoked, expired) is played over real sockets.

mod contract_support;

use std::time::Duration;

use callbridge::goto::{Credential, GotoError, Secret};
use contract_support::*;

#[tokio::test]
async fn pat_grant_obtains_a_token_that_the_apis_accept() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.check_credentials().await.unwrap();
    assert_eq!(client.token_refreshes(), 1);
    let channels = client.list_channels().await.unwrap();
    assert!(channels.is_empty());
    assert_eq!(answered(&sim, "oauth", 200), 1, "one token for both calls");
    assert_eq!(answered(&sim, "notification-channel", 200), 1);
    assert_eq!(client.token_refreshes(), 1);
}

#[tokio::test]
async fn refresh_token_grant_obtains_a_token_that_the_apis_accept() {
    let sim = start(sim_config()).await;
    let mut cfg = client_config(&sim);
    cfg.credential = Credential::RefreshToken(Secret::new(REFRESH_TOKEN));
    let client = client_with(cfg);
    let channels = client.list_channels().await.unwrap();
    assert!(channels.is_empty());
    assert_eq!(client.token_refreshes(), 1);
    assert_eq!(answered(&sim, "oauth", 200), 1);
}

/// GoTo issues a new refresh token only when the old one expired; the client must switch to
/// it, because the simulator (rotating) retires the old one.
#[tokio::test]
async fn rotated_refresh_token_replaces_the_old_one() {
    let mut c = sim_config();
    c.auth.rotate_refresh_token = true;
    let sim = start(c).await;
    let mut cfg = client_config(&sim);
    cfg.credential = Credential::RefreshToken(Secret::new(REFRESH_TOKEN));
    let client = client_with(cfg);
    client.list_channels().await.unwrap();
    sim.control().revoke_tokens();
    // The next call gets a 401, refreshes with the *rotated* refresh token and succeeds; with
    // the original one the simulator would answer invalid_grant.
    client.list_channels().await.unwrap();
    assert_eq!(client.token_refreshes(), 2);
    assert_eq!(answered(&sim, "oauth", 200), 2);
    assert_eq!(
        answered(&sim, "oauth", 400),
        0,
        "no refresh with a retired token"
    );
}

#[tokio::test]
async fn bad_client_secret_is_an_auth_error_naming_grant_and_oauth_error() {
    let sim = start(sim_config()).await;
    for (credential, grant) in [
        (
            Credential::PersonalAccessToken(Secret::new(PAT)),
            "personal_access_token",
        ),
        (
            Credential::RefreshToken(Secret::new(REFRESH_TOKEN)),
            "refresh_token",
        ),
    ] {
        let mut cfg = client_config(&sim);
        cfg.client_secret = Secret::new("wrong-client-secret");
        cfg.credential = credential;
        let err = client_with(cfg).check_credentials().await.unwrap_err();
        match &err {
            GotoError::Auth {
                grant: g,
                status,
                error,
                ..
            } => {
                assert_eq!(*g, grant);
                assert_eq!(*status, 401);
                assert_eq!(error.as_deref(), Some("invalid_client"));
            }
            other => panic!("expected an auth error, got {other:?}"),
        }
        assert!(err.is_credential_rejected());
        let text = err.to_string();
        assert!(text.contains("POST /oauth/token"), "{text}");
        assert!(text.contains(grant), "{text}");
        assert!(text.contains("401"), "{text}");
        assert!(text.contains("invalid_client"), "{text}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("wrong-client-secret"), "{shown}");
        assert_no_secrets(&shown);
    }
    assert_eq!(answered(&sim, "oauth", 401), 2, "a 401 is not retried");
}

#[tokio::test]
async fn unknown_pat_is_invalid_grant_without_the_pat_in_the_message() {
    let sim = start(sim_config()).await;
    let mut cfg = client_config(&sim);
    cfg.credential = Credential::PersonalAccessToken(Secret::new("not-a-known-pat"));
    let err = client_with(cfg).list_channels().await.unwrap_err();
    assert!(
        matches!(&err, GotoError::Auth { grant: "personal_access_token", status: 400, error: Some(e), .. } if e == "invalid_grant"),
        "{err:?}"
    );
    assert!(err.is_credential_rejected());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-a-known-pat"), "{shown}");
    assert_no_secrets(&shown);
    assert_eq!(
        requests(&sim, "notification-channel"),
        0,
        "no API call without a token"
    );
}

#[tokio::test]
async fn revoked_token_is_refreshed_once_and_the_call_succeeds() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.list_channels().await.unwrap();
    assert_eq!(client.token_refreshes(), 1);
    sim.control().revoke_tokens();
    client.list_channels().await.unwrap();
    assert_eq!(client.token_refreshes(), 2);
    assert_eq!(answered(&sim, "notification-channel", 401), 1);
    assert_eq!(answered(&sim, "notification-channel", 200), 2);
    // The new token keeps working: no further refresh.
    client.list_channels().await.unwrap();
    assert_eq!(client.token_refreshes(), 2);
}

/// A burst of calls hitting a revoked token triggers one refresh, not one per call.
#[tokio::test]
async fn concurrent_calls_after_revocation_share_one_refresh() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.check_credentials().await.unwrap();
    sim.control().revoke_tokens();
    let calls = (0..8).map(|_| client.list_channels());
    for result in futures_util::future::join_all(calls).await {
        result.unwrap();
    }
    assert_eq!(client.token_refreshes(), 2);
    assert_eq!(answered(&sim, "oauth", 200), 2);
}

/// The scheduled fault: every access token is revoked periodically; calls keep succeeding.
#[tokio::test]
async fn scheduled_token_revocation_is_survived() {
    let mut c = sim_config();
    c.faults.token_revoke_every = Some(Duration::from_millis(150));
    let sim = start(c).await;
    let client = client(&sim);
    eventually(Duration::from_secs(5), async || {
        client.list_channels().await.unwrap();
        let revoked = sim.control().ground_truth().fault_count("tokensRevoked");
        (revoked >= 2 && client.token_refreshes() >= 2).then_some(())
    })
    .await;
    assert!(answered(&sim, "notification-channel", 401) >= 1);
}

/// Short-lived tokens are replaced before they expire (after a third of their life), so GoTo
/// never has to refuse one.
#[tokio::test]
async fn short_lived_token_is_refreshed_proactively() {
    let mut c = sim_config();
    c.auth.access_token_lifetime = Duration::from_secs(3);
    let sim = start(c).await;
    let client = client(&sim);
    eventually(Duration::from_secs(5), async || {
        client.list_channels().await.unwrap();
        (client.token_refreshes() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        answered(&sim, "notification-channel", 401),
        0,
        "refreshed before the simulator refused the token"
    );
}

/// When a token expires before the client expects it to (here the simulator's `expires_in`
/// rounds 500 ms down to 0 and the client assumes at least 1 s), the 401
/// `AUTHN_EXPIRED_TOKEN` makes the client refresh and re-send.
#[tokio::test]
async fn expired_token_is_refreshed_on_401() {
    let mut c = sim_config();
    c.auth.access_token_lifetime = Duration::from_millis(500);
    let sim = start(c).await;
    let mut cfg = client_config(&sim);
    cfg.refresh_after_fraction = 1.0;
    let client = client_with(cfg);
    eventually(Duration::from_secs(5), async || {
        client.list_channels().await.unwrap();
        (answered(&sim, "notification-channel", 401) >= 1).then_some(())
    })
    .await;
    assert!(client.token_refreshes() >= 2);
}

#[tokio::test]
async fn client_debug_shows_no_credentials() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.check_credentials().await.unwrap();
    let shown = format!("{client:?} {:?}", client.config());
    assert!(shown.contains(CLIENT_ID), "{shown}");
    assert_no_secrets(&shown);
}

/// The same rotation with `refresh_token_file`: the new refresh token is written there, so a
/// restart (a new client reading the file, as `callbridge run` does) presents the token GoTo
/// still accepts, not the retired one.
#[tokio::test]
async fn a_rotated_refresh_token_is_written_to_its_file_and_survives_a_restart() {
    let mut c = sim_config();
    c.auth.rotate_refresh_token = true;
    let sim = start(c).await;
    let dir = std::env::temp_dir().join(format!("callbridge-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("refresh-token");
    std::fs::write(&file, format!("{REFRESH_TOKEN}\n")).unwrap();
    let from_file = || {
        let mut cfg = client_config(&sim);
        let stored = std::fs::read_to_string(&file).unwrap();
        cfg.credential = Credential::RefreshToken(Secret::new(stored.trim()));
        cfg.refresh_token_file = Some(file.clone());
        client_with(cfg)
    };

    from_file().list_channels().await.unwrap();
    let stored = std::fs::read_to_string(&file).unwrap();
    assert_ne!(
        stored.trim(),
        REFRESH_TOKEN,
        "the rotated token was not written"
    );
    assert!(!stored.trim().is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is readable by others");
    }

    // A restart: the token in the file is the one GoTo accepts.
    from_file().list_channels().await.unwrap();
    assert_eq!(
        answered(&sim, "oauth", 400),
        0,
        "a retired token was presented"
    );
    assert_eq!(answered(&sim, "oauth", 200), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replicas sharing the file: a client whose in-memory refresh token was retired by another
/// client's rotation picks up the new one from the file before its next refresh.
#[tokio::test]
async fn a_refresh_token_rotated_by_another_process_is_picked_up_from_the_file() {
    let mut c = sim_config();
    c.auth.rotate_refresh_token = true;
    let sim = start(c).await;
    let dir = std::env::temp_dir().join(format!("callbridge-rt2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("refresh-token");
    std::fs::write(&file, REFRESH_TOKEN).unwrap();
    let replica = || {
        let mut cfg = client_config(&sim);
        cfg.credential = Credential::RefreshToken(Secret::new(REFRESH_TOKEN));
        cfg.refresh_token_file = Some(file.clone());
        client_with(cfg)
    };
    let (a, b) = (replica(), replica());
    a.list_channels().await.unwrap(); // rotates: REFRESH_TOKEN is retired
    b.list_channels().await.unwrap(); // would present the retired one without the file
    assert_eq!(
        answered(&sim, "oauth", 400),
        0,
        "a retired token was presented"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file that cannot be written (here: the temporary file beside it is blocked) still holds
/// the retired token after a rotation: it must not be taken back over the new one in memory.
#[tokio::test]
async fn a_refresh_token_file_that_cannot_be_written_does_not_bring_the_retired_token_back() {
    let mut c = sim_config();
    c.auth.rotate_refresh_token = true;
    let sim = start(c).await;
    let dir = std::env::temp_dir().join(format!("callbridge-rt3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("refresh-token");
    std::fs::write(&file, REFRESH_TOKEN).unwrap();
    // The atomic write goes through `refresh-token.tmp`: a directory there makes it fail, even
    // for root.
    std::fs::create_dir_all(dir.join("refresh-token.tmp")).unwrap();
    let mut cfg = client_config(&sim);
    cfg.credential = Credential::RefreshToken(Secret::new(REFRESH_TOKEN));
    cfg.refresh_token_file = Some(file.clone());
    let client = client_with(cfg);
    client.list_channels().await.unwrap(); // rotates; the file keeps the retired token
    assert_eq!(std::fs::read_to_string(&file).unwrap(), REFRESH_TOKEN);
    sim.control().revoke_tokens();
    client.list_channels().await.unwrap(); // refreshes with the rotated token, in memory
    assert_eq!(
        answered(&sim, "oauth", 400),
        0,
        "the retired token was taken back from the file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
