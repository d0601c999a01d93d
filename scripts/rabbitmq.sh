#!/usr/bin/env bash
# Install (Debian package), configure and start a local RabbitMQ broker for the
# test suite: AMQP on 127.0.0.1:5672, user guest/guest (loopback only), plugin
# rabbitmq_consistent_hash_exchange enabled. Idempotent: a second run changes
# nothing and only prints the status line.
#
#   scripts/rabbitmq.sh            ensure installed + running (default)
#   scripts/rabbitmq.sh start      same
#   scripts/rabbitmq.sh restart    full node restart (rabbitmqctl stop, start)
#   scripts/rabbitmq.sh stop       stop the node
#   scripts/rabbitmq.sh status     exit 0 iff the broker is up and serving AMQP
#
# The node name is pinned to rabbit@localhost (in /etc/rabbitmq/rabbitmq-env.conf)
# so it does not depend on whether the machine's hostname resolves, and so every
# rabbitmqctl call (including the tests' stop_app/start_app) finds the node.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$SCRIPT_DIR"

HOST=127.0.0.1
PORT=5672
NODE=rabbit@localhost
PLUGINS=(rabbitmq_consistent_hash_exchange)
ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf
ENABLED_PLUGINS_FILE=/etc/rabbitmq/enabled_plugins
LOG_DIR=/var/log/rabbitmq
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-120}
export DEBIAN_FRONTEND=noninteractive
export RABBITMQ_NODENAME="$NODE"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "rabbitmq: must run as root (or with passwordless sudo)" >&2; exit 1
  fi
fi

die() {
  echo "rabbitmq: FAILED: $*" >&2
  local f
  for f in "$LOG_DIR/$NODE.log" "$LOG_DIR/startup_log" "$LOG_DIR/startup_err"; do
    if [ -s "$f" ]; then
      echo "----- tail of $f -----" >&2
      $SUDO tail -n 40 "$f" >&2 || true
    fi
  done
  exit 1
}


# Managed block in rabbitmq-env.conf (read by rabbitmq-server and every CLI tool).
# Returns 0 if the file was changed.
ensure_env_conf() {
  local begin="# BEGIN eventbus scripts/rabbitmq.sh (managed)"
  local end="# END eventbus scripts/rabbitmq.sh"
  local block
  block="$begin
NODENAME=$NODE
NODE_IP_ADDRESS=$HOST
NODE_PORT=$PORT
$end"
  if [ -f "$ENV_CONF" ] && grep -qxF "$begin" "$ENV_CONF" &&
     [ "$(awk -v b="$begin" -v e="$end" '$0==b{f=1} f{print} $0==e{f=0}' "$ENV_CONF")" = "$block" ]; then
    return 1
  fi
  local tmp
  tmp="$(mktemp)"
  if [ -f "$ENV_CONF" ]; then
    awk -v b="$begin" -v e="$end" '$0==b{f=1} !f{print} $0==e{f=0}' "$ENV_CONF" >"$tmp"
  fi
  printf '%s\n' "$block" >>"$tmp"
  $SUDO install -m 0644 "$tmp" "$ENV_CONF"
  rm -f "$tmp"
  $SUDO chown rabbitmq:rabbitmq "$ENV_CONF" 2>/dev/null || true
  return 0
}

