#!/usr/bin/env bash
# Makes (once) a Python venv holding the reference asciicast parser, PyPI asciinema 2.4.0, and prints the path
# of its python. The recording tests read every file they produce with it (scripts/castcheck.py).
set -euo pipefail
venv="${XDG_CACHE_HOME:-$HOME/.cache}/porthole/asciinema-2.4.0"
if ! "$venv/bin/python" -c 'import asciinema, sys; sys.exit(asciinema.__version__ != "2.4.0")' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check asciinema==2.4.0 >&2
fi
echo "$venv/bin/python"
