//! The producer settings of callbridge's writers.
//!
//! Every writer uses `acks=all`; an infinite `message.timeout.ms`, which removes the
//! timeout-induced gaps of librdkafka #2163/#704 (a record that cannot be written is never
//! silently skipped; callers bound the wait themselves); and the Java client's partitioner, which
//! keeps callbridge's key → partition mapping identical to other producers. Only the ordered
//! topic's writer is idempotent: see [`raw_producer`] for why the raw topic's is not.

use super::config::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

/// The producer of the raw (and dead-letter) topics: `acks=all`, no timeout, the Java
/// partitioner, a bounded queue, **not** idempotent.
///
/// No timeout also means a record whose webhook was answered 503 (its acknowledgement took longer
/// than `kafka.ack_timeout`) stays queued and is written once Kafka is back: a Kafka outage
/// shorter than the queue is bridged from memory instead of by back-fill, whose REST requests GoTo
/// limits to 10 a second. GoTo's retries of that webhook add copies the sequencer drops as
/// duplicates. The queue is bounded in bytes ([`DEFAULT_RAW_QUEUE_KBYTES`]) and in records
/// (librdkafka's 100,000); once full, a write waits for room until `kafka.ack_timeout`, then
/// fails (`QueueFull`, 503) and what GoTo then gives up on is back-filled (tests/raw_writer.rs,
/// tests/e2e_kafka_outage.rs).
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
    raw_settings(config)?.create()
}

fn raw_settings(config: &KafkaConfig) -> Result<rdkafka::ClientConfig, KafkaError> {
    let mut c = base_settings(config)?;
    if !config.librdkafka.contains_key(MAX_IN_FLIGHT) {
        c.set(MAX_IN_FLIGHT, DEFAULT_RAW_MAX_IN_FLIGHT);
    }
    if !config.librdkafka.contains_key(QUEUE_KBYTES) {
        c.set(QUEUE_KBYTES, DEFAULT_RAW_QUEUE_KBYTES);
    }
    Ok(c)
}

const QUEUE_KBYTES: &str = "queue.buffering.max.kbytes";

/// `queue.buffering.max.kbytes` of [`raw_producer`] unless `kafka.librdkafka` sets it: 128 MiB.
/// librdkafka's default (1 GiB) is twice the Helm chart's memory limit, so an outage long enough
/// to fill it would have the pod killed and the queue lost, instead of refusing writes (503)
/// while the memory is still there. When running, the queue holds milliseconds of traffic.
pub const DEFAULT_RAW_QUEUE_KBYTES: &str = "131072";

const MAX_IN_FLIGHT: &str = "max.in.flight.requests.per.connection";

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
///
/// With `enable.gapless.guarantee`, a record the broker refuses for good is fatal to the
/// producer, and what is queued behind it fails with it. By default librdkafka bumps the
/// idempotent epoch and sends the later records, which would leave the refused state as a hole
/// in the ordered topic that no takeover can fill (its scan moves past the later ones); this
/// way the output ends at the last state written, the sequencer's run fails, and the next run
/// takes the crash path and re-reads the rest from raw (`tests/e2e_output_failure.rs`).
/// librdkafka calls the property experimental and says so in a warning at start-up.
pub fn ordered_producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    ordered_settings(config)?.create()
}

fn ordered_settings(config: &KafkaConfig) -> Result<rdkafka::ClientConfig, KafkaError> {
    let mut c = base_settings(config)?;
    c.set("enable.idempotence", "true")
        .set(GAPLESS, "true")
        .set(MAX_IN_FLIGHT, "1");
    super::config::set_default(&mut c, QUEUE_KBYTES, DEFAULT_ORDERED_QUEUE_KBYTES);
    Ok(c)
}

/// `queue.buffering.max.kbytes` of [`ordered_producer`] unless `kafka.librdkafka` sets it:
/// 64 MiB. librdkafka's default (1 GiB, 100,000 records) is twice the Helm chart's memory limit:
/// while the broker takes the ordered topic's writes slowly but raw can still be read, the
/// sequencer would keep filling it until the pod is killed. Nothing in it needs keeping: the
/// sequencer re-derives unacknowledged outputs from raw on takeover. With the raw producer's
/// 128 MiB both queues fit the limit together; once it is full, the consumer thread waits for
/// room, at most `sequencer_io.takeover_timeout`, then fails the run
/// (`RunState::enqueue`). When running it holds milliseconds of output.
pub const DEFAULT_ORDERED_QUEUE_KBYTES: &str = "65536";

/// The librdkafka property that makes a refused output fail what is queued behind it.
pub(crate) const GAPLESS: &str = "enable.gapless.guarantee";

