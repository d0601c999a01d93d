#!/usr/bin/env bash
# A second local single-node Apache Kafka broker (KRaft, combined broker+controller) with a
# SASL_SSL listener, for the security tests:
#   SASL_SSL  127.0.0.1:19092  SCRAM-SHA-512 over TLS (the clients' listener)
#   CONTROLLER 127.0.0.1:19093
#   INTERNAL  127.0.0.1:19094  plaintext, unauthenticated: inter-broker traffic and this
#                              script's readiness check only (loopback)
# The ports sit below Linux's ephemeral range (32768-60999): a listener inside it fails to
# bind when a client connection holds the port as its local one (a CI run once found 39092
# taken so). It reuses the jars and the functions of scripts/kafka.sh (sourced).
# Idempotent: a second run changes nothing and only prints the status line.
#
#   scripts/kafka-secure.sh start DIR   install DIR's material, ensure the broker runs
#   scripts/kafka-secure.sh start       ensure the broker runs with the installed material
#   scripts/kafka-secure.sh stop        stop the broker started by this script
#   scripts/kafka-secure.sh status      exit 0 iff the broker answers
#
# DIR holds ca.pem (the CA that signed the server certificate; the broker's truststore),
# server.pem and server.key (the server certificate for localhost / 127.0.0.1 and its
# unencrypted PKCS#8 key; the broker's PEM keystore) and scram-users: one SCRAM-SHA-512
# user per line, "name password" (no spaces, commas or brackets in either). The users are
# created with the Kafka tools when the storage is formatted (StorageTool format
# --add-scram), so when any of this material differs from the installed one, the broker
# is stopped, its data deleted, the storage formatted again and the broker started.
# No password is printed by this script.
#
# Everything lives in ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/kafka-secure: certs/
# (ca.pem, keystore.pem), scram-users, data/, server.properties, log4j2.properties,
# cluster.id, kafka.pid, server.log, kafka.out, tools.log. The jars are scripts/kafka.sh's
# (kafka/libs, fetched by it when missing).
# Env: KAFKA_SECURE_HEAP_OPTS (default "-Xms128m -Xmx384m"), KAFKA_START_TIMEOUT (90 s).
set -euo pipefail
# shellcheck source=scripts/kafka.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka.sh"

# kafka.sh's functions (run_tool, pid_alive, start_broker, stop_broker,
# ensure_formatted) work on these globals: point them at this broker (LIBS stays).
KAFKA_CACHE="$CACHE"
CACHE="$CACHE_ROOT/kafka-secure"
DATA="$CACHE/data"
CONF="$CACHE/server.properties"
LOG4J_CONF="$CACHE/log4j2.properties"
PIDFILE="$CACHE/kafka.pid"
OUT="$CACHE/kafka.out"
SERVER_LOG="$CACHE/server.log"
CERTS="$CACHE/certs"
USERS="$CACHE/scram-users"
PORT=19092
CONTROLLER_PORT=19093
INTERNAL="$HOST:19094"
BOOTSTRAP="$HOST:$PORT"
HEAP_OPTS="${KAFKA_SECURE_HEAP_OPTS:--Xms128m -Xmx384m}"

die() {
  echo "kafka-secure: FAILED: $*" >&2
  log_tail
  exit 1
}

# Readiness: the SASL_SSL port is open and a Metadata request on the internal listener
# lists broker 1.
kafka_answers() {
  port_open "$PORT" && port_open "${INTERNAL##*:}" || return 1
  kcat -b "$INTERNAL" -L -m 5 -J 2>/dev/null | grep -q '"brokers":\[{"id":1,'
}

# Write FILE from stdin (mode 0600) unless it already holds exactly that.
# Returns 0 if the file was changed.
install_if_changed() {
  local file="$1" tmp
  tmp="$(mktemp "$file.XXXXXX")"
  cat >"$tmp"
  chmod 0600 "$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; return 1; fi
  mv -f "$tmp" "$file"
  return 0
}

