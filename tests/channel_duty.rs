//! The channel owner's duty when GoTo will not set the channel up: it never stops trying.
//!
//! A replica that becomes the owner after start-up (its predecessor died) and meets a refusal
//! must not give up: it keeps its election, so every other replica stays standby, and GoTo's
//! notifications would have nobody. Transient refusals (item-level 5xx in the subscribe 207) are
//! retried as such; permanent ones (an item-level 403) show `Failed` with the fix, on which
//! start-up stops the process, and are retried every `reconnect_max` until the fix is made.
//! The simulator refuses the subscription items over real HTTP; Kafka is tansu.
//!
//! And an owner that stops (it lost the election, or the process ends) stops at once, even while
//! GoTo holds its first catch-up with a `Retry-After` of minutes: a stopped owner that waited
//! would go on writing catch-up states while the new owner holds the channel.
//!
//! Nor does it ask GoTo sooner than GoTo's `Retry-After` says, between its set-up rounds (both
//! modes) and between webhook repair passes: the client honours a `Retry-After` between its own
//! attempts only, and a round started after the owner's shorter backoff is refused again.
mod contract_support;
mod support;

use callbridge::channel::duty::{follow_election, ChannelDuty};
use callbridge::channel::election::Role;
use callbridge::channel::sweep::ReportSweeper;
use callbridge::channel::ChannelState;
use callbridge::config::bridge::{ChannelKind, ChannelSettings, WebhookSettings};
use callbridge::goto::GotoClient;
use callbridge::ingest::{Ingest, RawWriter};
use callbridge::kafka::ensure_topics;
use callbridge::secret::Secret;
use callbridge::simulator::RunningSimulator;
use contract_support::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::tansu::Tansu;
use tokio::sync::watch;

/// The owner's duty running, and every channel state it went through.
struct Owner {
    state: watch::Receiver<ChannelState>,
    seen: Arc<Mutex<Vec<ChannelState>>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    role: watch::Sender<Role>,
}

impl Owner {
    /// Waits (30 s at most) for a state matching `is`.
    async fn until(&mut self, what: &str, is: impl FnMut(&ChannelState) -> bool) {
        tokio::time::timeout(Duration::from_secs(30), self.state.wait_for(is))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "not {what} within 30 s; states seen: {:?}",
                    self.seen.lock().unwrap()
                )
            })
            .expect("duty running");
    }

    /// The duty must end promptly on shutdown.
    async fn end(self) {
        self.end_within(Duration::from_secs(10)).await;
    }

    /// The duty must end within `bound` of the shutdown.
    async fn end_within(self, bound: Duration) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(bound, self.task)
            .await
            .unwrap_or_else(|_| panic!("the duty did not end within {bound:?} of the shutdown"))
            .expect("no panic");
    }
}

/// Starts the owner's duty of `kind` on `sim`, with this replica the owner from the start.
async fn owner(sim: &RunningSimulator, kind: ChannelKind, broker: &Tansu) -> Owner {
    owner_with(sim, client(sim), kind, broker).await
}

/// [`owner`], talking to GoTo through `goto`.
async fn owner_with(
    sim: &RunningSimulator,
    goto: GotoClient,
    kind: ChannelKind,
    broker: &Tansu,
) -> Owner {
    let kafka = broker.kafka(1);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let channel = ChannelSettings {
        kind,
        reconnect_base: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        report_sweep_lookback: Duration::ZERO,
        ..ChannelSettings::default()
    };
    let receiver = Receiver::start(200).await;
    let public_url = receiver
        .url
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap();
    let webhook = WebhookSettings {
        public_url,
        secret: Secret::new("s3cr3t-path".to_owned()),
        ..WebhookSettings::default()
    };
    let duty = ChannelDuty {
        client: goto,
        ingest: ingest.clone(),
        sweeper: ReportSweeper::spawn(
            client(sim),
            ingest,
            vec![A1.to_owned()],
            channel.report_sweep_delay,
            shutdown_rx.clone(),
        ),
        channel,
        webhook,
        account_keys: vec![A1.to_owned()],
        events: vec!["STARTING".into(), "ACTIVE".into(), "ENDING".into()],
    };
    let (role, role_rx) = watch::channel(Role::Owner);
    let (state_tx, state) = watch::channel(ChannelState::Starting);
    // Every state the duty sets, in order (the watch alone keeps only the latest).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (record, mut states) = (seen.clone(), state_tx.subscribe());
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let s = states.borrow_and_update().clone();
            record.lock().unwrap().push(s);
        }
    });
    let task = tokio::spawn(follow_election(duty, role_rx, state_tx, shutdown_rx));
    Owner {
        state,
        seen,
        shutdown,
        task,
        role,
    }
}

