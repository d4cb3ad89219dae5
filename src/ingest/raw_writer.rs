//! Writes received notifications to the raw topic and says when Kafka has them.
//!
//! This is the acknowledgement boundary of the whole product: by default a webhook is answered 2xx
//! only after [`RawWriter::write`] returned `Ok`, i.e. after the broker acknowledged the record
//! with `acks=all`. Every write is bounded by `kafka.ack_timeout`, the wait for room in
//! librdkafka's queue included: a write that finds the queue full waits in line for room (one
//! writer at a time tries again, in arrival order) instead of being refused at once, so a Kafka
//! that is slower than GoTo slows GoTo's requests down (backpressure) rather than turning them
//! into 503s whose two quick retries fail the same way. At the bound the caller gets an error
//! (and answers 503) instead of buffering without limit.
//! [`RawWriter::enqueue_raw`] and [`Delivery`] split the write in two for ingest's
//! answer-on-receipt mode, which answers between the halves (see `Ingest::answering_on_receipt`).
//!
//! Every raw write Kafka acknowledges is timed from its start, a wait for room included, to the
//! acknowledgement as the waiting task sees it (`callbridge_raw_write_seconds{transport}`): the
//! part of a webhook's answer spent on the raw write (librdkafka's work in this process and the
//! broker's answer), beside HTTP and handling.

use crate::kafka::{raw_producer, KafkaConfig};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// How often the writer first in line for room in a full queue tries again.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

/// How a notification reached callbridge (the `callbridge-transport` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// An HTTP POST from GoTo.
    Webhook = 0,
    /// A frame on the notification WebSocket.
    WebSocket = 1,
    /// The last state of an active call, listed from the REST API after a (re)connect so calls
    /// whose states were all missed during an outage are still seen.
    Catchup = 2,
}

impl Transport {
    /// Every transport, each at its own discriminant.
    const ALL: [Transport; 3] = [Transport::Webhook, Transport::WebSocket, Transport::Catchup];

    /// Header value and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Webhook => "webhook",
            Transport::WebSocket => "websocket",
            Transport::Catchup => "catchup",
        }
    }
}

/// `callbridge_raw_write_seconds`, one handle per transport, taken when the writer is built:
/// looking the series up on every write would cost more than recording the sample.
#[derive(Clone)]
struct WriteTimes([metrics::Histogram; 3]);

impl WriteTimes {
    fn new() -> Self {
        Self(Transport::ALL.map(
            |t| metrics::histogram!("callbridge_raw_write_seconds", "transport" => t.as_str()),
        ))
    }

    fn record(&self, transport: Transport, started: Instant) {
        self.0[transport as usize].record(started.elapsed().as_secs_f64());
    }
}

/// Why a record is not (known to be) in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// librdkafka's queue stayed full for all of `kafka.ack_timeout`: Kafka is away, or slower
    /// than ingest right now.
    #[error("kafka producer queue is full")]
    QueueFull,
    /// No acknowledgement within `kafka.ack_timeout`.
    #[error("kafka did not acknowledge within {0:?}")]
    AckTimeout(Duration),
    /// The broker refused the record or the producer failed.
    #[error("kafka refused the record: {0}")]
    Kafka(#[from] KafkaError),
}

/// Header names shared by raw and dead-letter records.
pub mod headers {
    /// `webhook` or `websocket`.
    pub const TRANSPORT: &str = "callbridge-transport";
    /// Milliseconds since the Unix epoch when the notification was received.
    pub const RECEIVED_AT: &str = "callbridge-received-at";
    /// Why a record is in the dead-letter topic (a stable reason code).
    pub const DEAD_LETTER_REASON: &str = "callbridge-dead-letter-reason";
    /// Human-readable detail of the reason (never the body).
    pub const DEAD_LETTER_DETAIL: &str = "callbridge-dead-letter-detail";
    /// Present when the body was cut to fit the dead-letter topic; holds the original length.
    pub const ORIGINAL_LENGTH: &str = "callbridge-original-length";
}

/// The largest dead-letter value written; longer bodies are cut and flagged.
pub const DEAD_LETTER_MAX_BYTES: usize = 512 * 1024;

/// A dead-letter value: `body`, cut to [`DEAD_LETTER_MAX_BYTES`] when longer, with its original
/// length added to `headers` then. (Used by the sequencer's dead letters too: a record Kafka
/// refuses would end its run.)
pub fn cut_for_dead_letter(body: &[u8], headers: OwnedHeaders) -> (&[u8], OwnedHeaders) {
    if body.len() <= DEAD_LETTER_MAX_BYTES {
        return (body, headers);
    }
    let headers = headers.insert(Header {
        key: headers::ORIGINAL_LENGTH,
        value: Some(&body.len().to_string()),
    });
    (&body[..DEAD_LETTER_MAX_BYTES], headers)
}

