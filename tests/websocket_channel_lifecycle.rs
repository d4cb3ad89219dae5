//! The WebSocket channel's lifecycle against the simulator, over real HTTP and WebSocket, Kafka on
//! tansu.
//!
//! - A refresh that fails (GoTo's REST API answering 503 for a while) keeps the socket and the
//!   channel: GoTo delivers to the socket until the channel expires, and deleting the channel
//!   would leave nobody to deliver to for the whole outage.
//! - The channel id is part of the channel's URL (GoTo documents
//!   `wss://…/channels/{channelId}/…/ws`, and the simulator's URL holds it too): neither the logs
//!   nor the channel states (what `/readyz` shows) carry it, across creation, connection,
//!   a refresh answered 404 and the recreation that follows.
//! - A channel whose socket GoTo refuses to open (the upgrade answered with a 4xx) while its
//!   REST API still lists and refreshes it is replaced after three refusals in a row (403, and
//!   404 or 410 too: the listing, not the socket host, says whether a channel is gone); the
//!   old one is deleted. An upgrade answered 429 keeps the channel, asks nothing of the REST
//!   API, and is tried again no sooner than its `Retry-After`.
//! - Upgrades refused slowly (each answered 502 only 800 ms after it was asked, longer than a
//!   healthy session) do not reset the reconnect backoff: a session counts as healthy only
//!   from its socket's opening.
//! - A refresh or a repair check GoTo refused with a `Retry-After` is tried again no sooner than
//!   that, not after the session's shorter backoff (the client honours it between its own
//!   attempts only).
mod contract_support;
mod support;

use callbridge::channel::sweep::ReportSweeper;
use callbridge::channel::websocket;
use callbridge::channel::ChannelState;
use callbridge::config::bridge::{ChannelKind, ChannelSettings};
use callbridge::goto::Channel;
use callbridge::ingest::{Ingest, RawWriter};
use callbridge::kafka::ensure_topics;
use callbridge::simulator::{RunningSimulator, SimulatorConfig};
use contract_support::*;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::tansu::Tansu;
use tokio::sync::watch;

/// Everything logged in this test process (nextest runs each test in its own process).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
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

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running WebSocket duty and every channel state it went through.
struct Session {
    state: watch::Receiver<ChannelState>,
    seen: Arc<Mutex<Vec<ChannelState>>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _broker: Tansu,
}

impl Session {
    async fn start(sim: &RunningSimulator, settings: ChannelSettings) -> Session {
        Session::start_with(sim, settings, client(sim)).await
    }

    /// With the GoTo client `goto` (its timeouts, say).
    async fn start_with(
        sim: &RunningSimulator,
        settings: ChannelSettings,
        goto: callbridge::goto::GotoClient,
    ) -> Session {
        let broker = Tansu::start();
        let kafka = broker.kafka(1);
        ensure_topics(&kafka).await.expect("topics");
        let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
        let keeper = bridge_keeper(goto);
        let (state_tx, state) = watch::channel(ChannelState::Starting);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (_doubt, doubt_rx) = watch::channel(false);
        let sweeper = ReportSweeper::spawn(
            client(sim),
            ingest.clone(),
            vec![A1.to_owned()],
            settings.report_sweep_delay,
            shutdown_rx.clone(),
        );
        // Every state, as readiness would have seen it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (record, mut watched) = (seen.clone(), state.clone());
        tokio::spawn(async move {
            while watched.changed().await.is_ok() {
                record
                    .lock()
                    .unwrap()
                    .push(watched.borrow_and_update().clone());
            }
        });
        let task = tokio::spawn(async move {
            let _doubt = _doubt;
            websocket::run(
                keeper,
                ingest,
                settings,
                sweeper,
                state_tx,
                shutdown_rx,
                doubt_rx,
            )
            .await
        });
        Session {
            state,
            seen,
            shutdown,
            task,
            _broker: broker,
        }
    }

    /// Waits (30 s at most) until the state is `Ready` on a channel `is` accepts; its id.
    async fn ready(&mut self, what: &str, mut is: impl FnMut(&str) -> bool) -> String {
        let seen = self.seen.clone();
        let state = tokio::time::timeout(
            Duration::from_secs(30),
            self.state
                .wait_for(|s| matches!(s, ChannelState::Ready(id) if is(id))),
        )
        .await
        .unwrap_or_else(|_| panic!("not {what} within 30 s; states: {:?}", seen.lock().unwrap()))
        .expect("session running")
        .clone();
        match state {
            ChannelState::Ready(id) => id,
            other => unreachable!("{other:?}"),
        }
    }

