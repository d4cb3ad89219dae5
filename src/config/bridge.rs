//! The bridge's configuration: `config.toml`, then `CALLBRIDGE_*` environment variables, then
//! secret files.
//!
//! Nested keys map to environment variables with `__` between levels
//! (`kafka.topics.raw` ↔ `CALLBRIDGE_KAFKA__TOPICS__RAW`). Secrets never need to be in the TOML:
//! each one can come from its environment variable or from a `*_file` key pointing at a mounted
//! file. A key of the wrong type or an unknown key stops loading at the first one (serde stops
//! there); once the types are right, [`BridgeConfig::validate`] reports every bad value at once,
//! with the key, the value and the fix. Secret values never appear in either.

use super::{Invalid, InvalidReport};
use crate::kafka::KafkaConfig;
use crate::secret::Secret;
use crate::sequencer::SequencerConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest `channel.report_sweep_lookback` accepted.
const MAX_REPORT_SWEEP_LOOKBACK: Duration = Duration::from_secs(31 * 24 * 3600);

/// The whole configuration of `callbridge run`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// `[goto]`: credentials, API hosts, account keys.
    pub goto: GotoSettings,
    /// `[channel]`: the notification channel callbridge owns.
    pub channel: ChannelSettings,
    /// `[webhook]`: the HTTP receiver (webhook channels).
    pub webhook: WebhookSettings,
    /// `[kafka]`: brokers, security, topics.
    pub kafka: KafkaConfig,
    /// `[sequencer]`: gap timeout, back-fill limits, retention of closed calls.
    pub sequencer: SequencerConfig,
    /// `[sequencer_io]`: checkpointing and takeover of the sequencer's Kafka side.
    pub sequencer_io: SequencerIoSettings,
    /// `[admin]`: metrics and health endpoints.
    pub admin: AdminSettings,
    /// `[log]`: format and level.
    pub log: LogSettings,
    /// `[shutdown]`: how long a graceful stop may take.
    pub shutdown: ShutdownSettings,
}

/// `[shutdown]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Bound on the whole graceful stop (stop accepting, flush, drain, commit, leave the group);
    /// keep it below the pod's `terminationGracePeriodSeconds`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(25),
        }
    }
}

/// `[goto]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GotoSettings {
    /// REST API base URL.
    pub api_base_url: String,
    /// OAuth base URL (`/oauth/token` is appended).
    pub auth_base_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (`CALLBRIDGE_GOTO__CLIENT_SECRET` or `client_secret_file`).
    pub client_secret: Secret,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Personal access token (`CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN` or `..._file`).
    pub personal_access_token: Secret,
    /// File holding the personal access token.
    pub personal_access_token_file: Option<PathBuf>,
    /// Refresh token, used when no personal access token is set.
    pub refresh_token: Secret,
    /// File holding the refresh token.
    pub refresh_token_file: Option<PathBuf>,
    /// Account keys to subscribe (decimal strings).
    pub account_keys: Vec<String>,
    /// Call-event types to subscribe to.
    pub events: Vec<String>,
    /// Client-side limit of requests per second per GoTo API.
    pub requests_per_second: u32,
}

impl Default for GotoSettings {
    fn default() -> Self {
        Self {
            api_base_url: "https://api.goto.com".into(),
            auth_base_url: "https://authentication.logmeininc.com".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            personal_access_token: Secret::default(),
            personal_access_token_file: None,
            refresh_token: Secret::default(),
            refresh_token_file: None,
            account_keys: Vec::new(),
            events: vec!["STARTING".into(), "ACTIVE".into(), "ENDING".into()],
            requests_per_second: 10,
        }
    }
}

/// How notifications reach callbridge.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// GoTo POSTs to `webhook.public_url`.
    Webhook,
    /// callbridge holds a WebSocket to GoTo.
    Websocket,
}

