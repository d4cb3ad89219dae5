//! Kafka connection and topic settings, and the one place that turns them into librdkafka
//! properties.
//!
//! Typed settings cover what operators set most (bootstrap servers, TLS, SASL, topic names);
//! everything else passes through `librdkafka` untouched. Setting a property both ways, or
//! passing one callbridge sets on its clients itself, is an error rather than a silent override,
//! so a config file never means two things.

use crate::config::{Invalid, InvalidReport};
use crate::secret::Secret;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[kafka]`: where the brokers are and how to talk to them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub bootstrap_servers: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials, used with `sasl_plaintext` and `sasl_ssl`.
    pub sasl: SaslConfig,
    /// TLS files, used with `ssl` and `sasl_ssl`.
    pub tls: TlsConfig,
    /// Topic names and layout.
    pub topics: TopicsConfig,
    /// Consumer group of the sequencer: every replica with the same group shares the raw topic.
    pub consumer_group: String,
    /// How long ingest waits for Kafka to acknowledge a notification before answering 503.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Any other librdkafka property, passed through as is (for example `"linger.ms" = "1"`; a
    /// number or boolean is taken as its text, so `"linger.ms" = 1` works too).
    #[serde(deserialize_with = "properties_as_text")]
    pub librdkafka: BTreeMap<String, String>,
}

/// librdkafka takes every property as text; a TOML number or boolean (what the Helm chart
/// renders for `linger.ms: 5`) is that text, not a type error that stops the process.
fn properties_as_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, crate::config::ScalarText>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl: SaslConfig::default(),
            tls: TlsConfig::default(),
            topics: TopicsConfig::default(),
            consumer_group: "callbridge".into(),
            ack_timeout: Duration::from_secs(5),
            librdkafka: BTreeMap::new(),
        }
    }
}

/// `kafka.security_protocol`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS without SASL.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `[kafka.sasl]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: Option<String>,
    /// SASL user name.
    pub username: String,
    /// SASL password; prefer `CALLBRIDGE_KAFKA__SASL__PASSWORD` or `password_file`.
    pub password: Secret,
    /// A file holding the password (for example a mounted Kubernetes Secret). Read when the
    /// configuration is loaded (a missing file fails `check-config`), and again whenever a Kafka
    /// client is created, so a rotated Secret reaches new clients.
    pub password_file: Option<PathBuf>,
}

/// `[kafka.tls]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle used to verify the brokers (`ssl.ca.location`); system store when unset.
    pub ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS (`ssl.certificate.location`).
    pub certificate_location: Option<PathBuf>,
    /// Client key for mutual TLS (`ssl.key.location`).
    pub key_location: Option<PathBuf>,
    /// Password of the client key (`CALLBRIDGE_KAFKA__TLS__KEY_PASSWORD` or `key_password_file`).
    pub key_password: Secret,
    /// A file holding the password of the client key (for example a mounted Kubernetes Secret),
    /// read when the configuration is loaded; wins over the variable.
    pub key_password_file: Option<PathBuf>,
    /// Check the broker's host name against its certificate (`https`) or not (`none`).
    pub endpoint_identification: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_location: None,
            certificate_location: None,
            key_location: None,
            key_password: Secret::default(),
            key_password_file: None,
            endpoint_identification: true,
        }
    }
}

/// `[kafka.topics]`: the topics of the pipeline (five, six with `other_sources`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Internal topic holding every notification unchanged, keyed by conversation.
    pub raw: String,
    /// The product: one ordered, gap-free stream per conversation.
    pub ordered: String,
    /// Compacted resume index of the sequencer, co-partitioned with `raw`.
    pub changelog: String,
    /// Notifications that cannot be processed, with the reason in a header.
    pub dead_letter: String,
    /// Where notifications of other sources (reports, recordings…) go; counted and dropped
    /// when unset.
    pub other_sources: Option<String>,
    /// One-partition topic whose consumer group elects the replica that owns the GoTo channel
    /// (no records are written to it).
    pub channel_owner: String,
    /// Partitions of every topic callbridge creates except `channel_owner` (always 1).
    pub partitions: i32,
    /// Replication factor of topics callbridge creates.
    pub replication_factor: i32,
    /// Create missing topics at start-up.
    pub create: bool,
}

