#!/usr/bin/env bash
# A local three-node RabbitMQ cluster (Debian's rabbitmq-server, three Erlang VMs on one
# host) for the cluster fault tests. Idempotent: a second run changes nothing and only
# prints the status line.
#
#   node                  AMQP              distribution
#   rabbit-c1@localhost   127.0.0.1:5681    25681
#   rabbit-c2@localhost   127.0.0.1:5682    25682
#   rabbit-c3@localhost   127.0.0.1:5683    25683
#
#   scripts/rabbitmq-cluster.sh                 ensure installed, all three running, clustered
#   scripts/rabbitmq-cluster.sh start           same
#   scripts/rabbitmq-cluster.sh stop            stop the three nodes (data kept)
#   scripts/rabbitmq-cluster.sh restart         stop, then start
#   scripts/rabbitmq-cluster.sh status          exit 0 iff all three run, clustered, serving AMQP
#   scripts/rabbitmq-cluster.sh reset           stop, delete all data (a fresh cluster next start)
#   scripts/rabbitmq-cluster.sh start-node N    start node N (1-3) if down, wait until it runs
#                                               (a node that was killed rejoins by itself)
#   scripts/rabbitmq-cluster.sh stop-node N     graceful stop of node N (rabbitmqctl stop)
#   scripts/rabbitmq-cluster.sh restart-node N  stop-node N, start-node N (a rolling restart step)
#   scripts/rabbitmq-cluster.sh kill-node N     SIGKILL node N's Erlang VM (a crash)
#   scripts/rabbitmq-cluster.sh pause-node N    SIGSTOP it (a hung node: TCP still accepts)
#   scripts/rabbitmq-cluster.sh resume-node N   SIGCONT it
#   scripts/rabbitmq-cluster.sh pid N           the OS pid of node N's Erlang VM (beam.smp)
#   scripts/rabbitmq-cluster.sh ctl N ARGS...   rabbitmqctl ARGS on node N (e.g. list_queues)
#   scripts/rabbitmq-cluster.sh queues N ARGS...  rabbitmq-queues ARGS on node N
#
# Everything lives in ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/rabbitmq-cluster: the shared
# Erlang cookie (.erlang.cookie; the nodes and CLI tools run with HOME there), and per node
# cN/: rabbitmq-env.conf (RABBITMQ_CONF_ENV_FILE: node name, ports, paths), rabbitmq.conf,
# enabled_plugins (rabbitmq_consistent_hash_exchange; no management plugin), mnesia/,
# log/ and rabbit.pid. Nothing reads or writes /etc/rabbitmq or the main node
# rabbit@localhost (scripts/rabbitmq.sh, 5672/25672).
#
# Cluster settings: cluster_partition_handling = autoheal (a node the others declared
# down while it hung, SIGSTOP, comes back into a partitioned cluster without having noticed
# anything, its own clock stood still: pause_minority would never pause it, autoheal
# restarts it so it rejoins; quorum queues need a majority either way), net_ticktime =
# 10 s (a hung peer is declared down after 10-13 s instead of 60-75), the open-file limit
# raised to 65536 before a node starts (RabbitMQ's production checklist). `start` waits
# until all three nodes run in one cluster (an autoheal restart included).
# Env: RABBITMQ_CLUSTER_START_TIMEOUT (default 120 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$SCRIPT_DIR"

CACHE_ROOT="${EVENTBUS_CACHE:-${HOME:-/root}/.cache/eventbus}"
BASE="$CACHE_ROOT/rabbitmq-cluster"
HOST=127.0.0.1
NODES=(1 2 3)
SEED=1
PLUGINS=(rabbitmq_consistent_hash_exchange)
NOFILE=65536
START_TIMEOUT="${RABBITMQ_CLUSTER_START_TIMEOUT:-120}"
RMQ_BIN=/usr/lib/rabbitmq/bin
export DEBIAN_FRONTEND=noninteractive

SUDO=""  # used by lib.sh (ensure_pkgs)
# shellcheck disable=SC2034
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "rabbitmq-cluster: must run as root (or with passwordless sudo)" >&2; exit 1
  fi
fi

node_name() { echo "rabbit-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$BASE/c$1"; }

die() {
  echo "rabbitmq-cluster: FAILED: $*" >&2
  local n f
  for n in "${NODES[@]}"; do
    f="$(node_dir "$n")/log/$(node_name "$n").log"
    if [ -s "$f" ]; then
      echo "----- tail of $f -----" >&2
      tail -n 25 "$f" >&2 || true
    fi
  done
  exit 1
}