/// `[channel]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// `webhook` or `websocket`.
    pub kind: ChannelKind,
    /// Nickname callbridge finds its channel by (and creates it with).
    pub nickname: String,
    /// Spelling of the WebSocket channel type sent to GoTo: `WebSockets` or `WebSocket`.
    pub websocket_type: String,
    /// Refresh a WebSocket channel this long before its `channelLifetime` runs out.
    #[serde(with = "humantime_serde")]
    pub refresh_margin: Duration,
    /// How often the channel and subscriptions are checked and repaired.
    #[serde(with = "humantime_serde")]
    pub repair_interval: Duration,
    /// WebSocket protocol ping interval.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Unanswered pings before the socket is considered dead.
    pub max_missed_pongs: u32,
    /// WebSocket frames being written to Kafka at once. When that many wait for Kafka, the
    /// bridge stops reading the socket until one is written (GoTo's sends then back up in TCP).
    pub websocket_frames_in_flight: usize,
    /// First reconnect delay (doubles up to `reconnect_max`).
    #[serde(with = "humantime_serde")]
    pub reconnect_base: Duration,
    /// Longest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long a channel owner that stopped answering Kafka keeps ownership before another
    /// replica takes the channel over (the election group's `session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub owner_session_timeout: Duration,
    /// After the channel comes back, wait this long (GoTo publishes a call's report minutes
    /// after it ends) before sweeping the report summaries for calls that started and ended
    /// while it was down.
    #[serde(with = "humantime_serde")]
    pub report_sweep_delay: Duration,
    /// A replica that becomes the channel owner sweeps calls created this far back (it cannot
    /// know when its predecessor lost the channel); `0s` turns that sweep off.
    #[serde(with = "humantime_serde")]
    pub report_sweep_lookback: Duration,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            kind: ChannelKind::Webhook,
            nickname: "callbridge".into(),
            websocket_type: "WebSockets".into(),
            refresh_margin: Duration::from_secs(120),
            repair_interval: Duration::from_secs(300),
            ping_interval: Duration::from_secs(8),
            max_missed_pongs: 3,
            websocket_frames_in_flight: 1024,
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            owner_session_timeout: Duration::from_secs(10),
            report_sweep_delay: Duration::from_secs(180),
            report_sweep_lookback: Duration::from_secs(120),
        }
    }
}

/// `[webhook]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Address the webhook server listens on.
    pub listen: SocketAddr,
    /// Public URL GoTo posts to, without the secret (callbridge appends `/{secret}`).
    pub public_url: String,
    /// Path the server serves, without the secret.
    pub path_prefix: String,
    /// The path secret (`CALLBRIDGE_WEBHOOK__SECRET` or `secret_file`); at least 32 characters.
    pub secret: Secret,
    /// File holding the path secret.
    pub secret_file: Option<PathBuf>,
    /// When a POST of a call state is answered 200: once Kafka acknowledged it (`after_kafka`) or
    /// once it is queued for Kafka (`on_receipt`, see [`WebhookAnswer`]).
    pub answer: WebhookAnswer,
    /// With `answer = "on_receipt"`: how many states answered on receipt may wait for Kafka at
    /// once. Beyond it, answers wait for Kafka again. It bounds what a crash can lose to back-fill
    /// (one GoTo request per lost state at most, 10 a second).
    pub on_receipt_limit: usize,
}

/// When the webhook answers a POST of a call state (also `callbridge bench --webhook-answer`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum WebhookAnswer {
    /// 200 only once Kafka has the state (`acks=all`): a crash loses nothing GoTo was told was
    /// received.
    #[default]
    AfterKafka,
    /// 200 once the state is queued for Kafka, while fewer than `webhook.on_receipt_limit`
    /// states answered this way wait for Kafka. GoTo's answer no longer waits for the broker;
    /// a crash loses the states answered but not yet written, which the sequencer back-fills
    /// from GoTo's API like any other missed state. Dead-lettered and other-source bodies are
    /// still answered after Kafka (back-fill cannot bring them back).
    OnReceipt,
}

impl WebhookAnswer {
    /// The configuration value (`after_kafka`, `on_receipt`).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookAnswer::AfterKafka => "after_kafka",
            WebhookAnswer::OnReceipt => "on_receipt",
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: String::new(),
            path_prefix: "/goto/webhook".into(),
            secret: Secret::default(),
            secret_file: None,
            answer: WebhookAnswer::default(),
            on_receipt_limit: 500,
        }
    }
}

