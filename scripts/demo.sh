#!/usr/bin/env bash
# The main job: the kvmap CLI's narrated demo on the embedded RocksDB
# default (no server needed). Extra arguments go to `kvmap demo`'s global
# options, e.g. `--url memory:`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvmap-target}"
bash scripts/deps.sh
# shellcheck source=scripts/rocksdb-env.sh
source scripts/rocksdb-env.sh
cargo run -q -p kvmap -- --url "${KVMAP_URL:-rocksdb:./kvmap-data}" "$@" demo