# Run a RabbitMQ tool (rabbitmq-server, rabbitmqctl, ...) for node N, in its own
# environment: its env file, the cluster's cookie (HOME), a CLI distribution port range
# of its own (not the main node's 35672-35682, which other tests' CLI calls use).
as_node() {
  local n="$1" tool="$2"
  shift 2
  env HOME="$BASE" \
    RABBITMQ_CONF_ENV_FILE="$(node_dir "$n")/rabbitmq-env.conf" \
    RABBITMQ_CTL_DIST_PORT_MIN=35690 RABBITMQ_CTL_DIST_PORT_MAX=35710 \
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

# The cookie, every node's files. Returns 0 if anything changed.
ensure_files() {
  local changed=1 n dir plugins
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
    write_if_changed "$dir/rabbitmq-env.conf" "# node $n of scripts/rabbitmq-cluster.sh (managed)
NODENAME=$(node_name "$n")
NODE_IP_ADDRESS=$HOST
NODE_PORT=$(amqp_port "$n")
DIST_PORT=$(dist_port "$n")
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
PID_FILE=$dir/rabbit.pid
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
ENABLED_PLUGINS_FILE=$dir/enabled_plugins" && changed=0
    write_if_changed "$dir/rabbitmq.conf" "# node $n of scripts/rabbitmq-cluster.sh (managed)
listeners.tcp.default = $HOST:$(amqp_port "$n")
distribution.listener.interface = $HOST
distribution.listener.port_range.min = $(dist_port "$n")
distribution.listener.port_range.max = $(dist_port "$n")
cluster_partition_handling = autoheal
net_ticktime = 10
log.console = false
log.file.level = info" && changed=0
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
amqp_open() { (exec 3<>"/dev/tcp/$HOST/$(amqp_port "$1")") 2>/dev/null; }
app_running() { ctl "$1" -q eval 'rabbit:is_running().' 2>/dev/null | grep -qx true; }

# The nodes node N sees running in its cluster, one per line.
running_nodes() {
  ctl "$1" -q eval \
    'io:format("~s~n", [string:join([atom_to_list(X) || X <- rabbit_nodes:all_running()], "\n")]).' \
    2>/dev/null | grep '@' || true
}

# Is node N a member (running or not) of the seed's cluster?
member_of_seed() {
  ctl "$1" -q eval "lists:member('$(node_name "$SEED")', rabbit_nodes:all())." 2>/dev/null |
    grep -qx true
}

# The open-file limit for the nodes about to start: NOFILE, or the hard limit where that
# is lower and cannot be raised (a container), said once.
NOFILE_DONE=0
raise_nofile() {
  [ "$NOFILE_DONE" = 1 ] && return 0
  NOFILE_DONE=1
  [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -ge "$NOFILE" ] && return 0
  local hard
  hard="$(ulimit -Hn)"
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$NOFILE" ]; then
    ulimit -Hn "$NOFILE" 2>/dev/null || true
  fi
  ulimit -n "$NOFILE" 2>/dev/null && return 0
  echo "rabbitmq-cluster: note: open-file limit $(ulimit -Hn) (cannot raise it to $NOFILE here)" >&2
  ulimit -n "$(ulimit -Hn)"
}

launch() {
  local n="$1" pid
  if pid="$(pid_of "$n")"; then
    kill -CONT "$pid" 2>/dev/null || true  # a node a test left paused runs again
    return 0
  fi
  amqp_open "$n" && die "something other than node $(node_name "$n") listens on $HOST:$(amqp_port "$n")"
  rm -f "$(node_dir "$n")/rabbit.pid"
  raise_nofile
  as_node "$n" rabbitmq-server -detached >"$(node_dir "$n")/log/startup.out" 2>&1 ||
    die "rabbitmq-server -detached failed for node $(node_name "$n")"
}

await_node() {
  local n="$1" deadline=$((SECONDS + START_TIMEOUT))
  until vm_up "$n"; do
    [ $SECONDS -lt $deadline ] || die "node $(node_name "$n") did not start within ${START_TIMEOUT}s"
    sleep 0.5
  done
  # a node paused by pause_minority resumes by itself once it sees the others again
  ctl "$n" -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 ||
    die "rabbitmqctl await_startup failed on node $(node_name "$n")"
  until amqp_open "$n"; do
    [ $SECONDS -lt $deadline ] || die "node $(node_name "$n") is up but nothing listens on $HOST:$(amqp_port "$n")"
    sleep 0.5
  done
}

join_seed() {
  local n="$1"
  [ "$n" = "$SEED" ] && return 0
  member_of_seed "$n" && return 0
  ctl "$n" -q stop_app >/dev/null || die "stop_app failed on $(node_name "$n")"
  ctl "$n" -q join_cluster "$(node_name "$SEED")" >"$(node_dir "$n")/log/join.out" 2>&1 ||
    die "$(node_name "$n") could not join $(node_name "$SEED")"
  ctl "$n" -q start_app >/dev/null || die "start_app failed on $(node_name "$n")"
  await_node "$n"
}

stop_one() {
  local n="$1" pid
  pid="$(pid_of "$n")" || return 0
  kill -CONT "$pid" 2>/dev/null || true  # a paused node cannot stop
  ctl "$n" -q stop >/dev/null 2>&1 || true
  terminate_pid "rabbitmq-cluster: node $(node_name "$n")" "$pid" 60
}

ensure_running() {
  ensure_pkgs rabbitmq-server
  local n changed=0
  ensure_files && changed=1
  if [ "$changed" = 1 ]; then
    for n in "${NODES[@]}"; do stop_one "$n"; done  # new settings: start afresh
  fi
  # all at once: a clustered node that was not the last to stop waits for its peers
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in "${NODES[@]}"; do join_seed "$n"; done
  await_cluster
}

# Wait until every node runs the app and sees all of them running (a node autoheal is
# restarting, or one that just came back, takes a few seconds).
await_cluster() {
  local n running all deadline=$((SECONDS + START_TIMEOUT))
  all="$(for n in "${NODES[@]}"; do node_name "$n"; done | sort | tr '\n' ' ')"
  while :; do
    running=""
    for n in "${NODES[@]}"; do
      running="$(running_nodes "$n" | sort | tr '\n' ' ')"
      [ "$running" = "$all" ] || break
    done
    [ "$running" = "$all" ] && return 0
    [ $SECONDS -lt $deadline ] || die "the cluster does not come together: node $n sees running: $running"
    sleep 1
  done
}

check_node_arg() {
  case "${1:-}" in
    1|2|3) ;;
    *) echo "rabbitmq-cluster: node must be 1, 2 or 3 (got '${1:-}')" >&2; exit 2 ;;
  esac
}

