//! Start-up check of the pipeline's topics: create what is missing, refuse what cannot work.
//!
//! The sequencer writes `ordered[p]` and `changelog[p]` for the raw partition `p` it owns, so the
//! three topics must have the same partition count; a mismatch would silently break per-key
//! ownership, so it stops start-up with the counts and the fix.
//!
//! Topics are created with the broker's default record-size limit (Kafka: `max.message.bytes`
//! 1,048,588 bytes per batch; tansu 0.6 enforces none). It must stay above the producers'
//! `message.max.bytes` ([`super::producer::MAX_RECORD_BYTES`], 1,000,000) plus a batch's framing
//! (about 100 bytes), or a state ingest routed could be refused by the broker: on a cluster
//! whose default is lower, raise `max.message.bytes` of the raw, ordered and dead-letter topics.

use super::config::{KafkaConfig, TopicsConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Why the topics are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin or metadata request failed (broker unreachable, not authorised, …).
    #[error("kafka at {servers}: {action} failed: {source}")]
    Kafka {
        /// Bootstrap servers, to say which cluster.
        servers: String,
        /// What was being done.
        action: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("kafka refused to create topic {topic:?}: {code:?}; create it by hand with {partitions} partitions or grant CREATE on it")]
    CreateRefused {
        /// Topic name.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
        /// Partitions it should have.
        partitions: i32,
    },
    /// A topic is missing and creation is turned off.
    #[error("topic {topic:?} does not exist and kafka.topics.create is false; create it with {partitions} partitions or set kafka.topics.create = true")]
    Missing {
        /// Topic name.
        topic: String,
        /// Partitions it should have.
        partitions: i32,
    },
    /// Co-partitioning is broken.
    #[error("topics are not co-partitioned: {detail}; raw, ordered and changelog need the same partition count (recreate the smaller ones or point kafka.topics.* at matching topics)")]
    NotCoPartitioned {
        /// Each topic with its partition count.
        detail: String,
    },
}

impl TopicError {
    /// Whether waiting may fix it: the cluster could not be reached or was not ready to answer
    /// (a broker restarting, a Service without endpoints yet). Refusals, missing topics, bad
    /// partition counts, credentials and client configuration are not.
    pub fn is_transient(&self) -> bool {
        use RDKafkaErrorCode as C;
        let TopicError::Kafka { source, .. } = self else {
            return false;
        };
        matches!(
            source.rdkafka_error_code(),
            Some(
                C::OperationTimedOut
                    | C::RequestTimedOut
                    | C::BrokerTransportFailure
                    | C::AllBrokersDown
                    | C::Resolve
                    | C::NetworkException
                    | C::BrokerNotAvailable
                    | C::LeaderNotAvailable
                    | C::NotController
                    | C::CoordinatorNotAvailable
                    | C::CoordinatorLoadInProgress
            )
        )
    }
}

/// Partition count shared by raw, ordered and changelog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLayout {
    /// Number of partitions of each co-partitioned topic.
    pub partitions: i32,
}

/// Makes sure every topic exists (creating missing ones if allowed) and that raw, ordered and
/// changelog are co-partitioned.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<TopicLayout, TopicError> {
    let servers = config.bootstrap_servers.clone();
    let kafka = |action: &str| {
        let servers = servers.clone();
        let action = action.to_string();
        move |source| TopicError::Kafka {
            servers,
            action,
            source,
        }
    };
    let client_config = config.client_config().map_err(|e| TopicError::Kafka {
        servers: servers.clone(),
        action: "reading kafka.sasl.password_file".into(),
        source: KafkaError::ClientCreation(e.to_string()),
    })?;
    let admin: AdminClient<DefaultClientContext> = client_config
        .create()
        .map_err(kafka("creating the admin client"))?;
    let t = &config.topics;
    let mut wanted: Vec<(&str, bool)> = vec![
        (&t.raw, true),
        (&t.ordered, true),
        (&t.changelog, true),
        (&t.dead_letter, false),
    ];
    if let Some(other) = &t.other_sources {
        wanted.push((other, false));
    }
    wanted.push((&t.channel_owner, false));
    let existing = partition_counts(&admin, &wanted, Duration::from_secs(10))
        .map_err(kafka("reading topic metadata"))?;
    let missing: Vec<&str> = wanted
        .iter()
        .zip(&existing)
        .filter(|(_, n)| n.is_none())
        .map(|((name, _), _)| *name)
        .collect();
    if !missing.is_empty() {
        if !t.create {
            return Err(TopicError::Missing {
                topic: missing[0].to_string(),
                partitions: t.partitions,
            });
        }
        let new = new_topics(t, &missing);
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(kafka("creating topics"))?;
        for result in results {
            if let Err((topic, code)) = result {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(TopicError::CreateRefused {
                        topic,
                        code,
                        partitions: t.partitions,
                    });
                }
            }
        }
    }
    // Read back: a topic created by someone else (or just now) must also match.
    let counts = wait_for_counts(&admin, &wanted)
        .await
        .map_err(kafka("reading topic metadata"))?;
    let co: Vec<(&str, i32)> = wanted
        .iter()
        .zip(&counts)
        .filter(|((_, co), _)| *co)
        .map(|((name, _), n)| (*name, *n))
        .collect();
    let first = co[0].1;
    if co.iter().any(|(_, n)| *n != first) {
        let detail = co
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TopicError::NotCoPartitioned { detail });
    }
    Ok(TopicLayout { partitions: first })
}

