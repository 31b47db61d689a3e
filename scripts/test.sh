#!/usr/bin/env bash
# The whole kvmap test suite on a fresh machine: installs what it needs,
# builds the Redis/Consul test images, runs every test (unit, conformance on
# memory/RocksDB/Redis, crash test, testcontainers integration tests).
#
# Extra arguments go to `cargo test` (e.g. a test name filter after `--`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvmap-target}"

bash scripts/setup.sh
# shellcheck source=scripts/rocksdb-env.sh
source scripts/rocksdb-env.sh
# One process per test binary: the Redis/Consul suites start their cluster
# once in main() and run all their cases against it. --no-fail-fast: a
# failing binary does not hide the results of the ones after it.
echo "test: cargo test --workspace --all-features --no-fail-fast $*"
cargo test --workspace --all-features --no-fail-fast "$@"