urls() {
  local n out=""
  for n in "${NODES[@]}"; do out="$out${out:+,}$HOST:$(amqp_port "$n")"; done
  echo "amqp://guest:guest@$out/"
}

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running
    echo "rabbitmq-cluster: ready: $(urls) (nodes $(node_name 1), $(node_name 2), $(node_name 3))"
    ;;
  stop)
    for n in "${NODES[@]}"; do stop_one "$n"; done
    echo "rabbitmq-cluster: stopped"
    ;;
  restart)
    for n in "${NODES[@]}"; do stop_one "$n"; done
    ensure_running
    echo "rabbitmq-cluster: restarted, ready: $(urls)"
    ;;
  reset)
    for n in "${NODES[@]}"; do stop_one "$n"; done
    for n in "${NODES[@]}"; do rm -rf "$(node_dir "$n")/mnesia"; done
    echo "rabbitmq-cluster: stopped, data deleted"
    ;;
  status)
    ok=1
    for n in "${NODES[@]}"; do
      if vm_up "$n" && app_running "$n" && amqp_open "$n"; then
        echo "rabbitmq-cluster: $(node_name "$n") running on $HOST:$(amqp_port "$n") (pid $(pid_of "$n"))"
      else
        echo "rabbitmq-cluster: $(node_name "$n") not running"; ok=0
      fi
    done
    if [ "$ok" = 1 ]; then
      running="$(running_nodes "$SEED" | wc -l)"
      echo "rabbitmq-cluster: $running of ${#NODES[@]} nodes running in one cluster"
      [ "$running" = "${#NODES[@]}" ] || exit 1
    else
      exit 1
    fi
    ;;
  start-node)
    check_node_arg "${2:-}"
    ensure_files >/dev/null || true
    launch "$2"
    await_node "$2"
    echo "rabbitmq-cluster: $(node_name "$2") running on $HOST:$(amqp_port "$2")"
    ;;
  stop-node)
    check_node_arg "${2:-}"
    stop_one "$2"
    echo "rabbitmq-cluster: $(node_name "$2") stopped"
    ;;
  restart-node)
    check_node_arg "${2:-}"
    stop_one "$2"
    launch "$2"
    await_node "$2"
    echo "rabbitmq-cluster: $(node_name "$2") restarted, running on $HOST:$(amqp_port "$2")"
    ;;
  kill-node|pause-node|resume-node)
    check_node_arg "${2:-}"
    pid="$(pid_of "$2")" || { echo "rabbitmq-cluster: $(node_name "$2") is not running" >&2; exit 1; }
    case "$cmd" in
      kill-node) sig=KILL; did=killed ;;
      pause-node) sig=STOP; did=paused ;;
      *) sig=CONT; did=resumed ;;
    esac
    kill -s "$sig" "$pid"
    if [ "$sig" = KILL ]; then
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    echo "rabbitmq-cluster: $(node_name "$2") $did (pid $pid)"
    ;;
  pid)
    check_node_arg "${2:-}"
    pid_of "$2" || { echo "rabbitmq-cluster: $(node_name "$2") is not running" >&2; exit 1; }
    ;;
  ctl)
    check_node_arg "${2:-}"
    n="$2"; shift 2
    ctl "$n" "$@"
    ;;
  queues)
    check_node_arg "${2:-}"
    n="$2"; shift 2
    as_node "$n" rabbitmq-queues -n "$(node_name "$n")" "$@"
    ;;
  *)
    echo "usage: $0 [start|stop|restart|status|reset|start-node N|stop-node N|restart-node N|kill-node N|pause-node N|resume-node N|pid N|ctl N ARGS|queues N ARGS]" >&2
    exit 2 ;;
esac
