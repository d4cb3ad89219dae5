//! Operations endpoints on the admin port: `/metrics`, `/healthz`, `/readyz`, `/readyz/traffic`.
//!
//! Kept off the webhook port so the public surface is only the webhook path.
//!
//! Two readiness answers: `/readyz/traffic` says whether this replica can take notifications now
//! (webhook listener bound, not shutting down; Kafka reported, not required), which is what a
//! load balancer needs; `/readyz` adds Kafka, the channel and the sequencer, which is what an operator or a start-up
//! check wants to know. The channel is deliberately not part of the first: GoTo verifies the
//! webhook URL when the channel is created, so a replica must take traffic before its channel
//! exists.

mod series;
mod webhook_route;

pub use webhook_route::{after_webhook_route, wait_for_webhook_route, WEBHOOK_ROUTE_WAIT};

use crate::channel::ChannelState;
use crate::sequencer::shell::ShellStats;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often histogram samples are folded into their summaries when nobody scrapes.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once; later calls share it).
///
/// The exporter keeps every histogram sample until a scrape or an upkeep folds it in, and
/// `build_recorder` (unlike `install`) runs no upkeep: without a scrape, each state's latency
/// samples stayed in memory for good (the bench's memory phase saw ~150 bytes per state; RSS
/// grew with traffic, not with open calls). A thread runs the upkeep on the exporter's own
/// default period.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = new_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests): then this handle only renders ours.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(METRICS_UPKEEP);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started: histogram samples are kept until /metrics is scraped");
        }
        handle
    })
}

/// A recorder whose alerted series already exist at 0 (see [`series`]): a counter that appears
/// only with its first increment makes `increase()`/`rate()` miss that first event.
fn new_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, series::register_at_zero);
    recorder
}

/// The webhook listener, as far as readiness is concerned.
const WEBHOOK_NOT_USED: u8 = 0;
const WEBHOOK_EXPECTED: u8 = 1;
const WEBHOOK_LISTENING: u8 = 2;

/// What `/readyz` and `/readyz/traffic` check.
#[derive(Clone)]
pub struct Readiness {
    channel: watch::Receiver<ChannelState>,
    sequencer: Arc<Mutex<Option<Arc<ShellStats>>>>,
    draining: Arc<AtomicBool>,
    kafka: Arc<AtomicBool>,
    webhook: Arc<AtomicU8>,
}

/// One readiness answer: ready or not, and the JSON body naming each check.
struct Report {
    ready: bool,
    body: serde_json::Value,
}

impl Readiness {
    /// Readiness over the channel's state.
    pub fn new(channel: watch::Receiver<ChannelState>) -> Self {
        Self {
            channel,
            sequencer: Arc::new(Mutex::new(None)),
            draining: Arc::new(AtomicBool::new(false)),
            kafka: Arc::new(AtomicBool::new(false)),
            webhook: Arc::new(AtomicU8::new(WEBHOOK_NOT_USED)),
        }
    }

