//! Ingest: receive every notification (webhook and/or WebSocket) and put it, unchanged, into the
//! raw topic. Ingest never calls the sequencer; Kafka is the only thing between them.
//!
//! - [`mod@route`]: pure decision of where a body goes.
//! - [`raw_writer`]: the acknowledged write to Kafka.
//! - `on_receipt`: the bound on states answered before Kafka acknowledged them
//!   (`webhook.answer = "on_receipt"`).
//! - [`Ingest`]: both together, shared by the webhook server and the WebSocket client.

mod on_receipt;
pub mod raw_writer;
pub mod route;
pub mod webhook;

pub use raw_writer::{Delivery, RawDelivery, RawWriter, Transport, WriteError};
pub use route::{route, Disposition};

use crate::notification::ControlMessage;
use on_receipt::OnReceipt;

/// What happened to one body.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// In the raw topic, acknowledged.
    Raw,
    /// Queued for the raw topic, not yet acknowledged: answered on receipt
    /// (`webhook.answer = "on_receipt"`).
    Queued,
    /// In the dead-letter topic, acknowledged, with this reason.
    DeadLettered(&'static str),
    /// Another source: written to the other-sources topic (`true`) or counted and dropped.
    OtherSource(bool),
    /// A control message the caller must act on (WebSocket only).
    Control(ControlMessage),
}

/// Routes and writes received bodies.
#[derive(Clone)]
pub struct Ingest {
    writer: RawWriter,
    outage: std::sync::Arc<std::sync::Mutex<UnwrittenWindow>>,
    on_receipt: Option<std::sync::Arc<OnReceipt>>,
    /// `callbridge_notifications_received_total` by transport, taken once (`counter!` with a
    /// label builds its key, a label vector and a registry lookup, at every call).
    received: std::sync::Arc<[metrics::Counter; 3]>,
}

/// When notifications could not be written (Kafka down): a call that started and ended in that
/// window left nothing in raw, so nothing will ever ask for it; the window is swept from GoTo's
/// report summaries once writes succeed again (see `channel::catchup`). Only notifications that
/// were lost open a window: not queued at all, or refused by Kafka for good after their answer
/// timed out (such a record is followed to its end). One whose answer timed out is otherwise
/// still in the producer's queue (it never gives a record up) and is written once Kafka is back,
/// so a Kafka outage shorter than the queue costs no sweep and none of the GoTo requests a sweep
/// spends.
///
/// A window also ends without a written notification once losses stop and Kafka answers
/// ([`Ingest::end_quiet_window`]): a late refusal after traffic stopped would otherwise leave its
/// window open, and unswept, until the next call. A record still queued then needs no waiting
/// for: if Kafka refuses it later, it opens a window of its own from its receipt.
#[derive(Default)]
struct UnwrittenWindow {
    /// First failed write of the current outage.
    since: Option<std::time::SystemTime>,
    /// When the current outage last lost a notification.
    last_loss: Option<std::time::SystemTime>,
    /// Outages that ended and are waiting to be swept: (first failure, first success after).
    ended: Vec<(std::time::SystemTime, std::time::SystemTime)>,
}

impl Ingest {
    /// Ingest over `writer`.
    pub fn new(writer: RawWriter) -> Self {
        Self {
            writer,
            outage: Default::default(),
            on_receipt: None,
            received: std::sync::Arc::new(
                [Transport::Webhook, Transport::WebSocket, Transport::Catchup].map(|t| {
                    metrics::counter!("callbridge_notifications_received_total", "transport" => t.as_str())
                }),
            ),
        }
    }

    fn count_received(&self, transport: Transport) {
        self.received[match transport {
            Transport::Webhook => 0,
            Transport::WebSocket => 1,
            Transport::Catchup => 2,
        }]
        .increment(1);
    }

    /// Answers webhook POSTs of call states once they are queued, while fewer than `limit` of
    /// them wait for Kafka (`webhook.answer = "on_receipt"`); beyond that, and for every other
    /// body and transport, answers still wait for Kafka.
    pub fn answering_on_receipt(mut self, limit: usize) -> Self {
        self.on_receipt = Some(std::sync::Arc::new(OnReceipt::new(limit)));
        self
    }

    /// States answered on receipt that Kafka has not acknowledged yet: what a crash now would
    /// leave to back-fill.
    pub fn answered_unacknowledged(&self) -> usize {
        self.on_receipt.as_ref().map_or(0, |o| o.waiting())
    }

    /// Takes the windows in which notifications could not be written and that have ended since.
    pub fn take_unwritten_windows(&self) -> Vec<(std::time::SystemTime, std::time::SystemTime)> {
        self.outage
            .lock()
            .map(|mut o| std::mem::take(&mut o.ended))
            .unwrap_or_default()
    }

    /// Ends the open window if it lost nothing for [`QUIET_AFTER_LOSS`] and `kafka_reachable`
    /// (checked by the caller): notifications received now would be written. Called
    /// periodically. (Not gated on an empty producer queue: librdkafka's count includes its own
    /// events, so it can stay above zero with no record pending.)
    pub fn end_quiet_window(&self, kafka_reachable: bool) {
        if !kafka_reachable {
            return;
        }
        if let Ok(mut o) = self.outage.lock() {
            o.end_if_quiet(std::time::SystemTime::now());
        }
    }