impl TopicsConfig {
    /// The topics every deployment uses (`other_sources` is optional): what a broker set up by
    /// hand, such as the demo's mock cluster, must hold.
    pub fn required(&self) -> [String; 5] {
        [
            self.raw.clone(),
            self.ordered.clone(),
            self.changelog.clone(),
            self.dead_letter.clone(),
            self.channel_owner.clone(),
        ]
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            raw: "callbridge.raw".into(),
            ordered: "callbridge.call-states".into(),
            changelog: "callbridge.changelog".into(),
            dead_letter: "callbridge.dead-letter".into(),
            other_sources: None,
            channel_owner: "callbridge.channel-owner".into(),
            partitions: 12,
            replication_factor: 3,
            create: true,
        }
    }
}

/// librdkafka properties callbridge sets itself, each with what to do instead; passing them
/// through `librdkafka` is refused.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", TYPED),
    ("security.protocol", TYPED),
    ("sasl.mechanism", TYPED),
    ("sasl.mechanisms", TYPED),
    ("sasl.username", TYPED),
    ("sasl.password", TYPED),
    ("ssl.ca.location", TYPED),
    ("ssl.certificate.location", TYPED),
    ("ssl.key.location", TYPED),
    ("ssl.key.password", TYPED),
    ("enable.idempotence", TYPED),
    ("acks", TYPED),
    ("group.id", TYPED),
    ("enable.auto.commit", TYPED),
    (
        "message.timeout.ms",
        "remove it: callbridge never gives a queued record up (a timeout would skip records, \
         librdkafka #2163); kafka.ack_timeout bounds how long a webhook waits, and \
         queue.buffering.max.kbytes how much an outage may queue",
    ),
    (
        "partitioner",
        "remove it: every producer uses the Java client's partitioner (murmur2_random), so a \
         conversation lands on the same partition of every co-partitioned topic",
    ),
    (
        "enable.gapless.guarantee",
        "remove it: the sequencer's output producer always sets it (a refused output must fail \
         what is queued behind it, not leave a hole), and the raw producer is not idempotent",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "remove it: set kafka.tls.endpoint_identification (true = https, false = none), which \
         callbridge turns into this property",
    ),
    (
        "session.timeout.ms",
        "remove it: set sequencer_io.session_timeout (the sequencer's consumer group) or \
         channel.owner_session_timeout (the channel election); callbridge sets each consumer's \
         session timeout from them",
    ),
    (
        "heartbeat.interval.ms",
        "remove it: callbridge sets it to a third of each consumer's session timeout; change \
         sequencer_io.session_timeout or channel.owner_session_timeout instead",
    ),
    (
        "partition.assignment.strategy",
        "remove it: callbridge's consumers always use cooperative-sticky, so a replica joining \
         or leaving moves only the partitions that must move (an eager assignor revokes every \
         partition, and each is released and taken over again)",
    ),
    (
        "auto.offset.reset",
        "remove it: callbridge chooses where each consumer starts (the sequencer reads the raw \
         topic from its earliest record, so nothing written is skipped; the election from the \
         latest)",
    ),
    (
        "statistics.interval.ms",
        "remove it: callbridge sets it per consumer (5000 ms for the sequencer's lag metrics, \
         50 ms for the readers that wait for high watermarks); its values are what those rely on",
    ),
    (
        "enable.partition.eof",
        "remove it: callbridge's readers (the takeover's reads of the changelog and the ordered \
         topic, the verification reader) read up to an end they know and would take a \
         partition-EOF event for a failed read; callbridge keeps librdkafka's default (false)",
    ),
    (
        "message.max.bytes",
        "remove it: callbridge sets it to 1000000 and routes only bodies whose raw and ordered \
         records fit under it (larger ones are dead-lettered as oversize); a lower value would \
         make routed states fail to write, a higher one would not raise ingest's limit",
    ),
];

