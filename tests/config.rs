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

/// The reference file with its secrets supplied: valid as it is.
fn reference_with_secrets() -> Figment {
    Figment::from(Serialized::defaults(BridgeConfig::default()))
        .merge(Toml::string(&reference()))
        .merge(Serialized::default("goto.client_secret", "s"))
        .merge(Serialized::default("goto.personal_access_token", "p"))
        .merge(Serialized::default("webhook.secret", "x".repeat(40)))
}

/// The line of `text` reporting `key` (each problem is one line starting with its key).
fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no line for {key:?} in:\n{text}"))
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
    let c =
        BridgeConfig::from_figment(reference_with_secrets()).expect("reference config is valid");
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
            &[
                "kafka.topics.partitions",
                "many",
                "a whole number from -2147483648 to 2147483647",
            ][..],
        ),
        (
            "[goto]\nrequests_per_second = -1",
            &[
                "goto.requests_per_second",
                "-1",
                "a whole number from 0 to 4294967295",
            ][..],
        ),
        (
            "[goto]\naccount_keys = [1234567890123456789]",
            &["goto.account_keys.0", "quote each account key"][..],
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
        assert!(
            text.starts_with(&format!("{}: ", needles[0])),
            "{:?} is not the key of:\n{text}",
            needles[0]
        );
        for needle in needles {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        assert!(!text.contains(" i32") && !text.contains(" u32"), "{text}");
    }
}

/// figment's path already ends with the unknown key: it is named once, exactly.
#[test]
fn unknown_keys_are_named_exactly() {
    for (toml, key) in [
        ("[sequencer]\ngap_timout = \"2s\"", "sequencer.gap_timout"),
        ("[channel]\nbogus = 1", "channel.bogus"),
        ("[kafka.sasl]\nuser = \"u\"", "kafka.sasl.user"),
        ("[metrics]\nenabled = true", "metrics"),
    ] {
        let text = problems(
            Figment::from(Serialized::defaults(BridgeConfig::default())).merge(Toml::string(toml)),
        );
        assert!(
            text.starts_with(&format!("{key}: \"unknown key")),
            "{key:?} not named exactly in:\n{text}"
        );
    }
}

/// Secrets that look like numbers or booleans are taken as their text (the environment's as
/// written), and no secret value appears in an error.
#[test]
fn numeric_and_boolean_secrets_work_and_are_never_printed() {
    let bin = env!("CARGO_BIN_EXE_callbridge");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let secrets = [
        ("CALLBRIDGE_GOTO__CLIENT_SECRET", "987654321"),
        ("CALLBRIDGE_GOTO__REFRESH_TOKEN", "true"),
        ("CALLBRIDGE_KAFKA__SASL__PASSWORD", "424242"),
        ("CALLBRIDGE_KAFKA__TLS__KEY_PASSWORD", "4.25"),
    ];
    let out = Command::new(bin)
        .args(["check-config", "--config", path])
        .envs(SECRETS.iter().copied())
        .envs(secrets)
        .env("CALLBRIDGE_KAFKA__SECURITY_PROTOCOL", "sasl_ssl")
        .env("CALLBRIDGE_KAFKA__SASL__MECHANISM", "PLAIN")
        .env("CALLBRIDGE_KAFKA__SASL__USERNAME", "bridge")
        // One bad value, so the run prints its report.
        .env("CALLBRIDGE_KAFKA__TOPICS__PARTITIONS", "-3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("kafka.topics.partitions"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains(": \"")).count(),
        1,
        "{err}"
    );
    for (_, secret) in secrets {
        assert!(!err.contains(secret), "secret {secret} leaked: {err}");
    }

    let c = BridgeConfig::from_figment(
        reference_with_secrets().merge(Toml::string("[kafka.sasl]\npassword = 1234")),
    )
    .expect("an unquoted numeric password is its text");
    assert_eq!(c.kafka.sasl.password.expose(), "1234");
    let text =
        problems(reference_with_secrets().merge(Toml::string("[kafka.sasl]\npassword = [424242]")));
    assert!(
        line_of(&text, "kafka.sasl.password").contains("<redacted>") && !text.contains("424242"),
        "{text}"
    );
}

