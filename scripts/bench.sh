#!/usr/bin/env bash
# The benchmark: Porthole beside the raw Engine API exec stream and the `docker exec` CLI, in one run.
# Installs and starts what it needs (Docker engine, test images), builds the release binaries, then prints a
# Markdown report (see docs/performance.md). Extra arguments go to porthole-bench (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/testbed.sh
cargo build --release --locked -p porthole-server -p porthole-bench -p porthole-cli \
  --bin porthole --bin porthole-bench --bin porthole-cli
(cd bench/js && npm ci --no-audit --no-fund --loglevel=error)
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/release/porthole-bench" --bin "$target_dir/release/porthole" \
  --cli-bin "$target_dir/release/porthole-cli" "$@"