const TYPED: &str = "remove it: callbridge sets this property from its typed kafka.* settings";

/// Whether callbridge sets `property` itself (it is refused in `kafka.librdkafka`).
pub(crate) fn is_owned(property: &str) -> bool {
    OWNED_PROPERTIES.iter().any(|(owned, _)| *owned == property)
}

/// Sets a property callbridge owns on a client: one of [`OWNED_PROPERTIES`], which
/// [`KafkaConfig::validate`] refuses in `kafka.librdkafka`, so the value set here is never an
/// override of the operator's. (A property set through here that is missing from the list fails
/// the debug build's tests.)
pub(crate) fn set_owned<'c>(
    c: &'c mut ClientConfig,
    property: &str,
    value: impl Into<String>,
) -> &'c mut ClientConfig {
    debug_assert!(
        is_owned(property),
        "{property} is set by callbridge but missing from OWNED_PROPERTIES"
    );
    c.set(property, value)
}

/// Sets a property the operator may tune, unless `kafka.librdkafka` already set it on `c` (built
/// by [`KafkaConfig::client_config`]): callbridge's value is only the default, the operator's
/// wins.
pub(crate) fn set_default<'c>(
    c: &'c mut ClientConfig,
    property: &str,
    value: impl Into<String>,
) -> &'c mut ClientConfig {
    debug_assert!(
        !is_owned(property),
        "{property} is owned by callbridge: use set_owned"
    );
    if c.get(property).is_none() {
        c.set(property, value);
    }
    c
}

