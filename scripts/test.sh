#!/usr/bin/env bash
# The README's second command: install what the tests need, then run every check CI runs.
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
echo "all checks passed"
