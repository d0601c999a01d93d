#!/usr/bin/env bash
# Install (Debian package), start and provision a local PostgreSQL for the test
# suite: role eventbus / password eventbus, database eventbus owned by it,
#   postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus
# (password auth over TCP loopback, scram-sha-256 per Debian's default pg_hba).
# Idempotent: a second run changes nothing and only prints the status line.
#
#   scripts/postgres.sh            ensure installed + running + provisioned (default)
#   scripts/postgres.sh start      same
#   scripts/postgres.sh restart    restart the cluster, then ensure as above
#   scripts/postgres.sh stop       stop the cluster
#   scripts/postgres.sh status     exit 0 iff the DSN above accepts a login
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

cd /  # the postgres user must be able to stat the cwd

HOST=127.0.0.1
PORT=5432
DB_USER=eventbus
DB_PASS=eventbus
DB_NAME=eventbus
DSN="postgresql://$DB_USER:$DB_PASS@$HOST:$PORT/$DB_NAME"
START_TIMEOUT="${POSTGRES_START_TIMEOUT:-60}"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

PG_VER="" PG_NAME="" PG_LOG=""

die() {
  echo "postgres: FAILED: $*" >&2
  if [ -n "$PG_LOG" ] && [ -s "$PG_LOG" ]; then
    echo "----- tail of $PG_LOG -----" >&2
    $SUDO tail -n 40 "$PG_LOG" >&2 || true
  fi
  exit 1
}


# Pick the cluster on $PORT (else the first one); create one if there is none.
detect_cluster() {
  local line
  line="$(pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3==p' | head -n 1)"
  [ -n "$line" ] || line="$(pg_lsclusters -h 2>/dev/null | head -n 1)"
  if [ -z "$line" ]; then
    local ver
    # shellcheck disable=SC2012
    ver="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$ver" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
    $SUDO pg_createcluster "$ver" main --port "$PORT" >/tmp/eventbus-pg-createcluster.log 2>&1 ||
      { cat /tmp/eventbus-pg-createcluster.log >&2; die "pg_createcluster $ver main failed"; }
    line="$(pg_lsclusters -h | awk -v p="$PORT" '$3==p' | head -n 1)"
  fi
  read -r PG_VER PG_NAME _port _status _owner _datadir PG_LOG _rest <<<"$line"
  { [ -n "$PG_VER" ] && [ -n "$PG_NAME" ]; } || die "could not detect a PostgreSQL cluster (pg_lsclusters: $line)"
  [ "$_port" = "$PORT" ] || die "cluster $PG_VER/$PG_NAME uses port $_port, not $PORT"
}

cluster_online() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VER" -v n="$PG_NAME" '$1==v && $2==n {print $4}' | grep -q '^online'; }
ready() { pg_isready -q -h "$HOST" -p "$PORT" >/dev/null 2>&1; }
login_ok() { PGPASSWORD="$DB_PASS" PGCONNECT_TIMEOUT=5 psql -X -q -At -w "$DSN" -c 'select 1' >/dev/null 2>&1; }
as_postgres() { $SUDO runuser -u postgres -- "$@"; }
psql_admin() { as_postgres psql -X -q -At -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }

# Make sure TCP loopback uses password auth (Debian's default already does).
ensure_hba() {
  local hba
  hba="$(psql_admin -c 'show hba_file')" || die "cannot query hba_file"
  if $SUDO grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+(scram-sha-256|md5)' "$hba"; then
    return 0
  fi
  local tmp
  tmp="$(mktemp)"
  { echo "host all all 127.0.0.1/32 scram-sha-256  # added by eventbus scripts/postgres.sh"; $SUDO cat "$hba"; } >"$tmp"
  $SUDO install -o postgres -g postgres -m 0640 "$tmp" "$hba"
  rm -f "$tmp"
  psql_admin -c 'select pg_reload_conf()' >/dev/null || die "pg_reload_conf failed"
}

provision() {
  ensure_hba
  psql_admin -d postgres <<SQL >/dev/null || die "creating role/database $DB_NAME failed"
SET password_encryption = 'scram-sha-256';
SELECT 'CREATE ROLE $DB_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER')
\gexec
ALTER ROLE $DB_USER WITH LOGIN PASSWORD '$DB_PASS';
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB_NAME')
\gexec
ALTER DATABASE $DB_NAME OWNER TO $DB_USER;
SQL
}

ensure_running() {
  ensure_pkgs postgresql
  detect_cluster
  if ! cluster_online; then
    $SUDO pg_ctlcluster "$PG_VER" "$PG_NAME" start >/tmp/eventbus-pg-start.log 2>&1 ||
      { cat /tmp/eventbus-pg-start.log >&2; die "pg_ctlcluster $PG_VER $PG_NAME start failed"; }
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until ready; do
    [ $SECONDS -lt $deadline ] || die "pg_isready -h $HOST -p $PORT: not ready within ${START_TIMEOUT}s"
    sleep 1
  done
  if ! login_ok; then
    provision
    login_ok || die "cannot log in with $DSN after provisioning"
  fi
}

cmd="${1:-start}"
case "$cmd" in
  start)
    ensure_running
    echo "postgres: ready on $HOST:$PORT (PostgreSQL $PG_VER/$PG_NAME, $DSN)"
    ;;
  restart)
    ensure_pkgs postgresql
    detect_cluster
    $SUDO pg_ctlcluster "$PG_VER" "$PG_NAME" restart >/tmp/eventbus-pg-start.log 2>&1 ||
      { cat /tmp/eventbus-pg-start.log >&2; die "pg_ctlcluster $PG_VER $PG_NAME restart failed"; }
    ensure_running
    echo "postgres: restarted, ready on $HOST:$PORT ($DSN)"
    ;;
  stop)
    if pkg_installed postgresql; then
      detect_cluster
      if cluster_online; then
        $SUDO pg_ctlcluster "$PG_VER" "$PG_NAME" stop || die "pg_ctlcluster $PG_VER $PG_NAME stop failed"
      fi
    fi
    echo "postgres: stopped"
    ;;
  status)
    if login_ok; then echo "postgres: running, $DSN accepts logins"; else echo "postgres: not running / no login"; exit 1; fi
    ;;
  *)
    echo "usage: $0 [start|restart|stop|status]" >&2; exit 2 ;;
esac