    fn seen(&self) -> Vec<ChannelState> {
        self.seen.lock().unwrap().clone()
    }

    async fn end(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the session ends on shutdown")
            .expect("no panic");
    }
}

fn settings(refresh_margin: Duration) -> ChannelSettings {
    ChannelSettings {
        kind: ChannelKind::Websocket,
        refresh_margin,
        ping_interval: Duration::from_millis(500),
        reconnect_base: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        report_sweep_lookback: Duration::ZERO,
        ..ChannelSettings::default()
    }
}

/// A simulator whose WebSocket channels live `lifetime`, without `WEBSOCKET_REFRESH_REQUIRED`
/// (the bridge's own refresh is under test).
fn simulator_config(lifetime: Duration) -> SimulatorConfig {
    let mut c = sim_config();
    c.channels.websocket_lifetime = lifetime;
    c.channels.refresh_required_before = Duration::ZERO;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_outage_keeps_the_socket_and_the_channel() {
    // Lifetime 12 s, margin 6 s: the refresh is due at 6 s, retried until 9 s.
    let sim = start(simulator_config(Duration::from_secs(12))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(6))).await;
    let id = session.ready("connected", |_| true).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_status": 503 }))
        .expect("fault set");

    // Two refresh rounds fail (the client makes 4 attempts per round).
    let control = sim.control();
    eventually(Duration::from_secs(20), async || {
        (answered(&sim, "notification-channel", 503) >= 8).then_some(())
    })
    .await;
    assert_eq!(
        control.channel_ids(),
        vec![id.clone()],
        "the channel was replaced during the outage"
    );
    assert_eq!(
        control.stats().websocket_connections,
        1,
        "the socket was dropped during the outage"
    );
    assert_eq!(*session.state.borrow(), ChannelState::Ready(id.clone()));

    // GoTo answers again: the next retry refreshes the same channel.
    let refreshed_before = answered(&sim, "notification-channel", 200);
    control
        .patch_faults(&serde_json::json!({ "channel_refresh_status": null }))
        .expect("fault cleared");
    eventually(Duration::from_secs(20), async || {
        (answered(&sim, "notification-channel", 200) > refreshed_before).then_some(())
    })
    .await;
    assert_eq!(control.channel_ids(), vec![id.clone()]);
    assert_eq!(control.stats().websocket_connections, 1);
    assert!(
        session
            .seen()
            .iter()
            .all(|s| matches!(s, ChannelState::Ready(i) if *i == id)),
        "never down: {:?}",
        session.seen()
    );
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_id_is_in_no_log_and_no_state() {
    let logs = logs();
    // Lifetime 4 s, margin 2 s: a refresh every 2 s.
    let sim = start(simulator_config(Duration::from_secs(4))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(2))).await;
    let first = session.ready("connected", |_| true).await;
    // GoTo answers the refresh 404 (its message names the channel): recreated.
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_status": 404 }))
        .expect("fault set");
    let second = session.ready("on a new channel", |id| id != first).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "channel_refresh_status": null }))
        .expect("fault cleared");
    // And once more on WEBSOCKET_TO_BE_CLOSED, sent once the simulator has registered the new
    // socket (it may do so just after the bridge says `Ready`).
    eventually(Duration::from_secs(20), async || {
        sim.control().send_to_be_closed(&second).then_some(())
    })
    .await;
    let third = session
        .ready("on a third channel", |id| id != first && id != second)
        .await;
    let states = format!("{:?}", session.seen());
    session.end().await;

    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("WebSocket connected"),
        "the logs were captured: {logged}"
    );
    for id in [&first, &second, &third] {
        assert!(!logged.contains(id.as_str()), "{id} in the logs:\n{logged}");
        assert!(
            !states.contains(id.as_str()),
            "{id} in the states: {states}"
        );
        // What the logs and states show instead.
        assert!(logged.contains(&Channel::tag_of(id)), "{logged}");
    }
    assert!(states.contains(&Channel::tag_of(&first)), "{states}");
    assert_no_secrets(&logged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_catch_up_at_a_time_while_goto_is_slow_and_the_socket_keeps_dropping() {
    // Every (re)connect asks for a catch-up of the active calls; GoTo holds the listing
    // unanswered meanwhile (slow, or its rate limit queueing). The client waits for it far
    // longer than this test runs, so no attempt is given up and retried.
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "active_calls_paused": true }))
        .expect("fault set");
    let mut patient = client_config(&sim);
    patient.request_timeout = Duration::from_secs(120);
    let mut session = Session::start_with(
        &sim,
        settings(Duration::from_secs(60)),
        client_with(patient),
    )
    .await;
    session.ready("connected", |_| true).await;
    let control = sim.control();
    eventually(Duration::from_secs(20), async || {
        (control.stats().active_call_listings.in_flight == 1).then_some(())
    })
    .await;

    // Three reconnects in quick succession, each awaited: the simulator's new socket (it may
    // register after the bridge says `Ready`), then `Ready` on it.
    for connected in 1..=3 {
        eventually(Duration::from_secs(20), async || {
            (control.stats().websocket_connections >= connected).then_some(())
        })
        .await;
        let id = match session.state.borrow().clone() {
            ChannelState::Ready(id) => id,
            other => panic!("not ready: {other:?}"),
        };
        assert!(control.disconnect_socket(&id), "no socket to cut");
        eventually(Duration::from_secs(20), async || {
            (control.stats().websocket_connections > connected).then_some(())
        })
        .await;
        session.ready("reconnected", |_| true).await;
    }

    // GoTo answers again: whatever was asked meanwhile runs once more, after the first.
    control
        .patch_faults(&serde_json::json!({ "active_calls_paused": false }))
        .expect("fault cleared");
    let listings = eventually(Duration::from_secs(20), async || {
        let l = control.stats().active_call_listings;
        (l.requests >= 2 && l.in_flight == 0).then_some(l)
    })
    .await;
    assert_eq!(
        listings.max_in_flight, 1,
        "catch-ups ran side by side: {listings:?}"
    );
    assert_eq!(
        listings.requests, 2,
        "the held catch-up, then one for the reconnects made meanwhile: {listings:?}"
    );
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_goto_takes_back_at_every_connect_is_recreated_with_backoff() {
    // GoTo sends WEBSOCKET_TO_BE_CLOSED to every socket within 50 ms of its connecting (a
    // drain that keeps going): recreating at once every time would create channels as fast as
    // GoTo answers, for as long as the drain lasts.
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    let mut session = Session::start(
        &sim,
        ChannelSettings {
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(1),
            ..settings(Duration::from_secs(60))
        },
    )
    .await;
    session.ready("connected", |_| true).await;
    let control = sim.control();
    control
        .patch_faults(&serde_json::json!({ "websocket_to_be_closed_every": "50ms" }))
        .expect("fault set");

    // When each of channels 2..=4 was first seen created (polled every 20 ms).
    let mut seen_at = Vec::new();
    for n in 2..=4 {
        eventually(Duration::from_secs(20), async || {
            (control.created_channel_ids().len() >= n).then_some(())
        })
        .await;
        seen_at.push(tokio::time::Instant::now());
    }
    // The first recreation is immediate (its session was healthy); then 0.5 s, then 1 s.
    let spread = seen_at[2] - seen_at[0];
    assert!(
        spread >= Duration::from_millis(1400),
        "channels 2 to 4 created within {spread:?}: no backoff"
    );

    // The drain ends: the bridge settles on one channel, the others deleted.
    control
        .patch_faults(&serde_json::json!({ "websocket_to_be_closed_every": null }))
        .expect("fault cleared");
    let state = session.state.clone();
    eventually(Duration::from_secs(20), async || {
        let ChannelState::Ready(id) = state.borrow().clone() else {
            return None;
        };
        (control.channel_ids() == vec![id]).then_some(())
    })
    .await;
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_goto_to_stop_refusing() {
    // GoTo answers everything 429 with `Retry-After: 3600`: the client honours it (up to
    // 300 s a wait) while setting the channel up. A stop (shutdown, or the channel election
    // lost) must not wait for that: meanwhile this replica would go on creating channels beside
    // the new owner's.
    let mut c = simulator_config(Duration::from_secs(600));
    c.rate_limit.retry_after_seconds = Some(3600);
    c.faults.rest_429_rate = 1.0;
    let sim = start(c).await;
    let session = Session::start(&sim, settings(Duration::from_secs(60))).await;
    let control = sim.control();
    eventually(Duration::from_secs(20), async || {
        let refused: u64 = control
            .stats()
            .apis
            .values()
            .map(|a| a.too_many_requests)
            .sum();
        (refused > 0).then_some(())
    })
    .await;
    // `end` allows 10 s.
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_refresh_goto_keeps_refusing() {
    // Lifetime 4 s, margin 2 s: the refresh is due 2 s after connecting, and GoTo answers it 429
    // with `Retry-After: 3600`.
    let mut c = simulator_config(Duration::from_secs(4));
    c.rate_limit.retry_after_seconds = Some(3600);
    let sim = start(c).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(2))).await;
    session.ready("connected", |_| true).await;
    let control = sim.control();
    control
        .patch_faults(&serde_json::json!({ "rest_429_rate": 1.0 }))
        .expect("fault set");
    eventually(Duration::from_secs(20), async || {
        let refused = control
            .stats()
            .apis
            .get("notification-channel")
            .map_or(0, |a| a.too_many_requests);
        (refused > 0).then_some(())
    })
    .await;
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_loop_stops_without_waiting_for_goto_to_stop_refusing() {
    // Webhook mode's keep-alive (the loop is the same for any channel kind): a repair pass meets
    // 429 with `Retry-After: 3600`, and the stop must not wait for it.
    let mut c = simulator_config(Duration::from_secs(600));
    c.rate_limit.retry_after_seconds = Some(3600);
    let sim = start(c).await;
    let broker = Tansu::start();
    let (shutdown, running) = repair_loop_meeting_429s(&sim, client(&sim), &broker.kafka(1)).await;
    let control = sim.control();
    eventually(Duration::from_secs(20), async || {
        let refused: u64 = control
            .stats()
            .apis
            .values()
            .map(|a| a.too_many_requests)
            .sum();
        (refused > 0).then_some(())
    })
    .await;
    shutdown.send(true).expect("loop running");
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the loop ends on shutdown")
        .expect("no panic");
}

/// Cuts the socket of `channel_id` (once the simulator has registered it: it may do so after
/// the bridge says `Ready`) and has the simulator answer the upgrades of that channel, and of
/// no other, with `status` from then on.
async fn refuse_upgrades_of(sim: &RunningSimulator, channel_id: &str, status: u16) {
    let control = sim.control();
    control
        .patch_faults(&serde_json::json!({
            "websocket_upgrade_status": status,
            "websocket_upgrade_channels": [channel_id],
        }))
        .expect("fault set");
    eventually(Duration::from_secs(20), async || {
        control.disconnect_socket(channel_id).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_socket_goto_keeps_refusing_is_replaced() {
    // GoTo goes on listing and refreshing the channel, but answers every upgrade of its socket
    // 403: the listing hands it back at every round, and it would be dialled for ever.
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(60))).await;
    let first = session.ready("connected", |_| true).await;
    let taken_back_before = answered(&sim, "notification-channel", 200);
    refuse_upgrades_of(&sim, &first, 403).await;

    let second = session.ready("on a new channel", |id| id != first).await;
    assert_eq!(
        sim.control().channel_ids(),
        vec![second.clone()],
        "the refused channel is deleted at GoTo"
    );
    // Not replaced at the first refusal: the listing handed it back (listed, refreshed) at
    // least twice before.
    let taken_back = answered(&sim, "notification-channel", 200) - taken_back_before;
    assert!(
        taken_back >= 4,
        "{taken_back} listings and refreshes before the replacement"
    );
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_socket_goto_says_is_gone_but_still_lists_is_replaced() {
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(60))).await;
    let mut current = session.ready("connected", |_| true).await;
    let mut seen = vec![current.clone()];
    for status in [404, 410] {
        let taken_back_before = answered(&sim, "notification-channel", 200);
        let refused_before = sim.control().stats().websocket_upgrades_refused;
        refuse_upgrades_of(&sim, &current, status).await;
        current = session
            .ready(&format!("on a new channel after {status}"), |id| {
                !seen.iter().any(|s| s == id)
            })
            .await;
        seen.push(current.clone());
        assert_eq!(
            sim.control().channel_ids(),
            vec![current.clone()],
            "the channel GoTo said is gone ({status}) is deleted at GoTo"
        );
        // A socket host's 404 is not GoTo's word that the channel is gone (a balancer that does
        // not know a fresh channel yet answers so too): the listing was asked, handed the
        // channel back, and only the third refusal in a row replaced it.
        let taken_back = answered(&sim, "notification-channel", 200) - taken_back_before;
        assert!(
            taken_back >= 4,
            "{taken_back} listings and refreshes before the replacement after {status}"
        );
        assert_eq!(
            sim.control().stats().websocket_upgrades_refused - refused_before,
            3,
            "replaced at the third refusal after {status}"
        );
    }
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_host_refusing_every_channel_costs_two_new_channels_at_most() {
    // Every channel's upgrade answered 403 (the account's, or a socket host misconfigured for
    // all): replacing the channel at every third refusal would create and delete channels for
    // as long as it lasts.
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(60))).await;
    let first = session.ready("connected", |_| true).await;
    sim.control()
        .patch_faults(&serde_json::json!({
            "websocket_upgrade_status": 403,
            "websocket_upgrade_channels": [],
        }))
        .expect("fault set");
    eventually(Duration::from_secs(20), async || {
        sim.control().disconnect_socket(&first).then_some(())
    })
    .await;
    // Three refusals for each of the first channel and its two replacements, then as many
    // again on the last one (polled: the simulator only counts).
    let refused = || sim.control().stats().websocket_upgrades_refused;
    eventually(Duration::from_secs(60), async || {
        (refused() >= 12).then_some(())
    })
    .await;
    let created = sim.control().created_channel_ids();
    assert_eq!(
        created.len(),
        3,
        "the first channel and two replacements, no more: {created:?}"
    );
    assert_eq!(
        sim.control().channel_ids().len(),
        1,
        "the replaced ones deleted"
    );

    // A socket host that takes sockets again: the channel in hand connects, and a later
    // refusal may replace it again.
    sim.control()
        .patch_faults(&serde_json::json!({ "websocket_upgrade_status": null }))
        .expect("fault cleared");
    let last = session.ready("connected again", |_| true).await;
    assert_eq!(
        Some(&last),
        created.last(),
        "connected on the last channel made"
    );
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_goto_answers_429_keeps_the_channel_and_waits_for_its_retry_after() {
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    let mut session = Session::start(&sim, settings(Duration::from_secs(60))).await;
    let first = session.ready("connected", |_| true).await;
    refuse_upgrades_of(&sim, &first, 429).await;
    // Each refusal answered with `Retry-After: 1`; polled, as the simulator only counts. The
    // socket's end before the first one sends that round to the listing; the 429s do not.
    let refused = || sim.control().stats().websocket_upgrades_refused;
    eventually(Duration::from_secs(30), async || {
        (refused() >= 1).then_some(())
    })
    .await;
    let rest_before = requests(&sim, "notification-channel");
    let since_first = std::time::Instant::now();
    eventually(Duration::from_secs(30), async || {
        (refused() >= 3).then_some(())
    })
    .await;
    // Two more tries took at least two `Retry-After`s (the session's own backoff is 100 ms
    // doubling to 400 ms: they would come within 0.7 s without it), less polling slack.
    assert!(
        since_first.elapsed() >= Duration::from_millis(1500),
        "two tries after a 429 within {:?}",
        since_first.elapsed()
    );
    // GoTo said it is busy: nothing was asked of its REST API meanwhile, and the channel is kept.
    assert_eq!(
        requests(&sim, "notification-channel"),
        rest_before,
        "the notification-channel API was asked while the socket host answered 429"
    );
    // But not for ever: after the third 429 in a row the listing says whether the channel is
    // still there (a socket host answering 429 for a channel GoTo deleted would keep it).
    eventually(Duration::from_secs(30), async || {
        (requests(&sim, "notification-channel") > rest_before).then_some(())
    })
    .await;
    sim.control()
        .patch_faults(&serde_json::json!({ "websocket_upgrade_status": null }))
        .expect("fault cleared");
    let again = session.ready("connected again", |_| true).await;
    assert_eq!(again, first, "the channel was kept");
    assert_eq!(sim.control().channel_ids(), vec![first.clone()]);
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upgrade_refusals_do_not_reset_the_reconnect_backoff() {
    // The socket host answers every upgrade of the channel 502 (no `Retry-After`: the session's
    // own backoff alone spaces the tries), each only 800 ms after it was asked: longer than a
    // healthy session. Counted from before the dial, each such session would pass for healthy
    // and the next try would come at once, for as long as the refusals last.
    const DELAY: Duration = Duration::from_millis(800);
    const BASE: Duration = Duration::from_millis(300);
    let sim = start(simulator_config(Duration::from_secs(600))).await;
    let mut session = Session::start(
        &sim,
        ChannelSettings {
            reconnect_base: BASE,
            reconnect_max: Duration::from_millis(2400),
            ..settings(Duration::from_secs(60))
        },
    )
    .await;
    let first = session.ready("connected", |_| true).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "websocket_upgrade_delay": "800ms" }))
        .expect("fault set");
    let times = {
        let refusals = next_counted("refused upgrades", 5, || {
            sim.control().stats().websocket_upgrades_refused
        });
        let refusing = refuse_upgrades_of(&sim, &first, 502);
        let (times, ()) = tokio::join!(refusals, refusing);
        times
    };
    // Each try waits the delay, then the backoff: 300 ms doubling up to 2.4 s, so the gaps
    // between refusals are about 1.1, 1.4, 2.0 and 3.2 s. Reset by every slow refusal, the
    // backoff would leave them all at about the delay.
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // The times are when a 10 ms poll saw each refusal, so one gap can shrink by a stall of the
    // test's task; their sum cannot by more than one stall.
    assert!(
        times[4] - times[0] >= 4 * DELAY,
        "refusals {gaps:?} apart: each upgrade is answered {DELAY:?} after it is asked"
    );
    // Less a generous scheduling stall on two busy cores: still well above a reset backoff.
    assert!(
        gaps[3] >= gaps[0] + 3 * BASE,
        "refusals {gaps:?} apart: the backoff did not grow across slow refusals"
    );

    // 502 says nothing against the channel: once the socket host takes sockets again (still
    // slowly), the session connects on the channel it had.
    sim.control()
        .patch_faults(&serde_json::json!({ "websocket_upgrade_status": null }))
        .expect("fault cleared");
    let again = session.ready("connected again", |_| true).await;
    assert_eq!(again, first, "the channel was kept");
    session.end().await;
}

