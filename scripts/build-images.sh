#!/usr/bin/env bash
# Build the local Docker images used by the kvmap integration tests, offline
# (no container registry needed): the server binaries come from Debian
# packages and are put into a minimal root filesystem that is `docker import`ed.
#
#   kvmap-test/redis:7       redis-server + redis-cli (Debian bookworm, Redis 7)
#   kvmap-test/consul:1.8.7  consul (Debian bullseye, Consul 1.8.7)
#
# Usage: scripts/build-images.sh [--force] [redis] [consul]
#   --force   rebuild images that already exist
#   redis / consul   build only these (default: both)
#
# Env: KVMAP_REDIS_IMAGE, KVMAP_CONSUL_IMAGE override the image names (the
# Rust harness reads the same variables).
#
# Needs root or sudo (apt-get) and a running Docker engine. Works from any
# directory.
set -euo pipefail

REDIS_IMAGE="${KVMAP_REDIS_IMAGE:-kvmap-test/redis:7}"
CONSUL_IMAGE="${KVMAP_CONSUL_IMAGE:-kvmap-test/consul:1.8.7}"
BULLSEYE_MIRROR="${KVMAP_BULLSEYE_MIRROR:-http://deb.debian.org/debian}"

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

FORCE=0
WANT_REDIS=0
WANT_CONSUL=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        redis) WANT_REDIS=1 ;;
        consul) WANT_CONSUL=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if [[ $WANT_REDIS == 0 && $WANT_CONSUL == 0 ]]; then
    WANT_REDIS=1
    WANT_CONSUL=1
fi

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "Docker engine not reachable (docker info failed)"
SUDO=""
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || die "must run as root or with sudo available (installs packages with apt-get)"
    SUDO="sudo"
fi

WORK="$(mktemp -d -t kvmap-images.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
log "work dir: $WORK"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        $SUDO apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

# Install (on the host) the library packages a .deb depends on, so that ldd
# can resolve the binaries' shared libraries. Only lib* packages are installed:
# installing the server package itself could start a service on the host.
install_lib_deps() {
    local deb="$1" deps
    deps="$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -E 's/\(.*\)//; s/\|.*//; s/:any//; s/^ +//; s/ +$//' \
        | grep -E '^lib' || true)"
    if [[ -n "$deps" ]]; then
        log "installing library dependencies of $(basename "$deb"): ${deps//$'\n'/ }"
        # shellcheck disable=SC2086
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deps >/dev/null \
            || die "apt-get install $deps failed"
    fi
}

# Create a minimal root filesystem skeleton (merged /usr like bookworm).
make_rootfs() {
    local root="$1"
    mkdir -p "$root"/{usr/bin,usr/lib,usr/lib64,etc,tmp,data,root}
    ln -s usr/bin "$root/bin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    ln -s usr/bin "$root/sbin"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    printf 'hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
}

# Copy a binary into the rootfs at /usr/bin/<name>, plus every shared library
# (and the dynamic loader) ldd lists for it.
add_binary() {
    local root="$1" src="$2" name="$3" lib
    cp -L "$src" "$root/usr/bin/$name"
    chmod 0755 "$root/usr/bin/$name"
    if ldd "$src" 2>&1 | grep -q 'not a dynamic executable'; then
        log "  $name: static binary"
        return
    fi
    if ldd "$src" | grep -q 'not found'; then
        ldd "$src" >&2
        die "unresolved shared libraries for $src"
    fi
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
        log "  $name needs $lib"
    done < <(ldd "$src" | grep -oE '/[^ ]+' | sort -u)
}

import_image() {
    local root="$1" image="$2" entry="$3" old_id
    old_id="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    log "importing $image (entrypoint $entry)"
    tar -C "$root" -c . | docker import \
        --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
        --change "WORKDIR /data" \
        --change "ENTRYPOINT [\"$entry\"]" \
        - "$image" >/dev/null || die "docker import of $image failed"
    log "built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
        if docker image rm "$old_id" >/dev/null 2>&1; then
            log "removed the previous $image ($old_id)"
        fi
    fi
}