impl KafkaConfig {
    /// Checks the settings, naming each bad key, its value and what would be valid.
    pub fn validate(&self, report: &mut InvalidReport) {
        if self.bootstrap_servers.trim().is_empty() {
            report.push(Invalid::new(
                "kafka.bootstrap_servers",
                "",
                "a comma-separated list of host:port, e.g. \"kafka-0:9092,kafka-1:9092\"",
            ));
        }
        for server in self.bootstrap_servers.split(',').map(str::trim) {
            if !server.is_empty() && !server.contains(':') {
                report.push(Invalid::new(
                    "kafka.bootstrap_servers",
                    server,
                    "host:port (the port is required)",
                ));
            }
        }
        if self.security_protocol.uses_sasl() {
            match self.sasl.mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                other => report.push(Invalid::new(
                    "kafka.sasl.mechanism",
                    other.unwrap_or("<unset>"),
                    "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required by security_protocol sasl_*)",
                )),
            }
            if self.sasl.username.is_empty() {
                report.push(Invalid::new(
                    "kafka.sasl.username",
                    "<unset>",
                    "the SASL user name (required by security_protocol sasl_*)",
                ));
            }
            // `BridgeConfig::load` has read `password_file` into `password` by now.
            if self.sasl.password.is_empty() {
                report.push(Invalid::new(
                    "kafka.sasl.password",
                    if self.sasl.password_file.is_some() {
                        "<empty file>"
                    } else {
                        "<unset>"
                    },
                    "set CALLBRIDGE_KAFKA__SASL__PASSWORD or kafka.sasl.password_file (a file \
                     holding the password)",
                ));
            }
        }
        for key in self.librdkafka.keys() {
            if let Some((_, fix)) = OWNED_PROPERTIES.iter().find(|(owned, _)| owned == key) {
                report.push(Invalid::new(
                    &format!("kafka.librdkafka.\"{key}\""),
                    key,
                    fix,
                ));
            }
        }
        self.validate_ack_timeout(report);
        let topics = &self.topics;
        let mut named = vec![
            ("kafka.topics.raw", &topics.raw),
            ("kafka.topics.ordered", &topics.ordered),
            ("kafka.topics.changelog", &topics.changelog),
            ("kafka.topics.dead_letter", &topics.dead_letter),
            ("kafka.topics.channel_owner", &topics.channel_owner),
        ];
        if let Some(other) = &topics.other_sources {
            named.push(("kafka.topics.other_sources", other));
        }
        for (key, name) in &named {
            if !valid_topic_name(name) {
                report.push(Invalid::new(
                    key,
                    name,
                    "1 to 249 characters of [a-zA-Z0-9._-]",
                ));
            }
        }
        for (i, (key, name)) in named.iter().enumerate() {
            if let Some((first, _)) = named[..i].iter().find(|(_, n)| n == name) {
                report.push(Invalid::new(
                    key,
                    name,
                    &format!(
                        "a topic other than {first}'s: raw, ordered, changelog, dead_letter, \
                         channel_owner and other_sources (when set) must all be different topics"
                    ),
                ));
            }
        }
        if topics.partitions < 1 {
            report.push(Invalid::new(
                "kafka.topics.partitions",
                &topics.partitions.to_string(),
                "an integer >= 1",
            ));
        }
        if topics.replication_factor < 1 && topics.replication_factor != -1 {
            report.push(Invalid::new(
                "kafka.topics.replication_factor",
                &topics.replication_factor.to_string(),
                "an integer >= 1, or -1 for the broker's default",
            ));
        }
    }

    /// A zero `ack_timeout` would answer every webhook 503 before Kafka could acknowledge it.
    fn validate_ack_timeout(&self, report: &mut InvalidReport) {
        if self.ack_timeout.is_zero() {
            report.push(Invalid::new(
                "kafka.ack_timeout",
                &humantime::format_duration(self.ack_timeout).to_string(),
                "a duration above zero, e.g. \"5s\" (how long a webhook waits for Kafka)",
            ));
        }
    }

    /// Connection properties shared by every client (producer, consumer, admin).
    pub fn client_config(&self) -> std::io::Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("security.protocol", self.security_protocol.as_librdkafka());
        if self.security_protocol.uses_sasl() {
            if let Some(m) = &self.sasl.mechanism {
                c.set("sasl.mechanism", m);
            }
            c.set("sasl.username", &self.sasl.username);
            // The file was read at load time; it is read again so a rotated Secret reaches a
            // client created later (a takeover's reader, a restarted election).
            let password = match &self.sasl.password_file {
                Some(path) => std::fs::read_to_string(path)?.trim_end().to_string(),
                None => self.sasl.password.expose().to_string(),
            };
            c.set("sasl.password", password);
        }
        if self.security_protocol.uses_tls() {
            let tls = &self.tls;
            for (key, path) in [
                ("ssl.ca.location", &tls.ca_location),
                ("ssl.certificate.location", &tls.certificate_location),
                ("ssl.key.location", &tls.key_location),
            ] {
                if let Some(p) = path {
                    c.set(key, p.to_string_lossy());
                }
            }
            if !tls.key_password.is_empty() {
                c.set("ssl.key.password", tls.key_password.expose());
            }
            let ident = if tls.endpoint_identification {
                "https"
            } else {
                "none"
            };
            c.set("ssl.endpoint.identification.algorithm", ident);
        }
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
        Ok(c)
    }
}

fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &KafkaConfig) -> Vec<String> {
        let mut r = InvalidReport::default();
        c.validate(&mut r);
        r.into_iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(problems(&KafkaConfig::default()).is_empty());
    }

    #[test]
    fn sasl_without_mechanism_names_the_key() {
        let mut c = KafkaConfig {
            security_protocol: SecurityProtocol::SaslSsl,
            ..KafkaConfig::default()
        };
        c.sasl.username = "u".into();
        c.sasl.password = Secret::new("p");
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("kafka.sasl.mechanism"), "{p:?}");
    }

    #[test]
    fn passthrough_cannot_override_typed_keys() {
        let mut c = KafkaConfig::default();
        c.librdkafka
            .insert("enable.idempotence".into(), "false".into());
        c.librdkafka.insert("linger.ms".into(), "1".into());
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("enable.idempotence"));
    }

    #[test]
    fn message_timeout_and_partitioner_are_owned_with_their_own_fix() {
        let mut c = KafkaConfig::default();
        c.librdkafka.insert("message.timeout.ms".into(), "0".into());
        c.librdkafka
            .insert("partitioner".into(), "consistent".into());
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p
            .iter()
            .any(|p| p.contains("message.timeout.ms") && p.contains("kafka.ack_timeout")));
        assert!(p
            .iter()
            .any(|p| p.contains("partitioner") && p.contains("murmur2_random")));
    }

    #[test]
    fn the_record_limit_ingest_relies_on_cannot_be_changed() {
        let mut c = KafkaConfig::default();
        c.librdkafka
            .insert("message.max.bytes".into(), "500000".into());
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("message.max.bytes") && p[0].contains("oversize"));
    }

    #[test]
    fn ack_timeout_must_be_above_zero() {
        let c = KafkaConfig {
            ack_timeout: Duration::ZERO,
            ..KafkaConfig::default()
        };
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("kafka.ack_timeout") && p[0].contains("above zero"));
    }

    #[test]
    fn same_topic_twice_is_refused() {
        let mut c = KafkaConfig::default();
        c.topics.ordered = c.topics.raw.clone();
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("kafka.topics.ordered: \"callbridge.raw\"")
                && p[0].contains("other than kafka.topics.raw's")
                && p[0].contains("must all be different topics"),
            "{p:?}"
        );
    }

    #[test]
    fn other_sources_is_checked_like_the_other_topics() {
        let mut c = KafkaConfig::default();
        c.topics.other_sources = Some(c.topics.ordered.clone());
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("kafka.topics.other_sources: \"callbridge.call-states\"")
                && p[0].contains("kafka.topics.ordered"),
            "{p:?}"
        );
        c.topics.other_sources = Some("other sources!".into());
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("kafka.topics.other_sources: \"other sources!\"")
                && p[0].contains("[a-zA-Z0-9._-]"),
            "{p:?}"
        );
        c.topics.other_sources = Some("callbridge.other-sources".into());
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn properties_the_consumers_set_themselves_are_refused_with_the_key_to_use() {
        for (property, fix) in [
            ("session.timeout.ms", "sequencer_io.session_timeout"),
            (
                "heartbeat.interval.ms",
                "a third of each consumer's session timeout",
            ),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("auto.offset.reset", "earliest record"),
            ("statistics.interval.ms", "lag metrics"),
            ("enable.partition.eof", "partition-EOF event"),
            (
                "ssl.endpoint.identification.algorithm",
                "kafka.tls.endpoint_identification",
            ),
        ] {
            let mut c = KafkaConfig::default();
            c.librdkafka.insert(property.into(), "1".into());
            let p = problems(&c);
            assert_eq!(p.len(), 1, "{property}: {p:?}");
            assert!(
                p[0].starts_with(&format!("kafka.librdkafka.\"{property}\"")) && p[0].contains(fix),
                "{p:?}"
            );
        }
    }

    #[test]
    fn what_tests_and_the_bench_pass_through_stays_allowed() {
        let mut c = KafkaConfig::default();
        for property in [
            "linger.ms",
            "fetch.wait.max.ms",
            "queue.buffering.max.kbytes",
            "queue.buffering.max.messages",
            "max.in.flight.requests.per.connection",
            "compression.type",
            "socket.nagle.disable",
        ] {
            c.librdkafka.insert(property.into(), "1".into());
        }
        assert!(problems(&c).is_empty(), "{:?}", problems(&c));
    }

    #[test]
    fn sasl_password_reaches_librdkafka_but_not_debug() {
        let mut c = KafkaConfig {
            security_protocol: SecurityProtocol::SaslPlaintext,
            ..KafkaConfig::default()
        };
        c.sasl.mechanism = Some("SCRAM-SHA-256".into());
        c.sasl.username = "bridge".into();
        c.sasl.password = Secret::new("s3cr3t-value");
        let cc = c.client_config().unwrap();
        assert_eq!(cc.get("sasl.password"), Some("s3cr3t-value"));
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }
}