/// `[sequencer_io]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencerIoSettings {
    /// How often acknowledged progress is written to the changelog.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Bound on each phase of a partition takeover, and on the wait for librdkafka to start
    /// fetching a partition taken over.
    #[serde(with = "humantime_serde")]
    pub takeover_timeout: Duration,
    /// Back-fill requests in flight at once (GoTo's rate limit applies on top).
    pub backfill_concurrency: usize,
    /// How long a replica that stopped heartbeating (crashed, frozen) keeps its raw partitions
    /// before the group hands them to the others (`session.timeout.ms` of the raw consumer).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for SequencerIoSettings {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
            takeover_timeout: Duration::from_secs(30),
            backfill_concurrency: 4,
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of `/metrics`, `/healthz`, `/readyz` (separate from the webhook port).
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` or `human`.
    pub format: String,
    /// Default level filter (overridden by `RUST_LOG`).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// Loading failed: the file, a type, or a value is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A key has the wrong type or an unknown name.
    #[error("{0}")]
    Invalid(InvalidReport),
    /// A `*_file` could not be read.
    #[error("{key}: cannot read {path:?}: {source}; point it at a readable file or set the value through the environment")]
    SecretFile {
        /// The `*_file` key.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The configuration's top-level sections; only `CALLBRIDGE_<SECTION>__…` variables are keys.
const SECTIONS: &[&str] = &[
    "goto",
    "channel",
    "webhook",
    "kafka",
    "sequencer",
    "sequencer_io",
    "admin",
    "log",
    "shutdown",
];

/// The keys holding secrets: their values are never printed, and their environment variables are
/// taken as written (see [`SecretEnvironment`]).
const SECRET_KEYS: &[&str] = &[
    "goto.client_secret",
    "goto.personal_access_token",
    "goto.refresh_token",
    "webhook.secret",
    "kafka.sasl.password",
    "kafka.tls.key_password",
];

/// Whether the dotted `key` is a secret or lies inside one (`kafka.sasl.password.0`).
fn is_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|s| {
        key.strip_prefix(s)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// Whether an environment variable name (prefix stripped, e.g. `KAFKA__SASL__PASSWORD`) sets a
/// secret key.
fn is_secret_variable(name: &str) -> bool {
    is_secret(&name.to_ascii_lowercase().replace("__", "."))
}

/// `CALLBRIDGE_<SECTION>__<KEY>` variables, secrets excepted (see [`SecretEnvironment`]). Other
/// `CALLBRIDGE_*` variables are not keys and are left alone: `CALLBRIDGE_CONFIG` (the file's
/// path) and the service links Kubernetes injects for a Service named `callbridge`
/// (`CALLBRIDGE_SERVICE_HOST`, `CALLBRIDGE_PORT_8080_TCP`, …).
fn environment() -> Env {
    Env::prefixed("CALLBRIDGE_")
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| {
                key.strip_prefix(s)
                    .is_some_and(|rest| rest.starts_with("__"))
            }) && !is_secret_variable(&key)
        })
        .split("__")
}

/// The secret keys' `CALLBRIDGE_*` variables, each taken as the exact text of the variable.
/// figment's environment provider parses values (`0123` becomes the number 123, `4.50` the
/// number 4.5, `"x"` loses its quotes), which would silently change a password.
struct SecretEnvironment(Vec<(String, String)>);

impl SecretEnvironment {
    /// The secret keys among `variables` (name, value), as dotted key and value.
    fn new(variables: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            variables
                .into_iter()
                .filter_map(|(name, value)| {
                    let name = name.to_ascii_lowercase();
                    let key = name.strip_prefix("callbridge_")?.replace("__", ".");
                    is_secret(&key).then_some((key, value))
                })
                .collect(),
        )
    }
}

impl Provider for SecretEnvironment {
    fn metadata(&self) -> Metadata {
        Metadata::named("`CALLBRIDGE_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut secrets = Figment::new();
        for (key, value) in &self.0 {
            secrets = secrets.merge(Serialized::default(key, value));
        }
        secrets.data()
    }
}

