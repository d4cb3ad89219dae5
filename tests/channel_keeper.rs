//! The channel keeper against the simulator: a channel that vanishes between two of the keeper's
//! steps (GoTo deletes and expires channels on its own) is a transient failure that a new round
//! repairs, never a reason to stop holding the channel.
//!
//! Found by a CI run of `e2e_pipeline`: a channel recreated on `WEBSOCKET_TO_BE_CLOSED` was
//! deleted before its subscriptions were posted; the 404 was taken as permanent and the
//! replica's WebSocket duty stopped for good.

mod contract_support;

use callbridge::channel::{ChannelError, ChannelKeeper, DesiredChannel, Repair};
use contract_support::*;

fn keeper(sim: &callbridge::simulator::RunningSimulator) -> ChannelKeeper {
    bridge_keeper(client(sim))
}

/// A channel the keeper created, deleted behind its back (GoTo deleting or expiring it).
async fn created_then_deleted(keeper: &ChannelKeeper) -> callbridge::goto::Channel {
    let channel = keeper.ensure_channel().await.expect("channel created");
    keeper
        .client()
        .delete_channel("bridge", &channel.channel_id)
        .await
        .expect("deleted");
    channel
}

#[tokio::test]
async fn subscribing_a_channel_deleted_meanwhile_is_transient_and_a_new_round_repairs_it() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let channel = created_then_deleted(&keeper).await;

    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("the channel is gone");
    assert!(
        matches!(&err, ChannelError::ChannelGone { channel_id, .. } if *channel_id == channel.channel_id),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(text.contains("subscribing to call events"), "{text}");
    assert!(text.contains("/call-events/v1/subscriptions"), "{text}");
    assert!(text.contains("404"), "{text}");
    assert_no_secrets(&text);

    // What the WebSocket loop does next: recreate, which must end with a subscribed channel.
    let fresh = keeper.recreate(Some(&channel)).await.expect("recreated");
    assert_ne!(fresh.channel_id, channel.channel_id);
    let subscribed = keeper
        .client()
        .call_event_subscriptions(&fresh.channel_id)
        .await
        .expect("listed");
    assert!(subscribed.iter().any(|k| k == A1), "{subscribed:?}");
}

#[tokio::test]
async fn refreshing_a_channel_deleted_meanwhile_is_transient() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let channel = created_then_deleted(&keeper).await;
    let err = keeper
        .refresh(&channel)
        .await
        .expect_err("the channel is gone");
    assert!(matches!(err, ChannelError::ChannelGone { .. }), "{err:?}");
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn an_unknown_account_is_still_permanent() {
    let sim = start(sim_config()).await;
    let keeper = ChannelKeeper::new(
        client(&sim),
        "bridge",
        DesiredChannel::WebSocket,
        vec!["4000000000000000999".to_owned()],
        vec!["STARTING".to_owned()],
    );
    let channel = keeper.ensure_channel().await.expect("channel created");
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ChannelError::SubscriptionRefused { status: 404, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn subscription_items_that_keep_failing_with_5xx_end_the_round_as_transient() {
    let sim = start(sim_config()).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_item_status": 503 }))
        .expect("fault set");
    let keeper = keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("never subscribed");
    assert!(
        matches!(err, ChannelError::SubscriptionsPending { attempts: 5, .. }),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err}");
    // It says where, which account, and GoTo's verdict for it.
    let text = err.to_string();
    for part in ["/call-events/v1/subscriptions", A1, "503", "UNKNOWN_ERROR"] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert_no_secrets(&text);
    assert_eq!(answered(&sim, "call-events", 207), 5, "one 207 per attempt");
}

/// A channel the keeper created, with every account subscribed.
async fn subscribed_channel(keeper: &ChannelKeeper) -> callbridge::goto::Channel {
    let channel = keeper.ensure_channel().await.expect("channel created");
    keeper
        .ensure_subscriptions(&channel)
        .await
        .expect("subscribed");
    channel
}

#[tokio::test]
async fn a_repair_recreates_a_channel_that_is_gone() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let mut channel = subscribed_channel(&keeper).await;
    let old = channel.channel_id.clone();
    assert!(sim.control().delete_channel(&old));

    let repair = keeper.repair(&mut channel).await.expect("repaired");
    assert!(matches!(repair, Repair::ChannelRecreated), "{repair:?}");
    assert_ne!(channel.channel_id, old);
    assert_eq!(
        sim.control().channel_ids(),
        vec![channel.channel_id.clone()]
    );
}

#[tokio::test]
async fn a_404_reading_a_channel_that_is_still_listed_creates_no_second_channel() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let mut channel = subscribed_channel(&keeper).await;
    // GoTo documents reading one channel only by claim: a route that answers 404 while the
    // (observed) listing still shows the channel.
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_get_not_found": true }))
        .expect("fault set");

    for _ in 0..3 {
        let repair = keeper.repair(&mut channel).await.expect("repair pass");
        assert!(matches!(repair, Repair::Healthy), "{repair:?}");
    }
    assert_eq!(
        sim.control().channel_ids(),
        vec![channel.channel_id.clone()],
        "repairs created channels beside the one that still delivers"
    );
}

