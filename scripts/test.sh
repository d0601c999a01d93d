#!/usr/bin/env bash
# The whole test suite on a fresh machine: creates .venv, installs eventbus with its dev
# extra, installs and starts RabbitMQ, Kafka, PostgreSQL and Prometheus (idempotent), runs pytest.
# Arguments go to pytest (default: everything but the long soak suite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
bash scripts/brokers.sh
if [ "$#" -eq 0 ]; then
  set -- -m "not soak"
fi
exec .venv/bin/pytest "$@"