impl BridgeConfig {
    /// Reads `path` (if given), then `CALLBRIDGE_*` variables, then secret files, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, LoadError> {
        let mut figment = Figment::from(Serialized::defaults(BridgeConfig::default()));
        if let Some(p) = path {
            if !p.exists() {
                let mut r = InvalidReport::default();
                r.push(Invalid::new(
                    "--config",
                    &p.display().to_string(),
                    "an existing TOML file (see the commented config.toml at the repository root)",
                ));
                return Err(LoadError::Invalid(r));
            }
            figment = figment.merge(Toml::file(p));
        }
        figment = figment
            .merge(environment())
            .merge(SecretEnvironment::new(std::env::vars_os().filter_map(
                |(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)),
            )));
        Self::from_figment(figment)
    }

    /// Extracts from a prepared figment (tests use this with inline TOML).
    pub fn from_figment(figment: Figment) -> Result<Self, LoadError> {
        let mut config: BridgeConfig = figment.extract().map_err(|e| {
            let mut r = InvalidReport::default();
            for err in e {
                r.push(explain(&err));
            }
            LoadError::Invalid(r)
        })?;
        config.read_secret_files()?;
        let mut report = InvalidReport::default();
        config.validate(&mut report);
        if report.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(report))
        }
    }

    fn read_secret_files(&mut self) -> Result<(), LoadError> {
        fn read(
            key: &'static str,
            file: &Option<PathBuf>,
            into: &mut Secret,
        ) -> Result<(), LoadError> {
            if let Some(path) = file {
                let value =
                    std::fs::read_to_string(path).map_err(|source| LoadError::SecretFile {
                        key,
                        path: path.clone(),
                        source,
                    })?;
                *into = Secret::new(value.trim_end());
            }
            Ok(())
        }
        let g = &mut self.goto;
        read(
            "goto.client_secret_file",
            &g.client_secret_file,
            &mut g.client_secret,
        )?;
        read(
            "goto.personal_access_token_file",
            &g.personal_access_token_file,
            &mut g.personal_access_token,
        )?;
        read(
            "goto.refresh_token_file",
            &g.refresh_token_file,
            &mut g.refresh_token,
        )?;
        let w = &mut self.webhook;
        read("webhook.secret_file", &w.secret_file, &mut w.secret)?;
        let s = &mut self.kafka.sasl;
        read(
            "kafka.sasl.password_file",
            &s.password_file,
            &mut s.password,
        )?;
        let t = &mut self.kafka.tls;
        read(
            "kafka.tls.key_password_file",
            &t.key_password_file,
            &mut t.key_password,
        )?;
        Ok(())
    }

    /// Every problem with the values, each naming key, value and fix.
    pub fn validate(&self, report: &mut InvalidReport) {
        let g = &self.goto;
        for (key, url) in [
            ("goto.api_base_url", &g.api_base_url),
            ("goto.auth_base_url", &g.auth_base_url),
        ] {
            if url::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                report.push(Invalid::new(
                    key,
                    url,
                    "an absolute http(s) URL such as https://api.goto.com",
                ));
            }
        }
        if g.client_id.is_empty() {
            report.push(Invalid::new(
                "goto.client_id",
                "<unset>",
                "the OAuth client id from developer.goto.com",
            ));
        }
        if g.client_secret.is_empty() {
            report.push(Invalid::new(
                "goto.client_secret",
                "<unset>",
                "set CALLBRIDGE_GOTO__CLIENT_SECRET or goto.client_secret_file",
            ));
        }
        if g.personal_access_token.is_empty() && g.refresh_token.is_empty() {
            report.push(Invalid::new(
                "goto.personal_access_token",
                "<unset>",
                "a personal access token (CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN or goto.personal_access_token_file) or a refresh token (goto.refresh_token…)",
            ));
        }
        if g.account_keys.is_empty() {
            report.push(Invalid::new(
                "goto.account_keys",
                "[]",
                "at least one account key, e.g. [\"1234567890123456789\"]",
            ));
        }
        for key in &g.account_keys {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
                report.push(Invalid::new(
                    "goto.account_keys",
                    key,
                    "decimal digits only (GoTo account keys are ~19-digit numbers, as strings)",
                ));
            }
        }
        const EVENTS: [&str; 3] = ["STARTING", "ACTIVE", "ENDING"];
        for (i, event) in g.events.iter().enumerate() {
            if !EVENTS.contains(&event.as_str()) {
                report.push(Invalid::new(
                    "goto.events",
                    event,
                    "STARTING, ACTIVE or ENDING",
                ));
            } else if g.events[..i].contains(event) {
                report.push(Invalid::new(
                    "goto.events",
                    event,
                    "each event listed once: [\"STARTING\", \"ACTIVE\", \"ENDING\"]",
                ));
            }
        }
        let missing: Vec<&str> = EVENTS
            .into_iter()
            .filter(|e| !g.events.iter().any(|x| x == e))
            .collect();
        if !missing.is_empty() {
            report.push(Invalid::new(
                "goto.events",
                &format!("[{}]", g.events.join(", ")),
                &format!(
                    "each of STARTING, ACTIVE and ENDING (missing: {}): a gap-free stream needs \
                     every state, so set [\"STARTING\", \"ACTIVE\", \"ENDING\"]",
                    missing.join(", ")
                ),
            ));
        }
        if g.requests_per_second == 0 {
            report.push(Invalid::new(
                "goto.requests_per_second",
                "0",
                "an integer >= 1 (GoTo's default limit is 10)",
            ));
        }
        let c = &self.channel;
        if c.nickname.is_empty() {
            report.push(Invalid::new(
                "channel.nickname",
                "",
                "a non-empty name that identifies this deployment's channel",
            ));
        }
        if !matches!(c.websocket_type.as_str(), "WebSockets" | "WebSocket") {
            report.push(Invalid::new(
                "channel.websocket_type",
                &c.websocket_type,
                "WebSockets or WebSocket",
            ));
        }
        if c.ping_interval.is_zero() {
            report.push(Invalid::new(
                "channel.ping_interval",
                "0s",
                "a duration > 0, e.g. \"8s\"",
            ));
        }
        if c.repair_interval.is_zero() {
            report.push(Invalid::new(
                "channel.repair_interval",
                "0s",
                "a duration > 0, e.g. \"5m\" (the period of the channel and subscription check)",
            ));
        }
        // The sweep's window starts `now - lookback`: a lookback beyond the clock's reach would
        // panic at the first channel set-up, and GoTo's reports do not go back years anyway.
        if c.report_sweep_lookback > MAX_REPORT_SWEEP_LOOKBACK {
            report.push(Invalid::new(
                "channel.report_sweep_lookback",
                &humantime::format_duration(c.report_sweep_lookback).to_string(),
                "at most 31 days, e.g. \"2m\" (how far back a new channel owner sweeps GoTo's reports)",
            ));
        }
        // A new channel owner writes to raw every state of the calls created `lookback` back,
        // `delay` after it took over. A completed call the sequencer has forgotten by then (it
        // keeps one `sequencer.closed_retention`) reads as a new call and is published again,
        // so the sweep must reach no further back than the sequencer remembers. Half of it, not
        // all: the window swept is wider than configured (a margin, and GoTo's clock skew
        // measured at run time), and a sweep queued behind others runs later than `delay`.
        let swept_back = c.report_sweep_lookback.saturating_add(c.report_sweep_delay);
        if !c.report_sweep_lookback.is_zero()
            && c.report_sweep_lookback <= MAX_REPORT_SWEEP_LOOKBACK
            && swept_back.saturating_mul(2) > self.sequencer.closed_retention
        {
            report.push(Invalid::new(
                "channel.report_sweep_lookback",
                &humantime::format_duration(c.report_sweep_lookback).to_string(),
                &format!(
                    "channel.report_sweep_lookback + channel.report_sweep_delay ({}) at most \
                     half of sequencer.closed_retention ({}): a new channel owner writes every \
                     state of the calls created that far back to raw again (a window widened by \
                     GoTo's clock skew), and a completed call the sequencer has forgotten is \
                     published twice; raise sequencer.closed_retention to at least {} or lower \
                     the lookback (\"0s\" turns this sweep off)",
                    humantime::format_duration(c.report_sweep_delay),
                    humantime::format_duration(self.sequencer.closed_retention),
                    humantime::format_duration(swept_back.saturating_mul(2)),
                ),
            ));
        }
        if c.max_missed_pongs == 0 {
            report.push(Invalid::new(
                "channel.max_missed_pongs",
                "0",
                "at least 1 (0 would reconnect at every ping), e.g. 3",
            ));
        }
        if c.reconnect_base.is_zero() {
            report.push(Invalid::new(
                "channel.reconnect_base",
                "0s",
                "a duration > 0, e.g. \"500ms\" (0 would retry a failing channel without pause)",
            ));
        }
        if c.reconnect_max < c.reconnect_base {
            report.push(Invalid::new(
                "channel.reconnect_max",
                &humantime::format_duration(c.reconnect_max).to_string(),
                &format!(
                    "at least channel.reconnect_base ({}), e.g. \"30s\"",
                    humantime::format_duration(c.reconnect_base)
                ),
            ));
        }
        if c.websocket_frames_in_flight == 0 {
            report.push(Invalid::new(
                "channel.websocket_frames_in_flight",
                "0",
                "at least 1 (the socket would never be read), e.g. 1024",
            ));
        }
        if c.owner_session_timeout < Duration::from_secs(1)
            || c.owner_session_timeout > Duration::from_secs(300)
        {
            report.push(Invalid::new(
                "channel.owner_session_timeout",
                &humantime::format_duration(c.owner_session_timeout).to_string(),
                "between 1s and 5m, within the broker's group.min/max.session.timeout.ms (e.g. \"10s\")",
            ));
        }
        if c.kind == ChannelKind::Webhook {
            let w = &self.webhook;
            if url::Url::parse(&w.public_url).is_err() {
                report.push(Invalid::new(
                    "webhook.public_url",
                    &w.public_url,
                    "the absolute URL GoTo can reach, e.g. https://callbridge.example.com/goto/webhook (required for channel.kind = \"webhook\")",
                ));
            }
            if w.secret.expose().len() < 32 {
                report.push(Invalid::new(
                    "webhook.secret",
                    if w.secret.is_empty() { "<unset>" } else { "<set, too short>" },
                    "at least 32 random characters (e.g. `openssl rand -hex 32`) in CALLBRIDGE_WEBHOOK__SECRET or webhook.secret_file",
                ));
            }
            if !w.path_prefix.starts_with('/') {
                report.push(Invalid::new(
                    "webhook.path_prefix",
                    &w.path_prefix,
                    "a path starting with '/', e.g. /goto/webhook",
                ));
            }
            if w.answer == WebhookAnswer::OnReceipt && w.on_receipt_limit == 0 {
                report.push(Invalid::new(
                    "webhook.on_receipt_limit",
                    "0",
                    "a count above zero, e.g. 500 (or webhook.answer = \"after_kafka\")",
                ));
            }
            if w.listen == self.admin.listen {
                report.push(Invalid::new(
                    "admin.listen",
                    &self.admin.listen.to_string(),
                    "a different address than webhook.listen",
                ));
            }
        }
        if !matches!(self.log.format.as_str(), "json" | "human") {
            report.push(Invalid::new(
                "log.format",
                &self.log.format,
                "json or human",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            report.push(Invalid::new(
                "log.level",
                &self.log.level,
                "a level (error, warn, info, debug, trace) or a RUST_LOG-style filter",
            ));
        }
        if self.shutdown.timeout.is_zero() {
            report.push(Invalid::new(
                "shutdown.timeout",
                "0s",
                "a duration > 0 below terminationGracePeriodSeconds, e.g. \"25s\"",
            ));
        }
        if self.sequencer_io.backfill_concurrency == 0 {
            report.push(Invalid::new(
                "sequencer_io.backfill_concurrency",
                "0",
                "an integer >= 1",
            ));
        }
        let session = self.sequencer_io.session_timeout;
        if session < Duration::from_secs(1) || session > Duration::from_secs(300) {
            report.push(Invalid::new(
                "sequencer_io.session_timeout",
                &humantime::format_duration(session).to_string(),
                "between 1s and 5m, within the broker's group.min/max.session.timeout.ms (e.g. \"10s\")",
            ));
        }
        self.kafka.validate(report);
    }
}