#[tokio::test]
async fn a_websocket_channel_type_spelling_goto_refuses_is_swapped_for_the_other() {
    let mut c = sim_config();
    c.channels.accepted_websocket_types = vec!["WebSocket".into()];
    let sim = start(c).await;
    let keeper = keeper(&sim); // sends "WebSockets", the default
    let channel = keeper
        .ensure_channel()
        .await
        .expect("created with the other spelling");
    assert_eq!(
        keeper.client().websocket_type(),
        callbridge::goto::WebSocketTypeSpelling::WebSocket
    );
    // Kept: the refresh sends the spelling GoTo took.
    keeper.refresh(&channel).await.expect("refreshed");
    assert_eq!(
        answered(&sim, "notification-channel", 400),
        1,
        "one refused create"
    );
}

#[tokio::test]
async fn a_400_for_both_spellings_is_reported_as_the_first_refusal() {
    let mut c = sim_config();
    c.channels.accepted_websocket_types = Vec::new();
    let sim = start(c).await;
    let keeper = keeper(&sim);
    let err = keeper.ensure_channel().await.expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("400") && text.contains("channelType"),
        "{text}"
    );
    assert!(!err.is_transient(), "{err}");
    assert_eq!(
        keeper.client().websocket_type(),
        callbridge::goto::WebSocketTypeSpelling::WebSockets,
        "back to the configured spelling"
    );
    assert_eq!(answered(&sim, "notification-channel", 400), 2);
}

// --- Reading one channel refused, subscribe answers in doubt, accounts no longer configured ----

/// The account keys GoTo lists as subscribed on `channel_id`.
async fn listed(keeper: &ChannelKeeper, channel_id: &str) -> Vec<String> {
    keeper
        .client()
        .call_event_subscriptions(channel_id)
        .await
        .expect("subscriptions listed")
}

fn keeper_for(sim: &callbridge::simulator::RunningSimulator, keys: &[&str]) -> ChannelKeeper {
    ChannelKeeper::new(
        client(sim),
        "bridge",
        DesiredChannel::WebSocket,
        keys.iter().map(|k| (*k).to_owned()).collect(),
        vec!["STARTING".to_owned(), "ENDING".to_owned()],
    )
}

#[tokio::test]
async fn a_repair_recreates_a_deleted_channel_while_reading_one_channel_is_refused() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let mut channel = subscribed_channel(&keeper).await;
    // The claimed-only route answers 405 (or 400, 403): it says nothing about the channel.
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_get_status": 405 }))
        .expect("fault set");
    let repair = keeper.repair(&mut channel).await.expect("repair pass");
    assert!(matches!(repair, Repair::Healthy), "{repair:?}");

    let old = channel.channel_id.clone();
    assert!(sim.control().delete_channel(&old));
    let repair = keeper.repair(&mut channel).await.expect("repaired");
    assert!(matches!(repair, Repair::ChannelRecreated), "{repair:?}");
    assert_ne!(channel.channel_id, old);
    assert_eq!(
        sim.control().channel_ids(),
        vec![channel.channel_id.clone()]
    );
    assert_eq!(listed(&keeper, &channel.channel_id).await, vec![A1]);
}

#[tokio::test]
async fn a_repair_restores_lost_subscriptions_while_reading_one_channel_is_refused() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let mut channel = subscribed_channel(&keeper).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_get_status": 403 }))
        .expect("fault set");
    assert!(keeper
        .client()
        .unsubscribe_call_events(&channel.channel_id, A1)
        .await
        .expect("unsubscribed"));
    let repair = keeper.repair(&mut channel).await.expect("repaired");
    assert_eq!(repair, Repair::Resubscribed(1));
    assert_eq!(listed(&keeper, &channel.channel_id).await, vec![A1]);
}

