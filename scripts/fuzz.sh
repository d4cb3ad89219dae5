#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time. See fuzz/README.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]          bounded run (default 30 s per target, for CI)
#   scripts/fuzz.sh --long [SECONDS_PER_TARGET]   long run (default 3600 s per target)
#
# For each target: first every checked-in seed in fuzz/corpus/<target>/ is run once (a regression
# check, at full size), then the target is fuzzed with that corpus as a read-only seed directory:
# new inputs go to a work corpus (a temporary directory for a bounded run, fuzz/corpus-work/<target>/
# for --long, kept between long runs), never into fuzz/corpus/. Exits non-zero if any target
# crashes, panics, times out or runs out of memory, and prints where the failing input is
# (fuzz/artifacts/<target>/).
#
# Environment:
#   FUZZ_TARGETS     space-separated targets to run (default: all, from `cargo fuzz list`)
#   FUZZ_SANITIZER   none (default) or address; address needs nightly or, on stable,
#                    RUSTC_BOOTSTRAP=1 (set here automatically) and builds in its own target dir
#   FUZZ_WORK_DIR    where the work corpus and logs go (default: see above)
#   FUZZ_TIMEOUT     seconds one input may take before it counts as a hang (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

long=false
seconds=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --long) long=true ;;
    -h | --help) usage; exit 0 ;;
    *[!0-9]* | "") echo "fuzz.sh: bad argument '$1'" >&2; usage >&2; exit 64 ;;
    *) seconds="$1" ;;
  esac
  shift
done
if [[ -z $seconds ]]; then
  if $long; then seconds=3600; else seconds=30; fi
fi
timeout_s="${FUZZ_TIMEOUT:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is not installed; run scripts/install-test-deps.sh" >&2
  exit 69
fi

sanitizer="${FUZZ_SANITIZER:-none}"
build_args=(--sanitizer "$sanitizer")
if [[ $sanitizer != none ]]; then
  # Sanitizers are a -Z flag: nightly, or stable told to accept it. Own target dir, so switching
  # sanitizers does not rebuild the other one.
  rustc --version | grep -q -- '-nightly' || export RUSTC_BOOTSTRAP=1
  build_args+=(--target-dir "fuzz/target/sanitizer-$sanitizer")
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"

if $long; then
  work="${FUZZ_WORK_DIR:-fuzz/corpus-work}"
  mkdir -p "$work"
else
  work="${FUZZ_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/callbridge-fuzz.XXXXXX")}"
fi
work="$(cd "$work" && pwd)"

# Per-target libFuzzer options: input size limit while mutating (replayed seeds keep their size).
max_len() {
  case "$1" in
    parse_notification) echo 32768 ;;
    sequencer_input) echo 4096 ;;
    *) echo 8192 ;;
  esac
}

# Seeds too big to keep in the repository, generated into the work dir.
extra_seeds() {
  local t="$1" dir="$work/generated/$1"
  mkdir -p "$dir"
  case "$t" in
    parse_notification)
      # ~1.1 MB webhook body: just above GoTo's documented 1 MB notification limit.
      awk 'BEGIN {
        printf "{\"id\":\"big\",\"source\":\"call-events\",\"type\":\"call-state\",\"content\":{\"metadata\":{\"conversationSpaceId\":\"8a484291-big\"},\"state\":{\"sequenceNumber\":5,\"type\":\"ACTIVE\",\"participants\":[";
        for (i = 0; i < 9000; i++) {
          if (i) printf ",";
          printf "{\"id\":\"p%05d\",\"legId\":\"l%05d\",\"status\":{\"value\":\"CONNECTED\"},\"type\":{\"value\":\"PHONE_NUMBER\",\"number\":\"+1201555%04d\"}}", i, i, i % 10000;
        }
        printf "]}}}";
      }' >"$dir/oversized-1.1mb-webhook.json"
      ;;
  esac
  find "$dir" -type f | sort
}

echo "== fuzz: ${targets[*]}, ${seconds}s each, sanitizer $sanitizer, work dir $work"
start=$SECONDS
cargo fuzz build "${build_args[@]}"
echo "== fuzz: build took $((SECONDS - start))s"

failed=()
for t in "${targets[@]}"; do
  seeds="fuzz/corpus/$t"
  dict=()
  [[ -f "fuzz/$t.dict" ]] && dict=("-dict=fuzz/$t.dict")
  log="$work/$t.log"
  marker="$work/.$t.start"
  touch "$marker"
  mkdir -p "fuzz/artifacts/$t" "$work/corpus/$t"
  ok=true
  phase=replay

  mapfile -t files < <({ [[ -d $seeds ]] && find "$seeds" -type f | sort; extra_seeds "$t"; } || true)
  if [[ ${#files[@]} -gt 0 ]]; then
    echo "== $t: replaying ${#files[@]} seeds"
    if ! cargo fuzz run "${build_args[@]}" "$t" "${files[@]}" -- -timeout="$timeout_s" >"$log" 2>&1; then
      ok=false
    fi
  fi

  if $ok; then
    phase=fuzz
    echo "== $t: fuzzing for ${seconds}s"
    mkdir -p "$seeds"
    if cargo fuzz run "${build_args[@]}" "$t" "$work/corpus/$t" "$seeds" -- \
      -max_total_time="$seconds" -timeout="$timeout_s" -max_len="$(max_len "$t")" \
      -print_final_stats=1 "${dict[@]}" >>"$log" 2>&1; then
      grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::new_units_added' "$log" | sed "s/^/   $t: /" || true
    else
      ok=false
    fi
  fi

  if ! $ok; then
    failed+=("$t")
    echo "!! $t FAILED; log: $log" >&2
    grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -60 >&2 || true
    echo "!! failing input(s) of $t:" >&2
    find "fuzz/artifacts/$t" -type f -newer "$marker" | sed 's/^/     /' >&2
    if [[ $phase == replay ]]; then
      # A failing seed is not copied to artifacts: name it.
      grep -E '^Running: ' "$log" | tail -1 | sed 's/^Running: /     (seed) /' >&2 || true
    fi
    echo "!! reproduce: cargo fuzz run ${build_args[*]} $t <input>   (details at the end of $log)" >&2
  fi
done

echo "== fuzz: total $((SECONDS - start))s"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FAILED: ${failed[*]} (work dir kept: $work)" >&2
  exit 1
fi
if ! $long && [[ -z ${FUZZ_WORK_DIR:-} ]]; then
  rm -rf "$work"
fi
echo "fuzz: all targets passed"
