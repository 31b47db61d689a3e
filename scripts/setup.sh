#!/usr/bin/env bash
# Installs what building and testing kvmap needs on a fresh Debian machine:
# system packages (libclang for RocksDB's bindings) and the locally built
# Redis and Consul test images (no registry needed).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

# The fallback chain's fault tests and the demo's test run a real
# redis-server child process (Debian's package); the Redis/Consul suites
# use the Docker images below.
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing redis-server (Debian package) for the fallback tests"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package may start a system service; the tests run their own servers.
  if command -v service >/dev/null 2>&1; then $SUDO service redis-server stop >/dev/null 2>&1 || true; fi
fi

if docker info >/dev/null 2>&1; then
  bash scripts/build-images.sh
elif [ "${KVMAP_REQUIRE_DOCKER:-0}" = "1" ]; then
  echo "setup: docker engine not reachable and KVMAP_REQUIRE_DOCKER=1" >&2
  exit 1
else
  echo "setup: docker engine not reachable: skipping image build; integration tests will be skipped"
fi
