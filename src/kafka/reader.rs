//! Reads a whole topic from the beginning to its current end: for verification (demo, tests)
//! and audits, not for the pipeline.

use super::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a partition must stay quiet past its reported end before the end is believed.
/// tansu 0.6 reports the high watermark as the last batch's *base* offset + 1 (eight records
/// written in one batch give 1, `tests/e2e_takeover.rs`), so a reader that stops at the high
/// watermark misses the tail of the last batch. Good enough for verification and audits, which
/// may read again; not for the takeover, whose scan must be complete and so reads up to a marker
/// of its own instead (`sequencer::shell::takeover`).
pub const SETTLE: Duration = Duration::from_millis(300);

/// One record read back from a topic.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Key (`conversationSpaceId`).
    pub key: Option<String>,
    /// JSON value.
    pub value: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every record of `topic` (up to the high watermarks seen at the start, and what follows until
/// the topic is quiet), in partition/offset order.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, KafkaError> {
    let consumer: BaseConsumer = config
        .client_config()
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?
        .set(
            "group.id",
            format!("callbridge-reader-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            remaining.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    // Past the reported ends, read on until the topic is quiet: tansu reports the high watermark
    // as the last batch's base offset + 1 (see [`SETTLE`]).
    let mut quiet_since: Option<Instant> = None;
    loop {
        if remaining.is_empty() && quiet_since.get_or_insert_with(Instant::now).elapsed() >= SETTLE
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let p = m.partition();
                out.push(ReadRecord {
                    partition: p,
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    let v =
                                        h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                    (h.key.to_string(), v.into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                if remaining
                    .get(&p)
                    .is_some_and(|high| m.offset() + 1 >= *high)
                {
                    remaining.remove(&p);
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}