# Copy DIR's material into the cache. Returns 0 if any of it changed.
install_material() {
  local from="$1" f changed=1
  for f in ca.pem server.pem server.key scram-users; do
    [ -s "$from/$f" ] || die "$from/$f is missing (need ca.pem, server.pem, server.key, scram-users)"
  done
  grep -q -- '-----BEGIN PRIVATE KEY-----' "$from/server.key" ||
    die "$from/server.key must be an unencrypted PKCS#8 key (BEGIN PRIVATE KEY)"
  awk 'NF != 2 || $0 ~ /[,\[\]=]/ { bad = 1 } END { exit bad }' "$from/scram-users" ||
    die "$from/scram-users: each line must be \"name password\" without , [ ] ="
  mkdir -p "$CERTS"
  chmod 0700 "$CACHE" "$CERTS"
  install_if_changed "$CERTS/ca.pem" <"$from/ca.pem" && changed=0
  cat "$from/server.key" "$from/server.pem" | install_if_changed "$CERTS/keystore.pem" && changed=0
  install_if_changed "$USERS" <"$from/scram-users" && changed=0
  return $changed
}

have_material() { [ -s "$CERTS/ca.pem" ] && [ -s "$CERTS/keystore.pem" ] && [ -s "$USERS" ]; }

# server.properties and log4j2.properties. Returns 0 if any changed.
render_secure_configs() {
  local changed=1
  sed -e "s|@KAFKA_DATA_DIR@|$DATA|g" -e "s|@CERTS_DIR@|$CERTS|g" "$SRC_DIR/secure.properties" |
    install_if_changed "$CONF" && changed=0
  install_if_changed "$LOG4J_CONF" <"$SRC_DIR/log4j2.properties" && changed=0
  return $changed
}

# StorageTool's --add-scram arguments, one pair per user of scram-users.
scram_args() {
  local name password
  while read -r name password; do
    printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "$name" "$password"
  done <"$USERS"
}

# Delete the data and format the storage again, with the SCRAM users.
reformat() {
  local args=()
  rm -rf "$DATA"
  mapfile -t args < <(scram_args)
  ensure_formatted "${args[@]}"
}

ensure_running() {
  mkdir -p "$CACHE"
  ensure_pkgs kcat
  # scripts/kafka.sh's jars, fetched into its own cache when missing
  ensure_kafka_libs
  local changed=0
  if [ -n "${1:-}" ]; then
    install_material "$1" && changed=1
  fi
  have_material || die "no certificates or users installed: run scripts/kafka-secure.sh start DIR"
  render_secure_configs && changed=1
  if [ "$changed" = 1 ] || [ ! -f "$DATA/meta.properties" ]; then
    stop_broker
    reformat
  fi
  if kafka_answers; then
    return 0
  fi
  if pid_alive; then
    # Started but not answering yet (e.g. a parallel run): wait for it.
    local deadline=$((SECONDS + START_TIMEOUT))
    until kafka_answers; do
      pid_alive || break
      [ $SECONDS -lt $deadline ] || die "broker (pid $(cat "$PIDFILE")) does not answer on $INTERNAL"
      sleep 1
    done
    kafka_answers && return 0
  fi
  start_broker
}

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running "${2:-}"
    echo "kafka-secure: ready: SASL_SSL (SCRAM-SHA-512) on $BOOTSTRAP, users: $(cut -d' ' -f1 "$USERS" | tr '\n' ' ')(KRaft node 1, controller $HOST:$CONTROLLER_PORT, internal $INTERNAL, data in $DATA)"
    ;;
  stop)
    stop_broker
    echo "kafka-secure: stopped"
    ;;
  status)
    if kafka_answers; then echo "kafka-secure: running, SASL_SSL on $BOOTSTRAP"; else echo "kafka-secure: not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 [start [DIR]|stop|status]" >&2; exit 2 ;;
esac