    fn note_write(&self, outcome: WriteOutcome) {
        note_write_at(&self.outage, outcome, std::time::SystemTime::now());
    }

    /// The underlying writer (queue depth, flush on shutdown).
    pub fn writer(&self) -> &RawWriter {
        &self.writer
    }

    /// Routes `body` and writes it where it belongs; `Ok` once Kafka acknowledged it, or
    /// [`Accepted::Queued`] once queued when answering on receipt.
    pub async fn accept(&self, body: &[u8], transport: Transport) -> Result<Accepted, WriteError> {
        let result = self.accept_inner(body, transport).await;
        // A state answered on receipt is not written yet: its waiter notes the outcome.
        if !matches!(result, Ok(Accepted::Queued)) {
            self.note_write(match &result {
                Ok(_) => WriteOutcome::Written,
                Err(WriteError::AckTimeout(_)) => WriteOutcome::StillQueued,
                Err(_) => WriteOutcome::NotQueued,
            });
        }
        result
    }

    /// Dead-letters, as `oversize` and without its content, a body too large to be read at all
    /// (`detail` says how large): the dead-letter topic still shows that it came.
    pub async fn dead_letter_unread(
        &self,
        transport: Transport,
        detail: &str,
    ) -> Result<(), WriteError> {
        self.count_received(transport);
        self.dead_letter(None, &[], transport, "oversize", detail)
            .await
    }

    /// Counts, logs and writes one body to the dead-letter topic.
    async fn dead_letter(
        &self,
        key: Option<&str>,
        body: &[u8],
        transport: Transport,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), WriteError> {
        metrics::counter!("callbridge_dead_letter_records_total", "reason" => reason).increment(1);
        tracing::warn!(reason, %detail, transport = transport.as_str(), "notification dead-lettered");
        self.writer
            .dead_letter(key, body, transport, reason, detail)
            .await
    }

    async fn accept_inner(
        &self,
        body: &[u8],
        transport: Transport,
    ) -> Result<Accepted, WriteError> {
        self.count_received(transport);
        match route(body) {
            Disposition::Raw {
                conversation_space_id,
            } => {
                let reservation = match (&self.on_receipt, transport) {
                    (Some(on_receipt), Transport::Webhook) => on_receipt.reserve(),
                    _ => None,
                };
                let received = std::time::SystemTime::now();
                let Some(reservation) = reservation else {
                    // A write whose answer timed out stays queued: follow it to its end, so a
                    // record Kafka then refuses for good still opens an unwritten window.
                    let outage = self.outage.clone();
                    self.writer
                        .write_then(&conversation_space_id, body, transport, move |late| {
                            note_write_at(&outage, WriteOutcome::of(&late), received);
                        })
                        .await?;
                    return Ok(Accepted::Raw);
                };
                let delivery = self
                    .writer
                    .enqueue_raw(&conversation_space_id, body, transport)
                    .await?;
                let outage = self.outage.clone();
                tokio::spawn(async move {
                    let result = delivery.wait().await;
                    drop(reservation);
                    note_write_at(&outage, WriteOutcome::of(&result), received);
                    if let Err(e) = result {
                        // Only a permanent refusal ends here (the producer never times out):
                        // the state was answered 200, so only back-fill can bring it back.
                        metrics::counter!("callbridge_answered_unwritten_total").increment(1);
                        tracing::error!(
                            conversation = %conversation_space_id, error = %e,
                            "kafka refused a state already answered on receipt; back-fill will recover it"
                        );
                    }
                });
                Ok(Accepted::Queued)
            }
            Disposition::DeadLetter {
                key,
                reason,
                detail,
            } => {
                self.dead_letter(key.as_deref(), body, transport, reason, &detail)
                    .await?;
                Ok(Accepted::DeadLettered(reason))
            }
            Disposition::OtherSource { source } => {
                let written = self.writer.write_other(body, transport).await?;
                metrics::counter!(
                    "callbridge_other_source_notifications_total",
                    "outcome" => if written { "written" } else { "dropped" }
                )
                .increment(1);
                tracing::debug!(%source, written, "notification of another source");
                Ok(Accepted::OtherSource(written))
            }
            Disposition::Control(control) => Ok(Accepted::Control(control)),
        }
    }
}

/// What became of a write, for the unwritten windows.
#[derive(Clone, Copy, Debug)]
enum WriteOutcome {
    /// Kafka acknowledged it: closes a window.
    Written,
    /// Not acknowledged in time but queued, written once Kafka is back: neither opens nor closes
    /// a window.
    StillQueued,
    /// Not queued (queue full, refused), or refused by Kafka for good after its answer: GoTo
    /// may never send it again; opens a window.
    NotQueued,
}