/// Turns figment's error into key / value / fix. The value of a secret key is never shown.
fn explain(e: &figment::Error) -> Invalid {
    use figment::error::Kind;
    let key = if e.path.is_empty() {
        "<root>".to_string()
    } else {
        e.path.join(".")
    };
    let secret = is_secret(&key);
    let origin = e
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    let shown = |actual: &dyn std::fmt::Display| {
        if secret {
            format!("<redacted>{origin}")
        } else {
            format!("{actual}{origin}")
        }
    };
    match &e.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => Invalid::new(
            &key,
            &shown(actual),
            &expected_in_words(&e.path, actual, expected),
        ),
        Kind::UnknownField(field, allowed) => {
            // figment's path already ends with the unknown field.
            let key = if e.path.last() == Some(field) {
                key
            } else if e.path.is_empty() {
                field.clone()
            } else {
                format!("{key}.{field}")
            };
            Invalid::new(
                &key,
                &format!("unknown key{origin}"),
                &format!("one of: {}", allowed.join(", ")),
            )
        }
        Kind::UnknownVariant(v, allowed) => {
            Invalid::new(&key, &shown(v), &format!("one of: {}", allowed.join(", ")))
        }
        Kind::Message(message) => {
            if let Some(syntax) = toml_syntax_error(message, e.metadata.as_ref()) {
                syntax
            } else if secret {
                Invalid::new(
                    &key,
                    &format!("<redacted>{origin}"),
                    "a string (the error is not shown: it could quote the secret)",
                )
            } else {
                Invalid::new(&key, origin.trim(), message)
            }
        }
        other if secret => Invalid::new(
            &key,
            &format!("<redacted>{origin}"),
            &format!("a string ({})", kind_name(other)),
        ),
        other => Invalid::new(&key, origin.trim(), &other.to_string()),
    }
}

