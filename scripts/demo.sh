#!/usr/bin/env bash
# The main job on the embedded default (memory broker + SQLite), from a fresh checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m examples.orders "$@"
