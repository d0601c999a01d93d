#!/usr/bin/env bash
# Configure and start a local 3-node Apache Kafka cluster (KRaft; every node a broker
# and a controller, a controller quorum of 3) for the fault tests, beside the single
# broker of scripts/kafka.sh and with its jars:
#   node 1  PLAINTEXT 127.0.0.1:29092  controller 127.0.0.1:29192
#   node 2  PLAINTEXT 127.0.0.1:29093  controller 127.0.0.1:29193
#   node 3  PLAINTEXT 127.0.0.1:29094  controller 127.0.0.1:29194
# Topics: replication factor 3, min.insync.replicas=2 (internal topics too).
# EVENTBUS_URL=kafka://127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094
# Idempotent: a second run changes nothing.
#
#   scripts/kafka-cluster.sh              ensure formatted + all three nodes running (default)
#   scripts/kafka-cluster.sh start        same
#   scripts/kafka-cluster.sh restart      stop, then start
#   scripts/kafka-cluster.sh stop         stop every node (SIGTERM: controlled shutdown)
#   scripts/kafka-cluster.sh status       exit 0 iff all three nodes serve the cluster
#   scripts/kafka-cluster.sh reset        stop and delete the cluster's data (a fresh cluster)
#   scripts/kafka-cluster.sh start-node N    start node N (if down), wait until it serves
#   scripts/kafka-cluster.sh stop-node N     stop node N gracefully
#   scripts/kafka-cluster.sh kill-node N     SIGKILL node N (a crash)
#   scripts/kafka-cluster.sh pause-node N    SIGSTOP node N (a hung node)
#   scripts/kafka-cluster.sh resume-node N   SIGCONT node N
#   scripts/kafka-cluster.sh pid N           print node N's pid (exit 1 if not running)
#
# Everything lives in ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/kafka-cluster:
#   cluster.id, log4j2.properties, tools.log (StorageTool), and per node node<N>/:
#   server.properties, data/ (log.dirs), kafka.pid, server.log, kafka.out (JVM output).
# Env: KAFKA_CLUSTER_HEAP_OPTS (default "-Xms128m -Xmx384m", per node),
#      KAFKA_START_TIMEOUT (default 90 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CACHE_ROOT="${EVENTBUS_CACHE:-${HOME:-/root}/.cache/eventbus}"
CACHE="$CACHE_ROOT/kafka-cluster"
LOG4J_CONF="$CACHE/log4j2.properties"
HOST=127.0.0.1
NODES=(1 2 3)
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
HEAP_OPTS="${KAFKA_CLUSTER_HEAP_OPTS:--Xms128m -Xmx384m}"
BOOTSTRAP="$HOST:29092,$HOST:29093,$HOST:29094"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

# Set by the node commands, so that `die` shows the right logs.
FAILED_NODE=""

die() {
  echo "kafka-cluster: FAILED: $*" >&2
  local f n
  for n in ${FAILED_NODE:-"${NODES[@]}"}; do
    for f in "$CACHE/node$n/server.log" "$CACHE/node$n/kafka.out"; do
      if [ -s "$f" ]; then
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2 || true
      fi
    done
  done
  if [ -s "$CACHE/tools.log" ]; then
    echo "----- tail of $CACHE/tools.log -----" >&2
    tail -n 20 "$CACHE/tools.log" >&2 || true
  fi
  exit 1
}

node_dir() { echo "$CACHE/node$1"; }
client_port() { echo $((29091 + $1)); }
controller_port() { echo $((29191 + $1)); }
pidfile() { echo "$CACHE/node$1/kafka.pid"; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_node() {
  case "${1:-}" in
    1|2|3) ;;
    *) echo "kafka-cluster: node must be 1, 2 or 3 (got '${1:-}')" >&2; exit 2 ;;
  esac
}

# The live pid of node N's JVM (started by this script with that node's config), or 1.
node_pid() {
  local pid file
  file="$(pidfile "$1")"
  [ -s "$file" ] || return 1
  pid="$(cat "$file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
      grep -q "kafka\.Kafka $(node_dir "$1")/server.properties" || return 1
  echo "$pid"
}

