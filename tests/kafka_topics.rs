//! Start-up topic checks against a real broker (tansu).
mod support;

use callbridge::kafka::{ensure_topics, KafkaConfig, TopicError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use support::tansu::Tansu;

fn config(broker: &Tansu, prefix: &str) -> KafkaConfig {
    let mut c = KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    c.topics.raw = format!("{prefix}.raw");
    c.topics.ordered = format!("{prefix}.ordered");
    c.topics.changelog = format!("{prefix}.changelog");
    c.topics.dead_letter = format!("{prefix}.dlq");
    c.topics.partitions = 3;
    c.topics.replication_factor = 1;
    c
}

#[tokio::test]
async fn creates_missing_topics_then_accepts_them_as_they_are() {
    let broker = Tansu::start();
    let c = config(&broker, "fresh");
    let layout = ensure_topics(&c).await.expect("topics created");
    assert_eq!(layout.partitions, 3);
    // Second start: nothing to create, same answer.
    let again = ensure_topics(&c).await.expect("topics accepted");
    assert_eq!(again, layout);
}

/// The changelog is created with the compaction settings a takeover's full read relies on (a
/// broker that refused them would fail creation; tansu 0.6 stores them and reports them back,
/// though it compacts nothing itself).
#[tokio::test]
async fn the_changelog_is_created_with_its_compaction_settings() {
    use rdkafka::admin::ResourceSpecifier;
    let broker = Tansu::start();
    let c = config(&broker, "compacted");
    ensure_topics(&c).await.expect("topics created");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let described = admin
        .describe_configs(
            [&ResourceSpecifier::Topic(&c.topics.changelog)],
            &AdminOptions::new(),
        )
        .await
        .expect("describe configs");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the changelog's configs");
    for (key, value) in callbridge::kafka::topics::CHANGELOG_CONFIGS {
        assert_eq!(
            resource.get(key).and_then(|e| e.value.as_deref()),
            Some(*value),
            "{key} of the changelog: {:?}",
            resource.entries
        );
    }
}

#[tokio::test]
async fn refuses_topics_that_are_not_co_partitioned() {
    let broker = Tansu::start();
    let c = config(&broker, "skewed");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let ordered = NewTopic::new(&c.topics.ordered, 5, TopicReplication::Fixed(1));
    let res = admin
        .create_topics([&ordered], &AdminOptions::new())
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{res:?}");
    let err = ensure_topics(&c).await.expect_err("5 vs 3 partitions");
    assert!(matches!(err, TopicError::NotCoPartitioned { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("skewed.ordered=5") && text.contains("skewed.raw=3"),
        "{text}"
    );
}

#[tokio::test]
async fn missing_topic_with_creation_off_names_the_topic_and_the_fix() {
    let broker = Tansu::start();
    let mut c = config(&broker, "nocreate");
    c.topics.create = false;
    let err = ensure_topics(&c).await.expect_err("nothing exists");
    let text = err.to_string();
    assert!(
        text.contains("nocreate.raw") && text.contains("kafka.topics.create"),
        "{text}"
    );
}