/// `linger.ms` unless `kafka.librdkafka` sets it. A webhook waits for its record's ack, so a
/// short linger looks right, but measured (docs/performance.md, 3 runs each on tansu) 5 ms beat
/// 1 ms everywhere except the median at low load: librdkafka's broker threads wake up once per
/// linger, and those wake-ups were the largest single cost in the bridge's profile; fewer,
/// fuller requests also queue less at the broker. At 1,000 states/s the webhook p50 rose
/// 3.9 → 6.5 ms while p99 fell 21 → 13 ms; at 5,000/s p50 22 → 14 ms and p99 72 → 58 ms;
/// closed-loop throughput +10 %, CPU per state −12 %.
pub const DEFAULT_LINGER_MS: &str = "5";

/// The largest record every producer accepts (`message.max.bytes`): librdkafka refuses a larger
/// one at once with `MsgSizeTooLarge`, counting key, value, headers and up to 36 bytes of
/// framing (`rd_kafka_msg_max_wire_size`), so no retry can help. The value is librdkafka's own
/// default, set explicitly because ingest's routable body limit
/// (`ingest::route::MAX_NOTIFICATION_BYTES`) is derived from it: a state that ingest routes must
/// fit both as its raw record and as its (larger) ordered record, or it is neither written nor
/// dead-lettered (GoTo's retries fail the same way) or, worse, stalls its partition in the
/// sequencer. It is also below what brokers take by default: Kafka's `message.max.bytes` /
/// topic `max.message.bytes` is 1,048,588 bytes for a whole batch (a batch of one such record
/// is ~100 bytes more than the record), and tansu 0.6 sets no record limit of its own.
/// `kafka.librdkafka` cannot change it (`kafka::config`).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// The librdkafka property [`MAX_RECORD_BYTES`] is set through.
pub(crate) const MAX_RECORD_BYTES_PROPERTY: &str = "message.max.bytes";

fn base_settings(config: &KafkaConfig) -> Result<rdkafka::ClientConfig, KafkaError> {
    let mut c = config
        .client_config()
        .map_err(|e| KafkaError::ClientCreation(format!("kafka.sasl.password_file: {e}")))?;
    c.set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("partitioner", "murmur2_random")
        .set(MAX_RECORD_BYTES_PROPERTY, MAX_RECORD_BYTES.to_string());
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

/// Header name/value pairs (as the record builders of `publish::record` give them) as Kafka
/// headers, in order.
pub fn owned_headers<V: AsRef<str>>(pairs: &[(&str, V)]) -> rdkafka::message::OwnedHeaders {
    pairs.iter().fold(
        rdkafka::message::OwnedHeaders::new_with_capacity(pairs.len()),
        |h, (k, v)| {
            h.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_ref()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_queue_is_bounded_below_the_pod_limit_unless_overridden() {
        let config = KafkaConfig::default();
        let c = raw_settings(&config).unwrap();
        assert_eq!(c.get(QUEUE_KBYTES), Some(DEFAULT_RAW_QUEUE_KBYTES));
        assert_eq!(c.get("message.timeout.ms"), Some("0"));
        assert_eq!(c.get("message.max.bytes"), Some("1000000"));
        let mut config = KafkaConfig::default();
        config.librdkafka.insert(QUEUE_KBYTES.into(), "4096".into());
        assert_eq!(
            raw_settings(&config).unwrap().get(QUEUE_KBYTES),
            Some("4096")
        );
    }

    /// The ordered producer's queue is bounded below the pod's memory limit by default, and the
    /// operator's `kafka.librdkafka` value wins.
    #[test]
    fn ordered_queue_is_bounded_below_the_pod_limit_unless_overridden() {
        let c = ordered_settings(&KafkaConfig::default()).unwrap();
        assert_eq!(c.get(QUEUE_KBYTES), Some(DEFAULT_ORDERED_QUEUE_KBYTES));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get(MAX_IN_FLIGHT), Some("1"));
        let mut config = KafkaConfig::default();
        config.librdkafka.insert(QUEUE_KBYTES.into(), "4096".into());
        assert_eq!(
            ordered_settings(&config).unwrap().get(QUEUE_KBYTES),
            Some("4096")
        );
    }

    #[test]
    fn every_producer_states_the_record_limit_ingest_relies_on() {
        let config = KafkaConfig::default();
        let limit = MAX_RECORD_BYTES.to_string();
        assert_eq!(
            raw_settings(&config)
                .unwrap()
                .get(MAX_RECORD_BYTES_PROPERTY),
            Some(limit.as_str())
        );
        // The ordered producer is built from the same base settings.
        assert_eq!(
            base_settings(&config)
                .unwrap()
                .get(MAX_RECORD_BYTES_PROPERTY),
            Some(limit.as_str())
        );
    }
}
