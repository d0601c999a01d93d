#!/usr/bin/env bash
# Create .venv and install eventbus (editable) with every extra; idempotent and quick
# when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.eventbus-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # pip's build chatter goes to a log; its last lines are shown only if it fails
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[dev]'; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "venv.sh: pip install failed (full log: $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
