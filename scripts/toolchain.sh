#!/usr/bin/env bash
# Installs the build tools for Porthole's browser UI, idempotently (a tool whose version matches is skipped):
#   - rustup target wasm32-unknown-unknown
#   - trunk 0.21.14 and wasm-bindgen-cli 0.2.130 (= the wasm-bindgen in Cargo.lock), from crates.io
#   - the UI's npm packages (xterm.js, socket.io-client, the font, binaryen's wasm-opt) from the lockfile
#   - with --browser: Debian's chromium and the end-to-end tests' npm packages (Playwright)
# Nothing is downloaded from anywhere but crates.io, npm and Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

TRUNK_VERSION=0.21.14
WASM_BINDGEN_VERSION=0.2.130

log() { printf '[toolchain] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "$TRUNK_VERSION" ]; then
  log "installing trunk $TRUNK_VERSION (takes ~10 min on 2 cores)"
  cargo install "trunk@$TRUNK_VERSION" --locked
fi

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (takes ~5 min)"
  # Not --locked: the locked set wants a crate version the registry mirror lacks.
  cargo install "wasm-bindgen-cli@$WASM_BINDGEN_VERSION"
fi

npm_ci() {
  # Reinstall only when the lockfile changed since the last install.
  local dir=$1 stamp="$1/node_modules/.porthole-lock"
  if [ ! -f "$stamp" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"
  fi
}
npm_ci frontend

if [ "${1:-}" = "--browser" ]; then
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian chromium"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_ci end2end
fi