node_paused() {
  local pid
  pid="$(node_pid "$1")" || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = "T" ]
}

# The broker ids a Metadata answer from "$1" (bootstrap servers) lists: the registered,
# unfenced brokers.
listed_brokers() {
  kcat -b "$1" -L -m 5 -J 2>/dev/null | grep -o '"brokers":\[[^]]*\]' |
    grep -o '"id":[0-9]*' | cut -d: -f2
}

# Real readiness check: node N answers a Metadata request listing itself as a broker.
node_serves() {
  local port
  port="$(client_port "$1")"
  port_open "$port" || return 1
  listed_brokers "$HOST:$port" | grep -qx "$1"
}

# The cluster serves when a Metadata request lists all three brokers.
cluster_serves() {
  [ "$(listed_brokers "$BOOTSTRAP" | sort -u | tr '\n' ' ')" = "1 2 3 " ]
}

# --- config files rendered into the cache dir; returns 0 if node N's changed
render_configs() {
  local n="$1" changed=1 tmp dir
  dir="$(node_dir "$n")"
  mkdir -p "$dir"
  tmp="$(mktemp)"
  sed -e "s|@NODE_ID@|$n|g" -e "s|@PORT@|$(client_port "$n")|g" \
      -e "s|@CONTROLLER_PORT@|$(controller_port "$n")|g" -e "s|@DATA_DIR@|$dir/data|g" \
      "$KAFKA_SRC_DIR/cluster.properties" >"$tmp"
  if ! cmp -s "$tmp" "$dir/server.properties"; then
    chmod 0644 "$tmp"; mv "$tmp" "$dir/server.properties"; changed=0
  else
    rm -f "$tmp"
  fi
  if ! cmp -s "$KAFKA_SRC_DIR/log4j2.properties" "$LOG4J_CONF"; then
    cp "$KAFKA_SRC_DIR/log4j2.properties" "$LOG4J_CONF"
  fi
  return $changed
}

# --- storage: every node formatted once with the cluster's id (static voters)
ensure_formatted() {
  local n="$1" dir
  dir="$(node_dir "$n")"
  [ -f "$dir/data/meta.properties" ] && return 0
  if [ ! -s "$CACHE/cluster.id" ]; then
    local id
    id="$(kafka_tool "$CACHE" "$LOG4J_CONF" kafka.tools.StorageTool random-uuid \
          2>>"$CACHE/tools.log" | tail -n 1)" || die "StorageTool random-uuid failed"
    [ -n "$id" ] || die "StorageTool random-uuid printed nothing"
    echo "$id" >"$CACHE/cluster.id"
  fi
  mkdir -p "$dir/data"
  kafka_tool "$CACHE" "$LOG4J_CONF" kafka.tools.StorageTool format \
    -t "$(cat "$CACHE/cluster.id")" -c "$dir/server.properties" \
    >>"$CACHE/tools.log" 2>&1 || die "StorageTool format of node $n failed"
  [ -f "$dir/data/meta.properties" ] || die "StorageTool format did not write $dir/data/meta.properties"
}

# Launch node N's JVM if it is not running (no wait).
launch_node() {
  local n="$1" dir
  dir="$(node_dir "$n")"
  node_pid "$n" >/dev/null && return 0
  if port_open "$(client_port "$n")" || port_open "$(controller_port "$n")"; then
    FAILED_NODE="$n"
    die "port $(client_port "$n") or $(controller_port "$n") is in use by something not started by this script"
  fi
  kafka_launch "$(pidfile "$n")" "$dir/kafka.out" "$HEAP_OPTS" "$dir" "$LOG4J_CONF" \
    "$dir/server.properties"
}