build_redis() {
    if image_exists "$REDIS_IMAGE" && [[ $FORCE == 0 ]]; then
        log "image $REDIS_IMAGE exists, skipping (use --force to rebuild)"
        return
    fi
    log "building $REDIS_IMAGE from Debian's redis-server/redis-tools"
    apt_update_once
    local dl="$WORK/redis-debs" x="$WORK/redis-x" root="$WORK/redis-root"
    mkdir -p "$dl" "$x"
    (cd "$dl" && apt-get -o APT::Sandbox::User=root download -qq redis-server redis-tools) || die "apt-get download redis-server redis-tools failed"
    local deb
    for deb in "$dl"/*.deb; do
        log "  got $(basename "$deb")"
        install_lib_deps "$deb"
        dpkg -x "$deb" "$x"
    done
    # Debian ships redis-server as a symlink to redis-check-rdb; Redis picks
    # its mode from argv[0], so copy the real file under the server's name.
    local server cli
    server="$(readlink -f "$x/usr/bin/redis-server" || true)"
    [[ -f "$server" ]] || server="$x/usr/bin/redis-check-rdb"
    cli="$x/usr/bin/redis-cli"
    [[ -f "$server" && -f "$cli" ]] || die "redis-server/redis-cli not found in the packages"
    make_rootfs "$root"
    add_binary "$root" "$server" redis-server
    add_binary "$root" "$cli" redis-cli
    "$root/usr/bin/redis-server" --version >&2 || die "extracted redis-server does not run"
    import_image "$root" "$REDIS_IMAGE" /usr/bin/redis-server
}

build_consul() {
    if image_exists "$CONSUL_IMAGE" && [[ $FORCE == 0 ]]; then
        log "image $CONSUL_IMAGE exists, skipping (use --force to rebuild)"
        return
    fi
    log "building $CONSUL_IMAGE from Debian bullseye's consul package"
    # A private apt configuration: the system's sources are not touched.
    local apt="$WORK/apt-bullseye" dl="$WORK/consul-debs" x="$WORK/consul-x" root="$WORK/consul-root"
    mkdir -p "$apt/etc/apt.conf.d" "$apt/etc/preferences.d" "$apt/state/lists/partial" \
        "$apt/cache/archives/partial" "$dl" "$x"
    echo "deb $BULLSEYE_MIRROR bullseye main" >"$apt/etc/sources.list"
    : >"$apt/state/status"
    local opts=(
        -o "Dir::Etc::SourceList=$apt/etc/sources.list"
        -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d"
        -o "Dir::Etc::Parts=$apt/etc/apt.conf.d"
        -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
        -o "Dir::State=$apt/state"
        -o "Dir::State::status=$apt/state/status"
        -o "Dir::Cache=$apt/cache"
        -o "APT::Architecture=amd64"
        -o "Debug::NoLocking=1"
        -o "APT::Sandbox::User=root"
    )
    mkdir -p "$apt/etc/sources.list.d"
    log "apt-get update (private config, bullseye)"
    apt-get "${opts[@]}" update -qq || die "apt-get update for bullseye failed"
    (cd "$dl" && apt-get "${opts[@]}" download -qq consul) || die "apt-get download consul failed"
    local deb
    for deb in "$dl"/*.deb; do
        log "  got $(basename "$deb")"
        dpkg -x "$deb" "$x"
    done
    local bin="$x/usr/bin/consul"
    [[ -f "$bin" ]] || die "consul binary not found in the package"
    make_rootfs "$root"
    add_binary "$root" "$bin" consul
    "$root/usr/bin/consul" version >&2 || die "extracted consul does not run"
    import_image "$root" "$CONSUL_IMAGE" /usr/bin/consul
}

[[ $WANT_REDIS == 1 ]] && build_redis
[[ $WANT_CONSUL == 1 ]] && build_consul
log "done: $( [[ $WANT_REDIS == 1 ]] && echo "$REDIS_IMAGE " )$( [[ $WANT_CONSUL == 1 ]] && echo "$CONSUL_IMAGE" )"