/// The creation requests of the `missing` topics: co-partitioned topics with
/// `kafka.topics.partitions`, the election's with one, and the changelog compacted with
/// [`CHANGELOG_CONFIGS`].
fn new_topics<'a>(t: &'a TopicsConfig, missing: &[&'a str]) -> Vec<NewTopic<'a>> {
    missing
        .iter()
        .map(|name| {
            // The election needs exactly one partition to hold.
            let partitions = if *name == t.channel_owner {
                1
            } else {
                t.partitions
            };
            let topic = NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(t.replication_factor),
            );
            if *name == t.changelog {
                CHANGELOG_CONFIGS
                    .iter()
                    .fold(topic, |topic, (key, value)| topic.set(key, value))
            } else {
                topic
            }
        })
        .collect()
}

/// Topic configs of the changelog when callbridge creates it (what to set by hand when
/// `kafka.topics.create` is false: docs/operations.md).
///
/// Every takeover reads `changelog[p]` from its first record within
/// `sequencer_io.takeover_timeout` (30 s), so the log must stay near its compacted size: one
/// record per conversation still remembered and one progress record per epoch. Kafka compacts
/// only closed segments, and by default the active one closes at 1 GiB (`segment.bytes`) or
/// after 7 days (`segment.ms`), and a log is cleaned only once half of it is dirty
/// (`min.cleanable.dirty.ratio` 0.5): a busy partition, whose open calls are re-indexed every
/// `checkpoint_interval`, would be read uncompacted, up to a gigabyte, at each takeover.
/// - `segment.ms` 10 minutes and `segment.bytes` 64 MiB: at most that much of the log (the
///   active segment) is never compacted, whichever comes first. Ten minutes of index is small
///   and a roll is cheap; far shorter would make many tiny segments.
/// - `min.cleanable.dirty.ratio` 0.1: compaction starts once a tenth of the log is dirty, so
///   the part read twice or more stays a small fraction. The cleaner's extra work is on a topic
///   whose records are a few hundred bytes.
/// - `max.compaction.lag.ms` 1 hour: even a quiet partition, under the dirty ratio, is compacted
///   within the hour.
///
/// tansu 0.6 accepts and stores these (and reports them back), but compacts nothing itself; the
/// takeover reads to the end either way.
pub const CHANGELOG_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("segment.bytes", "67108864"),
    ("min.cleanable.dirty.ratio", "0.1"),
    ("max.compaction.lag.ms", "3600000"),
];

/// Partition count per topic, `None` where the broker does not know the topic.
fn partition_counts(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[(&str, bool)],
    timeout: Duration,
) -> Result<Vec<Option<i32>>, KafkaError> {
    let metadata = admin.inner().fetch_metadata(None, timeout)?;
    Ok(topics
        .iter()
        .map(|(name, _)| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == *name && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .filter(|n| *n > 0)
        })
        .collect())
}

/// Metadata can lag a CreateTopics answer; poll until every topic shows up (bounded). Start-up
/// only, so the short blocking metadata calls are acceptable here.
async fn wait_for_counts(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[(&str, bool)],
) -> Result<Vec<i32>, KafkaError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = partition_counts(admin, topics, Duration::from_secs(10))?;
        if counts.iter().all(Option::is_some) {
            return Ok(counts.into_iter().flatten().collect());
        }
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The changelog is created compacted with segments that close and get cleaned while a
    /// takeover still reads them from the start; the other topics keep the broker's defaults.
    #[test]
    fn the_changelog_is_created_compacted_with_short_segments() {
        let t = KafkaConfig::default().topics;
        let missing = [
            t.raw.as_str(),
            t.changelog.as_str(),
            t.channel_owner.as_str(),
        ];
        let new = new_topics(&t, &missing);
        let changelog = &new[1];
        assert_eq!(changelog.name, t.changelog);
        assert_eq!(changelog.num_partitions, t.partitions);
        let config: std::collections::HashMap<&str, &str> =
            changelog.config.iter().copied().collect();
        assert_eq!(config.get("cleanup.policy"), Some(&"compact"));
        let segment_ms: u64 = config["segment.ms"].parse().unwrap();
        assert!(segment_ms <= 3_600_000, "segment.ms {segment_ms}");
        let segment_bytes: u64 = config["segment.bytes"].parse().unwrap();
        assert!(segment_bytes <= 128 << 20, "segment.bytes {segment_bytes}");
        let ratio: f64 = config["min.cleanable.dirty.ratio"].parse().unwrap();
        assert!(
            ratio > 0.0 && ratio <= 0.2,
            "min.cleanable.dirty.ratio {ratio}"
        );
        assert!(config.contains_key("max.compaction.lag.ms"));
        assert!(new[0].config.is_empty(), "raw keeps the broker's defaults");
        assert_eq!(
            new[2].num_partitions, 1,
            "the election's topic has one partition"
        );
        assert!(new[2].config.is_empty());
    }
}
