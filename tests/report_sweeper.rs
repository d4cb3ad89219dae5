//! The report sweeper against the simulator (real HTTP) and tansu: calls nobody was told about
//! are found from GoTo's report summaries and written to raw, and a call swept once is not
//! fetched again by the overlapping windows that follow (a socket cut every few seconds asks for
//! one window per reconnect; fetching every call of each again starved back-fill).
mod contract_support;
mod support;

use callbridge::channel::sweep::{ReportSweeper, Window};
use callbridge::ingest::{Ingest, RawWriter};
use callbridge::kafka::ensure_topics;
use callbridge::kafka::reader::read_topic;
use contract_support::*;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};
use support::tansu::Tansu;
use tokio::sync::watch;

const CALLS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_windows_fetch_each_call_once_and_raw_gets_every_state() {
    // Calls that nobody is subscribed to: GoTo delivers none of their states.
    let window_start = SystemTime::now();
    let sim = start(with_traffic(sim_config(), CALLS, 3, 5)).await;
    let truth = traffic_done(&sim).await;
    assert_eq!(truth.calls.len() as u64, CALLS);
    assert!(truth
        .calls
        .iter()
        .all(|c| c.states.iter().all(|s| s.deliveries.is_empty())));
    let window_end = SystemTime::now();

    let broker = Tansu::start();
    let kafka = broker.kafka(1);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    let accounts = vec![A1.to_owned(), A2.to_owned(), A3.to_owned()];
    let (_stop, stop_rx) = watch::channel(false);
    let sweeper = ReportSweeper::spawn(
        client(&sim),
        ingest,
        accounts.clone(),
        Duration::ZERO,
        stop_rx,
    );
    let mut swept = sweeper.windows_swept();
    let events_before = requests(&sim, "call-events");
    let summaries_before = requests(&sim, "call-events-report");

    // Three windows, one after the other, each overlapping the last: the first finds every call.
    let mid = window_start + window_end.duration_since(window_start).unwrap() / 2;
    for (n, window) in [
        (window_start, window_end),
        (mid, window_end),
        (window_start, mid),
    ]
    .into_iter()
    .enumerate()
    {
        sweeper.request(window);
        tokio::time::timeout(Duration::from_secs(30), swept.wait_for(|&k| k > n as u64))
            .await
            .expect("the window is swept within 30 s")
            .expect("sweeper running");
    }

    let events = requests(&sim, "call-events") - events_before;
    let summaries = requests(&sim, "call-events-report") - summaries_before;
    assert_eq!(
        summaries,
        3 * accounts.len() as u64,
        "one listing per account per window"
    );
    assert_eq!(
        events, CALLS,
        "each call's states fetched once across three overlapping windows"
    );

    assert_raw_holds_every_state(&kafka, &truth).await;
    sim.shutdown().await;
}