/// A short, value-free name for an unusual figment error kind.
fn kind_name(kind: &figment::error::Kind) -> &'static str {
    use figment::error::Kind;
    match kind {
        Kind::InvalidLength(..) => "wrong number of items",
        Kind::MissingField(_) => "missing field",
        Kind::DuplicateField(_) => "duplicate field",
        _ => "unsupported value",
    }
}

/// serde's expectation, said in words: `u32` becomes "a whole number from 0 to 4294967295";
/// an account key given as a number (an unquoted list in `CALLBRIDGE_GOTO__ACCOUNT_KEYS`) gets
/// the hint to quote it.
fn expected_in_words(path: &[String], actual: &figment::error::Actual, expected: &str) -> String {
    use figment::error::Actual;
    let number = matches!(
        actual,
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_)
    );
    if number
        && path.first().map(String::as_str) == Some("goto")
        && path.get(1).map(String::as_str) == Some("account_keys")
    {
        return "a string: quote each account key, e.g. account_keys = [\"1234567890123456789\"] in \
                TOML or CALLBRIDGE_GOTO__ACCOUNT_KEYS='[\"1234567890123456789\"]' (unquoted, a key \
                is read as a number)"
            .into();
    }
    let (low, high): (i128, i128) = match expected {
        "u8" => (0, u8::MAX.into()),
        "u16" => (0, u16::MAX.into()),
        "u32" => (0, u32::MAX.into()),
        "u64" | "usize" => return "a whole number, 0 or more (no quotes, no decimals)".into(),
        "i8" => (i8::MIN.into(), i8::MAX.into()),
        "i16" => (i16::MIN.into(), i16::MAX.into()),
        "i32" => (i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => return "a whole number (no quotes, no decimals)".into(),
        "f32" | "f64" => return "a number".into(),
        other => return other.to_string(),
    };
    format!("a whole number from {low} to {high} (no quotes, no decimals)")
}

