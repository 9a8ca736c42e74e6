#!/usr/bin/env bash
# Runs every Porthole test on this machine, installing and starting what they need first (idempotent):
# the Docker engine and test images (scripts/testbed.sh), the wasm32 target, Node packages.
#
#   scripts/test.sh
#
# Steps: formatting and lints, the shared crate for wasm32, unit and integration tests against the real
# Docker daemon (server/tests), and a conformance run with the official JavaScript Socket.IO client.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "test bed (Docker engine, test images)"
scripts/testbed.sh

# Containers left by an interrupted earlier run (tests label theirs porthole.test).
stale=$(docker ps -aq --filter label=porthole.test)
if [ -n "$stale" ]; then docker rm -f $stale >/dev/null; fi

step "toolchain"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "shared protocol crate builds for the browser (wasm32)"
cargo check -p app --target wasm32-unknown-unknown --locked

step "unit and integration tests (real Docker daemon)"
cargo test --workspace --locked

step "conformance with the official JavaScript Socket.IO client"
cargo build -p porthole-server --bin porthole --locked
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
(
  cd server/tests/conformance
  npm ci --no-audit --no-fund --loglevel=error
  PORTHOLE_BIN="$target_dir/debug/porthole" node --test
)

step "all tests passed"
