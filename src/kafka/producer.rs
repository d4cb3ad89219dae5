//! The producer settings of callbridge's writers.
//!
//! Every writer uses `acks=all` and the Java client's partitioner, which keeps callbridge's key →
//! partition mapping identical to other producers. The ordered topic's writer never times a
//! record out (an infinite `message.timeout.ms` removes the timeout-induced gaps of librdkafka
//! #2163/#704: a record that cannot be written is never silently skipped); the raw topic's gives
//! a record up after `kafka.ack_timeout`, when its webhook has been answered 503. Only the
//! ordered topic's writer is idempotent: see [`raw_producer`] for why the raw topic's is not.

use super::config::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

/// The producer of the raw (and dead-letter) topics: `acks=all`, the Java partitioner, a record
/// given up after `kafka.ack_timeout`, **not** idempotent.
///
/// The timeout makes a 503 mean what it says. Once ingest has answered 503 (or given a WebSocket
/// frame up), GoTo retries and back-fill recovers the state; a record librdkafka kept queued
/// would instead be written whenever Kafka came back. With no timeout, a 60 s outage queued every
/// attempt of every notification (three per state after GoTo's two retries) in the bridge's
/// memory, bounded only by librdkafka's 1 GB default, and wrote them all as duplicates
/// afterwards (tests/raw_writer.rs). A record that times out while in flight may still be
/// written by the broker: that is one more duplicate for the sequencer to drop, never a loss.
///
/// Idempotence would keep raw in order and free of duplicates across librdkafka's retries, and
/// the raw topic needs neither: its only reader is the sequencer, whose job is to drop
/// duplicates and reorder. It would cost a lot: librdkafka's idempotent producer caps what is in
/// flight per partition at five *messages* (`RD_KAFKA_IDEMP_MAX_INFLIGHT`, counted in messages,
/// not requests: see librdkafka PR #4989), so with batches of five or more a partition has one
/// produce request out at a time, and while it waits the broker thread spins (the linger has
/// expired, so its wake-up is "now", but it may not send). Measured on the bench at 5,000
/// states/s: that spin was a third of the bridge's CPU (docs/performance.md). What the raw
/// topic may now hold, a record twice or two records swapped after a retried request, the
/// sequencer handles like GoTo's own duplicates and reordering.
pub fn raw_producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    let mut c = base_settings(config)?;
    c.set(MESSAGE_TIMEOUT, message_timeout_ms(config.ack_timeout));
    if !config.librdkafka.contains_key(MAX_IN_FLIGHT) {
        c.set(MAX_IN_FLIGHT, DEFAULT_RAW_MAX_IN_FLIGHT);
    }
    c.create()
}

const MAX_IN_FLIGHT: &str = "max.in.flight.requests.per.connection";
const MESSAGE_TIMEOUT: &str = "message.timeout.ms";

/// `kafka.ack_timeout` as librdkafka's `message.timeout.ms`, where 0 would mean "never": a zero
/// timeout is refused by validation, and this floor keeps an unvalidated one finite too.
fn message_timeout_ms(ack_timeout: std::time::Duration) -> String {
    ack_timeout
        .as_millis()
        .clamp(1, i32::MAX as u128)
        .to_string()
}

/// `max.in.flight.requests.per.connection` of [`raw_producer`] unless `kafka.librdkafka` sets it.
/// One request at a time lets records pile up into the next batch while the broker answers; with
/// librdkafka's default (a million) every linger sent a request of its own, and on tansu the
/// webhook p99 at 5,000 states/s went from 26–49 ms to 155–458 ms (docs/performance.md).
pub const DEFAULT_RAW_MAX_IN_FLIGHT: &str = "1";

/// The sequencer's output producer: idempotent, with one request in flight per broker. With several in flight, a batch that fails and is retried can be overtaken by the
/// next one; a strict broker refuses the overtaking batch (out of order sequence), but
/// librdkafka's mock cluster was seen here acknowledging both and keeping only the later one: a
/// state reported written that is not in the topic, after its successor. The ordered topic cannot
/// afford to depend on the broker's strictness; raw can (a lost raw record is back-filled).
pub fn ordered_producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    base_settings(config)?
        .set("enable.idempotence", "true")
        .set(MAX_IN_FLIGHT, "1")
        .create()
}

/// `linger.ms` unless `kafka.librdkafka` sets it. A webhook waits for its record's ack, so a
/// short linger looks right, but measured (docs/performance.md, 3 runs each on tansu) 5 ms beat
/// 1 ms everywhere except the median at low load: librdkafka's broker threads wake up once per
/// linger, and those wake-ups were the largest single cost in the bridge's profile; fewer,
/// fuller requests also queue less at the broker. At 1,000 states/s the webhook p50 rose
/// 3.9 → 6.5 ms while p99 fell 21 → 13 ms; at 5,000/s p50 22 → 14 ms and p99 72 → 58 ms;
/// closed-loop throughput +10 %, CPU per state −12 %.
pub const DEFAULT_LINGER_MS: &str = "5";

fn base_settings(config: &KafkaConfig) -> Result<rdkafka::ClientConfig, KafkaError> {
    let mut c = config
        .client_config()
        .map_err(|e| KafkaError::ClientCreation(format!("kafka.sasl.password_file: {e}")))?;
    c.set("acks", "all")
        .set(MESSAGE_TIMEOUT, "0")
        .set("partitioner", "murmur2_random");
    if !config.librdkafka.contains_key("linger.ms") {
        c.set("linger.ms", DEFAULT_LINGER_MS);
    }
    Ok(c)
}

/// `callbridge_kafka_delivery_errors_total{code}`.
pub fn count_delivery_error(e: &KafkaError) {
    let code = e
        .rdkafka_error_code()
        .map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"));
    metrics::counter!("callbridge_kafka_delivery_errors_total", "code" => code).increment(1);
}
