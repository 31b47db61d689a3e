#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target of fuzz/ for a bounded time.
#
#   bash scripts/fuzz.sh                 # each target 30 s
#   KVMAP_FUZZ_SECONDS=300 bash scripts/fuzz.sh
#   KVMAP_FUZZ_TARGETS="key redact_url" bash scripts/fuzz.sh
#
# Each run starts from the committed seeds in fuzz/corpus/<target>/ plus a
# working corpus kept in $HOME/.cache/kvmap-fuzz/corpus/<target>/ (new
# inputs go there, never into the repository). Prints the executions per
# target; exits non-zero on any crash, naming the crash input (under
# fuzz/artifacts/<target>/) and the command that reproduces it.
#
# Needs the nightly toolchain (installed if missing) and cargo-fuzz
# (installed if missing). The fuzz crate has its own target directory
# (KVMAP_FUZZ_TARGET_DIR, default $HOME/.cache/kvmap-fuzz-target): the
# sanitizer flags would otherwise rebuild the workspace's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds="${KVMAP_FUZZ_SECONDS:-30}"
targets="${KVMAP_FUZZ_TARGETS:-key redact_url rocksdb_codec redis_reply}"
cache="${KVMAP_FUZZ_CACHE:-$HOME/.cache/kvmap-fuzz}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (about 2 minutes)"
  cargo install cargo-fuzz --locked
fi

# The prebuilt RocksDB library (kvmap-rocksdb links it), found or built
# with the workspace's own target directory.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvmap-target}"
# shellcheck source=scripts/rocksdb-env.sh
source scripts/rocksdb-env.sh
export CARGO_TARGET_DIR="${KVMAP_FUZZ_TARGET_DIR:-$HOME/.cache/kvmap-fuzz-target}"
mkdir -p "$CARGO_TARGET_DIR" "$cache"

# Release with debug assertions and overflow checks (cargo-fuzz's
# default), AddressSanitizer.
echo "fuzz: building the fuzz targets (the first build takes about 8 minutes)"
(cd fuzz && cargo +nightly fuzz build)

failed=0
summary=""
for t in $targets; do
  work="$cache/corpus/$t"
  log="$cache/$t.log"
  mkdir -p "$work" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "fuzz: running $t for ${seconds}s (log: $log)"
  rc=0
  (cd fuzz && cargo +nightly fuzz run "$t" "$work" "$root/fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$root/fuzz/artifacts/$t/") >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  corpus=$(find "$work" -type f | wc -l)
  if [ "$rc" -ne 0 ]; then
    failed=1
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "fuzz: $t FAILED (exit $rc) after ${execs:-?} executions"
    grep -m 20 -E "panicked at|ERROR: |SUMMARY: |^thread '" "$log" || tail -n 20 "$log"
    if [ -n "$crash" ]; then
      echo "fuzz: crash input: $crash"
      echo "fuzz: reproduce: (cd fuzz && cargo +nightly fuzz run $t $crash)"
    fi
    summary+="$t: ${execs:-?} executions, CRASH ${crash:-(see $log)}"$'\n'
  else
    summary+="$t: ${execs:-?} executions, no crash, working corpus $corpus inputs"$'\n'
  fi
done

echo
echo "fuzz: summary (${seconds}s per target)"
printf '%s' "$summary"
exit "$failed"
