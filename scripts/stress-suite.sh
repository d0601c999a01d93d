#!/usr/bin/env bash
# The default test suite N times in a row (default 5) while a CPU-heavy process runs
# beside it (one busy loop per core it is given, default 1: a shared 2-core machine).
# Stops at the first failing run; prints one line per run and the outcome.
#
#   bash scripts/stress-suite.sh [RUNS [BURNERS]] [-- pytest arguments]
#
# A flaky test is a defect: this is how the suite shows it has none.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
burners=${2:-1}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
[ "$#" -eq 0 ] && set -- -m "not soak" -p no:cacheprovider
case "$runs$burners" in *[!0-9]*) echo "usage: $0 [RUNS [BURNERS]] [-- pytest args]" >&2; exit 2;; esac

bash scripts/venv.sh
bash scripts/brokers.sh
pids=()
stop_burners() { [ "${#pids[@]}" -gt 0 ] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true; }
trap stop_burners EXIT
for _ in $(seq 1 "$burners"); do
  python3 -c 'while True: pass' &
  pids+=("$!")
done
mkdir -p .stress
for run in $(seq 1 "$runs"); do
  log=".stress/run-$run.log"
  started=$(date +%s)
  if .venv/bin/pytest "$@" >"$log" 2>&1; then
    summary=$(grep -E '(passed|failed).* in [0-9.]+s' "$log" | tail -1 || true)
    echo "run $run of $runs: passed in $(( $(date +%s) - started )) s (${summary:-$(tail -1 "$log")})"
  else
    echo "run $run of $runs: FAILED after $(( $(date +%s) - started )) s, see $log:"
    grep -E "^(FAILED|ERROR) " "$log" | head -20
    exit 1
  fi
done
echo "$runs runs in a row passed beside $burners CPU-bound process(es)"