    /// Webhook mode: this replica takes GoTo's POSTs, so it is not ready for traffic until
    /// [`Readiness::set_webhook_listening`]. Call it before the admin server starts serving.
    pub fn expect_webhook_listener(&self) {
        // Never downgrades a listener already reported bound.
        let _ = self.webhook.compare_exchange(
            WEBHOOK_NOT_USED,
            WEBHOOK_EXPECTED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The webhook listener is bound: connections to the webhook port are accepted from now on.
    pub fn set_webhook_listening(&self) {
        self.webhook.store(WEBHOOK_LISTENING, Ordering::SeqCst);
    }

    /// Records the latest Kafka reachability check.
    pub fn set_kafka_reachable(&self, ok: bool) {
        self.kafka.store(ok, Ordering::SeqCst);
        metrics::gauge!("callbridge_kafka_reachable").set(if ok { 1.0 } else { 0.0 });
    }

    /// Adds the sequencer's counters (partitions owned).
    pub fn set_sequencer(&self, stats: Arc<ShellStats>) {
        if let Ok(mut s) = self.sequencer.lock() {
            *s = Some(stats);
        }
    }

    /// Shutdown started: not ready any more, so the load balancer stops sending.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Webhook check: `(ok, state)`; always ok when this replica serves no webhook.
    fn webhook_check(&self) -> (bool, &'static str) {
        match self.webhook.load(Ordering::SeqCst) {
            WEBHOOK_LISTENING => (true, "listening"),
            WEBHOOK_EXPECTED => (false, "not_listening_yet"),
            _ => (true, "not_used"),
        }
    }

    /// `/readyz/traffic`: should the load balancer send this replica notifications? The
    /// channel and the sequencer are not asked: any replica's webhook writes to raw whoever owns
    /// either. Kafka is reported, not required: while it cannot be reached, a POST still gets
    /// its record into the producer's queue (written once Kafka is back, GoTo's retries adding
    /// copies the sequencer drops), whereas taking every pod out of the Service in a Kafka
    /// outage would leave GoTo's POSTs nowhere to go and every state to the rate-limited
    /// back-fill.
    fn traffic(&self) -> Report {
        let kafka_ok = self.kafka.load(Ordering::SeqCst);
        let (webhook_ok, webhook) = self.webhook_check();
        let draining = self.draining.load(Ordering::SeqCst);
        let ready = webhook_ok && !draining;
        Report {
            ready,
            body: json!({
                "ready": ready,
                "checks": {
                    "kafka": {"ok": kafka_ok},
                    "webhook": {"ok": webhook_ok, "state": webhook},
                    "shutdown": {"ok": !draining},
                }
            }),
        }
    }

    /// Is the sequencer in its consumer group with an assignment, and how many partitions.
    fn sequencer_check(&self) -> (bool, u64) {
        self.sequencer
            .lock()
            .ok()
            .and_then(|s| {
                s.as_ref().map(|s| {
                    (
                        s.group_joined.load(Ordering::SeqCst),
                        s.partitions_owned.load(Ordering::Relaxed),
                    )
                })
            })
            .unwrap_or((false, 0))
    }

    /// `/readyz`: everything `/readyz/traffic` checks, plus Kafka (there reported only), the
    /// channel and the sequencer.
    fn report(&self) -> Report {
        let Report { ready, mut body } = self.traffic();
        let channel = self.channel.borrow().clone();
        // A standby replica does not hold the channel, yet serves webhooks and its partitions.
        let channel_ok = matches!(channel, ChannelState::Ready(_) | ChannelState::Standby);
        let (joined, partitions) = self.sequencer_check();
        // The reading the body already shows, so the answer and its body agree.
        let kafka_ok = body["checks"]["kafka"]["ok"] == true;
        let ready = ready && kafka_ok && channel_ok && joined;
        body["ready"] = json!(ready);
        body["checks"]["channel"] = json!({"ok": channel_ok, "state": format!("{channel:?}")});
        body["checks"]["sequencer"] = json!({"ok": joined, "partitions_owned": partitions});
        Report { ready, body }
    }
}

fn answer(report: Report) -> impl IntoResponse {
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.body))
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    answer(r.report())
}

async fn readyz_traffic(State(r): State<Readiness>) -> impl IntoResponse {
    answer(r.traffic())
}

/// A consumer loop that has not turned for this long is stuck (a takeover phase is bounded by
/// `sequencer_io.takeover_timeout`, 30 s by default, and runs for all partitions at once; the
/// releases of a hand-over run one after another, each bounded the same way, and each moves the
/// heartbeat).
const STUCK_AFTER_MS: u64 = 90_000;

/// Alive when the process answers and the sequencer's loop is turning (a restart is the fix for
/// a stuck loop, which is what a failing liveness probe triggers).
async fn healthz(State(r): State<Readiness>) -> impl IntoResponse {
    let heartbeat = r
        .sequencer
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| s.heartbeat_ms.load(Ordering::Relaxed)))
        .unwrap_or(0);
    let now = crate::sequencer::shell::runner::epoch_ms();
    // 0: the loop has not started yet (start-up), which is not a failure.
    let since = if heartbeat == 0 {
        0
    } else {
        now.saturating_sub(heartbeat)
    };
    let alive = since < STUCK_AFTER_MS;
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "alive": alive,
            "checks": {"sequencer_loop": {"ok": alive, "last_turn_ms_ago": since}}
        })),
    )
}