node_up() { $SUDO rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
app_running() { $SUDO rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }
amqp_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

plugins_in_file() {
  local p
  for p in "${PLUGINS[@]}"; do
    [ -f "$ENABLED_PLUGINS_FILE" ] && grep -q "\b$p\b" "$ENABLED_PLUGINS_FILE" || return 1
  done
}

# RabbitMQ's production checklist: at least 50,000 file handles. With the shell's soft
# limit of 1024, a node holding a few hundred quorum queues (each keeps segment files
# open) runs out: new connections then wait for a handle forever (handshakes time out,
# sockets pile up in CLOSE-WAIT) and `rabbitmqctl` hangs.
# (Capped at the hard limit, which an unprivileged container cannot raise.)
OPEN_FILES=${RABBITMQ_OPEN_FILES:-65536}
HARD_OPEN_FILES=$(ulimit -Hn)
if [ "$HARD_OPEN_FILES" != unlimited ] && [ "$HARD_OPEN_FILES" -lt "$OPEN_FILES" ]; then
  OPEN_FILES=$HARD_OPEN_FILES
fi

# The running node's soft open-file limit (empty if unknown).
node_open_files() {
  local pid
  pid=$($SUDO cat "/var/lib/rabbitmq/mnesia/$NODE.pid" 2>/dev/null) || return 0
  $SUDO awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || true
}

start_node() {
  # Debian's wrapper switches to the rabbitmq user with `su`, whose PAM session resets
  # the limit to 1024: switch with setpriv instead, which keeps the limit raised here.
  # shellcheck disable=SC2016
  $SUDO sh -c 'ulimit -n "$1" && cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq \
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups rabbitmq-server -detached' \
    sh "$OPEN_FILES" >/dev/null 2>&1 ||
    die "rabbitmq-server -detached (ulimit -n $OPEN_FILES) failed"
  local deadline=$((SECONDS + START_TIMEOUT))
  until node_up; do
    [ $SECONDS -lt $deadline ] || die "node $NODE did not come up within ${START_TIMEOUT}s"
    sleep 1
  done
  $SUDO rabbitmqctl -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 ||
    die "rabbitmqctl await_startup failed"
}

stop_node() {
  if node_up; then
    $SUDO rabbitmqctl -q stop >/dev/null 2>&1 || die "rabbitmqctl stop failed"
  fi
  local deadline=$((SECONDS + 60))
  while amqp_open || node_up; do
    [ $SECONDS -lt $deadline ] || die "node $NODE did not stop within 60s"
    sleep 1
  done
}

ensure_running() {
  ensure_pkgs rabbitmq-server
  local conf_changed=0
  ensure_env_conf && conf_changed=1

  local limit
  limit=$(node_open_files)
  if [ -n "$limit" ] && [ "$limit" != unlimited ] && [ "$limit" -lt "$OPEN_FILES" ]; then
    echo "rabbitmq: node $NODE runs with $limit open files: restarting it with $OPEN_FILES" >&2
    conf_changed=1
  fi

  if node_up; then
    if [ "$conf_changed" = 1 ]; then
      stop_node
      plugins_in_file || $SUDO rabbitmq-plugins -q enable --offline "${PLUGINS[@]}" >/dev/null ||
        die "rabbitmq-plugins enable --offline failed"
      start_node
    else
      # A test may have left the app stopped (stop_app) — bring it back.
      app_running || $SUDO rabbitmqctl -q start_app >/dev/null 2>&1 || die "rabbitmqctl start_app failed"
      if ! plugins_in_file; then
        $SUDO rabbitmq-plugins -q enable "${PLUGINS[@]}" >/dev/null || die "rabbitmq-plugins enable failed"
      fi
      $SUDO rabbitmqctl -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 ||
        die "rabbitmqctl await_startup failed"
    fi
  else
    if amqp_open; then
      # Most likely a node started by the package's init script (on a machine
      # without policy-rc.d) under the default name rabbit@<hostname>, before
      # the NODENAME pin existed. Stop it, then start ours.
      local other
      other="rabbit@$(hostname -s 2>/dev/null || hostname)"
      if [ "$other" != "$NODE" ]; then
        $SUDO rabbitmqctl -n "$other" -q stop >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 30))
        while amqp_open && [ $SECONDS -lt $deadline ]; do sleep 1; done
      fi
      amqp_open && die "something other than node $NODE already listens on $HOST:$PORT"
    fi
    plugins_in_file || $SUDO rabbitmq-plugins -q enable --offline "${PLUGINS[@]}" >/dev/null ||
      die "rabbitmq-plugins enable --offline failed"
    start_node
  fi

  local deadline=$((SECONDS + 30))
  until amqp_open; do
    [ $SECONDS -lt $deadline ] || die "node is up but nothing listens on $HOST:$PORT"
    sleep 1
  done
}

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running
    echo "rabbitmq: ready on $HOST:$PORT (node $NODE, guest/guest, plugins: ${PLUGINS[*]})"
    ;;
  restart)
    ensure_pkgs rabbitmq-server
    ensure_env_conf || true
    stop_node
    ensure_running
    echo "rabbitmq: restarted, ready on $HOST:$PORT (node $NODE)"
    ;;
  stop)
    if pkg_installed rabbitmq-server; then stop_node; fi
    echo "rabbitmq: stopped"
    ;;
  status)
    if pkg_installed rabbitmq-server && node_up && app_running && amqp_open; then
      echo "rabbitmq: running on $HOST:$PORT (node $NODE)"
    else
      echo "rabbitmq: not running"; exit 1
    fi
    ;;
  *)
    echo "usage: $0 [start|restart|stop|status]" >&2; exit 2 ;;
esac