/// Producer for the raw and dead-letter topics.
#[derive(Clone)]
pub struct RawWriter {
    producer: FutureProducer,
    raw_topic: String,
    dead_letter_topic: String,
    other_topic: Option<String>,
    ack_timeout: Duration,
    /// The line of writes waiting for room in a full queue (tokio's mutex is fair: first come,
    /// first served). Only its holder tries again, so a long outage costs one attempt per
    /// [`QUEUE_FULL_RETRY`], not one per waiting write.
    room: Arc<tokio::sync::Mutex<()>>,
    write_times: WriteTimes,
}

impl RawWriter {
    /// Builds the producer from `[kafka]` (see [`raw_producer`] for its settings). Takes its
    /// metric handles now: install the process's recorder first (`ops::prometheus`), or the
    /// writes are timed into a no-op recorder for good.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: raw_producer(config)?,
            raw_topic: config.topics.raw.clone(),
            dead_letter_topic: config.topics.dead_letter.clone(),
            other_topic: config.topics.other_sources.clone(),
            ack_timeout: config.ack_timeout,
            room: Arc::new(tokio::sync::Mutex::new(())),
            write_times: WriteTimes::new(),
        })
    }

    /// Writes a routable notification to raw, keyed by conversation; returns once acknowledged.
    pub async fn write(
        &self,
        conversation_space_id: &str,
        body: &[u8],
        transport: Transport,
    ) -> Result<(), WriteError> {
        self.write_then(conversation_space_id, body, transport, |_| {})
            .await
    }

    /// [`RawWriter::write`], and when it returns [`WriteError::AckTimeout`] (the record stays
    /// queued), `late` gets the record's final outcome once Kafka gives it.
    pub async fn write_then(
        &self,
        conversation_space_id: &str,
        body: &[u8],
        transport: Transport,
        late: impl FnOnce(Result<(), WriteError>) + Send + 'static,
    ) -> Result<(), WriteError> {
        let RawDelivery {
            delivery, started, ..
        } = self
            .enqueue_raw(conversation_space_id, body, transport)
            .await?;
        let deadline = started + self.ack_timeout;
        // Not `RawDelivery::wait`: a write acknowledged after the deadline is not timed.
        let mut acknowledged = Box::pin(delivery.wait());
        match tokio::time::timeout_at(deadline, &mut acknowledged).await {
            Ok(result) => {
                result?;
                self.write_times.record(transport, started);
                crate::failpoint::hit(crate::failpoint::INGEST_AFTER_RAW_ACK);
                Ok(())
            }
            Err(_) => {
                tokio::spawn(async move { late(acknowledged.await) });
                Err(WriteError::AckTimeout(self.ack_timeout))
            }
        }
    }

    /// Hands a routable notification to the producer without waiting for Kafka's
    /// acknowledgement (only, for up to `kafka.ack_timeout`, for room in a full queue); the
    /// caller awaits the returned [`RawDelivery`].
    pub async fn enqueue_raw(
        &self,
        conversation_space_id: &str,
        body: &[u8],
        transport: Transport,
    ) -> Result<RawDelivery, WriteError> {
        let started = Instant::now();
        let delivery = self
            .enqueue(
                &self.raw_topic,
                Some(conversation_space_id),
                body,
                base_headers(transport),
                started + self.ack_timeout,
            )
            .await?;
        Ok(RawDelivery {
            delivery,
            started,
            transport,
            write_times: self.write_times.clone(),
        })
    }

    /// Waits until `deadline` for Kafka to acknowledge an enqueued record.
    async fn confirm_by(&self, delivery: Delivery, deadline: Instant) -> Result<(), WriteError> {
        match tokio::time::timeout_at(deadline, delivery.wait()).await {
            Err(_) => Err(WriteError::AckTimeout(self.ack_timeout)),
            Ok(result) => result,
        }
    }

    /// Writes a notification of another source to `kafka.topics.other_sources`.
    /// Returns `false` without writing when no such topic is configured (the caller counts it).
    pub async fn write_other(&self, body: &[u8], transport: Transport) -> Result<bool, WriteError> {
        match &self.other_topic {
            None => Ok(false),
            Some(topic) => {
                self.send(topic, None, body, base_headers(transport))
                    .await?;
                Ok(true)
            }
        }
    }

    /// Writes an unprocessable body to the dead-letter topic with its reason; returns once
    /// acknowledged.
    ///
    /// A dead letter whose acknowledgement does not come within `kafka.ack_timeout` is answered
    /// [`WriteError::AckTimeout`] (a webhook gets 503, so GoTo sends it again) and followed to
    /// its end: it stays queued and is usually written once Kafka is back, but if Kafka then
    /// refuses it, nothing else would ever bring the body back (back-fill and the report sweep
    /// recover call states, not bad input), so it is written again, up to
    /// [`DEAD_LETTER_RETRIES`] times, and a dead letter still refused after that is logged as
    /// an error and counted (`callbridge_dead_letters_unwritten_total{reason}`).
    pub async fn dead_letter(
        &self,
        key: Option<&str>,
        body: &[u8],
        transport: Transport,
        reason: &str,
        detail: &str,
    ) -> Result<(), WriteError> {
        let headers = base_headers(transport)
            .insert(Header {
                key: headers::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::DEAD_LETTER_DETAIL,
                value: Some(detail),
            });
        let (value, headers) = cut_for_dead_letter(body, headers);
        let deadline = Instant::now() + self.ack_timeout;
        let delivery = self
            .enqueue(
                &self.dead_letter_topic,
                key,
                value,
                headers.clone(),
                deadline,
            )
            .await?;
        let mut acknowledged = Box::pin(delivery.wait());
        match tokio::time::timeout_at(deadline, &mut acknowledged).await {
            Ok(result) => result,
            Err(_) => {
                let unconfirmed = UnconfirmedDeadLetter {
                    writer: self.clone(),
                    key: key.map(str::to_owned),
                    value: value.to_vec(),
                    headers,
                    reason: reason.to_owned(),
                };
                tokio::spawn(unconfirmed.follow(acknowledged));
                Err(WriteError::AckTimeout(self.ack_timeout))
            }
        }
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        body: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), WriteError> {
        let deadline = Instant::now() + self.ack_timeout;
        let delivery = self.enqueue(topic, key, body, headers, deadline).await?;
        self.confirm_by(delivery, deadline).await
    }

    /// Hands a record to librdkafka; while its queue is full, waits in line for room until
    /// `deadline`.
    async fn enqueue(
        &self,
        topic: &str,
        key: Option<&str>,
        body: &[u8],
        headers: OwnedHeaders,
        deadline: Instant,
    ) -> Result<Delivery, WriteError> {
        let mut record = FutureRecord::to(topic).payload(body).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        // Straight in while there is room and nobody waits for it; otherwise join the line, so
        // a newcomer does not take the room freed for the first in it.
        let mut found_full = false;
        if self.room.try_lock().is_ok() {
            match self.try_send(record)? {
                Ok(delivery) => return Ok(delivery),
                Err(full) => (record, found_full) = (full, true),
            }
        }
        let Ok(_first_in_line) = tokio::time::timeout_at(deadline, self.room.lock()).await else {
            metrics::counter!("callbridge_kafka_queue_full_total", "outcome" => "refused")
                .increment(1);
            return Err(WriteError::QueueFull);
        };
        loop {
            match self.try_send(record)? {
                Ok(delivery) => {
                    if found_full {
                        metrics::counter!("callbridge_kafka_queue_full_total", "outcome" => "waited")
                            .increment(1);
                    }
                    return Ok(delivery);
                }
                Err(full) => (record, found_full) = (full, true),
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::counter!("callbridge_kafka_queue_full_total", "outcome" => "refused")
                    .increment(1);
                return Err(WriteError::QueueFull);
            }
            tokio::time::sleep_until((now + QUEUE_FULL_RETRY).min(deadline)).await;
        }
    }

    /// One attempt: the delivery, the record back when the queue is full, or the error.
    fn try_send<'a>(
        &self,
        record: FutureRecord<'a, str, [u8]>,
    ) -> Result<Result<Delivery, FutureRecord<'a, str, [u8]>>, WriteError> {
        match self.producer.send_result(record) {
            Ok(d) => Ok(Ok(Delivery(d))),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), full)) => {
                Ok(Err(full))
            }
            Err((e, _)) => Err(WriteError::Kafka(e)),
        }
    }

    /// Messages librdkafka still holds (queued or in flight): the producer queue depth.
    pub fn in_flight(&self) -> i32 {
        use rdkafka::producer::Producer;
        self.producer.in_flight_count()
    }

    /// True when a broker answers a metadata request for the raw topic within `timeout`
    /// (blocking: call from a blocking task).
    pub fn kafka_reachable(&self, timeout: Duration) -> bool {
        use rdkafka::producer::Producer;
        self.producer
            .client()
            .fetch_metadata(Some(&self.raw_topic), timeout)
            .is_ok()
    }

    /// Waits up to `timeout` for everything queued to be acknowledged (graceful shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        self.producer.flush(timeout)
    }

    /// Records queued or in flight, not yet acknowledged (librdkafka's count).
    pub fn unacknowledged(&self) -> i32 {
        use rdkafka::producer::Producer;
        self.producer.in_flight_count()
    }
}

