#!/usr/bin/env bash
# Runs Porthole against the local Docker daemon, with a demo container to open.
#
#   scripts/run.sh [porthole flags...]      e.g. scripts/run.sh --listen 127.0.0.1:8080
#
# Installs and starts Docker if needed (scripts/testbed.sh), starts the container `porthole-demo`
# (busybox + bash, built locally), builds the release binary and runs it in the foreground.
# Ctrl-C stops it and closes every terminal it opened.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed.sh

demo=porthole-demo
image=porthole-test/bash:2
if [ "$(docker inspect -f '{{.State.Running}}' "$demo" 2>/dev/null)" != "true" ]; then
  docker rm -f "$demo" >/dev/null 2>&1 || true
  docker run -d --init --name "$demo" --hostname "$demo" --label porthole.demo=1 "$image" >/dev/null
  echo "[run] started demo container $demo" >&2
fi

cargo build --release --locked --bin porthole
exec target/release/porthole "$@"
