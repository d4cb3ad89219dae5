//! The README's first command, in small: `callbridge demo` (simulator + librdkafka's mock cluster
//! + the real pipeline) must end with a perfect verification and exit 0, on both transports.
use std::process::Command;

fn demo(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .arg("demo")
        .args(["--calls", "30", "--rate", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn demo_over_webhook_is_perfect() {
    let (code, text) = demo(&["--transport", "webhook", "--faults", "harsh"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("result: PERFECT"), "{text}");
    assert!(
        text.contains("duplicates published                          0  ok"),
        "{text}"
    );
    assert!(
        !text.contains("All broker connections are down") && !text.contains("Connection refused"),
        "a Kafka client outlived the bridge:\n{text}"
    );
}

#[test]
fn demo_over_websocket_is_perfect() {
    let (code, text) = demo(&["--transport", "websocket", "--faults", "realistic"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("result: PERFECT"), "{text}");
    // Every client of the bridge is gone before the mock cluster stops: a task still holding the
    // raw producer (a catch-up that ignored the shutdown) printed librdkafka's connection errors
    // after the result.
    assert!(
        !text.contains("All broker connections are down") && !text.contains("Connection refused"),
        "a Kafka client outlived the bridge:\n{text}"
    );
}

#[test]
fn demo_refuses_bad_options_as_usage_errors() {
    let (code, text) = demo(&["--faults", "apocalyptic"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("expected none, realistic or harsh"), "{text}");
    let (code, text) = demo(&["--transport", "carrier-pigeon"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("expected webhook or websocket"), "{text}");
}
