//! Writes received notifications to the raw topic and says when Kafka has them.
//!
//! This is the acknowledgement boundary of the whole product: by default a webhook is answered 2xx
//! only after [`RawWriter::write`] returned `Ok`, i.e. after the broker acknowledged the record
//! with `acks=all`. When librdkafka's queue is full or the ack does not come within the bound, the
//! caller gets an error at once (and answers 503) instead of buffering without limit.
//! [`RawWriter::enqueue_raw`] and [`Delivery`] split the write in two for ingest's
//! answer-on-receipt mode, which answers between the halves (see `Ingest::answering_on_receipt`).

use crate::kafka::{raw_producer, KafkaConfig};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a notification reached callbridge (the `callbridge-transport` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// An HTTP POST from GoTo.
    Webhook,
    /// A frame on the notification WebSocket.
    WebSocket,
    /// The last state of an active call, listed from the REST API after a (re)connect so calls
    /// whose states were all missed during an outage are still seen.
    Catchup,
}

impl Transport {
    /// Header value and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Webhook => "webhook",
            Transport::WebSocket => "websocket",
            Transport::Catchup => "catchup",
        }
    }
}

/// Why a record is not (known to be) in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// librdkafka's queue is full: Kafka is slower than ingest right now.
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

/// Producer for the raw and dead-letter topics.
#[derive(Clone)]
pub struct RawWriter {
    producer: FutureProducer,
    raw_topic: String,
    dead_letter_topic: String,
    other_topic: Option<String>,
    ack_timeout: Duration,
}

impl RawWriter {
    /// Builds the producer from `[kafka]` (see [`raw_producer`] for its settings).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: raw_producer(config)?,
            raw_topic: config.topics.raw.clone(),
            dead_letter_topic: config.topics.dead_letter.clone(),
            other_topic: config.topics.other_sources.clone(),
            ack_timeout: config.ack_timeout,
        })
    }

    /// Writes a routable notification to raw, keyed by conversation; returns once acknowledged.
    pub async fn write(
        &self,
        conversation_space_id: &str,
        body: &[u8],
        transport: Transport,
    ) -> Result<(), WriteError> {
        let delivery = self.enqueue_raw(conversation_space_id, body, transport)?;
        self.confirm(delivery).await?;
        crate::failpoint::hit(crate::failpoint::INGEST_AFTER_RAW_ACK);
        Ok(())
    }

    /// Hands a routable notification to the producer without waiting for Kafka; the caller
    /// awaits the returned [`Delivery`] ([`RawWriter::confirm`] bounds the wait).
    pub fn enqueue_raw(
        &self,
        conversation_space_id: &str,
        body: &[u8],
        transport: Transport,
    ) -> Result<Delivery, WriteError> {
        self.enqueue(
            &self.raw_topic,
            Some(conversation_space_id),
            body,
            base_headers(transport),
        )
    }

    /// Waits up to `kafka.ack_timeout` for Kafka to acknowledge an enqueued record.
    pub async fn confirm(&self, delivery: Delivery) -> Result<(), WriteError> {
        match tokio::time::timeout(self.ack_timeout, delivery.wait()).await {
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

    /// Writes an unprocessable body to the dead-letter topic with its reason.
    pub async fn dead_letter(
        &self,
        key: Option<&str>,
        body: &[u8],
        transport: Transport,
        reason: &str,
        detail: &str,
    ) -> Result<(), WriteError> {
        let mut headers = base_headers(transport)
            .insert(Header {
                key: headers::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::DEAD_LETTER_DETAIL,
                value: Some(detail),
            });
        let value = if body.len() > DEAD_LETTER_MAX_BYTES {
            headers = headers.insert(Header {
                key: headers::ORIGINAL_LENGTH,
                value: Some(&body.len().to_string()),
            });
            &body[..DEAD_LETTER_MAX_BYTES]
        } else {
            body
        };
        self.send(&self.dead_letter_topic, key, value, headers)
            .await
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        body: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), WriteError> {
        let delivery = self.enqueue(topic, key, body, headers)?;
        self.confirm(delivery).await
    }

    fn enqueue(
        &self,
        topic: &str,
        key: Option<&str>,
        body: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery, WriteError> {
        let mut record = FutureRecord::to(topic).payload(body).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        match self.producer.send_result(record) {
            Ok(d) => Ok(Delivery(d)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(WriteError::QueueFull)
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
