#!/usr/bin/env bash
# Install (Debian package) and start a local Prometheus server for the test suite:
# HTTP API on 127.0.0.1:9090, scrape and evaluation interval 1 s, one scrape job
# `eventbus` whose targets are the JSON files (file_sd_configs, re-read every 1 s) in
#   ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/prometheus/targets/*.json
# so a test scrapes its own exposition server by writing a file there (tests/prometheus.py).
# Started by this script in the background (not the Debian service), 1 h retention.
# Idempotent: a second run changes nothing and only prints the status line.
#
#   scripts/prometheus.sh            ensure installed + configured + running (default)
#   scripts/prometheus.sh start      same
#   scripts/prometheus.sh restart    stop, then start
#   scripts/prometheus.sh stop       stop the server started by this script
#   scripts/prometheus.sh status     exit 0 iff http://127.0.0.1:9090/-/ready answers 200
#
# Everything lives in ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/prometheus:
#   prometheus.yml (config), args (command-line flags), targets/ (file_sd target files),
#   data/ (TSDB), prometheus.pid, prometheus.log (server stdout/stderr).
# Env: PROMETHEUS_START_TIMEOUT (default 60 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CACHE_ROOT="${EVENTBUS_CACHE:-${HOME:-/root}/.cache/eventbus}"
CACHE="$CACHE_ROOT/prometheus"
CONF="$CACHE/prometheus.yml"
ARGS_FILE="$CACHE/args"
TARGETS="$CACHE/targets"
DATA="$CACHE/data"
PIDFILE="$CACHE/prometheus.pid"
OUT="$CACHE/prometheus.log"
BIN=/usr/bin/prometheus
HOST=127.0.0.1
PORT=9090
URL="http://$HOST:$PORT"
START_TIMEOUT="${PROMETHEUS_START_TIMEOUT:-60}"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

die() {
  echo "prometheus: FAILED: $*" >&2
  if [ -s "$OUT" ]; then
    if grep -q '^usage: prometheus' "$OUT"; then
      # A flag it refused: the reason comes before its long usage text.
      echo "----- head of $OUT -----" >&2
      sed '/^usage: prometheus/q' "$OUT" | head -n 20 >&2 || true
    else
      echo "----- tail of $OUT -----" >&2
      tail -n 40 "$OUT" >&2 || true
    fi
  fi
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# Real readiness check: the server's own /-/ready endpoint answers 200.
ready() {
  command -v curl >/dev/null 2>&1 || return 1
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/-/ready" 2>/dev/null)" = 200 ]
}

pid_alive() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--config.file=$CONF"
}

version() { "$BIN" --version 2>&1 | awk 'NR==1 {print $3}'; }

# The flags the server runs with (one per line in $ARGS_FILE, compared on every start).
server_args() {
  printf '%s\n' \
    "--config.file=$CONF" \
    "--web.listen-address=$HOST:$PORT" \
    "--web.enable-lifecycle" \
    "--storage.tsdb.path=$DATA" \
    "--storage.tsdb.retention.time=1h" \
    "--storage.tsdb.retention.size=256MB" \
    "--log.level=warn"
}

render_config() {
  cat <<EOF
# Written by eventbus scripts/prometheus.sh; edits are overwritten.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: eventbus
    file_sd_configs:
      - files: ['$TARGETS/*.json']
        refresh_interval: 1s
EOF
}

# Write $2 (plus a newline) to $1 unless it already holds that (temp file + rename);
# returns 0 if it changed.
install_if_changed() {
  local dest="$1" want="$2" tmp
  if [ -f "$dest" ] && [ "$(cat "$dest")" = "$want" ]; then return 1; fi
  tmp="$(mktemp "$dest.XXXXXX")" || die "cannot create a temp file beside $dest"
  { printf '%s\n' "$want" >"$tmp" && chmod 0644 "$tmp" && mv "$tmp" "$dest"; } ||
    { rm -f "$tmp"; die "cannot write $dest"; }
}

