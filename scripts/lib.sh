# shellcheck shell=bash
# Shared by the broker scripts (sourced, not run). The sourcing script defines `die`
# (its own message prefix and log tail) and sets SUDO ("" as root, "sudo -n" otherwise).

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Install Debian packages that are missing; `apt-get update` only when some
# missing package has no install candidate (package lists empty or stale).
ensure_pkgs() {
  local p missing=() need_update=0
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  for p in "${missing[@]}"; do
    if ! apt-cache policy "$p" 2>/dev/null | grep -Eq 'Candidate: [^(]'; then need_update=1; fi
  done
  if [ "$need_update" = 1 ]; then
    $SUDO apt-get update -q >/tmp/eventbus-apt-update.log 2>&1 ||
      { cat /tmp/eventbus-apt-update.log >&2; die "apt-get update failed"; }
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >/tmp/eventbus-apt-install.log 2>&1 ||
    { tail -n 40 /tmp/eventbus-apt-install.log >&2; die "apt-get install ${missing[*]} failed"; }
}

# Stop a server process: SIGTERM, then SIGKILL if it is still there after TIMEOUT seconds.
#   terminate_pid NAME PID TIMEOUT     (NAME prefixes the message when it has to kill)
terminate_pid() {
  local name="$1" pid="$2" timeout="$3"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge "$deadline" ]; then
      echo "$name: process $pid did not stop within ${timeout}s, killing" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      return 0
    fi
    sleep 0.5
  done
}

# ---- Apache Kafka (scripts/kafka.sh, scripts/kafka-cluster.sh) ----
# Both run the same jars, fetched once into KAFKA_LIBS from scripts/kafka/pom.xml.
KAFKA_SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka"
KAFKA_LIBS="${EVENTBUS_CACHE:-${HOME:-/root}/.cache/eventbus}/kafka/libs"

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"; }

# Fetch the broker's jars (mvn copy-dependencies) into KAFKA_LIBS, only when the pom
# changed or the jars are missing. Maven's log goes to the jars' parent dir (mvn.log).
ensure_kafka_libs() {
  local stamp want cache
  cache="$(dirname "$KAFKA_LIBS")"
  mkdir -p "$cache"
  want="$(sha256sum "$KAFKA_SRC_DIR/pom.xml" | cut -d' ' -f1)"
  stamp="$cache/libs.stamp"
  if [ -d "$KAFKA_LIBS" ] && [ -s "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
     compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  need_cmd mvn "install Maven"
  need_cmd java "install a JDK 17+"
  rm -rf "$KAFKA_LIBS.tmp"
  if ! mvn -B -q -f "$KAFKA_SRC_DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$cache/mvn.log" 2>&1; then
    tail -n 40 "$cache/mvn.log" >&2
    die "mvn dependency:copy-dependencies failed (full log: $cache/mvn.log)"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  echo "$want" >"$stamp"
}

# Run a Kafka tool class (StorageTool, TopicCommand) with a small heap, logging to
# LOGDIR/tools.log through the log4j2 config LOG4J.
#   kafka_tool LOGDIR LOG4J CLASS ARGS...
kafka_tool() {
  local logdir="$1" log4j="$2"
  shift 2
  java -Xmx256m -Dkafka.logs.dir="$logdir" -Dkafka.log.file=tools.log \
    -Dlog4j2.configurationFile="$log4j" -cp "$KAFKA_LIBS/*" "$@"
}

# Start a Kafka server JVM in its own session (it survives the calling shell); the child
# writes its pid to PIDFILE itself. Its stdout/stderr are appended to OUT, its log goes
# to LOGDIR (server.log) through the log4j2 config LOG4J.
#   kafka_launch PIDFILE OUT "HEAP OPTS" LOGDIR LOG4J SERVER_PROPERTIES
kafka_launch() {
  local pidfile="$1" out="$2" heap="$3" logdir="$4" log4j="$5" conf="$6"
  : >"$out"
  # shellcheck disable=SC2086,SC2016
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
    java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$logdir" -Dlog4j2.configurationFile="$log4j" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$conf" \
    </dev/null >>"$out" 2>&1 &
}
