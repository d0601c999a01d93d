#!/usr/bin/env bash
# Two local RabbitMQ nodes with TLS-only AMQP listeners (Debian's rabbitmq-server, an
# Erlang VM each) for the TLS tests. Idempotent: a second run changes nothing and only
# prints the status line.
#
#   node                   AMQPS                               distribution  client cert
#   rabbit-tls@localhost   127.0.0.1:5671 (and 127.0.0.2:5671)  25671         optional
#   rabbit-mtls@localhost  127.0.0.1:5676                       25676         required
#
#   scripts/rabbitmq-tls.sh start DIR   install DIR's certificates, ensure both nodes run
#   scripts/rabbitmq-tls.sh start       ensure both nodes run with the installed ones
#   scripts/rabbitmq-tls.sh stop        stop both nodes (data kept)
#   scripts/rabbitmq-tls.sh status      exit 0 iff both run and serve AMQPS
#   scripts/rabbitmq-tls.sh ctl tls|mtls ARGS...   rabbitmqctl ARGS on that node
#                                       (e.g. list_connections ssl_protocol peer_cert_subject)
#
# DIR holds PEM files: ca.pem (the CA that signed the server's and the clients'
# certificates), server.pem and server.key (the server's certificate and unencrypted key,
# for localhost / 127.0.0.1). They are copied into the cache; when they differ from the
# installed ones the running nodes are restarted (a node reads its certificates at start).
# DIR may also hold amqp-users: one user per line, "name password" (no spaces in either),
# made (or given that password) on both nodes with full permissions on vhost /. Their
# passwords pass through rabbitmqctl's command line, never through this script's output.
#
# Why two nodes: RabbitMQ 3.10 has one `ssl_options` for all its AMQPS listeners, so
# "client certificate optional" and "client certificate required" (fail_if_no_peer_cert)
# cannot be two listeners of one node, and a restart between the two would order the tests.
# Both nodes verify a client certificate when one is presented (verify_peer, against
# ca.pem). rabbit-tls also listens on 127.0.0.2 (still loopback): the server certificate
# does not name that address, so a client connecting there meets a host name mismatch.
#
# Everything lives in ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/rabbitmq-tls: certs/ (the
# installed PEM files), the nodes' own Erlang cookie (.erlang.cookie; the nodes and CLI
# tools run with HOME there), and per node tls/ and mtls/: rabbitmq-env.conf
# (RABBITMQ_CONF_ENV_FILE: node name, ports, paths), rabbitmq.conf, enabled_plugins
# (rabbitmq_consistent_hash_exchange; no management plugin), mnesia/, log/, rabbit.pid.
# Nothing reads or writes /etc/rabbitmq or the main node rabbit@localhost
# (scripts/rabbitmq.sh, 5672/25672). User guest/guest (loopback only, as on the main node).
# Env: RABBITMQ_TLS_START_TIMEOUT (default 120 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$SCRIPT_DIR"

CACHE_ROOT="${EVENTBUS_CACHE:-${HOME:-/root}/.cache/eventbus}"
BASE="$CACHE_ROOT/rabbitmq-tls"
CERTS="$BASE/certs"
CERT_FILES=(ca.pem server.pem server.key)
HOST=127.0.0.1
NODES=(tls mtls)
PLUGINS=(rabbitmq_consistent_hash_exchange)
START_TIMEOUT="${RABBITMQ_TLS_START_TIMEOUT:-120}"
RMQ_BIN=/usr/lib/rabbitmq/bin
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "rabbitmq-tls: must run as root (or with passwordless sudo)" >&2; exit 1
  fi
fi

node_name() { echo "rabbit-$1@localhost"; }
node_dir() { echo "$BASE/$1"; }
amqps_port() { case "$1" in tls) echo 5671 ;; mtls) echo 5676 ;; esac; }
dist_port() { echo $((20000 + $(amqps_port "$1"))); }
require_cert() { [ "$1" = mtls ] && echo true || echo false; }
# the AMQPS listeners of a node, one address per line
listeners() {
  echo "$HOST:$(amqps_port "$1")"
  [ "$1" = tls ] && echo "127.0.0.2:$(amqps_port "$1")"
  return 0
}

die() {
  echo "rabbitmq-tls: FAILED: $*" >&2
  local n f
  for n in "${NODES[@]}"; do
    for f in "$(node_dir "$n")/log/$(node_name "$n").log" "$(node_dir "$n")/log/startup.out"; do
      if [ -s "$f" ]; then
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2 || true
      fi
    done
  done
  exit 1
}

# Run a RabbitMQ tool (rabbitmq-server, rabbitmqctl, ...) for node N in its own
# environment: its env file, the nodes' cookie (HOME), a CLI distribution port range of
# its own (not the main node's 35672-35682 nor the cluster script's 35690-35710).
as_node() {
  local n="$1" tool="$2"
  shift 2
  env HOME="$BASE" \
    RABBITMQ_CONF_ENV_FILE="$(node_dir "$n")/rabbitmq-env.conf" \
    RABBITMQ_CTL_DIST_PORT_MIN=35720 RABBITMQ_CTL_DIST_PORT_MAX=35740 \
    "$RMQ_BIN/$tool" "$@"
}