fn refuse_subscriptions(sim: &RunningSimulator, status: Option<u16>) {
    sim.control()
        .patch_faults(&serde_json::json!({ "subscription_item_status": status }))
        .expect("fault set");
}

/// Whether account `A1` is subscribed on any of the simulator's channels.
async fn subscribed(sim: &RunningSimulator) -> bool {
    for channel_id in sim.control().channel_ids() {
        let accounts = client(sim)
            .call_event_subscriptions(&channel_id)
            .await
            .expect("subscriptions listed");
        if accounts.iter().any(|a| a == A1) {
            return true;
        }
    }
    false
}

async fn refused_for_good_then_fixed(kind: ChannelKind) {
    let sim = start(sim_config()).await;
    let broker = Tansu::start();
    refuse_subscriptions(&sim, Some(403));
    let mut owner = owner(&sim, kind, &broker).await;

    owner
        .until("failed with the fix", |s| {
            matches!(s, ChannelState::Failed(why) if why.contains("AUTHZ_INSUFFICIENT_SCOPE") && why.contains("Fix:"))
        })
        .await;
    // Still trying: GoTo keeps being asked (slowly) while the refusal lasts.
    let asked = requests(&sim, "call-events");
    eventually(Duration::from_secs(10), async || {
        (requests(&sim, "call-events") > asked).then_some(())
    })
    .await;
    assert!(!subscribed(&sim).await);

    // The operator grants the scope: the same duty, never restarted, holds the channel.
    refuse_subscriptions(&sim, None);
    owner
        .until("ready once the refusal is lifted", |s| {
            matches!(s, ChannelState::Ready(_))
        })
        .await;
    assert!(subscribed(&sim).await);
    owner.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_owner_refused_for_good_keeps_trying_until_the_fix_is_made() {
    refused_for_good_then_fixed(ChannelKind::Websocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owner_refused_for_good_keeps_trying_until_the_fix_is_made() {
    refused_for_good_then_fixed(ChannelKind::Webhook).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_items_failing_with_5xx_are_transient_and_never_a_failure() {
    let sim = start(sim_config()).await;
    let broker = Tansu::start();
    refuse_subscriptions(&sim, Some(503));
    let mut owner = owner(&sim, ChannelKind::Websocket, &broker).await;

    // A whole round of subscribe attempts gave up (five 207s of failed items), as transient.
    owner
        .until("down after a round of item failures", |s| {
            matches!(s, ChannelState::Down(_))
        })
        .await;
    refuse_subscriptions(&sim, None);
    owner
        .until("ready once GoTo recovers", |s| {
            matches!(s, ChannelState::Ready(_))
        })
        .await;
    assert!(subscribed(&sim).await);
    let seen = owner.seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|s| matches!(s, ChannelState::Failed(_))),
        "item-level 5xx were taken for a permanent refusal: {seen:?}"
    );
    owner.end().await;
}

/// How the owner is stopped.
#[derive(Clone, Copy)]
enum Stop {
    /// Another replica won the election.
    LostElection,
    /// The process shuts down.
    Shutdown,
}

/// GoTo's `Retry-After` on every 429: the longest the client honours (`MAX_RETRY_AFTER`).
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// How soon a stopped owner must have let go: far below [`RETRY_AFTER`], and far above what a
/// stop takes when it does not wait on GoTo (milliseconds).
const STOP_BOUND: Duration = Duration::from_secs(5);

/// A webhook owner is stopped while its first catch-up waits on GoTo's `Retry-After`.
///
/// The listing of active calls is first held unanswered (so the set-up, which must succeed, is
/// not refused too), then every request is answered 429 with a `Retry-After` of minutes: the
/// client gives the held listing up (its request timeout) and the retry meets the 429.
async fn stopped_while_the_first_catch_up_waits_on_retry_after(stop: Stop) {
    let mut config = sim_config();
    config.rate_limit.retry_after_seconds = Some(RETRY_AFTER.as_secs());
    let sim = start(config).await;
    let broker = Tansu::start();
    sim.control()
        .patch_faults(&serde_json::json!({ "active_calls_paused": true }))
        .expect("fault set");
    // A short request timeout, so the held listing is given up (and retried into the 429s)
    // soon; the set-up's requests are answered at once.
    let mut goto = client_config(&sim);
    goto.request_timeout = Duration::from_secs(1);
    let mut owner = owner_with(&sim, client_with(goto), ChannelKind::Webhook, &broker).await;

    owner
        .until("ready", |s| matches!(s, ChannelState::Ready(_)))
        .await;
    eventually(Duration::from_secs(10), async || {
        (sim.control().stats().active_call_listings.requests > 0).then_some(())
    })
    .await;
    sim.control()
        .patch_faults(&serde_json::json!({ "rest_429_rate": 1.0 }))
        .expect("fault set");
    // The catch-up's listing met a 429 carrying the `Retry-After`: the duty now waits on GoTo.
    eventually(Duration::from_secs(10), async || {
        (answered(&sim, "call-events", 429) > 0).then_some(())
    })
    .await;

    match stop {
        Stop::LostElection => {
            owner.role.send(Role::Standby).expect("duty following");
            let standby = tokio::time::timeout(
                STOP_BOUND,
                owner.state.wait_for(|s| *s == ChannelState::Standby),
            )
            .await
            // The state's borrow is not kept: only whether it came in time.
            .is_ok_and(|seen| seen.is_ok());
            assert!(
                standby,
                "the duty did not let go of the channel within {STOP_BOUND:?} of losing the election; states seen: {:?}",
                owner.seen.lock().unwrap()
            );
            owner.end_within(STOP_BOUND).await;
        }
        Stop::Shutdown => owner.end_within(STOP_BOUND).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owner_that_lost_the_election_does_not_wait_on_a_retry_after() {
    stopped_while_the_first_catch_up_waits_on_retry_after(Stop::LostElection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owner_shutting_down_does_not_wait_on_a_retry_after() {
    stopped_while_the_first_catch_up_waits_on_retry_after(Stop::Shutdown).await;
}

/// GoTo's `Retry-After` in the tests of the waits between rounds: long beside the owner's
/// backoff (50 ms doubling up to 500 ms) and the repair interval (100 ms), short for a test.
const ROUND_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The least time between two requests seen when each waited for [`ROUND_RETRY_AFTER`]: less
/// the polling's resolution and a generous scheduling stall on two busy cores (a stall seen late
/// shortens the next gap as much as it lengthens this one), still far above the owner's own
/// backoff (at most 500 ms).
const LEAST_GAP: Duration = Duration::from_millis(1200);

/// A simulator answering 429 with `Retry-After: 1` to every request, and a client (a token
/// already fetched, since the token endpoint is refused too) that tries each request twice,
/// so that its own retries give up with the 429 and its `Retry-After`.
async fn refusing_with_retry_after() -> (RunningSimulator, GotoClient) {
    let mut config = sim_config();
    config.rate_limit.retry_after_seconds = Some(ROUND_RETRY_AFTER.as_secs());
    let sim = start(config).await;
    let mut goto = client_config(&sim);
    goto.max_attempts = 2;
    let goto = client_with(goto);
    goto.list_channels()
        .await
        .expect("a token, before GoTo refuses");
    sim.control()
        .patch_faults(&serde_json::json!({ "rest_429_rate": 1.0 }))
        .expect("fault set");
    (sim, goto)
}

/// The owner's set-up rounds, each refused (the listing: the client's two attempts, then the
/// round gives up), wait for GoTo's `Retry-After`, not the owner's 50 ms backoff; once GoTo
/// answers again the channel is set up.
async fn set_up_rounds_wait_for_gotos_retry_after(kind: ChannelKind) {
    let (sim, goto) = refusing_with_retry_after().await;
    let broker = Tansu::start();
    let mut owner = owner_with(&sim, goto, kind, &broker).await;
    // Three rounds of two attempts: two gaps between rounds, three within them.
    let times = next_requests(&sim, "notification-channel", 6).await;
    assert_spaced_by_retry_after(&times, LEAST_GAP, ROUND_RETRY_AFTER, "set-up rounds");
    sim.control()
        .patch_faults(&serde_json::json!({ "rest_429_rate": 0.0 }))
        .expect("fault cleared");
    owner
        .until("ready once GoTo answers", |s| {
            matches!(s, ChannelState::Ready(_))
        })
        .await;
    owner.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_owner_waits_for_gotos_retry_after_between_set_up_rounds() {
    set_up_rounds_wait_for_gotos_retry_after(ChannelKind::Websocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owner_waits_for_gotos_retry_after_between_set_up_rounds() {
    set_up_rounds_wait_for_gotos_retry_after(ChannelKind::Webhook).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_repair_passes_wait_for_gotos_retry_after() {
    // A channel set up before GoTo refuses; then passes every 100 ms, each refused (reading the
    // channel: the client's two attempts).
    let mut config = sim_config();
    config.rate_limit.retry_after_seconds = Some(ROUND_RETRY_AFTER.as_secs());
    let sim = start(config).await;
    let mut goto = client_config(&sim);
    goto.max_attempts = 2;
    let goto = client_with(goto);
    let broker = Tansu::start();
    let (shutdown, running) = repair_loop_meeting_429s(&sim, goto, &broker.kafka(1)).await;
    let times = next_requests(&sim, "notification-channel", 6).await;
    assert_spaced_by_retry_after(&times, LEAST_GAP, ROUND_RETRY_AFTER, "repair passes");
    shutdown.send(true).expect("loop running");
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the loop ends on shutdown")
        .expect("no panic");
}