#[tokio::test]
async fn a_409_for_a_subscription_that_already_exists_is_confirmed_by_the_listing() {
    let sim = start(sim_config()).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_conflict_when_subscribed": true }))
        .expect("fault set");
    let keeper = keeper(&sim);
    let channel = subscribed_channel(&keeper).await;
    // What every restart does on a reused channel: subscribe again, answered 409.
    keeper
        .ensure_subscriptions(&channel)
        .await
        .expect("already subscribed is subscribed");
    assert_eq!(answered(&sim, "call-events", 207), 2, "no retries");
}

#[tokio::test]
async fn a_409_for_a_subscription_that_is_not_listed_stays_transient() {
    let sim = start(sim_config()).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_item_status": 409 }))
        .expect("fault set");
    let keeper = keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("never listed");
    assert!(
        matches!(err, ChannelError::SubscriptionsPending { .. }),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("409") && text.contains("not listed"),
        "{text}"
    );
}

#[tokio::test]
async fn an_empty_subscribe_answer_is_confirmed_by_the_listing() {
    let sim = start(sim_config()).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_empty_answer": true }))
        .expect("fault set");
    let keeper = keeper_for(&sim, &[A1, A2]);
    let channel = keeper.ensure_channel().await.expect("channel created");
    keeper
        .ensure_subscriptions(&channel)
        .await
        .expect("confirmed by reading them back");
    assert_eq!(answered(&sim, "call-events", 201), 1, "subscribed once");
}

#[tokio::test]
async fn a_reused_channel_loses_the_subscriptions_of_accounts_no_longer_configured() {
    let sim = start(sim_config()).await;
    let before = keeper_for(&sim, &[A1, A2]);
    let channel = subscribed_channel(&before).await;
    assert_eq!(listed(&before, &channel.channel_id).await, vec![A1, A2]);

    // A restart with A2 removed from goto.account_keys reuses the channel.
    let after = keeper_for(&sim, &[A1]);
    let reused = subscribed_channel(&after).await;
    assert_eq!(reused.channel_id, channel.channel_id, "channel reused");
    assert_eq!(listed(&after, &channel.channel_id).await, vec![A1]);
}

#[tokio::test]
async fn a_repair_removes_subscriptions_of_accounts_no_longer_configured() {
    let sim = start(sim_config()).await;
    let keeper = keeper_for(&sim, &[A1]);
    let mut channel = subscribed_channel(&keeper).await;
    // Subscribed behind the keeper's back (another deployment with the old configuration).
    keeper
        .client()
        .subscribe_call_events(
            &channel.channel_id,
            &[callbridge::goto::AccountSubscription::all_events(A3)],
        )
        .await
        .expect("subscribed");
    let repair = keeper.repair(&mut channel).await.expect("repair pass");
    assert_eq!(repair, Repair::Healthy);
    assert_eq!(listed(&keeper, &channel.channel_id).await, vec![A1]);
}

/// The keeper's channel, found again by a second keeper (a restart): listed, then refreshed.
async fn created_then_listed_again(
    sim: &callbridge::simulator::RunningSimulator,
) -> (
    callbridge::goto::Channel,
    Result<callbridge::goto::Channel, ChannelError>,
) {
    let first = keeper(sim).ensure_channel().await.expect("channel created");
    let again = keeper(sim).ensure_channel().await;
    (first, again)
}

#[tokio::test]
async fn a_refresh_answer_without_channel_id_is_about_the_refreshed_channel() {
    let sim = start(sim_config()).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_lifetime_only": true }))
        .expect("fault set");
    let (first, again) = created_then_listed_again(&sim).await;
    let again = again.expect("the listed channel is reused");
    assert_eq!(again.channel_id, first.channel_id);
    assert_eq!(again.kind, first.kind, "the URL is kept");
    assert!(again.lifetime_secs.is_some(), "{again:?}");
    assert_eq!(sim.control().channel_ids(), vec![first.channel_id.clone()]);
}

#[tokio::test]
async fn a_listed_channel_whose_refresh_is_refused_is_replaced() {
    // Expired but still listed (404, 410) or refused (400): waiting for GoTo to stop listing it
    // would keep the bridge without a channel.
    for status in [404u16, 410, 400] {
        let sim = start(sim_config()).await;
        sim.control()
            .patch_faults(&serde_json::json!({ "channel_refresh_status": status }))
            .expect("fault set");
        let (first, again) = created_then_listed_again(&sim).await;
        let again = again.unwrap_or_else(|e| panic!("{status}: not replaced: {e}"));
        assert_ne!(again.channel_id, first.channel_id, "{status}");
        assert_eq!(
            sim.control().channel_ids(),
            vec![again.channel_id.clone()],
            "{status}: the listed channel is deleted"
        );
        assert!(again.kind.url().is_some(), "{status}");
    }
}

