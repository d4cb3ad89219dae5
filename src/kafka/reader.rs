//! Reads a whole topic from the beginning to its current end: for verification (demo, tests)
//! and audits, not for the pipeline.

use super::config::{set_owned, KafkaConfig};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a partition must stay quiet past its reported end before the end is believed.
/// tansu 0.6 reports the high watermark as the last batch's *base* offset + 1 (eight records
/// written in one batch give 1, `tests/e2e_takeover.rs`), so a reader that stops at the high
/// watermark misses the tail of the last batch. Good enough for verification and audits, which
/// may read again; not for the takeover, whose scan must be complete and so reads up to a marker
/// of its own instead (`sequencer::shell::takeover`).
///
/// A quiet period alone would end a read early whenever a fetch stalls longer than it (a loaded
/// machine), so [`read_topic`] also waits until it has read up to the high watermark of the
/// broker's fetch answers, which tansu gets right; librdkafka reports it in its statistics
/// (`hi_offset`), the only place rust-rdkafka exposes it.
pub const SETTLE: Duration = Duration::from_millis(300);

/// How often librdkafka reports the fetch answers' high watermarks to the reader.
const STATISTICS_INTERVAL: &str = "50";

/// The reader's client context: the end each partition of the topic must be read to, first the
/// high watermark the broker reported before the read, then raised to the newest one of its fetch
/// answers, from librdkafka's statistics.
struct FetchHighWatermarks {
    topic: String,
    highs: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for FetchHighWatermarks {
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(partitions) = stats["topics"][&self.topic]["partitions"].as_object() else {
            return;
        };
        let mut highs = self.highs.lock().unwrap_or_else(|e| e.into_inner());
        for (p, v) in partitions {
            // Partition -1 is librdkafka's "unassigned" bucket; a negative offset means no
            // fetch answer yet.
            if let (Ok(p), Some(hi)) = (p.parse::<i32>(), v["hi_offset"].as_i64()) {
                if p >= 0 && hi >= 0 {
                    raise(&mut highs, p, hi);
                }
            }
        }
    }
}

impl ConsumerContext for FetchHighWatermarks {}

/// Raises the end known for partition `p` to `high`; an older, lower report never lowers it.
fn raise(highs: &mut HashMap<i32, i64>, p: i32, high: i64) {
    let known = highs.entry(p).or_insert(high);
    *known = (*known).max(high);
}

impl FetchHighWatermarks {
    /// Starts partition `p` at the high watermark the broker reported for it.
    fn reported(&self, p: i32, high: i64) {
        raise(
            &mut self.highs.lock().unwrap_or_else(|e| e.into_inner()),
            p,
            high,
        );
    }

    /// Whether `next` (the offset after the last record read of each partition) reaches the
    /// high watermark known so far of each partition in `read` (those being read: the
    /// statistics list the topic's other partitions too).
    fn reached(&self, read: &[i32], next: &HashMap<i32, i64>) -> bool {
        let highs = self.highs.lock().unwrap_or_else(|e| e.into_inner());
        read.iter().all(|p| {
            highs
                .get(p)
                .is_none_or(|hi| next.get(p).copied().unwrap_or(0) >= *hi)
        })
    }
}

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

/// Every record of `topic` (up to the high watermarks reported at the start and in the fetch
/// answers, and what follows until the topic is quiet), in partition/offset order.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, KafkaError> {
    let mut settings = config
        .client_config()
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    set_owned(
        &mut settings,
        "group.id",
        format!("callbridge-reader-{}", uuid::Uuid::new_v4()),
    );
    set_owned(&mut settings, "enable.auto.commit", "false");
    // A partition-EOF event would be an error below.
    set_owned(&mut settings, "enable.partition.eof", "false");
    set_owned(&mut settings, "statistics.interval.ms", STATISTICS_INTERVAL);
    let consumer: BaseConsumer<FetchHighWatermarks> =
        settings.create_with_context(FetchHighWatermarks {
            topic: topic.to_string(),
            highs: Mutex::new(HashMap::new()),
        })?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut read: Vec<i32> = Vec::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            consumer.context().reported(*p, high);
            read.push(*p);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    let mut out = Vec::new();
    if read.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    // Past the reported ends, read on until the topic is quiet and every fetch answer's high
    // watermark is reached: tansu reports the high watermark as the last batch's base offset + 1
    // (see [`SETTLE`]).
    let mut quiet_since: Option<Instant> = None;
    let mut next: HashMap<i32, i64> = HashMap::new();
    loop {
        if consumer.context().reached(&read, &next)
            && quiet_since.get_or_insert_with(Instant::now).elapsed() >= SETTLE
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
                next.insert(p, m.offset() + 1);
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
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's statistics as it sends them (trimmed): partition -1 is its unassigned
    /// bucket, and -1001 is "no fetch answer yet".
    const STATS: &str = r#"{"name":"rdkafka#consumer-1","type":"consumer","topics":{
        "callbridge.ordered":{"topic":"callbridge.ordered","partitions":{
            "0":{"partition":0,"hi_offset":8,"app_offset":3},
            "1":{"partition":1,"hi_offset":-1001},
            "3":{"partition":3,"hi_offset":40},
            "-1":{"partition":-1,"hi_offset":-1001}}},
        "other":{"topic":"other","partitions":{"2":{"partition":2,"hi_offset":50}}}}}"#;

    #[test]
    fn a_read_ends_only_at_every_fetch_high_watermark() {
        let highs = FetchHighWatermarks {
            topic: "callbridge.ordered".into(),
            highs: Mutex::new(HashMap::new()),
        };
        let read = [0, 1];
        let mut next = HashMap::new();
        assert!(
            highs.reached(&read, &next),
            "nothing known yet: the quiet rule decides"
        );
        // The broker reported partition 0's end at 1 before the read.
        highs.reported(0, 1);
        assert!(!highs.reached(&read, &next));
        next.insert(0, 1);
        assert!(highs.reached(&read, &next));
        highs.stats_raw(STATS.as_bytes());
        // tansu's ListOffsets said 1 for these 8 records; the fetch answer says 8.
        assert!(!highs.reached(&read, &next));
        next.insert(0, 7);
        assert!(!highs.reached(&read, &next));
        next.insert(0, 8);
        assert!(
            highs.reached(&read, &next),
            "1 has no fetch answer, 3 is not being read, 2 is another topic"
        );
        // A later, older report never lowers what is known.
        highs.stats_raw(
            STATS
                .replace(r#""hi_offset":8"#, r#""hi_offset":5"#)
                .as_bytes(),
        );
        next.insert(0, 6);
        assert!(!highs.reached(&read, &next));
        highs.stats_raw(b"not json");
        next.insert(0, 8);
        assert!(highs.reached(&read, &next));
    }
}