async fn metrics_text(State(r): State<Readiness>) -> impl IntoResponse {
    let one = |b: bool| if b { 1.0 } else { 0.0 };
    let channel_ready = matches!(*r.channel.borrow(), ChannelState::Ready(_));
    metrics::gauge!("callbridge_channel_ready").set(one(channel_ready));
    metrics::gauge!("callbridge_ready").set(one(r.report().ready));
    metrics::gauge!("callbridge_traffic_ready").set(one(r.traffic().ready));
    metrics::gauge!("callbridge_sequencer_in_group").set(one(r.sequencer_check().0));
    prometheus().render()
}

/// Serves the admin endpoints until `stop` turns true.
pub async fn serve(listener: TcpListener, readiness: Readiness, mut stop: watch::Receiver<bool>) {
    prometheus();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/readyz/traffic", get(readyz_traffic))
        .route("/metrics", get(metrics_text))
        .with_state(readiness);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ParseError;
    use crate::sequencer::DeadLetterReason;

    fn readiness() -> (watch::Sender<ChannelState>, Readiness) {
        let (tx, rx) = watch::channel(ChannelState::Starting);
        (tx, Readiness::new(rx))
    }

    fn joined(r: &Readiness) {
        let stats = Arc::new(ShellStats::default());
        stats.group_joined.store(true, Ordering::SeqCst);
        r.set_sequencer(stats);
    }

    #[test]
    fn traffic_readiness_needs_the_listener_and_no_shutdown_but_not_the_channel_nor_kafka() {
        let (channel, r) = readiness();
        r.expect_webhook_listener();
        r.set_kafka_reachable(true);
        assert!(!r.traffic().ready, "listener not bound yet");
        assert_eq!(
            r.traffic().body["checks"]["webhook"]["state"],
            "not_listening_yet"
        );
        r.set_webhook_listening();
        assert!(r.traffic().ready, "{}", r.traffic().body);
        // The channel is still Starting and the sequencer has not joined: ready for traffic
        // (GoTo must reach the webhook before the channel exists), not ready in full.
        assert!(!r.report().ready);
        assert_eq!(r.report().body["checks"]["channel"]["ok"], false);
        r.expect_webhook_listener(); // too late to downgrade
        assert!(r.traffic().ready);

        // Kafka unreachable: reported, but the pod stays in the Service (its producer queues
        // what it receives; see `traffic`).
        r.set_kafka_reachable(false);
        assert!(r.traffic().ready);
        assert_eq!(r.traffic().body["checks"]["kafka"]["ok"], false);
        assert!(!r.report().ready, "the full picture says Kafka is gone");
        r.set_kafka_reachable(true);

        channel.send(ChannelState::Ready("ch-1".into())).unwrap();
        joined(&r);
        assert!(r.report().ready, "{}", r.report().body);
        r.set_draining();
        assert!(!r.traffic().ready);
        assert!(!r.report().ready);
        assert_eq!(r.traffic().body["checks"]["shutdown"]["ok"], false);
    }

    #[test]
    fn without_a_webhook_traffic_readiness_is_shutdown_only() {
        let (_channel, r) = readiness();
        assert!(r.traffic().ready, "{}", r.traffic().body);
        assert_eq!(r.traffic().body["checks"]["kafka"]["ok"], false);
        assert_eq!(r.traffic().body["checks"]["webhook"]["state"], "not_used");
        r.set_draining();
        assert!(!r.traffic().ready);
    }

    #[test]
    fn readiness_shows_the_channel_by_its_tag_not_its_id() {
        // A WebSocket channel's id is part of the URL that reads its notifications.
        let (channel, r) = readiness();
        let id = "0vTpo-UTMtHMl3lE4secretish";
        channel.send(ChannelState::Ready(id.into())).unwrap();
        let body = r.report().body.to_string();
        assert!(!body.contains(id), "{body}");
        let tag = crate::goto::Channel::tag_of(id);
        assert!(body.contains(&tag), "{body}");
    }

    #[test]
    fn full_readiness_keeps_the_channel_and_the_sequencer() {
        let (channel, r) = readiness();
        r.set_kafka_reachable(true);
        channel.send(ChannelState::Standby).unwrap();
        assert!(!r.report().ready, "sequencer not in its group");
        joined(&r);
        assert!(r.report().ready);
        channel.send(ChannelState::Down("gone".into())).unwrap();
        assert!(!r.report().ready);
        assert!(r.traffic().ready);
    }

    /// The series every alert reads, as a fresh recorder renders them.
    const AT_ZERO: &[&str] = &[
        "callbridge_catchup_failures_total 0",
        "callbridge_sequencer_run_failures_total 0",
        "callbridge_sequencer_foreign_outputs_total 0",
        "callbridge_backfill_failures_total 0",
        "callbridge_gap_records_published_total{reason=\"backfill_failed\"} 0",
        "callbridge_gap_records_published_total{reason=\"gone\"} 0",
        "callbridge_dead_letter_records_total{reason=\"invalid_json\"} 0",
        "callbridge_dead_letter_records_total{reason=\"oversize\"} 0",
        "callbridge_dead_letter_records_total{reason=\"invalid_conversation_space_id\"} 0",
        "callbridge_sequencer_dead_letters_total{reason=\"conflicting_duplicate\"} 0",
        "callbridge_sequencer_dead_letters_total{reason=\"after_ending\"} 0",
        "callbridge_sequencer_dead_letters_total{reason=\"after_abandonment\"} 0",
        "callbridge_sequencer_dead_letters_total{reason=\"oversize\"} 0",
        "callbridge_sequencer_dead_letters_total{reason=\"invalid_sequence_number\"} 0",
        "callbridge_webhook_responses_total{status=\"503\",outcome=\"kafka_ack_timeout\"} 0",
        "callbridge_webhook_responses_total{status=\"503\",outcome=\"kafka_queue_full\"} 0",
        "callbridge_webhook_responses_total{status=\"503\",outcome=\"kafka_error\"} 0",
        "callbridge_report_sweeps_past_retention_total 0",
        "callbridge_catchups_pending 0",
        "callbridge_report_sweep_windows_pending 0",
    ];

    #[test]
    fn alerted_counters_exist_at_zero_on_a_fresh_recorder() {
        let text = new_recorder().handle().render();
        let missing: Vec<_> = AT_ZERO.iter().filter(|l| !text.contains(*l)).collect();
        assert!(missing.is_empty(), "missing {missing:?} in:\n{text}");
        for reason in series::PARSE_REASONS
            .iter()
            .chain(series::INGEST_ONLY_REASONS)
        {
            let line = format!("callbridge_dead_letter_records_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
    }

    #[tokio::test]
    async fn admin_metrics_show_the_alerted_counters_and_readiness_gauges() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_channel, r) = readiness();
        r.expect_webhook_listener();
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, r, stop_rx));
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Another test of this process may have counted some already: the series must exist.
        for line in AT_ZERO {
            let series = line.trim_end_matches(" 0");
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{series} "))),
                "{series} not in:\n{text}"
            );
        }
        for gauge in [
            "callbridge_ready 0",
            "callbridge_traffic_ready 0",
            "callbridge_sequencer_in_group 0",
        ] {
            assert!(text.contains(gauge), "{gauge} not in:\n{text}");
        }
        let traffic = reqwest::get(format!("http://{addr}/readyz/traffic"))
            .await
            .unwrap();
        assert_eq!(traffic.status(), 503, "listener not bound yet");
        stop_tx.send(true).unwrap();
        server.await.unwrap();
    }

    /// Every code the parser and the sequencer can produce is registered (a new code must be
    /// added to `series`, or its first dead letter goes unalerted).
    #[test]
    fn registered_reasons_cover_the_codes() {
        let mut codes = vec![
            ParseError::InvalidJson { detail: "x".into() }.reason_code(),
            ParseError::NotAnObject.reason_code(),
            ParseError::bad_sequence("0").reason_code(),
        ];
        for field in [
            "conversationSpaceId",
            "sequenceNumber",
            "metadata",
            "state",
            "type",
            "content",
            "data",
            "other",
        ] {
            codes.push(ParseError::missing("a.b", field).reason_code());
            codes.push(ParseError::wrong_type("a.b", field, "a string").reason_code());
        }
        for code in &codes {
            assert!(series::PARSE_REASONS.contains(code), "{code}");
        }
        for reason in [
            DeadLetterReason::ConflictingDuplicate,
            DeadLetterReason::AfterEnding,
            DeadLetterReason::InvalidSequence,
            DeadLetterReason::ImplausibleSequence,
            DeadLetterReason::InsideDeclaredGap,
        ] {
            let code = reason.code();
            assert!(
                series::PARSE_REASONS.contains(&code)
                    || series::SEQUENCER_ONLY_REASONS.contains(&code),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn the_webhook_route_wait_ends_on_a_2xx_or_at_its_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/hook/{secret}",
            axum::routing::options(|| async { StatusCode::OK }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let every = std::time::Duration::from_millis(50);
        let bound = std::time::Duration::from_millis(400);
        assert!(
            webhook_route::wait_for_url(&format!("http://{addr}/hook/s3cret"), bound, every)
                .await
                .is_ok()
        );
        let started = std::time::Instant::now();
        let last =
            webhook_route::wait_for_url(&format!("http://{addr}/other/s3cret"), bound, every)
                .await
                .unwrap_err();
        assert_eq!(last, "HTTP 404");
        assert!(started.elapsed() < bound + std::time::Duration::from_secs(1));
        // Nothing listening: transport errors, and the URL (its secret) is never in the answer.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let last = webhook_route::wait_for_url(&format!("http://{gone}/hook/s3cret"), bound, every)
            .await
            .unwrap_err();
        assert!(!last.contains("s3cret"), "{last}");
    }

    /// The spawn `app::launch` makes of the channel duty behind the route compiles (`Send`,
    /// `'static`); never called.
    #[allow(dead_code)]
    fn the_duty_behind_the_route_can_be_spawned(
        duty: crate::channel::duty::ChannelDuty,
        role: watch::Receiver<crate::channel::election::Role>,
        state: watch::Sender<ChannelState>,
        stop: watch::Receiver<bool>,
    ) {
        drop(tokio::spawn(after_webhook_route(
            crate::config::bridge::ChannelKind::Webhook,
            crate::config::bridge::WebhookSettings::default(),
            stop.clone(),
            crate::channel::duty::follow_election(duty, role, state, stop),
        )));
    }

    #[tokio::test]
    async fn the_channel_duty_waits_for_the_route_and_not_after_shutdown() {
        use crate::config::bridge::{ChannelKind, WebhookSettings};
        let ran = Arc::new(AtomicBool::new(false));
        let duty = |ran: Arc<AtomicBool>| async move { ran.store(true, Ordering::SeqCst) };
        let (stop_tx, stop_rx) = watch::channel(false);
        // WebSocket mode: nothing to wait for.
        after_webhook_route(
            ChannelKind::Websocket,
            WebhookSettings::default(),
            stop_rx.clone(),
            duty(ran.clone()),
        )
        .await;
        assert!(ran.swap(false, Ordering::SeqCst));
        // Webhook mode, the URL unreachable and shutdown begun: the duty never starts.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook = WebhookSettings {
            public_url: format!("http://{}/hook", closed.local_addr().unwrap()),
            ..WebhookSettings::default()
        };
        drop(closed);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            after_webhook_route(ChannelKind::Webhook, webhook, stop_rx, duty(ran.clone())),
        )
        .await
        .expect("returns at shutdown, without waiting out the bound");
        assert!(!ran.load(Ordering::SeqCst));
    }
}
