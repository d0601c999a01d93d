#!/usr/bin/env bash
# Fetch (Maven Central), configure and start a local single-node Apache Kafka
# broker (KRaft, combined broker+controller) for the test suite:
# PLAINTEXT on 127.0.0.1:9092, controller on 127.0.0.1:9093.
# Also installs Debian's kcat. Idempotent: a second run changes nothing.
#
#   scripts/kafka.sh            ensure fetched + formatted + running (default)
#   scripts/kafka.sh start      same
#   scripts/kafka.sh restart    stop, then start
#   scripts/kafka.sh stop       stop the broker started by this script
#   scripts/kafka.sh status     exit 0 iff the broker answers on 127.0.0.1:9092
#
# Everything lives in ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/kafka:
#   libs/ (jars), data/ (log.dirs), server.properties, log4j2.properties,
#   cluster.id, kafka.pid, server.log (broker log), kafka.out (JVM stdout/stderr),
#   tools.log (StorageTool/TopicCommand log).
# Env: KAFKA_HEAP_OPTS (default "-Xms256m -Xmx1g"), KAFKA_START_TIMEOUT (default 90 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SRC_DIR="$KAFKA_SRC_DIR"
CACHE_ROOT="${EVENTBUS_CACHE:-${HOME:-/root}/.cache/eventbus}"
CACHE="$CACHE_ROOT/kafka"
DATA="$CACHE/data"
CONF="$CACHE/server.properties"
LOG4J_CONF="$CACHE/log4j2.properties"
PIDFILE="$CACHE/kafka.pid"
OUT="$CACHE/kafka.out"
SERVER_LOG="$CACHE/server.log"
HOST=127.0.0.1
PORT=9092
CONTROLLER_PORT=9093
BOOTSTRAP="$HOST:$PORT"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

log_tail() {
  local f
  for f in "$SERVER_LOG" "$OUT" "$CACHE/tools.log"; do
    if [ -s "$f" ]; then
      echo "----- tail of $f -----" >&2
      tail -n 40 "$f" >&2 || true
    fi
  done
}

die() {
  echo "kafka: FAILED: $*" >&2
  log_tail
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Real readiness check: a Kafka Metadata request that lists broker 1.
kafka_answers() {
  port_open "$PORT" || return 1
  if command -v kcat >/dev/null 2>&1; then
    kcat -b "$BOOTSTRAP" -L -m 5 -J 2>/dev/null | grep -q '"brokers":\[{"id":1,'
  else
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1
  fi
}

run_tool() { kafka_tool "$CACHE" "$LOG4J_CONF" "$@"; }

pid_alive() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# --- config files rendered into the cache dir; returns 0 if any changed
render_configs() {
  local changed=1 tmp
  tmp="$(mktemp)"
  sed "s|@KAFKA_DATA_DIR@|$DATA|g" "$SRC_DIR/server.properties" >"$tmp"
  if ! cmp -s "$tmp" "$CONF"; then chmod 0644 "$tmp"; mv "$tmp" "$CONF"; changed=0; else rm -f "$tmp"; fi
  if ! cmp -s "$SRC_DIR/log4j2.properties" "$LOG4J_CONF"; then
    cp "$SRC_DIR/log4j2.properties" "$LOG4J_CONF"; changed=0
  fi
  return $changed
}

# --- storage: format once (KRaft, standalone controller quorum); arguments are passed
# on to StorageTool format (scripts/kafka-secure.sh adds its SCRAM users)
# shellcheck disable=SC2120  # kafka.sh itself passes none
ensure_formatted() {
  [ -f "$DATA/meta.properties" ] && return 0
  if [ ! -s "$CACHE/cluster.id" ]; then
    local id
    id="$(run_tool kafka.tools.StorageTool random-uuid 2>>"$CACHE/tools.log" | tail -n 1)" ||
      die "StorageTool random-uuid failed"
    [ -n "$id" ] || die "StorageTool random-uuid printed nothing"
    echo "$id" >"$CACHE/cluster.id"
  fi
  mkdir -p "$DATA"
  run_tool kafka.tools.StorageTool format --standalone -t "$(cat "$CACHE/cluster.id")" -c "$CONF" "$@" \
    >>"$CACHE/tools.log" 2>&1 || die "StorageTool format failed"
  [ -f "$DATA/meta.properties" ] || die "StorageTool format did not write $DATA/meta.properties"
}

start_broker() {
  need_cmd java "install a JDK 17+"
  if port_open "$PORT" || port_open "$CONTROLLER_PORT"; then
    die "port $PORT or $CONTROLLER_PORT is in use by something that is not answering as our broker"
  fi
  kafka_launch "$PIDFILE" "$OUT" "$HEAP_OPTS" "$CACHE" "$LOG4J_CONF" "$CONF"
  local deadline=$((SECONDS + START_TIMEOUT))
  sleep 1
  until kafka_answers; do
    pid_alive || { sleep 1; pid_alive; } || die "broker process exited during startup"
    [ $SECONDS -lt $deadline ] || die "broker did not answer on $BOOTSTRAP within ${START_TIMEOUT}s"
    sleep 1
  done
}

stop_broker() {
  local pid
  if pid_alive; then
    pid="$(cat "$PIDFILE")"
    terminate_pid kafka "$pid" 60
  fi
  rm -f "$PIDFILE"
  if port_open "$PORT"; then
    die "something still listens on $BOOTSTRAP (not started by this script? no live pid in $PIDFILE)"
  fi
}

ensure_running() {
  mkdir -p "$CACHE"
  ensure_pkgs kcat
  ensure_kafka_libs
  local conf_changed=0
  render_configs && conf_changed=1
  # shellcheck disable=SC2119
  ensure_formatted
  if kafka_answers; then
    if [ "$conf_changed" = 1 ] && pid_alive; then
      stop_broker
      start_broker
    fi
    return 0
  fi
  if pid_alive; then
    # Started but not answering yet (e.g. a parallel run): wait for it.
    local deadline=$((SECONDS + START_TIMEOUT))
    until kafka_answers; do
      pid_alive || break
      [ $SECONDS -lt $deadline ] || die "broker (pid $(cat "$PIDFILE")) does not answer on $BOOTSTRAP"
      sleep 1
    done
    kafka_answers && return 0
  fi
  start_broker
}

# Sourced (scripts/kafka-secure.sh reuses the functions above with its own paths): stop here.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running
    echo "kafka: ready on $BOOTSTRAP (KRaft node 1, controller $HOST:9093, data in $DATA)"
    ;;
  restart)
    mkdir -p "$CACHE"
    stop_broker
    ensure_running
    echo "kafka: restarted, ready on $BOOTSTRAP"
    ;;
  stop)
    stop_broker
    echo "kafka: stopped"
    ;;
  status)
    if kafka_answers; then echo "kafka: running on $BOOTSTRAP"; else echo "kafka: not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 [start|restart|stop|status]" >&2; exit 2 ;;
esac