/// How many times a dead letter Kafka refused after its answer timed out is written again.
pub const DEAD_LETTER_RETRIES: u32 = 3;

/// The pause before the first of those writes (doubled before each next one).
const DEAD_LETTER_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A dead letter whose acknowledgement timed out (see [`RawWriter::dead_letter`]): what is needed
/// to write it again.
struct UnconfirmedDeadLetter {
    writer: RawWriter,
    key: Option<String>,
    value: Vec<u8>,
    headers: OwnedHeaders,
    reason: String,
}

impl UnconfirmedDeadLetter {
    /// Waits for the queued dead letter's outcome (`first`); while Kafka refuses it, writes it
    /// again, then says loudly if it could not be written at all.
    async fn follow(self, first: impl std::future::Future<Output = Result<(), WriteError>>) {
        let mut outcome = first.await;
        let mut pause = DEAD_LETTER_RETRY_PAUSE;
        for attempt in 1..=DEAD_LETTER_RETRIES {
            let Err(e) = &outcome else {
                break;
            };
            tracing::warn!(
                reason = %self.reason, error = %e, attempt,
                "kafka refused a dead letter after its answer timed out; writing it again"
            );
            tokio::time::sleep(pause).await;
            pause *= 2;
            let w = &self.writer;
            let deadline = Instant::now() + w.ack_timeout;
            outcome = match w
                .enqueue(
                    &w.dead_letter_topic,
                    self.key.as_deref(),
                    &self.value,
                    self.headers.clone(),
                    deadline,
                )
                .await
            {
                Ok(delivery) => delivery.wait().await,
                Err(e) => Err(e),
            };
        }
        match outcome {
            Ok(()) => {
                tracing::debug!(reason = %self.reason, "dead letter written after its answer timed out")
            }
            Err(e) => {
                metrics::counter!("callbridge_dead_letters_unwritten_total", "reason" => self.reason.clone())
                    .increment(1);
                tracing::error!(
                    reason = %self.reason, error = %e, key = ?self.key, bytes = self.value.len(),
                    retries = DEAD_LETTER_RETRIES,
                    "a dead letter could not be written to the dead-letter topic; the body is lost"
                );
            }
        }
    }
}

