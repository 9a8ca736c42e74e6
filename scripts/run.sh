#!/usr/bin/env bash
# Runs Porthole against the local Docker daemon, with a demo container to open.
#
#   scripts/run.sh [porthole flags...]      e.g. scripts/run.sh --listen 127.0.0.1:8080
#
# Installs what is missing (Docker engine, test images, the UI's build tools), starts the container
# `porthole-demo`, builds the UI and the release binary (which embeds the UI), and runs it in the
# foreground, with the sandbox profiles of scripts/demo-sandboxes.toml. Open the printed URL. Ctrl-C stops it and ends every terminal it opened.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed.sh
scripts/toolchain.sh

demo=porthole-demo
image=porthole-test/bash:2
if [ "$(docker inspect -f '{{.State.Running}}' "$demo" 2>/dev/null)" != "true" ]; then
  docker rm -f "$demo" >/dev/null 2>&1 || true
  docker run -d --init --name "$demo" --hostname "$demo" --label porthole.demo=1 "$image" >/dev/null
  echo "[run] started demo container $demo" >&2
fi

scripts/build-ui.sh
cargo build --release --locked --bin porthole
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# Sandbox profiles to try "New sandbox" with, unless PORTHOLE_SANDBOXES (or --sandboxes) names others.
export PORTHOLE_SANDBOXES="${PORTHOLE_SANDBOXES:-$PWD/scripts/demo-sandboxes.toml}"
# The demo records its terminals (output only) for the Recordings page, unless PORTHOLE_RECORD says otherwise.
export PORTHOLE_RECORD="${PORTHOLE_RECORD:-output}"
exec "$target_dir/release/porthole" "$@"