# Returns 0 if the config or the flags changed.
render_files() {
  local changed=1 conf args out
  case "$TARGETS" in
    *"'"*) die "the cache path must not contain a single quote: $TARGETS" ;;
  esac
  conf="$(render_config)"
  args="$(server_args)"
  install_if_changed "$CONF" "$conf" && changed=0
  install_if_changed "$ARGS_FILE" "$args" && changed=0
  if command -v promtool >/dev/null 2>&1 && ! out="$(promtool check config "$CONF" 2>&1)"; then
    echo "$out" >&2
    die "promtool check config $CONF failed"
  fi
  return $changed
}

# A Prometheus that the Debian package's init script started (on a machine without
# policy-rc.d) listens on :9090 with the package's config: stop it, ours replaces it.
stop_debian_service() {
  [ -x /etc/init.d/prometheus ] || return 0
  pgrep -u prometheus -x prometheus >/dev/null 2>&1 || return 0
  echo "prometheus: stopping the Debian service (started by the package), ours replaces it" >&2
  $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 30))
  while port_open && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
}

start_server() {
  [ -x "$BIN" ] || die "$BIN not found (is the Debian package prometheus installed?)"
  if port_open; then
    stop_debian_service
    port_open && die "port $PORT is in use by something that was not started by this script"
  fi
  mkdir -p "$DATA"
  : >"$OUT"
  local args=()
  mapfile -t args <"$ARGS_FILE"
  # setsid: own session, survives the calling shell; pid written by the child itself.
  # shellcheck disable=SC2016
  # no process may keep the caller's stdout open (a pipe reader would wait for ever)
  (cd "$CACHE" && exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
    "$BIN" "${args[@]}") </dev/null >>"$OUT" 2>&1 &
  local deadline=$((SECONDS + START_TIMEOUT))
  sleep 0.5
  until ready; do
    pid_alive || { sleep 1; pid_alive; } || die "server process exited during startup"
    [ $SECONDS -lt $deadline ] || die "$URL/-/ready did not answer 200 within ${START_TIMEOUT}s"
    sleep 0.5
  done
}

stop_server() {
  local pid
  if pid_alive; then
    pid="$(cat "$PIDFILE")"
    terminate_pid prometheus "$pid" 30
  fi
  rm -f "$PIDFILE"
  if port_open; then
    die "something still listens on $HOST:$PORT (not started by this script? no live pid in $PIDFILE)"
  fi
}

ensure_running() {
  ensure_pkgs prometheus curl
  mkdir -p "$CACHE" "$TARGETS" "$DATA"
  local conf_changed=0
  render_files && conf_changed=1
  if pid_alive; then
    # Ours, maybe not ready yet (a parallel run, or replaying its WAL): wait for it.
    local deadline=$((SECONDS + START_TIMEOUT))
    until ready; do
      pid_alive || break
      [ $SECONDS -lt $deadline ] || die "server (pid $(cat "$PIDFILE")) is not ready on $URL"
      sleep 0.5
    done
    if pid_alive && ready; then
      if [ "$conf_changed" = 1 ]; then stop_server; start_server; fi
      return 0
    fi
  fi
  # Not running (or some other server holds the port: start_server stops or names it).
  start_server
}

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running
    echo "prometheus: ready on $URL (Prometheus $(version), targets $TARGETS/*.json, data in $DATA)"
    ;;
  restart)
    mkdir -p "$CACHE"
    stop_server
    ensure_running
    echo "prometheus: restarted, ready on $URL"
    ;;
  stop)
    stop_server
    echo "prometheus: stopped"
    ;;
  status)
    if ! ready; then echo "prometheus: not running"; exit 1; fi
    if pid_alive; then echo "prometheus: running on $URL"
    else echo "prometheus: a server answers on $URL, but not the one scripts/prometheus.sh starts"; fi
    ;;
  *)
    echo "usage: $0 [start|restart|stop|status]" >&2; exit 2 ;;
esac
