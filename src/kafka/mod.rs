//! Everything that talks to Kafka: settings, topic checks, and the producer used by ingest and
//! the sequencer. The rest of the crate sees records and acknowledgements, not librdkafka.

pub mod config;
pub mod producer;
pub mod reader;
pub mod topics;

pub use config::KafkaConfig;
pub use producer::{ordered_producer, raw_producer};
pub use topics::{ensure_topics, TopicError, TopicLayout};