#[tokio::test]
async fn a_listed_channel_is_kept_when_our_credentials_are_refused_or_goto_is_failing() {
    // A new channel would meet the same answer (our credentials refused, GoTo overloaded or
    // failing): the listed one stays, its socket may still deliver, the error says why, and the
    // caller tries again later.
    for status in [401u16, 503, 429] {
        let sim = start(sim_config()).await;
        sim.control()
            .patch_faults(&serde_json::json!({ "channel_refresh_status": status }))
            .expect("fault set");
        let (first, again) = created_then_listed_again(&sim).await;
        let err = again.expect_err("refused");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert_eq!(
            sim.control().channel_ids(),
            vec![first.channel_id.clone()],
            "{status}: the listed channel was deleted"
        );
    }
}

#[tokio::test]
async fn a_refresh_answered_without_a_body_keeps_the_lifetime_goto_gave() {
    let mut c = sim_config();
    c.channels.refresh_empty_body = true;
    c.channels.websocket_lifetime = std::time::Duration::from_secs(1200);
    let sim = start(c).await;
    let keeper = keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("created");
    assert_eq!(channel.lifetime_secs, Some(1200));
    let refreshed = keeper.refresh(&channel).await.expect("refreshed");
    assert_eq!(refreshed.lifetime_secs, Some(1200), "not a guessed default");
    assert_eq!(refreshed.kind, channel.kind, "the URL is kept");
}

#[tokio::test]
async fn errors_about_a_gone_channel_show_its_tag_not_its_id() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let channel = created_then_deleted(&keeper).await;
    // GoTo's 404 message names the channel ("Notification channel does not exist …").
    let err = keeper.refresh(&channel).await.expect_err("gone");
    // What logs and `/readyz` show (`Debug` is a developer's view and keeps the id).
    let text = err.to_string();
    assert!(!text.contains(&channel.channel_id), "{text}");
    assert!(text.contains(&channel.tag()), "{text}");
    let url = channel.kind.url().expect("url");
    assert!(
        url.contains(&channel.channel_id),
        "the simulator's channelURL holds the channel id, as GoTo's does: {url}"
    );
}

// --- A replacement channel whose subscribe fails is not left at GoTo ----------------------------

/// Everything logged in this test process (nextest runs each test in its own process).
fn logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            // The simulator is GoTo's side: its logs name channels as GoTo's would.
            .with_env_filter("info,callbridge=debug,callbridge::simulator=off")
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buffer
    })
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Each channel the keeper made must be gone from GoTo, and named in the logs by its tag only.
fn assert_made_and_deleted(sim: &callbridge::simulator::RunningSimulator, made: &[String]) {
    assert!(
        sim.control().channel_ids().is_empty(),
        "channels left at GoTo: {} of {} made",
        sim.control().channel_ids().len(),
        made.len()
    );
    let logs = logged();
    for id in made {
        assert!(!logs.contains(id.as_str()), "{id} in the logs:\n{logs}");
        assert!(
            logs.contains(&callbridge::goto::Channel::tag_of(id)),
            "{} not in the logs:\n{logs}",
            callbridge::goto::Channel::tag_of(id)
        );
    }
}

#[tokio::test]
async fn a_replacement_channel_whose_subscribe_fails_is_deleted_and_the_retry_makes_a_fresh_one() {
    logs();
    // A transient failure of the whole subscribe (503 on every attempt) and a permanent refusal
    // of its items (403: only an operator can fix it, and the keeper retries every
    // `reconnect_max` meanwhile).
    for fault in [
        serde_json::json!({ "subscription_request_status": 503 }),
        serde_json::json!({ "subscription_item_status": 403 }),
    ] {
        let sim = start(sim_config()).await;
        let keeper = keeper(&sim);
        let old = subscribed_channel(&keeper).await;
        sim.control().patch_faults(&fault).expect("fault set");

        // What the WebSocket loop does after WEBSOCKET_TO_BE_CLOSED, round after round.
        for _ in 0..3 {
            let err = keeper
                .recreate(Some(&old))
                .await
                .expect_err("the subscribe fails");
            assert_no_secrets(&err.to_string());
        }
        let made: Vec<String> = sim
            .control()
            .created_channel_ids()
            .into_iter()
            .filter(|id| *id != old.channel_id)
            .collect();
        assert_eq!(made.len(), 3, "{fault}: one channel per round");
        assert_made_and_deleted(&sim, &made);

        // GoTo subscribes again: the next round ends with exactly one subscribed channel.
        sim.control()
            .set_faults(Default::default())
            .expect("faults cleared");
        let fresh = keeper.recreate(Some(&old)).await.expect("recreated");
        assert_eq!(sim.control().channel_ids(), vec![fresh.channel_id.clone()]);
        assert_eq!(listed(&keeper, &fresh.channel_id).await, vec![A1]);
    }
}

