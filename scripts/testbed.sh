#!/usr/bin/env bash
# Brings up Porthole's test bed on a Debian machine, idempotently:
#   - Debian packages: docker.io (the engine), runsc (gVisor, for sandbox profiles with runtime = "runsc"),
#     busybox-static and bash-static (image contents), procps, curl and util-linux (prlimit) for the tests,
#     python3-venv (for the reference asciicast parser's venv, scripts/asciinema-venv.sh), redis-server and
#     nginx-light (the cluster tests start their own instances on free ports; nothing here starts the system's)
#   - a running dockerd (started here when none answers) with runsc registered as a runtime (restarted once
#     when a running one lacks it)
#   - the local test images, built with `docker import` because no registry is reachable:
#       porthole-test/bash:$IMAGE_TAG  busybox applets + /bin/bash
#       porthole-test/sh:$IMAGE_TAG    busybox applets only (exercises the sh fallback)
#   - a second dockerd (for the tests of several Docker hosts) on unix://$DOCKER2_SOCK, with its own data root,
#     exec root, pidfile and bridge ($DOCKER2_BRIDGE; with `--bridge none` a dockerd deletes docker0, the first
#     daemon's bridge, at start), no iptables, and the bash test image loaded into it
# Safe to run any number of times; it only does what is missing.
set -euo pipefail

IMAGE_TAG=2
export PORTHOLE_TEST_IMAGE_BASH="porthole-test/bash:${IMAGE_TAG}"
export PORTHOLE_TEST_IMAGE_SH="porthole-test/sh:${IMAGE_TAG}"
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/porthole-dockerd.log}
DOCKER2_SOCK=/run/porthole-docker2.sock
DOCKER2_ROOT=/var/lib/porthole-docker2
DOCKER2_EXEC_ROOT=/run/porthole-docker2
DOCKER2_PID=/run/porthole-docker2.pid
DOCKER2_LOG=${DOCKER2_LOG:-/tmp/porthole-dockerd2.log}
DOCKER2_BRIDGE=porthole-br2
DOCKER2_BRIDGE_ADDR=172.31.250.1/24

log() { printf '[testbed] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for pkg in docker.io runsc busybox-static bash-static procps curl util-linux python3-venv iproute2 redis-server nginx-light; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# gVisor needs --network=none here (it cannot run in the root network namespace) and the ptrace platform.
DAEMON_JSON=/etc/docker/daemon.json
register_runsc() {
  if [ -f "$DAEMON_JSON" ] && grep -q '"runsc"' "$DAEMON_JSON"; then return; fi
  if [ -f "$DAEMON_JSON" ] && [ -s "$DAEMON_JSON" ]; then
    log "$DAEMON_JSON exists without a runsc runtime; add it by hand:"
    log '  "runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--platform=ptrace"]}}'
    exit 1
  fi
  log "registering runsc in $DAEMON_JSON"
  as_root mkdir -p "$(dirname "$DAEMON_JSON")"
  printf '%s\n' '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--platform=ptrace"]}}}' \
    | as_root tee "$DAEMON_JSON" >/dev/null
}

daemon_has_runsc() {
  docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then
    if daemon_has_runsc; then return; fi
    log "the running dockerd lacks the runsc runtime: restarting it"
    as_root pkill -x dockerd || true
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 || break
      sleep 0.5
    done
  fi
  log "starting dockerd (log: $DOCKERD_LOG)"
  as_root setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
  wait_for_daemon "unix:///var/run/docker.sock" "$DOCKERD_LOG"
}

# wait_for_daemon HOST LOG: until the daemon at HOST answers (60 s at most, else its log's end and exit 1).
wait_for_daemon() {
  local host=$1 daemon_log=$2
  for _ in $(seq 1 120); do
    if docker -H "$host" info >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  log "the dockerd on $host did not answer within 60 s; last lines of $daemon_log:"
  tail -n 20 "$daemon_log" >&2 || true
  exit 1
}

# build_image NAME WITH_BASH
build_image() {
  local name=$1 with_bash=$2
  if docker image inspect "$name" >/dev/null 2>&1; then return; fi
  log "building $name"
  local root
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,usr/bin}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  if [ "$with_bash" = yes ]; then
    rm -f "$root/bin/bash"
    cp /bin/bash-static "$root/bin/bash"
  else
    rm -f "$root/bin/bash"
  fi
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /root' \
    --change 'CMD ["sleep", "infinity"]' \
    - "$name" >/dev/null
  rm -rf "$root"
}

docker2() { docker -H "unix://$DOCKER2_SOCK" "$@"; }

start_second_dockerd() {
  if docker2 info >/dev/null 2>&1; then return; fi
  # One that is still going away holds its roots: wait for it first.
  if [ -f "$DOCKER2_PID" ] && as_root kill -0 "$(cat "$DOCKER2_PID")" 2>/dev/null; then
    for _ in $(seq 1 60); do
      as_root kill -0 "$(cat "$DOCKER2_PID")" 2>/dev/null || break
      sleep 0.5
    done
  fi
  if ! ip link show "$DOCKER2_BRIDGE" >/dev/null 2>&1; then
    as_root ip link add "$DOCKER2_BRIDGE" type bridge
    as_root ip addr add "$DOCKER2_BRIDGE_ADDR" dev "$DOCKER2_BRIDGE"
  fi
  as_root ip link set "$DOCKER2_BRIDGE" up
  log "starting a second dockerd on unix://$DOCKER2_SOCK (log: $DOCKER2_LOG)"
  as_root mkdir -p "$DOCKER2_ROOT" "$DOCKER2_EXEC_ROOT"
  printf '{}\n' | as_root tee "$DOCKER2_ROOT/daemon.json" >/dev/null
  as_root setsid dockerd -H "unix://$DOCKER2_SOCK" --config-file "$DOCKER2_ROOT/daemon.json" \
    --data-root "$DOCKER2_ROOT" --exec-root "$DOCKER2_EXEC_ROOT" --pidfile "$DOCKER2_PID" \
    --bridge "$DOCKER2_BRIDGE" --iptables=false --ip-masq=false >"$DOCKER2_LOG" 2>&1 < /dev/null &
  wait_for_daemon "unix://$DOCKER2_SOCK" "$DOCKER2_LOG"
}

install_packages
register_runsc
start_dockerd
if ! daemon_has_runsc; then
  log "dockerd runs but has no runsc runtime; see $DAEMON_JSON and $DOCKERD_LOG"
  exit 1
fi
build_image "$PORTHOLE_TEST_IMAGE_BASH" yes
build_image "$PORTHOLE_TEST_IMAGE_SH" no
start_second_dockerd
if ! docker2 image inspect "$PORTHOLE_TEST_IMAGE_BASH" >/dev/null 2>&1; then
  log "loading $PORTHOLE_TEST_IMAGE_BASH into the second dockerd"
  docker save "$PORTHOLE_TEST_IMAGE_BASH" | docker2 load >/dev/null
fi
log "ready: $PORTHOLE_TEST_IMAGE_BASH $PORTHOLE_TEST_IMAGE_SH"
