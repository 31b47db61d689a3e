# Sourced by the other scripts. Makes every cargo invocation link one
# prebuilt RocksDB static library instead of compiling RocksDB's C++ again.
#
# Why: librocksdb-sys compiles RocksDB (about 18 minutes on 2 cores) inside
# its build script, and cargo re-runs that script whenever the feature set of
# any of its build dependencies differs between invocations (`cargo test`
# with dev-dependencies, `cargo doc` without, `cargo run -p kvmap`, release
# benches). Linking a cached `librocksdb.a` through librocksdb-sys's own
# ROCKSDB_LIB_DIR / ROCKSDB_STATIC switches makes that script cheap.
#
# The library is built once per RocksDB version, by cargo itself (same
# flags: -O3 from the workspace profile), and kept in
# ~/.cache/kvmap-rocksdb/<librocksdb-sys version>/. Set KVMAP_ROCKSDB_FROM_SOURCE=1
# to skip all this and let cargo compile RocksDB as usual.

kvmap_rocksdb_find() {
  # The target directory may not exist yet on a fresh machine: `find` on a
  # missing directory fails, and callers run under `set -euo pipefail`.
  [ -d "$CARGO_TARGET_DIR" ] || return 0
  find "$CARGO_TARGET_DIR" -path "*/build/librocksdb-sys-*/out/librocksdb.a" -size +10M 2>/dev/null | head -n 1 || true
}

kvmap_rocksdb_env() {
  [ "${KVMAP_ROCKSDB_FROM_SOURCE:-0}" = "1" ] && return 0
  local version libdir found
  : "${CARGO_TARGET_DIR:=$HOME/.cache/kvmap-target}"
  export CARGO_TARGET_DIR
  mkdir -p "$CARGO_TARGET_DIR"
  version=$(grep -A1 '^name = "librocksdb-sys"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
  if [ -z "$version" ]; then
    echo "rocksdb-env: librocksdb-sys not in Cargo.lock; compiling RocksDB from source" >&2
    return 0
  fi
  libdir="${KVMAP_ROCKSDB_LIB_CACHE:-$HOME/.cache/kvmap-rocksdb}/$version"
  if [ ! -s "$libdir/librocksdb.a" ]; then
    found=$(kvmap_rocksdb_find)
    if [ -z "$found" ]; then
      echo "rocksdb-env: building RocksDB $version once (about 18 minutes on 2 cores; later runs reuse it)"
      if ! env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC cargo build -q -p librocksdb-sys; then
        echo "rocksdb-env: building librocksdb-sys failed (see the compiler output above; scripts/deps.sh installs libclang)" >&2
        return 1
      fi
      found=$(kvmap_rocksdb_find)
    fi
    if [ -z "$found" ]; then
      echo "rocksdb-env: no librocksdb.a after the build; compiling RocksDB from source" >&2
      return 0
    fi
    if ! mkdir -p "$libdir"; then
      echo "rocksdb-env: cannot create $libdir; set KVMAP_ROCKSDB_LIB_CACHE to a writable directory" >&2
      return 1
    fi
    cp "$found" "$libdir/librocksdb.a.tmp" && mv "$libdir/librocksdb.a.tmp" "$libdir/librocksdb.a"
    echo "rocksdb-env: cached $found as $libdir/librocksdb.a"
  fi
  export ROCKSDB_LIB_DIR="$libdir" ROCKSDB_STATIC=1
}
kvmap_rocksdb_env || { echo "rocksdb-env: failed" >&2; return 1 2>/dev/null || exit 1; }
