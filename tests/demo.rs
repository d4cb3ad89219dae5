//! The README's first command, in small: `callbridge demo` (simulator + librdkafka's mock cluster
//! + the real pipeline) must end with a perfect verification and exit 0, on both transports.
use std::process::Command;

fn demo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .arg("demo")
        .args(["--calls", "30", "--rate", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn demo_over_webhook_is_perfect() {
    let (ok, text) = demo(&["--transport", "webhook", "--faults", "harsh"]);
    assert!(ok, "{text}");
    assert!(text.contains("result: PERFECT"), "{text}");
    assert!(
        text.contains("duplicates published                          0  ok"),
        "{text}"
    );
}

#[test]
fn demo_over_websocket_is_perfect() {
    let (ok, text) = demo(&["--transport", "websocket", "--faults", "realistic"]);
    assert!(ok, "{text}");
    assert!(text.contains("result: PERFECT"), "{text}");
}

#[test]
fn demo_refuses_an_unknown_fault_mix() {
    let (ok, text) = demo(&["--faults", "apocalyptic"]);
    assert!(!ok);
    assert!(text.contains("expected none, realistic or harsh"), "{text}");
}