/// GoTo's `Retry-After` in the tests of the waits between a session's tries: long beside the
/// session's backoff (100 ms doubling up to 400 ms) and repair interval (100 ms), short for a
/// test.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The least time between two requests seen when each waited for [`RETRY_AFTER`]: less the
/// polling's resolution and a generous scheduling stall on two busy cores (a stall seen late
/// shortens the next gap as much as it lengthens this one), still above the session's own
/// backoff (100 ms doubling to 400 ms).
const LEAST_GAP: Duration = Duration::from_millis(1200);

/// A GoTo client trying each request twice, so that its own retries give up with GoTo's 429
/// and its `Retry-After`.
fn client_trying_twice(sim: &RunningSimulator) -> callbridge::goto::GotoClient {
    let mut goto = client_config(sim);
    goto.max_attempts = 2;
    client_with(goto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_goto_refuses_is_retried_after_its_retry_after() {
    // GoTo asks for a refresh 1 s after each grant (lifetime 60 s), then answers every request
    // 429 with `Retry-After: 1`; the bridge's own refresh would come much later (margin 10 s).
    let mut c = simulator_config(Duration::from_secs(60));
    c.channels.refresh_required_before = Duration::from_secs(59);
    c.rate_limit.retry_after_seconds = Some(RETRY_AFTER.as_secs());
    let sim = start(c).await;
    let mut session = Session::start_with(
        &sim,
        settings(Duration::from_secs(10)),
        client_trying_twice(&sim),
    )
    .await;
    let id = session.ready("connected", |_| true).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "rest_429_rate": 1.0 }))
        .expect("fault set");
    // Three refresh tries of two attempts each (the socket needs nothing else of this API).
    let times = next_requests(&sim, "notification-channel", 6).await;
    assert_spaced_by_retry_after(&times, LEAST_GAP, RETRY_AFTER, "refresh tries");
    assert_eq!(*session.state.borrow(), ChannelState::Ready(id));
    session.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_check_goto_refuses_is_retried_after_its_retry_after() {
    // Checks every 100 ms on a socket that stays; GoTo answers them 429 with `Retry-After: 1`.
    let mut c = simulator_config(Duration::from_secs(600));
    c.rate_limit.retry_after_seconds = Some(RETRY_AFTER.as_secs());
    let sim = start(c).await;
    let mut session = Session::start_with(
        &sim,
        ChannelSettings {
            repair_interval: Duration::from_millis(100),
            ..settings(Duration::from_secs(60))
        },
        client_trying_twice(&sim),
    )
    .await;
    let id = session.ready("connected", |_| true).await;
    sim.control()
        .patch_faults(&serde_json::json!({ "rest_429_rate": 1.0 }))
        .expect("fault set");
    // Three checks of two attempts each (reading the channel).
    let times = next_requests(&sim, "notification-channel", 6).await;
    assert_spaced_by_retry_after(&times, LEAST_GAP, RETRY_AFTER, "repair checks");
    assert_eq!(*session.state.borrow(), ChannelState::Ready(id));
    session.end().await;
}
