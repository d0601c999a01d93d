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