#[tokio::test]
async fn a_repair_whose_new_channel_cannot_be_subscribed_leaves_no_channel_behind() {
    logs();
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let mut channel = subscribed_channel(&keeper).await;
    let old = channel.channel_id.clone();
    assert!(sim.control().delete_channel(&old));
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_request_status": 429 }))
        .expect("fault set");

    // Webhook mode's repair loop: one pass per repair interval while GoTo refuses.
    for _ in 0..3 {
        keeper
            .repair(&mut channel)
            .await
            .expect_err("the subscribe fails");
        assert_eq!(channel.channel_id, old, "the failed channel is not kept");
    }
    let made: Vec<String> = sim
        .control()
        .created_channel_ids()
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    assert_eq!(made.len(), 3, "one channel per pass");
    assert_made_and_deleted(&sim, &made);

    sim.control()
        .set_faults(Default::default())
        .expect("faults cleared");
    let repair = keeper.repair(&mut channel).await.expect("repaired");
    assert_eq!(repair, Repair::ChannelRecreated);
    assert_eq!(
        sim.control().channel_ids(),
        vec![channel.channel_id.clone()]
    );
}

// --- A channel that must go but cannot be deleted -----------------------------------------------

#[tokio::test]
async fn a_listed_channel_that_can_be_neither_refreshed_nor_deleted_is_still_replaced() {
    // Expired but still listed: the refresh says 410, and so may the delete (or GoTo refuses or
    // fails it). Stopping at that delete would leave the bridge without a channel, round after
    // round.
    for delete_status in [410u16, 403, 503] {
        let sim = start(sim_config()).await;
        sim.control()
            .patch_faults(&serde_json::json!({
                "channel_refresh_status": 410,
                "channel_delete_status": delete_status,
            }))
            .expect("fault set");
        let (first, again) = created_then_listed_again(&sim).await;
        let again = again.unwrap_or_else(|e| panic!("{delete_status}: not replaced: {e}"));
        assert_ne!(again.channel_id, first.channel_id, "{delete_status}");
        assert!(again.kind.url().is_some(), "{delete_status}");
        let mut left = sim.control().channel_ids();
        left.sort();
        let mut expected = vec![first.channel_id.clone(), again.channel_id.clone()];
        expected.sort();
        assert_eq!(left, expected, "{delete_status}: GoTo kept the old one");
    }
}

/// A subscribed channel (`old`) replaced (`fresh`) while GoTo answers 503 to every delete, which
/// it still does on return: `old` is left at GoTo, remembered by the keeper as one to delete.
async fn replaced_while_goto_refuses_deletes() -> (
    callbridge::simulator::RunningSimulator,
    ChannelKeeper,
    callbridge::goto::Channel,
    callbridge::goto::Channel,
) {
    logs();
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let old = subscribed_channel(&keeper).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_delete_status": 503 }))
        .expect("fault set");
    let fresh = keeper.recreate(Some(&old)).await.expect("recreated anyway");
    (sim, keeper, old, fresh)
}

#[tokio::test]
async fn a_channel_whose_deletion_failed_is_deleted_at_the_next_round() {
    let (sim, keeper, old, fresh) = replaced_while_goto_refuses_deletes().await;
    let mut left = sim.control().channel_ids();
    left.sort();
    let mut both = vec![old.channel_id.clone(), fresh.channel_id.clone()];
    both.sort();
    assert_eq!(left, both, "the old channel could not be deleted");

    // GoTo deletes again. A recreate lists no channels, yet the one left goes too.
    sim.control()
        .set_faults(Default::default())
        .expect("faults cleared");
    let third = keeper.recreate(Some(&fresh)).await.expect("recreated");
    assert_eq!(sim.control().channel_ids(), vec![third.channel_id.clone()]);
    let logs = logged();
    assert!(!logs.contains(&old.channel_id), "{logs}");
    assert!(logs.contains(&old.tag()), "{logs}");
}

