#!/usr/bin/env bash
# sluice's test runner (`make check` calls it after building and after
# `tools/servers.sh start`). Runs every unit test binary build/tests/test_*
# and every tests/integration/test_*.py, one at a time, each as one test:
# exit 0 = pass, 77 = skip, anything else = fail. Output of each test goes to
# build/test-logs/NAME.log; the last 40 lines of it are shown when it fails.
#
# Usage: tests/run.sh [FILTER...]   run only tests whose name contains a FILTER
# Env:   SLUICE_TEST_TIMEOUT        seconds per test (default 300)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TIMEOUT=${SLUICE_TEST_TIMEOUT:-300}
LOGS=build/test-logs
PY=/usr/bin/python3
mkdir -p "$LOGS"
eval "$(tools/servers.sh env)"

selected() { # name: true if no filters or one of them is a substring
    (($# == 1)) && return 0
    local name=$1 f
    shift
    for f in "$@"; do [[ $name == *"$f"* ]] && return 0; done
    return 1
}

passed=0 failed=0 skipped=0
for t in build/tests/test_* tests/integration/test_*.py; do
    [[ -f $t ]] || continue
    case $t in
        *.py) name=$(basename "$t" .py) cmd=("$PY" -u "$t") ;;
        *) [[ -x $t ]] || continue # skip build/tests/*.d
            name=$(basename "$t") cmd=("$t") ;;
    esac
    selected "$name" "$@" || continue
    log=$LOGS/$name.log
    start=$(date +%s%N)
    rc=0
    timeout --kill-after=10 "$TIMEOUT" "${cmd[@]}" >"$log" 2>&1 </dev/null || rc=$?
    ds=$((($(date +%s%N) - start) / 100000000)) # tenths of a second
    secs=$((ds / 10)).$((ds % 10))
    if ((rc == 0)); then
        echo "PASS $name (${secs}s)"
        passed=$((passed + 1))
    elif ((rc == 77)); then
        echo "SKIP $name (${secs}s): $(tail -n 1 "$log")"
        skipped=$((skipped + 1))
    else
        why="exit $rc"
        ((rc == 124 || rc == 137)) && why="timed out after ${TIMEOUT}s"
        echo "FAIL $name (${secs}s, $why; log: $log)"
        tail -n 40 "$log" | sed 's/^/    /'
        failed=$((failed + 1))
    fi
done

status=0
((failed == 0)) || status=1
if ((passed + failed + skipped == 0)); then
    echo "no tests match: $*" >&2
    status=1
fi
summary="$passed passed, $failed failed"
((skipped == 0)) || summary+=", $skipped skipped"
echo "$summary"
exit $status
