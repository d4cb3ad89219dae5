#!/usr/bin/env bash
# The README's second command: install what the tests need, then run every check CI runs:
# format, lint, the Rust tests (unit, property, contract, end-to-end on tansu, the crash, election,
# Kafka-outage and chaos suites), doc tests, a bounded fuzz run, and the Helm chart / deploy
# checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-test-deps.sh

echo "== format"
cargo fmt --all -- --check
echo "== lint"
cargo clippy --all-targets --locked -- -D warnings
echo "== tests"
cargo nextest run --locked --no-fail-fast
echo "== doc tests"
cargo test --doc --locked
echo "== fuzzing (bounded: 30 s per target over the checked-in corpus)"
scripts/fuzz.sh 30
echo "== chart and deploy"
CALLBRIDGE_BIN="${CARGO_TARGET_DIR:-target}/debug/callbridge" scripts/test-chart.sh
echo "all checks passed"
