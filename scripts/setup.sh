#!/usr/bin/env bash
# Installs what building and testing kvmap needs on a fresh Debian machine:
# system packages (libclang for RocksDB's bindings) and the locally built
# Redis and Consul test images (no registry needed).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

if docker info >/dev/null 2>&1; then
  bash scripts/build-images.sh
elif [ "${KVMAP_REQUIRE_DOCKER:-0}" = "1" ]; then
  echo "setup: docker engine not reachable and KVMAP_REQUIRE_DOCKER=1" >&2
  exit 1
else
  echo "setup: docker engine not reachable: skipping image build; integration tests will be skipped"
fi