/// A channel the keeper decided must go but could not delete is still listed with our nickname
/// (and, for a webhook, our URL). The next listing must not take it back as ours: it would
/// delete the channel just made in its place as stale, and at the round after, the remembered
/// delete would remove the channel in use.
#[tokio::test]
async fn a_channel_whose_deletion_failed_is_not_taken_back_by_a_listing() {
    let (sim, keeper, old, fresh) = replaced_while_goto_refuses_deletes().await;
    // A set-up round (a restart of the duty, say) while GoTo still refuses deletes.
    let found = keeper.ensure_channel().await.expect("a channel");
    assert_eq!(
        found.channel_id,
        fresh.channel_id,
        "the listing took back the channel being replaced ({}) instead of its replacement ({})",
        old.tag(),
        fresh.tag()
    );
    sim.control()
        .set_faults(Default::default())
        .expect("faults cleared");
    let found = keeper.ensure_channel().await.expect("a channel");
    assert_eq!(found.channel_id, fresh.channel_id);
    assert_eq!(
        sim.control().channel_ids(),
        vec![fresh.channel_id.clone()],
        "the channel in use stays, the one that had to go is gone"
    );
}

#[tokio::test]
async fn a_410_reading_the_channel_is_logged_with_its_tag_not_its_id() {
    logs();
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let mut channel = subscribed_channel(&keeper).await;
    // GoTo's message names the channel ("Notification channel expired …"), as its 404 does.
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_get_status": 410 }))
        .expect("fault set");
    let repair = keeper.repair(&mut channel).await.expect("repair pass");
    assert_eq!(repair, Repair::Healthy, "the listing still shows it");
    let logs = logged();
    assert!(logs.contains("410"), "the refusal was logged: {logs}");
    assert!(!logs.contains(&channel.channel_id), "{logs}");
    assert!(logs.contains(&channel.tag()), "{logs}");
}

// --- Subscribe answers the simulator does not give: an interposer -------------------------------

/// What the interposer does instead of plainly forwarding a request to the simulator.
#[derive(Default)]
struct Detour {
    /// After the simulator answered a subscribe, delete the channel it named: GoTo deleting or
    /// expiring the channel while its subscribe ran.
    delete_after_subscribe: bool,
    /// Answer reading one channel, and the channel listing, with this status.
    channel_reads: Option<u16>,
    /// Answer every item of a subscribe made with the first token seen on a subscribe 401: a
    /// token GoTo stopped taking while the request ran, refused item by item.
    first_token_unauthorized: bool,
    first_token: Option<String>,
    /// Answer a subscribe with 400 and this body, `{channel}` replaced by the channel id.
    subscribe_400: Option<String>,
    /// Subscribe requests seen.
    subscribes: u32,
}

/// A proxy on 127.0.0.1:0 in front of the simulator's REST API (the token endpoint is reached
/// directly), for GoTo answers the simulator has no fault for.
struct Interposer {
    url: String,
    detour: std::sync::Arc<std::sync::Mutex<Detour>>,
}

struct Upstream {
    base: String,
    control: callbridge::simulator::SimulatorControl,
    detour: std::sync::Arc<std::sync::Mutex<Detour>>,
}

impl Interposer {
    async fn start(sim: &callbridge::simulator::RunningSimulator) -> Interposer {
        let detour = std::sync::Arc::<std::sync::Mutex<Detour>>::default();
        let upstream = std::sync::Arc::new(Upstream {
            base: sim.base_url(),
            control: sim.control(),
            detour: detour.clone(),
        });
        let app = axum::Router::new().fallback(interpose).with_state(upstream);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Interposer {
            url: format!("http://{addr}"),
            detour,
        }
    }

    fn detour(&self, change: impl FnOnce(&mut Detour)) {
        change(&mut self.detour.lock().unwrap());
    }

    fn subscribes(&self) -> u32 {
        self.detour.lock().unwrap().subscribes
    }

    /// A keeper like [`keeper`] whose REST calls go through this interposer.
    fn keeper(&self, sim: &callbridge::simulator::RunningSimulator) -> ChannelKeeper {
        let mut config = client_config(sim);
        config.api_base_url = self.url.clone();
        ChannelKeeper::new(
            client_with(config),
            "bridge",
            DesiredChannel::WebSocket,
            vec![A1.to_owned()],
            vec!["STARTING".to_owned()],
        )
    }
}

