#!/usr/bin/env bash
# The README's second command: install what the tests need, then run every check CI runs:
# format, lint, the Rust tests (unit, property, contract, end-to-end on tansu, the crash, election,
# Kafka-outage and chaos suites), doc tests, a bounded fuzz run, and the Helm chart / deploy
# checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# A one-shot run from a clean clone gains nothing from incremental compilation, which would add
# about 1 GiB of cache to the target dir. Set CARGO_INCREMENTAL=1 to keep it between local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-target}"

# The run needs about 8 GiB of free disk where the target dir is (debug and fuzz builds, the
# chart's virtualenv). Running out shows up as a rustc or linker I/O error half-way through, so
# say it up front.
mkdir -p "$target_dir"
free_kib=$(df -Pk "$target_dir" 2>/dev/null | awk 'NR == 2 { print $4 }' || true)
if [[ -n $free_kib && $free_kib -lt $((8 * 1024 * 1024)) ]]; then
  echo "warning: $((free_kib / 1024)) MiB free under $target_dir; a clean run needs about 8 GiB" >&2
fi

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
echo "disk used: $(du -sh "$target_dir" | cut -f1) in $target_dir, $(du -sh fuzz/target 2>/dev/null | cut -f1) in fuzz/target"
echo "all checks passed"
