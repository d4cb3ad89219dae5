#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo: the tansu Kafka broker (a real broker for the
# end-to-end tests) and cargo-fuzz (for scripts/fuzz.sh). Idempotent: a tool already at the
# pinned version is left alone.
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
export PATH="$HOME/.cargo/bin:$PATH"

if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "tansu $TANSU_VERSION already installed"
else
  echo "installing tansu $TANSU_VERSION (a few minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "cargo-fuzz $CARGO_FUZZ_VERSION already installed"
else
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (under a minute)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
