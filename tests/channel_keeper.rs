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
    ChannelKeeper::new(
        client(sim),
        "bridge",
        DesiredChannel::WebSocket,
        vec![A1.to_owned()],
        vec![
            "STARTING".to_owned(),
            "ACTIVE".to_owned(),
            "ENDING".to_owned(),
        ],
    )
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