/// A TOML syntax error gives file, line, column and the key, never the line itself (it may be
/// an unterminated secret).
#[test]
fn toml_syntax_errors_never_quote_the_line() {
    let dir = std::env::temp_dir().join(format!("callbridge-syntax-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    std::fs::write(&file, "[kafka]\n[kafka.sasl]\npassword = \"hunter2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(!err.contains("hunter2"), "the line was quoted: {err}");
    let line = line_of(&err, "kafka.sasl.password");
    assert!(
        line.contains("broken.toml line 3, column") && line.contains("invalid basic string"),
        "{err}"
    );
}

#[test]
fn every_event_type_is_required_once() {
    for (events, needle) in [
        (r#"["STARTING", "STARTING", "ACTIVE"]"#, "missing: ENDING"),
        (r#"["ACTIVE", "ENDING", "ENDING"]"#, "missing: STARTING"),
        (
            r#"["STARTING", "ACTIVE", "ENDING", "ACTIVE"]"#,
            "each event listed once",
        ),
    ] {
        let text = problems(
            reference_with_secrets().merge(Toml::string(&format!("[goto]\nevents = {events}"))),
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("goto.events: ") && l.contains(needle)),
            "{needle} not in:\n{text}"
        );
    }
}

/// Values that used to pass `check-config` and then broke the running bridge.
#[test]
fn values_that_break_at_run_time_are_refused() {
    let toml = r#"
        [channel]
        repair_interval = "0s"
        max_missed_pongs = 0
        reconnect_base = "0s"
        report_sweep_lookback = "100years"
        [kafka.topics]
        other_sources = "callbridge.call-states"
    "#;
    let text = problems(reference_with_secrets().merge(Toml::string(toml)));
    for (key, needle) in [
        (
            "channel.repair_interval",
            "\"0s\" is not valid; expected a duration > 0",
        ),
        (
            "channel.max_missed_pongs",
            "\"0\" is not valid; expected at least 1",
        ),
        (
            "channel.reconnect_base",
            "\"0s\" is not valid; expected a duration > 0",
        ),
        (
            "kafka.topics.other_sources",
            "other than kafka.topics.ordered's",
        ),
        ("channel.report_sweep_lookback", "expected at most 31 days"),
    ] {
        assert!(
            line_of(&text, key).contains(needle),
            "{needle} not in:\n{text}"
        );
    }
    let text = problems(reference_with_secrets().merge(Toml::string(
        "[channel]\nreconnect_base = \"10s\"\nreconnect_max = \"1s\"",
    )));
    assert!(line_of(&text, "channel.reconnect_max").contains("at least channel.reconnect_base"));
    let text = problems(reference_with_secrets().merge(Toml::string(
        "[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"",
    )));
    assert!(
        line_of(&text, "kafka.librdkafka.\"session.timeout.ms\"")
            .contains("sequencer_io.session_timeout"),
        "{text}"
    );
}

/// A new channel owner sweeps `report_sweep_lookback` back, `report_sweep_delay` after it took
/// over, and writes every state it finds to raw: a completed call the sequencer has forgotten
/// (after `sequencer.closed_retention`) would be published a second time.
#[test]
fn a_sweep_reaching_back_beyond_closed_retention_is_refused() {
    let text = problems(reference_with_secrets().merge(Toml::string(
        "[channel]\nreport_sweep_lookback = \"29m\"\nreport_sweep_delay = \"2m\"\n\
         [sequencer]\nclosed_retention = \"1h\"",
    )));
    let line = line_of(&text, "channel.report_sweep_lookback");
    for needle in [
        "\"29m\" is not valid",
        "channel.report_sweep_delay (2m)",
        "half of sequencer.closed_retention (1h)",
        "raise sequencer.closed_retention to at least 1h 2m",
        "lower the lookback",
    ] {
        assert!(line.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert_eq!(text.lines().count(), 1, "{text}");
    // Within it, or with the sweep off, the same settings load.
    for toml in [
        "[channel]\nreport_sweep_lookback = \"28m\"\nreport_sweep_delay = \"2m\"\n\
         [sequencer]\nclosed_retention = \"1h\"",
        "[channel]\nreport_sweep_lookback = \"0s\"\nreport_sweep_delay = \"2h\"\n\
         [sequencer]\nclosed_retention = \"1h\"",
        "[channel]\nreport_sweep_lookback = \"7days\"\n[sequencer]\nclosed_retention = \"15days\"",
    ] {
        let loaded = BridgeConfig::from_figment(reference_with_secrets().merge(Toml::string(toml)));
        assert!(loaded.is_ok(), "{toml}: {:?}", loaded.err());
    }
}

#[test]
fn a_missing_kafka_password_file_fails_at_load() {
    let toml = r#"
        [kafka]
        security_protocol = "sasl_ssl"
        [kafka.sasl]
        mechanism = "SCRAM-SHA-512"
        username = "bridge"
        password_file = "/nonexistent/callbridge/kafka-password"
    "#;
    let err = match BridgeConfig::from_figment(reference_with_secrets().merge(Toml::string(toml))) {
        Ok(_) => panic!("a missing password file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("kafka.sasl.password_file: cannot read")
            && err.contains("/nonexistent/callbridge/kafka-password"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("callbridge-kafka-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kafka-password");
    std::fs::write(&file, "0123\n").unwrap();
    let c = BridgeConfig::from_figment(
        reference_with_secrets()
            .merge(Toml::string(toml))
            .merge(Serialized::default("kafka.sasl.password_file", &file)),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.kafka.sasl.password.expose(), "0123");
}

#[test]
fn kafka_tls_key_password_file_is_read_and_wins_over_the_variable() {
    let dir = std::env::temp_dir().join(format!("callbridge-kafka-keypw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kafka-tls-key-password");
    std::fs::write(&file, "0042\n").unwrap();
    let c = BridgeConfig::from_figment(
        reference_with_secrets()
            .merge(Serialized::default(
                "kafka.tls.key_password",
                "from-variable",
            ))
            .merge(Serialized::default("kafka.tls.key_password_file", &file)),
    )
    .unwrap();
    assert_eq!(c.kafka.tls.key_password.expose(), "0042");
    let _ = std::fs::remove_dir_all(&dir);

    let err = match BridgeConfig::from_figment(reference_with_secrets().merge(Serialized::default(
        "kafka.tls.key_password_file",
        "/nonexistent/callbridge/key-pw",
    ))) {
        Ok(_) => panic!("a missing key password file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("kafka.tls.key_password_file: cannot read"),
        "{err}"
    );
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

/// librdkafka takes every property as text: a number or boolean (what the Helm chart renders for
/// `linger.ms: 5`) is that text, not a type error that stops the process at start-up.
#[test]
fn librdkafka_numbers_and_booleans_are_taken_as_text() {
    let toml = "[kafka.librdkafka]\n\"linger.ms\" = 7\n\"socket.nagle.disable\" = true\n\"fetch.wait.max.ms\" = \"25\"";
    let c = BridgeConfig::from_figment(reference_with_secrets().merge(Toml::string(toml)))
        .expect("numbers and booleans are valid librdkafka values");
    let p = &c.kafka.librdkafka;
    assert_eq!(p.get("linger.ms").map(String::as_str), Some("7"));
    assert_eq!(
        p.get("socket.nagle.disable").map(String::as_str),
        Some("true")
    );
    assert_eq!(p.get("fetch.wait.max.ms").map(String::as_str), Some("25"));
}