/// Raw holds every state of every call of `truth`, each once.
async fn assert_raw_holds_every_state(
    kafka: &callbridge::kafka::KafkaConfig,
    truth: &callbridge::simulator::GroundTruth,
) {
    let expected: BTreeSet<(String, u64)> = truth
        .calls
        .iter()
        .flat_map(|c| {
            c.states
                .iter()
                .map(|s| (c.conversation_space_id.clone(), s.sequence_number))
        })
        .collect();
    let (k, topic) = (kafka.clone(), kafka.topics.raw.clone());
    let records =
        tokio::task::spawn_blocking(move || read_topic(&k, &topic, Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("raw");
    let found: BTreeSet<(String, u64)> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("JSON");
            let content = &v["content"];
            (
                content["metadata"]["conversationSpaceId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no conversation id in {v}"))
                    .to_owned(),
                content["state"]["sequenceNumber"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no sequenceNumber in {v}")),
            )
        })
        .collect();
    assert_eq!(found, expected, "raw holds exactly the calls' states");
    assert_eq!(records.len(), expected.len(), "each written once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_backfill_retention_are_swept_from_their_reports() {
    let window_start = SystemTime::now();
    let sim = start(with_traffic(sim_config(), CALLS, 3, 5)).await;
    let truth = traffic_done(&sim).await;
    let window_end = SystemTime::now();
    // Back-fill no longer knows any of the calls (404); their reports keep every state.
    sim.control()
        .patch_faults(&serde_json::json!({"retention": "1ms"}))
        .expect("fault set");

    let broker = Tansu::start();
    let kafka = broker.kafka(1);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    let (_stop, stop_rx) = watch::channel(false);
    let sweeper = ReportSweeper::spawn(
        client(&sim),
        ingest,
        vec![A1.to_owned(), A2.to_owned(), A3.to_owned()],
        Duration::ZERO,
        stop_rx,
    );
    let mut swept = sweeper.windows_swept();
    sweeper.request((window_start, window_end));
    tokio::time::timeout(Duration::from_secs(30), swept.wait_for(|&k| k > 0))
        .await
        .expect("the window is swept within 30 s")
        .expect("sweeper running");
    assert!(
        answered(&sim, "call-events", 404) >= CALLS,
        "back-fill said 404"
    );
    assert_raw_holds_every_state(&kafka, &truth).await;
    sim.shutdown().await;
}

/// GoTo unknown #7: past its retention, back-fill may answer a call with 200 and no states
/// instead of 404. The sweep must then read the call's report as it does on a 404: taking the
/// empty answer as the whole call wrote nothing and remembered the call as swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_back_fill_answers_with_no_states_are_swept_from_their_reports() {
    let window_start = SystemTime::now();
    let sim = start(with_traffic(sim_config(), CALLS, 3, 5)).await;
    let truth = traffic_done(&sim).await;
    let window_end = SystemTime::now();
    sim.control()
        .patch_faults(&serde_json::json!({
            "retention": "1ms",
            "backfill_empty_after_retention": true,
        }))
        .expect("fault set");

    let broker = Tansu::start();
    let kafka = broker.kafka(1);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    let (_stop, stop_rx) = watch::channel(false);
    let goto = client(&sim);
    let sweeper = ReportSweeper::spawn(
        goto.clone(),
        ingest,
        vec![A1.to_owned(), A2.to_owned(), A3.to_owned()],
        Duration::ZERO,
        stop_rx,
    );
    let mut swept = sweeper.windows_swept();
    sweeper.request((window_start, window_end));
    tokio::time::timeout(Duration::from_secs(30), swept.wait_for(|&k| k > 0))
        .await
        .expect("the window is swept within 30 s")
        .expect("sweeper running");
    // The simulator's answers carry a `Date` from this host's own clock.
    let skew = goto
        .goto_clock_skew()
        .expect("skew measured from GoTo's Date");
    assert!(skew.abs() < 2.0, "skew {skew} s against the same clock");
    assert_eq!(
        answered(&sim, "call-events", 404),
        0,
        "back-fill never said 404"
    );
    assert!(
        answered(&sim, "call-events", 200) >= CALLS,
        "back-fill answered every call with 200"
    );
    assert_raw_holds_every_state(&kafka, &truth).await;
    sim.shutdown().await;
}

/// A sweep that writes a call while its window reaches further back than the sequencer remembers
/// a completed call (`sequencer.closed_retention`) is counted and logged: the call may be one the
/// sequencer has forgotten and publishes again. The same window within the retention is not
/// counted, and neither is a window in which the sweep wrote nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_writes_calls_past_the_sequencers_retention_is_counted() {
    use callbridge::demo::metric_value;
    let metrics = callbridge::ops::prometheus();
    let window_start = SystemTime::now();
    let sim = start(with_traffic(sim_config(), CALLS, 3, 5)).await;
    traffic_done(&sim).await;
    let window = (window_start, SystemTime::now());
    let broker = Tansu::start();
    let kafka = broker.kafka(1);
    ensure_topics(&kafka).await.expect("topics");
    let ingest = Ingest::new(RawWriter::new(&kafka).expect("producer"));
    let counted = || {
        metric_value(
            &metrics.render(),
            "callbridge_report_sweeps_past_retention_total",
        )
    };
    // A sweeper of its own per case: each fetches and writes the window's calls afresh.
    let sweep_once = async |retention: Duration, window: Window| {
        let (stop, stop_rx) = watch::channel(false);
        let sweeper = ReportSweeper::spawn(
            client(&sim),
            ingest.clone(),
            vec![A1.to_owned(), A2.to_owned(), A3.to_owned()],
            Duration::ZERO,
            stop_rx,
        );
        sweeper.set_sequencer_retention(retention);
        let mut swept = sweeper.windows_swept();
        sweeper.request(window);
        tokio::time::timeout(Duration::from_secs(30), swept.wait_for(|&k| k >= 1))
            .await
            .expect("swept within 30 s")
            .expect("sweeper running");
        let _ = stop.send(true);
    };

    // The window (widened by its 10 s margin) reaches back seconds: within an hour.
    sweep_once(Duration::from_secs(3600), window).await;
    assert_eq!(counted(), 0.0, "{}", metrics.render());
    // Hours back, with no call in it: nothing written, nothing counted.
    let empty = (
        window_start - Duration::from_secs(7200),
        window_start - Duration::from_secs(3600),
    );
    sweep_once(Duration::from_secs(1), empty).await;
    assert_eq!(counted(), 0.0, "{}", metrics.render());
    // A retention shorter than the window's reach: counted once for the window.
    sweep_once(Duration::from_secs(1), window).await;
    assert_eq!(counted(), 1.0, "{}", metrics.render());
    sim.shutdown().await;
}
