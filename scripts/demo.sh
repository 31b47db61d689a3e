#!/usr/bin/env bash
# The main job: kvmap's fallback demo. A real redis-server (Debian's
# package, installed here when missing) is the primary, embedded RocksDB
# with a durable outbox the fallback; faults are injected on a schedule
# (SIGSTOP, SIGCONT, SIGKILL, restart) while a load runs, and the closing
# summary is checked (non-zero exit if an acknowledged write was lost).
# Extra arguments go to `kvmap demo`, e.g. `--duration 20s --plain`.
# Without any redis-server the demo says so and uses a second RocksDB
# behind a fault-injection layer as the primary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvmap-target}"
bash scripts/deps.sh
# redis-server is the demo's primary; rsvg-convert (librsvg2-bin, optional)
# renders its timeline.svg as a PNG too.
need=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v rsvg-convert >/dev/null 2>&1 || need+=(librsvg2-bin)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "demo: installing ${need[*]} (Debian packages)"
  if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; then
    # The package may start a system service; the demo runs its own server.
    if command -v service >/dev/null 2>&1; then $SUDO service redis-server stop >/dev/null 2>&1 || true; fi
  else
    echo "demo: could not install ${need[*]}; without redis-server the demo simulates the primary"
  fi
fi
# shellcheck source=scripts/rocksdb-env.sh
source scripts/rocksdb-env.sh
cargo run -q -p kvmap --features cli -- demo "$@"
