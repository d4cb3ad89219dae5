//! Ingest: receive every notification (webhook and/or WebSocket) and put it, unchanged, into the
//! raw topic. Ingest never calls the sequencer; Kafka is the only thing between them.
//!
//! - [`mod@route`]: pure decision of where a body goes.
//! - [`raw_writer`]: the acknowledged write to Kafka.
//! - [`Ingest`]: both together, shared by the webhook server and the WebSocket client.

pub mod raw_writer;
pub mod route;
pub mod webhook;

pub use raw_writer::{RawWriter, Transport, WriteError};
pub use route::{route, Disposition};

use crate::notification::ControlMessage;

/// What happened to one body.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// In the raw topic, acknowledged.
    Raw,
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
}

/// When notifications could not be written (Kafka down): a call that started and ended in that
/// window left nothing in raw, so nothing will ever ask for it; the window is swept from GoTo's
/// report summaries once writes succeed again (see `channel::catchup`).
#[derive(Default)]
struct UnwrittenWindow {
    /// First failed write of the current outage.
    since: Option<std::time::SystemTime>,
    /// Outages that ended and are waiting to be swept: (first failure, first success after).
    ended: Vec<(std::time::SystemTime, std::time::SystemTime)>,
}

impl Ingest {
    /// Ingest over `writer`.
    pub fn new(writer: RawWriter) -> Self {
        Self {
            writer,
            outage: Default::default(),
        }
    }

    /// Takes the windows in which notifications could not be written and that have ended since.
    pub fn take_unwritten_windows(&self) -> Vec<(std::time::SystemTime, std::time::SystemTime)> {
        self.outage
            .lock()
            .map(|mut o| std::mem::take(&mut o.ended))
            .unwrap_or_default()
    }

    fn note_write(&self, ok: bool) {
        let Ok(mut o) = self.outage.lock() else {
            return;
        };
        let now = std::time::SystemTime::now();
        match (ok, o.since) {
            (false, None) => o.since = Some(now),
            (true, Some(since)) => {
                o.since = None;
                o.ended.push((since, now));
            }
            _ => {}
        }
    }

    /// The underlying writer (queue depth, flush on shutdown).
    pub fn writer(&self) -> &RawWriter {
        &self.writer
    }

    /// Routes `body` and writes it where it belongs; `Ok` only once Kafka acknowledged it.
    pub async fn accept(&self, body: &[u8], transport: Transport) -> Result<Accepted, WriteError> {
        let result = self.accept_inner(body, transport).await;
        self.note_write(result.is_ok());
        result
    }

    async fn accept_inner(
        &self,
        body: &[u8],
        transport: Transport,
    ) -> Result<Accepted, WriteError> {
        metrics::counter!("callbridge_notifications_received_total", "transport" => transport.as_str())
            .increment(1);
        match route(body) {
            Disposition::Raw {
                conversation_space_id,
            } => {
                self.writer
                    .write(&conversation_space_id, body, transport)
                    .await?;
                Ok(Accepted::Raw)
            }
            Disposition::DeadLetter {
                key,
                reason,
                detail,
            } => {
                metrics::counter!("callbridge_dead_letter_records_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(reason, %detail, transport = transport.as_str(), "notification dead-lettered");
                self.writer
                    .dead_letter(key.as_deref(), body, transport, reason, &detail)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_of_writes_becomes_one_window_once_writes_succeed_again() {
        let ingest = Ingest::new(
            RawWriter::new(&crate::kafka::KafkaConfig::default())
                .expect("producer without a broker"),
        );
        ingest.note_write(true);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "no failure, no window"
        );
        ingest.note_write(false);
        ingest.note_write(false);
        assert!(
            ingest.take_unwritten_windows().is_empty(),
            "still failing: not over yet"
        );
        ingest.note_write(true);
        let windows = ingest.take_unwritten_windows();
        assert_eq!(windows.len(), 1);
        assert!(windows[0].0 <= windows[0].1);
        assert!(ingest.take_unwritten_windows().is_empty(), "taken once");
    }
}