# Wait until every node of "$@" serves (a node's quorum needs two voters up).
wait_serving() {
  local deadline=$((SECONDS + START_TIMEOUT)) n pending
  sleep 1
  while :; do
    pending=()
    for n in "$@"; do
      node_serves "$n" || pending+=("$n")
    done
    [ ${#pending[@]} -eq 0 ] && return 0
    for n in "${pending[@]}"; do
      if node_paused "$n"; then
        FAILED_NODE="$n"; die "node $n is paused (SIGSTOP): resume-node $n first"
      fi
      if ! node_pid "$n" >/dev/null; then
        sleep 1
        node_pid "$n" >/dev/null || { FAILED_NODE="$n"; die "node $n exited during startup"; }
      fi
    done
    if [ $SECONDS -ge "$deadline" ]; then
      FAILED_NODE="${pending[*]}"
      die "node(s) ${pending[*]} did not serve within ${START_TIMEOUT}s"
    fi
    sleep 0.5
  done
}

stop_node() {
  local n="$1" pid
  if pid="$(node_pid "$n")"; then
    kill -CONT "$pid" 2>/dev/null || true  # a paused node cannot stop
    terminate_pid "kafka-cluster node $n" "$pid" 60
  fi
  rm -f "$(pidfile "$n")"
  if port_open "$(client_port "$n")"; then
    FAILED_NODE="$n"
    die "something still listens on $HOST:$(client_port "$n") (not started by this script?)"
  fi
}

# Stop every node. SIGTERM goes to all of them first: a node stopped alone after the
# others cannot finish its controlled shutdown without a controller quorum.
stop_all() {
  local n pid
  for n in "${NODES[@]}"; do
    if pid="$(node_pid "$n")"; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for n in "${NODES[@]}"; do stop_node "$n"; done
}

# Prepare node N (configs, storage); stop it if its config changed.
prepare_node() {
  local n="$1"
  if render_configs "$n" && node_pid "$n" >/dev/null; then
    stop_node "$n"
  fi
  ensure_formatted "$n"
}

ensure_running() {
  mkdir -p "$CACHE"
  ensure_pkgs kcat
  ensure_kafka_libs
  need_cmd java "install a JDK 17+"
  local n
  for n in "${NODES[@]}"; do prepare_node "$n"; done
  cluster_serves && return 0
  for n in "${NODES[@]}"; do launch_node "$n"; done
  wait_serving "${NODES[@]}"
}

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running
    echo "kafka-cluster: ready on $BOOTSTRAP (3 KRaft nodes, controllers $HOST:29192-29194, data in $CACHE)"
    ;;
  restart)
    stop_all
    ensure_running
    echo "kafka-cluster: restarted, ready on $BOOTSTRAP"
    ;;
  stop)
    stop_all
    echo "kafka-cluster: stopped"
    ;;
  status)
    if cluster_serves; then
      echo "kafka-cluster: running on $BOOTSTRAP"
    else
      up=()
      for n in "${NODES[@]}"; do node_serves "$n" && up+=("$n"); done
      echo "kafka-cluster: not serving (nodes serving: ${up[*]:-none})"
      exit 1
    fi
    ;;
  reset)
    stop_all
    rm -rf "$CACHE"
    echo "kafka-cluster: stopped, data deleted"
    ;;
  start-node)
    check_node "${2:-}"
    mkdir -p "$CACHE"
    ensure_kafka_libs
    prepare_node "$2"
    if node_serves "$2"; then
      echo "kafka-cluster: node $2 already serving on $HOST:$(client_port "$2")"
    else
      launch_node "$2"
      wait_serving "$2"
      echo "kafka-cluster: node $2 serving on $HOST:$(client_port "$2")"
    fi
    ;;
  stop-node)
    check_node "${2:-}"
    stop_node "$2"
    echo "kafka-cluster: node $2 stopped"
    ;;
  kill-node|pause-node|resume-node)
    check_node "${2:-}"
    signal="$(case "$cmd" in kill-node) echo KILL ;; pause-node) echo STOP ;; *) echo CONT ;; esac)"
    pid="$(node_pid "$2")" || { echo "kafka-cluster: node $2 is not running" >&2; exit 1; }
    kill -"$signal" "$pid"
    echo "kafka-cluster: node $2 (pid $pid) sent SIG$signal"
    ;;
  pid)
    check_node "${2:-}"
    node_pid "$2" || exit 1
    ;;
  *)
    echo "usage: $0 [start|restart|stop|status|reset|start-node N|stop-node N|kill-node N|pause-node N|resume-node N|pid N]" >&2
    exit 2 ;;
esac