impl WriteOutcome {
    /// The final outcome of a record that was queued.
    fn of(delivered: &Result<(), WriteError>) -> Self {
        match delivered {
            Ok(()) => WriteOutcome::Written,
            Err(_) => WriteOutcome::NotQueued,
        }
    }
}

/// How long after its last loss a window may end without a written notification. Longer than a
/// Kafka refusal takes to follow the one before it, so a producer that refuses every write keeps
/// one window open instead of opening (and sweeping) a new one every check.
const QUIET_AFTER_LOSS: std::time::Duration = std::time::Duration::from_secs(10);

impl UnwrittenWindow {
    /// Ends the open window at `now` if its last loss is [`QUIET_AFTER_LOSS`] old.
    fn end_if_quiet(&mut self, now: std::time::SystemTime) {
        let (Some(since), Some(last)) = (self.since, self.last_loss) else {
            return;
        };
        if now.duration_since(last).unwrap_or_default() >= QUIET_AFTER_LOSS {
            self.since = None;
            self.last_loss = None;
            self.ended.push((since, now));
        }
    }
}

/// Notes a write of a notification received at `received` (a late refusal opens the window
/// from there: calls that began after it may have left nothing in raw).
fn note_write_at(
    outage: &std::sync::Mutex<UnwrittenWindow>,
    outcome: WriteOutcome,
    received: std::time::SystemTime,
) {
    let Ok(mut o) = outage.lock() else {
        return;
    };
    let now = std::time::SystemTime::now();
    if matches!(outcome, WriteOutcome::NotQueued) {
        o.last_loss = Some(now);
    }
    match (outcome, o.since) {
        (WriteOutcome::NotQueued, None) => o.since = Some(received),
        (WriteOutcome::NotQueued, Some(since)) if received < since => o.since = Some(received),
        (WriteOutcome::Written, Some(since)) => {
            o.since = None;
            o.last_loss = None;
            o.ended.push((since, now));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ingest whose producer never connects: for the window bookkeeping alone.
    fn ingest_without_broker() -> Ingest {
        Ingest::new(
            RawWriter::new(&crate::kafka::KafkaConfig::default())
                .expect("producer without a broker"),
        )
    }

    #[test]
    fn an_outage_of_writes_becomes_one_window_once_writes_succeed_again() {
        let ingest = ingest_without_broker();
        ingest.note_write(WriteOutcome::Written);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "no failure, no window"
        );
        ingest.note_write(WriteOutcome::NotQueued);
        ingest.note_write(WriteOutcome::NotQueued);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "still failing: not over yet"
        );
        ingest.note_write(WriteOutcome::Written);
        let windows = ingest.take_unwritten_windows();
        assert_eq!(windows.len(), 1);
        assert!(windows[0].0 <= windows[0].1);
        assert!(ingest.take_unwritten_windows().is_empty(), "taken once");
    }

    #[test]
    fn a_write_still_queued_neither_opens_nor_closes_a_window() {
        let ingest = ingest_without_broker();
        ingest.note_write(WriteOutcome::StillQueued);
        ingest.note_write(WriteOutcome::Written);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "a timed-out write still queued lost nothing"
        );
        ingest.note_write(WriteOutcome::NotQueued);
        ingest.note_write(WriteOutcome::StillQueued);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "a write still queued does not end the window"
        );
        ingest.note_write(WriteOutcome::Written);
        assert_eq!(ingest.take_unwritten_windows().len(), 1);
    }

    #[test]
    fn a_window_ends_once_losses_stay_away_long_enough() {
        let t0 = std::time::SystemTime::now();
        let mut w = UnwrittenWindow::default();
        w.end_if_quiet(t0 + QUIET_AFTER_LOSS);
        assert!(w.ended.is_empty(), "no loss, no window");
        let outage = std::sync::Mutex::new(w);
        note_write_at(&outage, WriteOutcome::NotQueued, t0);
        let mut w = outage.into_inner().unwrap();
        let lost_at = w.last_loss.expect("the loss is noted");
        w.end_if_quiet(lost_at + QUIET_AFTER_LOSS / 2);
        assert!(w.ended.is_empty(), "ended while losses may still come");
        let end = lost_at + QUIET_AFTER_LOSS;
        w.end_if_quiet(end);
        assert_eq!(w.ended, vec![(t0, end)]);
        assert_eq!((w.since, w.last_loss), (None, None), "closed");
        w.end_if_quiet(end + QUIET_AFTER_LOSS);
        assert_eq!(w.ended.len(), 1, "a closed window ends once");
    }

    #[test]
    fn a_window_stays_open_while_kafka_is_away() {
        let ingest = ingest_without_broker();
        if let Ok(mut o) = ingest.outage.lock() {
            let long_ago = std::time::SystemTime::now() - 2 * QUIET_AFTER_LOSS;
            (o.since, o.last_loss) = (Some(long_ago), Some(long_ago));
        }
        ingest.end_quiet_window(false);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "Kafka unreachable"
        );
        ingest.end_quiet_window(true);
        assert_eq!(
            ingest.take_unwritten_windows().len(),
            1,
            "quiet, Kafka answering"
        );
    }
}