ctl() { local n="$1"; shift; as_node "$n" rabbitmqctl -n "$(node_name "$n")" "$@"; }

# Write FILE with CONTENT (mode 0600) unless it already holds exactly that.
# Returns 0 if the file was changed.
write_if_changed() {
  local file="$1" content="$2"
  if [ -f "$file" ] && [ "$(cat "$file")" = "$content" ]; then return 1; fi
  printf '%s\n' "$content" >"$file.tmp"
  chmod 0600 "$file.tmp"
  mv -f "$file.tmp" "$file"
  return 0
}

# Copy DIR's PEM files into certs/. Returns 0 if any changed.
install_certs() {
  local from="$1" f changed=1
  for f in "${CERT_FILES[@]}"; do
    [ -s "$from/$f" ] || die "$from/$f is missing (need ${CERT_FILES[*]})"
  done
  mkdir -p "$CERTS"
  chmod 0700 "$CERTS"
  for f in "${CERT_FILES[@]}"; do
    if ! cmp -s "$from/$f" "$CERTS/$f"; then
      install -m 0600 "$from/$f" "$CERTS/$f.tmp"
      mv -f "$CERTS/$f.tmp" "$CERTS/$f"
      changed=0
    fi
  done
  return $changed
}

# Copy DIR/amqp-users (if any) into the cache. Returns 0 if it changed.
install_users() {
  local from="$1"
  [ -f "$from/amqp-users" ] || return 1
  awk 'NF != 2 { bad = 1 } END { exit bad }' "$from/amqp-users" ||
    die "$from/amqp-users: each line must be \"name password\""
  cmp -s "$from/amqp-users" "$BASE/amqp-users" && return 1
  install -m 0600 "$from/amqp-users" "$BASE/amqp-users"
  return 0
}

# Every user of amqp-users can log in to node N with its password (made or updated).
# Node N's users.applied is the amqp-users last applied there (its data keeps them).
ensure_users() {
  local n="$1" name password applied
  applied="$(node_dir "$n")/users.applied"
  [ -s "$BASE/amqp-users" ] || return 0
  cmp -s "$BASE/amqp-users" "$applied" && return 0
  while read -r name password; do
    ctl "$n" -q authenticate_user "$name" "$password" >/dev/null 2>&1 && continue
    if ctl "$n" -q list_users 2>/dev/null | cut -f1 | grep -qxF "$name"; then
      ctl "$n" -q change_password "$name" "$password" >/dev/null ||
        die "change_password $name failed on $(node_name "$n")"
    else
      ctl "$n" -q add_user "$name" "$password" >/dev/null ||
        die "add_user $name failed on $(node_name "$n")"
    fi
    ctl "$n" -q set_permissions -p / "$name" '.*' '.*' '.*' >/dev/null ||
      die "set_permissions $name failed on $(node_name "$n")"
  done <"$BASE/amqp-users"
  install -m 0600 "$BASE/amqp-users" "$applied"
}

have_certs() {
  local f
  for f in "${CERT_FILES[@]}"; do [ -s "$CERTS/$f" ] || return 1; done
}

