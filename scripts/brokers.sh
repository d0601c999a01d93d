#!/usr/bin/env bash
# Install and start the real servers the test suite needs, idempotently:
#   rabbitmq    127.0.0.1:5672  guest/guest, consistent-hash exchange plugin
#   kafka       127.0.0.1:9092  single-node KRaft (Apache Kafka from Maven Central)
#   postgres    127.0.0.1:5432  postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus
#   prometheus  127.0.0.1:9090  scrapes every 1 s the targets that tests write as JSON
#                               files into ${EVENTBUS_CACHE:-~/.cache/eventbus}/prometheus/targets
#
#   scripts/brokers.sh                    all four, in that order
#   scripts/brokers.sh kafka postgres     only those
#   BROKERS_CMD=stop scripts/brokers.sh   pass another subcommand (stop|restart|status)
# Prints one status line per service; fails on the first one that fails.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALL=(rabbitmq kafka postgres prometheus)
SUBCMD="${BROKERS_CMD:-start}"

services=("$@")
[ ${#services[@]} -gt 0 ] || services=("${ALL[@]}")

for s in "${services[@]}"; do
  case "$s" in
    rabbitmq|kafka|postgres|prometheus) ;;
    *) echo "brokers: unknown service '$s' (known: ${ALL[*]})" >&2; exit 2 ;;
  esac
done

for s in "${services[@]}"; do
  if ! "$SCRIPT_DIR/$s.sh" "$SUBCMD"; then
    echo "brokers: $s FAILED (see above)" >&2
    exit 1
  fi
done
