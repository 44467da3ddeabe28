#!/bin/sh
# A Docker engine for the container tests on a Debian bookworm host without systemd or a
# reachable image registry:
#   docker/engine.sh start   Debian's docker.io and debootstrap, Compose v2 and buildx from
#                            Debian's next release (bookworm has neither), dockerd started
#                            if none answers, and debian:bookworm-slim made with debootstrap
#                            if it can be neither found nor pulled.
#   docker/engine.sh stop    stops the dockerd that `start` started, nothing else.
# `make test` runs both; run as root or with sudo.
set -eu

STATE="${STL_DOCKER_STATE:-/tmp/stl-pipeline-docker}"
BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

say() { echo "engine.sh: $*" >&2; }

install_packages() {
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        say "installing Debian's docker.io and debootstrap"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            docker.io debootstrap iptables >/dev/null
    fi
    if docker compose version >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
        return
    fi
    # Fetched with an apt state of their own, so that the host's sources stay as they are.
    say "installing docker-compose and docker-buildx from Debian trixie"
    apt_dir="$(mktemp -d)"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
    set -- -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o APT::Sandbox::User=root
    $SUDO apt-get "$@" update -qq
    (cd "$apt_dir" && $SUDO apt-get "$@" download docker-compose docker-buildx >/dev/null)
    $SUDO dpkg -i "$apt_dir"/docker-compose_*.deb "$apt_dir"/docker-buildx_*.deb >/dev/null
    $SUDO rm -rf "$apt_dir"
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$STATE"
    say "starting dockerd (log: $STATE/dockerd.log)"
    $SUDO sh -c "dockerd >'$STATE/dockerd.log' 2>&1 & echo \$! > '$STATE/dockerd.pid'"
    tries=0
    until docker info >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 60 ]; then
            say "dockerd did not answer within 60 s:"
            tail -20 "$STATE/dockerd.log" >&2
            exit 1
        fi
        sleep 1
    done
}

base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    say "no registry answers: making $BASE_IMAGE with debootstrap"
    root="$(mktemp -d)"
    $SUDO debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    $SUDO rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    $SUDO tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
    $SUDO rm -rf "$root"
}

stop_engine() {
    [ -f "$STATE/dockerd.pid" ] || return 0
    pid="$(cat "$STATE/dockerd.pid")"
    say "stopping the dockerd started for the tests ($pid)"
    $SUDO kill "$pid" 2>/dev/null || true
    tries=0
    while $SUDO kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 30 ]; do
        tries=$((tries + 1))
        sleep 1
    done
    rm -f "$STATE/dockerd.pid"
}

case "${1:-}" in
    start) install_packages; start_engine; base_image ;;
    stop) stop_engine ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