# The cookie, every node's files. Returns 0 if anything changed.
ensure_files() {
  local changed=1 n dir plugins conf i address
  mkdir -p "$BASE"
  chmod 0700 "$BASE"
  if [ ! -s "$BASE/.erlang.cookie" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' \
      >"$BASE/.erlang.cookie")
    chmod 0400 "$BASE/.erlang.cookie"
    changed=0
  fi
  plugins="[$(IFS=,; echo "${PLUGINS[*]}")]."
  for n in "${NODES[@]}"; do
    dir="$(node_dir "$n")"
    mkdir -p "$dir/mnesia" "$dir/log"
    write_if_changed "$dir/rabbitmq-env.conf" "# node $n of scripts/rabbitmq-tls.sh (managed)
NODENAME=$(node_name "$n")
DIST_PORT=$(dist_port "$n")
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
PID_FILE=$dir/rabbit.pid
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
SERVER_ADDITIONAL_ERL_ARGS=\"+sbwt none +sbwtdcpu none +sbwtdio none\"" && changed=0
    conf="# node $n of scripts/rabbitmq-tls.sh (managed)
listeners.tcp = none"
    i=0
    while read -r address; do
      i=$((i + 1))
      conf="$conf
listeners.ssl.$i = $address"
    done < <(listeners "$n")
    conf="$conf
ssl_options.cacertfile = $CERTS/ca.pem
ssl_options.certfile = $CERTS/server.pem
ssl_options.keyfile = $CERTS/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = $(require_cert "$n")
distribution.listener.interface = $HOST
distribution.listener.port_range.min = $(dist_port "$n")
distribution.listener.port_range.max = $(dist_port "$n")
log.console = false
log.file.level = info"
    write_if_changed "$dir/rabbitmq.conf" "$conf" && changed=0
    write_if_changed "$dir/enabled_plugins" "$plugins" && changed=0
  done
  return $changed
}

pid_of() {
  local f pid
  f="$(node_dir "$1")/rabbit.pid"
  [ -s "$f" ] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # the pid file of a node killed long ago may name an unrelated process by now
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
    grep -qxF "RABBITMQ_CONF_ENV_FILE=$(node_dir "$1")/rabbitmq-env.conf" || return 1
  echo "$pid"
}

vm_up() { pid_of "$1" >/dev/null; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
amqps_open() {
  local address
  while read -r address; do port_open "${address%:*}" "${address##*:}" || return 1; done \
    < <(listeners "$1")
}
app_running() { ctl "$1" -q eval 'rabbit:is_running().' 2>/dev/null | grep -qx true; }

launch() {
  local n="$1"
  vm_up "$n" && return 0
  port_open "$HOST" "$(amqps_port "$n")" &&
    die "something other than node $(node_name "$n") listens on $HOST:$(amqps_port "$n")"
  rm -f "$(node_dir "$n")/rabbit.pid" "$(node_dir "$n")/users.applied"
  as_node "$n" rabbitmq-server -detached >"$(node_dir "$n")/log/startup.out" 2>&1 ||
    die "rabbitmq-server -detached failed for node $(node_name "$n")"
}

await_node() {
  local n="$1" deadline=$((SECONDS + START_TIMEOUT))
  # a running node serving AMQPS has booted (its listeners start last): nothing to wait for
  vm_up "$n" && amqps_open "$n" && return 0
  until vm_up "$n"; do
    [ $SECONDS -lt $deadline ] || die "node $(node_name "$n") did not start within ${START_TIMEOUT}s"
    sleep 0.5
  done
  ctl "$n" -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 ||
    die "rabbitmqctl await_startup failed on node $(node_name "$n")"
  until amqps_open "$n"; do
    [ $SECONDS -lt $deadline ] ||
      die "node $(node_name "$n") is up but does not listen on $(listeners "$n" | tr '\n' ' ')"
    sleep 0.5
  done
}

stop_one() {
  local n="$1" pid
  pid="$(pid_of "$n")" || return 0
  ctl "$n" -q stop >/dev/null 2>&1 || true
  terminate_pid "rabbitmq-tls: node $(node_name "$n")" "$pid" 60
}

# ensure_running [DIR]
ensure_running() {
  ensure_pkgs rabbitmq-server
  local n changed=0
  if [ -n "${1:-}" ]; then
    install_certs "$1" && changed=1
    install_users "$1" || true  # applied below, without a restart
  fi
  have_certs || die "no certificates installed: run scripts/rabbitmq-tls.sh start DIR"
  ensure_files && changed=1
  if [ "$changed" = 1 ]; then
    for n in "${NODES[@]}"; do stop_one "$n"; done  # new settings or certificates
  fi
  for n in "${NODES[@]}"; do launch "$n"; done  # both at once
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in "${NODES[@]}"; do ensure_users "$n"; done
}

addresses() { local n; for n in "${NODES[@]}"; do listeners "$n"; done | tr '\n' ' '; }

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running "${2:-}"
    echo "rabbitmq-tls: ready: amqps on $HOST:5671 (and 127.0.0.2:5671; client certificate optional," \
      "node $(node_name tls)) and $HOST:5676 (client certificate required, node $(node_name mtls));" \
      "users: guest $( [ -s "$BASE/amqp-users" ] && cut -d' ' -f1 "$BASE/amqp-users" | tr '\n' ' ')"
    ;;
  stop)
    for n in "${NODES[@]}"; do stop_one "$n"; done
    echo "rabbitmq-tls: stopped"
    ;;
  status)
    ok=1
    for n in "${NODES[@]}"; do
      if vm_up "$n" && app_running "$n" && amqps_open "$n"; then
        echo "rabbitmq-tls: $(node_name "$n") running, amqps on $(listeners "$n" | tr '\n' ' ')"
      else
        echo "rabbitmq-tls: $(node_name "$n") not running"; ok=0
      fi
    done
    [ "$ok" = 1 ] || exit 1
    ;;
  ctl)
    case "${2:-}" in tls|mtls) ;; *) echo "rabbitmq-tls: ctl needs tls or mtls" >&2; exit 2 ;; esac
    n="$2"; shift 2
    ctl "$n" "$@"
    ;;
  *)
    echo "usage: $0 [start [DIR]|stop|status|ctl tls|mtls ARGS...]" >&2
    exit 2 ;;
esac