async fn interpose(
    axum::extract::State(up): axum::extract::State<std::sync::Arc<Upstream>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use serde_json::{json, Value};

    let path = uri.path().to_owned();
    let subscribe = method == axum::http::Method::POST && path == "/call-events/v1/subscriptions";
    let channel_read =
        method == axum::http::Method::GET && path.starts_with("/notification-channel/v1/channels");
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let channel_id = request["channelId"].as_str().unwrap_or_default().to_owned();
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    {
        let mut detour = up.detour.lock().unwrap();
        if let (true, Some(status)) = (channel_read, detour.channel_reads) {
            let body = json!({"reference": "r", "constraintViolations": [],
                              "errorCode": "AUTHZ_INSUFFICIENT_SCOPE", "message": "Insufficient scope"});
            return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
        }
        if subscribe {
            detour.subscribes += 1;
            if let Some(answer) = &detour.subscribe_400 {
                let answer = answer.replace("{channel}", &channel_id);
                return (
                    StatusCode::BAD_REQUEST,
                    [(CONTENT_TYPE, "application/json")],
                    answer,
                )
                    .into_response();
            }
            if detour.first_token_unauthorized
                && *detour.first_token.get_or_insert_with(|| token.clone()) == token
            {
                let items: Vec<Value> = request["accountKeys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|item| {
                        json!({"id": item["id"], "status": 401, "errorCode": "AUTHN_INVALID_TOKEN",
                               "message": "Invalid token"})
                    })
                    .collect();
                return (
                    StatusCode::MULTI_STATUS,
                    axum::Json(json!({ "accountKeys": items })),
                )
                    .into_response();
            }
        }
    }
    let target = format!(
        "{}{}",
        up.base,
        uri.path_and_query().map_or(path.as_str(), |p| p.as_str())
    );
    let mut forwarded = raw().request(method, target).body(body);
    for name in [AUTHORIZATION, CONTENT_TYPE, ACCEPT] {
        if let Some(value) = headers.get(&name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.send().await.expect("the simulator answers");
    let status = answer.status();
    let content_type = answer.headers().get(CONTENT_TYPE).cloned();
    let bytes = answer
        .bytes()
        .await
        .expect("the simulator's answer is read");
    if subscribe && up.detour.lock().unwrap().delete_after_subscribe {
        assert!(up.control.delete_channel(&channel_id), "channel deleted");
    }
    let mut response = (status, bytes).into_response();
    if let Some(content_type) = content_type {
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    response
}

// --- A subscribe item answering 404, 410 or 401 ---------------------------------------------------

/// GoTo may answer an item 404 because the channel, not the account, is gone (deleted or
/// expired between its creation and the subscribe): only a new channel helps, so this must be
/// what callers answer with a new channel, not a refusal that stops start-up.
#[tokio::test]
async fn an_item_404_on_a_channel_deleted_meanwhile_is_the_channel_gone() {
    let sim = start(sim_config()).await;
    let interposer = Interposer::start(&sim).await;
    let keeper = interposer.keeper(&sim);
    let mut channel = keeper.ensure_channel().await.expect("channel created");
    for status in [404u16, 410] {
        sim.control()
            .patch_faults(&serde_json::json!({ "subscription_item_status": status }))
            .expect("fault set");
        interposer.detour(|d| d.delete_after_subscribe = true);

        let err = keeper
            .ensure_subscriptions(&channel)
            .await
            .expect_err("the channel is gone");
        assert!(
            matches!(&err, ChannelError::ChannelGone { channel_id, .. } if *channel_id == channel.channel_id),
            "{status}: {err:?}"
        );
        assert!(err.is_channel_gone(), "{err}");
        assert!(err.is_transient(), "{err}");
        let text = err.to_string();
        for part in [
            "/call-events/v1/subscriptions",
            A1,
            &status.to_string(),
            &channel.tag(),
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
        assert!(!text.contains(&channel.channel_id), "{text}");
        assert_no_secrets(&text);
        assert!(sim.control().channel_ids().is_empty());
        if status == 404 {
            sim.control()
                .set_faults(Default::default())
                .expect("faults cleared");
            interposer.detour(|d| d.delete_after_subscribe = false);
            channel = keeper.ensure_channel().await.expect("another channel");
        }
    }

    // The next round, GoTo subscribing again: a new channel, subscribed.
    sim.control()
        .set_faults(Default::default())
        .expect("faults cleared");
    interposer.detour(|d| d.delete_after_subscribe = false);
    let fresh = keeper.ensure_channel().await.expect("a new channel");
    assert_ne!(fresh.channel_id, channel.channel_id);
    keeper
        .ensure_subscriptions(&fresh)
        .await
        .expect("subscribed");
    assert_eq!(listed(&keeper, &fresh.channel_id).await, vec![A1]);
}

#[tokio::test]
async fn an_item_404_on_a_channel_that_still_exists_is_refused_with_the_account_key_fix() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_item_status": 404 }))
        .expect("fault set");
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ChannelError::SubscriptionRefused { status: 404, account_key, .. } if account_key == A1),
        "{err:?}"
    );
    assert!(!err.is_transient(), "{err}");
    assert!(!err.is_channel_gone(), "{err}");
    let text = err.to_string();
    assert!(text.contains("check goto.account_keys"), "{text}");
    assert_eq!(
        sim.control().channel_ids(),
        vec![channel.channel_id.clone()]
    );
}