/// figment hands a TOML syntax error over as toml's text: a `TOML parse error at line L, column
/// C` header, the offending line quoted under it, then what is wrong. The quoted line can hold a
/// secret (an unterminated `password = "…`), so only the file, the position, the key written on
/// that line (read from the file, names only) and the description are kept.
fn toml_syntax_error(message: &str, metadata: Option<&Metadata>) -> Option<Invalid> {
    let mut lines = message.lines();
    let position = lines.next()?.strip_prefix("TOML parse error at line ")?;
    let (line, column) = position.split_once(", column ")?;
    let line: usize = line.trim().parse().ok()?;
    let column: usize = column.trim().parse().ok()?;
    let quoted = format!("{line} |");
    let what: Vec<&str> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with(&quoted))
        .collect();
    let file = metadata.and_then(|m| m.source.as_ref()?.file_path());
    let key = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| key_on_line(&text, line));
    let mut what = if what.is_empty() {
        "the file does not parse".to_string()
    } else {
        what.join("; ")
    };
    if what.contains("string") {
        what.push_str("; e.g. a quote not closed");
    }
    let place = match file {
        Some(f) => format!("{} line {line}, column {column}", f.display()),
        None => format!("line {line}, column {column}"),
    };
    Some(Invalid::new(
        key.as_deref().unwrap_or("--config"),
        &format!("TOML syntax error at {place}"),
        &format!(
            "valid TOML there ({what}); the line is not repeated here as it may hold a secret"
        ),
    ))
}

