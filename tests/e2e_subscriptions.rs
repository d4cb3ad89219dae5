//! The bridge's call-events subscriptions against the simulator and tansu, across restarts:
//! subscribe answers GoTo's docs leave open (409 "already exists" on a reused channel, an empty
//! 2xx) must end in a Ready bridge that receives states, and an account removed from
//! `goto.account_keys` must stop being published.
mod support;

use callbridge::app::{self, Listeners, RunningBridge};
use callbridge::channel::ChannelState;
use callbridge::config::bridge::{BridgeConfig, ChannelKind};
use callbridge::demo::bridge_config;
use callbridge::kafka::reader::read_topic;
use callbridge::simulator::{self, RunningSimulator, SimulatorConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use support::listeners;
use support::tansu::Tansu;

const START_TIMEOUT: Duration = Duration::from_secs(60);

fn sim_config(calls: u64) -> SimulatorConfig {
    let mut c = SimulatorConfig::default();
    c.scheduler.autostart = false;
    c.scheduler.calls = calls;
    c.scheduler.calls_per_second = 20.0;
    c.traffic.mean_state_interval = Duration::from_millis(50);
    c.traffic.min_states = 3;
    c.traffic.max_states = 4;
    c
}

/// Starts a bridge and waits until it owns a Ready channel; panics with the channel's state if
/// that does not happen within [`START_TIMEOUT`] (a start-up that retries forever).
async fn start_ready(config: BridgeConfig, l: Listeners) -> RunningBridge {
    let mut bridge = tokio::time::timeout(START_TIMEOUT, app::start(config, l))
        .await
        .expect("start-up finished in time")
        .expect("bridge starts");
    let mut state = bridge.channel.clone();
    let ready = tokio::time::timeout(
        START_TIMEOUT,
        state.wait_for(|s| matches!(s, ChannelState::Ready(_))),
    )
    .await;
    assert!(
        matches!(ready, Ok(Ok(_))),
        "channel never Ready: {:?}",
        *bridge.channel.borrow_and_update()
    );
    bridge
}

fn config(
    sim: &RunningSimulator,
    broker: &Tansu,
    kind: ChannelKind,
    addr: std::net::SocketAddr,
) -> BridgeConfig {
    bridge_config(&sim.base_url(), broker.kafka(2), kind, addr)
}

/// Waits until the bridge has published at least `completions` completed calls.
async fn completions(bridge: &RunningBridge, completions: u64) {
    let waited = tokio::time::timeout(START_TIMEOUT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if bridge.sequencer.completions_published.load(Relaxed) >= completions {
                return;
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{} of {completions} calls completed",
        bridge.sequencer.completions_published.load(Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_on_a_channel_goto_answers_409_for_is_ready_and_receives_states() {
    let broker = Tansu::start();
    let mut c = sim_config(6);
    // GoTo answers a repeat subscribe "already exists", as its messaging API does.
    c.faults.subscription_conflict_when_subscribed = true;
    let sim = simulator::start(c).await.unwrap();

    let (l, addr) = listeners().await;
    let first = start_ready(config(&sim, &broker, ChannelKind::Websocket, addr), l).await;
    first.shutdown().await;
    let channels = sim.control().channel_ids();

    // The restart reuses the WebSocket channel, whose subscriptions all exist: every item 409.
    let (l, addr) = listeners().await;
    let second = start_ready(config(&sim, &broker, ChannelKind::Websocket, addr), l).await;
    assert_eq!(sim.control().channel_ids(), channels, "channel reused");
    sim.control().start_traffic();
    completions(&second, 6).await;
    assert!(second.sequencer.states_published.load(Relaxed) >= 18);
    second.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscribe_answered_with_an_empty_body_is_ready_and_receives_states() {
    let broker = Tansu::start();
    let mut c = sim_config(6);
    c.faults.subscription_empty_answer = true;
    let sim = simulator::start(c).await.unwrap();
    let (l, addr) = listeners().await;
    let bridge = start_ready(config(&sim, &broker, ChannelKind::Webhook, addr), l).await;
    sim.control().start_traffic();
    completions(&bridge, 6).await;
    bridge.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_removed_from_the_configuration_is_no_longer_published() {
    let broker = Tansu::start();
    let sim = simulator::start(sim_config(24)).await.unwrap();

    let (l, addr) = listeners().await;
    let first = config(&sim, &broker, ChannelKind::Websocket, addr);
    let removed = first
        .goto
        .account_keys
        .last()
        .cloned()
        .expect("account keys");
    assert!(first.goto.account_keys.len() >= 2);
    let kafka = first.kafka.clone();
    let first = start_ready(first, l).await;
    first.shutdown().await;

    // Restart with one account fewer: the WebSocket channel (and its subscriptions) is reused.
    let (l, addr) = listeners().await;
    let mut second = config(&sim, &broker, ChannelKind::Websocket, addr);
    second.goto.account_keys.retain(|k| *k != removed);
    let second = start_ready(second, l).await;
    let channel = match &*second.channel.borrow() {
        ChannelState::Ready(id) => id.clone(),
        other => panic!("{other:?}"),
    };
    let client = callbridge::app::goto_client(&config(&sim, &broker, ChannelKind::Websocket, addr))
        .expect("client");
    let subscribed = client
        .call_event_subscriptions(&channel)
        .await
        .expect("subscriptions listed");
    assert!(!subscribed.is_empty(), "{subscribed:?}");
    // Both promises are checked before failing, so a failure shows each one's state.
    let mut broken = Vec::new();
    if subscribed.contains(&removed) {
        broken.push(format!("{removed} still subscribed: {subscribed:?}"));
    }

    sim.control().start_traffic();
    let status = sim.control().wait_until_done(START_TIMEOUT).await;
    assert!(status.done, "{status:?}");
    let truth = sim.control().ground_truth();
    let (theirs, ours): (Vec<_>, Vec<_>) =
        truth.calls.iter().partition(|c| c.account_key == removed);
    assert!(
        !theirs.is_empty() && !ours.is_empty(),
        "traffic covers both"
    );
    // Every call of a configured account completes; by then the removed account's states,
    // had they been delivered, would have been published alongside.
    completions(&second, ours.len() as u64).await;
    second.shutdown().await;

    let removed_calls: std::collections::HashSet<&str> = theirs
        .iter()
        .map(|c| c.conversation_space_id.as_str())
        .collect();
    for topic in [kafka.topics.raw.clone(), kafka.topics.ordered.clone()] {
        let k = kafka.clone();
        let t = topic.clone();
        let records =
            tokio::task::spawn_blocking(move || read_topic(&k, &t, Duration::from_secs(30)))
                .await
                .unwrap()
                .expect("topic read");
        let leaked = records
            .iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| removed_calls.contains(k)))
            .count();
        if leaked > 0 {
            broken.push(format!("{leaked} records of account {removed} in {topic}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("; "));
    sim.shutdown().await;
}
