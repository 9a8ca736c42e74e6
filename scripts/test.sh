#!/usr/bin/env bash
# Runs every Porthole test on this machine, installing and starting what they need first (idempotent):
# the Docker engine and test images (scripts/testbed.sh), the UI toolchain, Chromium and npm packages
# (scripts/toolchain.sh --browser).
#
#   scripts/test.sh
#
# Steps: formatting and lints (server for the host, UI for wasm32), the UI build, unit and integration
# tests against the real Docker daemon, a conformance run with the official JavaScript Socket.IO client,
# and the Playwright end-to-end suite in Debian Chromium against the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "test bed (Docker engine, test images)"
scripts/testbed.sh
# Containers left by an interrupted earlier run (tests label theirs porthole.test).
for daemon in unix:///var/run/docker.sock unix:///run/porthole-docker2.sock; do
  stale=$(docker -H "$daemon" ps -aq --filter label=porthole.test)
  if [ -n "$stale" ]; then docker -H "$daemon" rm -f $stale >/dev/null; fi
done

step "reference asciicast parser (PyPI asciinema 2.4.0, in a venv)"
PORTHOLE_ASCIINEMA_PYTHON=$(scripts/asciinema-venv.sh)
export PORTHOLE_ASCIINEMA_PYTHON

step "toolchain (wasm target, trunk, wasm-bindgen, npm packages, chromium)"
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
scripts/toolchain.sh --browser

step "format and lints"
cargo fmt --all -- --check
cargo clippy -p app -p porthole-client -p porthole-cli -p porthole-server -p porthole-bench --all-targets --locked -- -D warnings
cargo clippy -p app -p frontend --target wasm32-unknown-unknown --locked -- -D warnings

step "the protocol crate builds without Leptos (what native clients compile)"
if cargo tree -p app --no-default-features --locked --prefix none | grep -q '^leptos'; then
  echo "app without default features depends on Leptos:" >&2
  cargo tree -p app --no-default-features --locked -i leptos >&2 || true
  exit 1
fi
cargo build -p app --no-default-features --locked

step "browser UI build (trunk, release)"
scripts/build-ui.sh

step "unit and integration tests (real Docker daemon)"
cargo test -p app -p porthole-client -p porthole-cli -p porthole-server --locked

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

step "conformance with the official JavaScript Socket.IO client"
cargo build -p porthole-server --bin porthole --locked
(
  cd server/tests/conformance
  npm ci --no-audit --no-fund --loglevel=error
  PORTHOLE_BIN="$target_dir/debug/porthole" node --test
)

step "end to end in Chromium (Playwright, release binary)"
cargo build --release --locked --bin porthole
# A run that was interrupted can leave its servers listening on the suite's ports (the JWT servers' would then
# answer with another key); and recordings of earlier runs would pile up in the state dir (retention keeps a
# day), each run indexing another flood while the suite runs. The state dir keeps porthole.db: the instance id
# by which the next run cleans up sandboxes a killed run left.
pkill -f -- 'porthole --listen 127\.0\.0\.1:718[0-9] ' || true
pkill -f -- 'redis-server 127\.0\.0\.1:7179' || true
pkill -f -- 'nginx -p /tmp/porthole-e2e-cluster-' || true
e2e_state=${PORTHOLE_E2E_STATE:-$(node -e 'console.log(require("os").tmpdir())')/porthole-e2e-state}
rm -rf "$e2e_state/recordings" "$e2e_state"/recordings.db*
(
  cd end2end
  PORTHOLE_BIN="$target_dir/release/porthole" npx playwright test
)
step "every recording the end-to-end suite made parses with the reference parser"
checked=0
for cast in "$e2e_state"/recordings/*.cast; do
  [ -e "$cast" ] || continue
  "$PORTHOLE_ASCIINEMA_PYTHON" scripts/castcheck.py "$cast" > /dev/null
  checked=$((checked + 1))
done
if [ "$checked" -eq 0 ]; then
  echo "the end-to-end suite left no recordings in $e2e_state/recordings" >&2
  exit 1
fi
echo "$checked recordings parse" >&2

step "benchmark smoke run (tiny sizes: proves scripts/bench.sh works; figures are not checked)"
cargo build --release --locked -p porthole-bench -p porthole-cli --bin porthole-bench --bin porthole-cli
(cd bench/js && npm ci --no-audit --no-fund --loglevel=error)
"$target_dir/release/porthole-bench" --bin "$target_dir/release/porthole" \
  --mib 4 --rounds 1 --samples 20 --idle 20 --flood 5 --flood-secs 2 --opens 5 --opens-max 10 \
  --sandbox-samples 2 --sandbox-burst 2 --search-recordings 4 --search-mib 1 --cluster-idle 6 --cluster-resume 6 \
  --cli-bin "$target_dir/release/porthole-cli" > /dev/null

step "all tests passed"