/// The configuration key written on 1-based `line` of a TOML text (`password` under
/// `[kafka.sasl]` is `kafka.sasl.password`), or the table a header line opens. Only key names
/// are returned, never text after `=`; `None` when the line holds no recognisable key.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    fn dotted(k: &str) -> Option<String> {
        let parts: Vec<&str> = k.split('.').map(str::trim).collect();
        let bare = parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        (bare && SECTIONS.contains(&parts[0])).then(|| parts.join("."))
    }
    fn header(t: &str) -> Option<&str> {
        t.strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .or_else(|| t.strip_prefix('[').and_then(|r| r.split_once(']')))
            .map(|(h, _)| h.trim())
    }
    let mut table = String::new();
    for (i, l) in text.split('\n').enumerate() {
        let t = l.trim();
        let opened = header(t);
        if i + 1 == line {
            if let Some(h) = opened {
                return dotted(h);
            }
            let (k, _) = t.split_once('=')?;
            let k = k.trim();
            return if table.is_empty() {
                dotted(k)
            } else {
                dotted(&format!("{table}.{k}"))
            };
        }
        if let Some(h) = opened {
            table = h.to_string();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::error::{Actual, Kind};

    #[test]
    fn secret_values_are_redacted_whatever_figment_reports() {
        for kind in [
            Kind::InvalidType(Actual::Unsigned(424242), "a string".into()),
            Kind::InvalidValue(Actual::Str("424242".into()), "a string".into()),
            Kind::UnknownVariant("424242".into(), &["a"]),
            Kind::Message("invalid value 424242".into()),
        ] {
            for key in [
                "kafka.sasl.password",
                "goto.client_secret",
                "kafka.tls.key_password",
            ] {
                let e = figment::Error::from(kind.clone()).with_path(key);
                let shown = explain(&e).to_string();
                assert!(shown.starts_with(key), "{shown}");
                assert!(!shown.contains("424242"), "{shown}");
            }
        }
        // Other keys keep their value: it is what the operator has to find.
        let e = figment::Error::from(Kind::InvalidType(Actual::Unsigned(7), "a string".into()))
            .with_path("goto.client_id");
        assert!(explain(&e).to_string().contains("`7`"));
    }

    #[test]
    fn secrets_from_the_environment_keep_their_exact_text() {
        let env = SecretEnvironment::new(
            [
                ("CALLBRIDGE_KAFKA__SASL__PASSWORD", "0123"),
                ("CALLBRIDGE_KAFKA__TLS__KEY_PASSWORD", "4.50"),
                ("CALLBRIDGE_GOTO__CLIENT_SECRET", "\"quoted\""),
                ("CALLBRIDGE_GOTO__REFRESH_TOKEN", "[1,2]"),
                ("CALLBRIDGE_KAFKA__TOPICS__RAW", "not-a-secret"),
                ("OTHER_KAFKA__SASL__PASSWORD", "not-ours"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let c: BridgeConfig = Figment::from(Serialized::defaults(BridgeConfig::default()))
            .merge(env)
            .extract()
            .unwrap();
        assert_eq!(c.kafka.sasl.password.expose(), "0123");
        assert_eq!(c.kafka.tls.key_password.expose(), "4.50");
        assert_eq!(c.goto.client_secret.expose(), "\"quoted\"");
        assert_eq!(c.goto.refresh_token.expose(), "[1,2]");
        assert_eq!(c.kafka.topics.raw, KafkaConfig::default().topics.raw);
    }

    #[test]
    fn the_key_of_a_broken_line_is_found_without_its_value() {
        let text = "[goto]\nclient_id = \"x\"\n\n[kafka.sasl]\npassword = \"hunter2\n[log]\n";
        assert_eq!(key_on_line(text, 2).as_deref(), Some("goto.client_id"));
        assert_eq!(key_on_line(text, 5).as_deref(), Some("kafka.sasl.password"));
        assert_eq!(key_on_line(text, 4).as_deref(), Some("kafka.sasl"));
        assert_eq!(key_on_line(text, 3), None);
        assert_eq!(key_on_line("hunter2 = 1", 1), None);
    }
}
