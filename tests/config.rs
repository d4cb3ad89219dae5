//! Configuration: the reference file loads, environment overrides apply, and every bad value is
//! reported with its key, its value and the fix.
use callbridge::config::{BridgeConfig, LoadError};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use std::process::Command;

const SECRETS: &[(&str, &str)] = &[
    ("CALLBRIDGE_GOTO__CLIENT_SECRET", "client-secret-value-123"),
    ("CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN", "pat-value-456"),
    (
        "CALLBRIDGE_WEBHOOK__SECRET",
        "0123456789abcdef0123456789abcdef-webhook",
    ),
];

fn reference() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap()
}

fn problems(figment: Figment) -> String {
    match BridgeConfig::from_figment(figment) {
        Ok(_) => panic!("expected the configuration to be refused"),
        Err(LoadError::Invalid(report)) => report.to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reference_config_loads_once_secrets_are_supplied() {
    let figment = Figment::from(Serialized::defaults(BridgeConfig::default()))
        .merge(Toml::string(&reference()))
        .merge(Serialized::default("goto.client_secret", "s"))
        .merge(Serialized::default("goto.personal_access_token", "p"))
        .merge(Serialized::default("webhook.secret", "x".repeat(40)));
    let c = BridgeConfig::from_figment(figment).expect("reference config is valid");
    assert_eq!(c.kafka.topics.ordered, "callbridge.call-states");
    assert_eq!(c.sequencer.gap_timeout, std::time::Duration::from_secs(2));
}

#[test]
fn reference_config_without_secrets_names_each_missing_secret() {
    let figment = Figment::from(Serialized::defaults(BridgeConfig::default()))
        .merge(Toml::string(&reference()));
    let text = problems(figment);
    for key in [
        "goto.client_secret",
        "goto.personal_access_token",
        "webhook.secret",
    ] {
        assert!(text.contains(key), "{key} not reported in:\n{text}");
    }
}

/// Type errors stop deserialisation at the first one (serde), so each is checked on its own;
/// value errors below are all reported at once.
#[test]
fn wrong_types_and_unknown_keys_name_key_value_and_fix() {
    let cases = [
        (
            "[kafka.topics]\npartitions = \"many\"",
            &["kafka.topics.partitions", "many", "i32"][..],
        ),
        (
            "[channel]\nkind = \"carrier-pigeon\"",
            &["channel.kind", "carrier-pigeon", "webhook, websocket"][..],
        ),
        (
            "[webhook]\nanswer = \"eventually\"",
            &["webhook.answer", "eventually", "after_kafka, on_receipt"][..],
        ),
        (
            "[sequencer]\ngap_timout = \"2s\"",
            &["sequencer.gap_timout", "unknown key", "gap_timeout"][..],
        ),
        (
            "[sequencer]\ngap_timeout = \"soon\"",
            &["sequencer.gap_timeout", "soon"][..],
        ),
    ];
    for (toml, needles) in cases {
        let text = problems(
            Figment::from(Serialized::defaults(BridgeConfig::default())).merge(Toml::string(toml)),
        );
        for needle in needles {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }
}

#[test]
fn bad_values_are_all_reported_at_once() {
    let toml = r#"
        [goto]
        client_id = "id"
        client_secret = "s"
        personal_access_token = "p"
        account_keys = ["12ab"]
        events = ["STARTING"]
        api_base_url = "ftp://example.com"
        [webhook]
        public_url = "not a url"
        secret = "short"
        answer = "on_receipt"
        on_receipt_limit = 0
        [channel]
        websocket_frames_in_flight = 0
        [kafka]
        bootstrap_servers = "broker-without-port"
        [kafka.topics]
        partitions = 0
    "#;
    let text = problems(
        Figment::from(Serialized::defaults(BridgeConfig::default())).merge(Toml::string(toml)),
    );
    for needle in [
        "goto.account_keys: \"12ab\"",
        "goto.events",
        "goto.api_base_url: \"ftp://example.com\"",
        "webhook.public_url: \"not a url\"",
        "webhook.secret: \"<set, too short>\"",
        "webhook.on_receipt_limit: \"0\"",
        "channel.websocket_frames_in_flight: \"0\"",
        "kafka.bootstrap_servers: \"broker-without-port\"",
        "kafka.topics.partitions: \"0\"",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(!text.contains("short\""), "a secret value leaked:\n{text}");
}

#[test]
fn secret_files_are_read() {
    let dir = std::env::temp_dir().join(format!("callbridge-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pat");
    std::fs::write(&file, "pat-from-file\n").unwrap();
    let figment = Figment::from(Serialized::defaults(BridgeConfig::default()))
        .merge(Toml::string(&reference()))
        .merge(Serialized::default("goto.client_secret", "s"))
        .merge(Serialized::default(
            "goto.personal_access_token_file",
            &file,
        ))
        .merge(Serialized::default("webhook.secret", "x".repeat(40)));
    let c = BridgeConfig::from_figment(figment).unwrap();
    assert_eq!(c.goto.personal_access_token.expose(), "pat-from-file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_command_uses_the_environment_and_exits_64_on_errors() {
    let bin = env!("CARGO_BIN_EXE_callbridge");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let ok = Command::new(bin)
        .args(["check-config", "--config", path])
        .envs(SECRETS.iter().copied())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = Command::new(bin)
        .args(["check-config", "--config", path])
        .envs(SECRETS.iter().copied())
        .env("CALLBRIDGE_KAFKA__TOPICS__PARTITIONS", "-3")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("kafka.topics.partitions") && err.contains("-3"),
        "{err}"
    );
    for (_, secret) in SECRETS {
        assert!(!err.contains(secret), "secret leaked: {err}");
    }
}

#[test]
fn unrelated_callbridge_variables_are_not_configuration_keys() {
    let bin = env!("CARGO_BIN_EXE_callbridge");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    // What Kubernetes injects for a Service named `callbridge`, and the config path variable.
    let out = Command::new(bin)
        .arg("check-config")
        .envs(SECRETS.iter().copied())
        .env("CALLBRIDGE_CONFIG", path)
        .env("CALLBRIDGE_SERVICE_HOST", "10.0.0.1")
        .env("CALLBRIDGE_PORT", "tcp://10.0.0.1:8080")
        .env("CALLBRIDGE_PORT_8080_TCP_ADDR", "10.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A real key with a typo in its section is still not silently accepted as a key...
    let typo = Command::new(bin)
        .args(["check-config", "--config", path])
        .envs(SECRETS.iter().copied())
        .env("CALLBRIDGE_KAFKA__TOPICS__PARTITONS", "3")
        .output()
        .unwrap();
    assert_eq!(
        typo.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&typo.stdout)
    );
    assert!(String::from_utf8_lossy(&typo.stderr).contains("partitons"));
}
