#!/usr/bin/env bash
# Builds the browser UI into dist/ with Trunk (release: wasm-opt from npm's binaryen, hashed file names).
# The server embeds dist/ when it is compiled, so run this before `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
# npm's binaryen first: Debian's wasm-opt 108 produces wasm that crashes in browsers.
export PATH="$PWD/frontend/node_modules/.bin:$PATH"
export TRUNK_SKIP_VERSION_CHECK=true
# Trunk builds the wasm in its own target dir so it never waits on (or invalidates) the server's build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/wasm"
trunk build --release --locked "$@"