/// A record in librdkafka's hands: resolves once Kafka acknowledged (or refused) it. Dropping it
/// does not withdraw the record; it is still written, unobserved.
pub struct Delivery(DeliveryFuture);

impl Delivery {
    /// Waits without bound (the raw producer never gives a record up, so this lasts as long as
    /// Kafka is away).
    pub async fn wait(self) -> Result<(), WriteError> {
        match self.0.await {
            Err(_canceled) => Err(WriteError::Kafka(KafkaError::Canceled)),
            Ok(Err((e, _))) => {
                crate::kafka::producer::count_delivery_error(&e);
                Err(WriteError::Kafka(e))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// A raw record in librdkafka's hands ([`RawWriter::enqueue_raw`]): a [`Delivery`] that times
/// the write when Kafka acknowledges it.
pub struct RawDelivery {
    delivery: Delivery,
    started: Instant,
    transport: Transport,
    write_times: WriteTimes,
}

impl RawDelivery {
    /// [`Delivery::wait`], timing the write from its start when Kafka acknowledged it.
    pub async fn wait(self) -> Result<(), WriteError> {
        self.delivery.wait().await?;
        self.write_times.record(self.transport, self.started);
        Ok(())
    }
}

fn base_headers(transport: Transport) -> OwnedHeaders {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        .to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: headers::TRANSPORT,
            value: Some(transport.as_str()),
        })
        .insert(Header {
            key: headers::RECEIVED_AT,
            value: Some(&now),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transport_sits_at_its_own_index() {
        for (i, t) in Transport::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i, "{t:?}");
        }
    }
}
