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

use super::config::KafkaConfig;
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
        let new: Vec<NewTopic<'_>> = missing
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
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
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