/// Whether the channel still exists could not be checked: a refusal would stop start-up over
/// what may be a channel to replace, so the round is retried.
#[tokio::test]
async fn an_item_404_whose_channel_cannot_be_checked_is_transient() {
    let sim = start(sim_config()).await;
    let interposer = Interposer::start(&sim).await;
    let keeper = interposer.keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_item_status": 404 }))
        .expect("fault set");
    // Reading the channel and listing channels refused (a 403 taken alone is permanent).
    interposer.detour(|d| d.channel_reads = Some(403));
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("not subscribed");
    assert!(
        matches!(err, ChannelError::ChannelUnverified { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err}");
    assert!(!err.is_channel_gone(), "{err}");
    let text = err.to_string();
    for part in [
        A1,
        "404",
        "403",
        "/notification-channel/v1/channels",
        &channel.tag(),
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert!(!text.contains(&channel.channel_id), "{text}");
}

/// A 401 inside a 207 is undocumented: a token GoTo stopped taking while the request ran (which
/// the client's own renewal on a request's 401 never sees) heals with a new token, within the
/// round.
#[tokio::test]
async fn an_item_401_is_retried_with_a_new_access_token() {
    let sim = start(sim_config()).await;
    let interposer = Interposer::start(&sim).await;
    let keeper = interposer.keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    let tokens = keeper.client().token_refreshes();
    interposer.detour(|d| d.first_token_unauthorized = true);
    keeper
        .ensure_subscriptions(&channel)
        .await
        .expect("subscribed with the new token");
    assert_eq!(interposer.subscribes(), 2, "refused once, then subscribed");
    assert_eq!(
        keeper.client().token_refreshes(),
        tokens + 1,
        "one new token"
    );
    assert_eq!(listed(&keeper, &channel.channel_id).await, vec![A1]);
}

/// An item that keeps answering 401, new token or not (a token whose user may not subscribe the
/// account, say), ends the round as transient, retried by the callers, with what to fix.
#[tokio::test]
async fn an_item_that_keeps_answering_401_ends_the_round_as_transient_with_the_fix() {
    let sim = start(sim_config()).await;
    let keeper = keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    let tokens = keeper.client().token_refreshes();
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_item_status": 401 }))
        .expect("fault set");
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("never subscribed");
    assert!(
        matches!(
            err,
            ChannelError::SubscriptionUnauthorized { attempts: 5, .. }
        ),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    for part in [
        "/call-events/v1/subscriptions",
        A1,
        "401",
        "super admin",
        "after a new access token",
        "goto.personal_access_token",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert_no_secrets(&text);
    assert_eq!(answered(&sim, "call-events", 207), 5, "one 207 per attempt");
    assert_eq!(
        keeper.client().token_refreshes(),
        tokens + 1,
        "one new token a round"
    );
}

// --- GoTo's texts about our channel ---------------------------------------------------------------

/// GoTo's 400 message is boilerplate; the real cause, which may name the channel, is in the
/// constraints. What reaches logs and `/readyz` shows the channel's tag there too.
#[tokio::test]
async fn a_400_naming_the_channel_in_its_constraints_shows_its_tag() {
    let sim = start(sim_config()).await;
    let interposer = Interposer::start(&sim).await;
    let keeper = interposer.keeper(&sim);
    let channel = keeper.ensure_channel().await.expect("channel created");
    interposer.detour(|d| {
        d.subscribe_400 = Some(
            r#"{"reference":"r","errorCode":"BAD_REQUEST",
                "message":"The Notification Channel must be a WebSocket channel",
                "constraints":[{"field":"channelId","constraint":"channel {channel} is expired"}]}"#
                .to_owned(),
        )
    });
    let err = keeper
        .ensure_subscriptions(&channel)
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!("channelId: channel {} is expired", channel.tag())),
        "{text}"
    );
    assert!(!text.contains(&channel.channel_id), "{text}");
}
