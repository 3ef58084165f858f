#!/usr/bin/env bash
# sluice's test runner (`make check` calls it after building and after
# `tools/servers.sh start`). Each of these is one test: exit 0 = pass,
# 77 = skip, anything else = fail.
#   test_*          unit test binaries build/tests/test_*, and the
#                   integration tests tests/integration/test_*.py
#   epoll/test_*    the integration tests with SLUICE_IO=epoll
#   fuzz/TARGET     a short run of each libFuzzer target (tests/fuzz/run.sh)
#   image-test      tools/image-test.sh: the container image on both backends
#   asan/test_*     when build/asan exists (tools/sanitize.sh): the unit tests
#                   built with ASan/UBSan, and the integration tests with
#                   SLUICE_BIN=build/asan/sluice; any sanitizer report in a
#                   sluice log fails the test even if its exit status did not
# Output of each test goes to build/test-logs/NAME.log; the last 40 lines of
# it are shown when it fails. One closing line: N passed, N failed.
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

# The tests, as parallel lists: name, extra environment, command.
names=() envs=() cmds=() limits=()
add() { names+=("$1") envs+=("$2") cmds+=("$3") limits+=("${4:-$TIMEOUT}"); }
for t in build/tests/test_*; do
    [[ -x $t ]] && add "$(basename "$t")" "" "$t"
done
for t in tests/integration/test_*.py; do
    add "$(basename "$t" .py)" "" "$PY -u $t"
done
# The integration suite again on the epoll backend (what runs where
# io_uring is blocked); test_emptyroot runs the static build, not SLUICE_IO.
for t in tests/integration/test_*.py; do
    [[ $t == */test_emptyroot.py ]] && continue
    add "epoll/$(basename "$t" .py)" "SLUICE_IO=epoll SLUICE_TEST_LOGS=$PWD/$LOGS/epoll" "$PY -u $t"
done
for t in tests/fuzz/fuzz_*.c; do
    t=$(basename "$t" .c)
    add "fuzz/$t" "" "tests/fuzz/run.sh --short $t"
done
if [[ -x build/asan/sluice ]]; then
    san="ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1"
    san+=" UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
    san+=" ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer"
    for t in build/asan/tests/test_*; do
        [[ -x $t ]] && add "asan/$(basename "$t")" "$san" "$t"
    done
    for t in tests/integration/test_*.py; do
        # test_emptyroot runs the static build, not SLUICE_BIN.
        [[ $t == */test_emptyroot.py ]] && continue
        add "asan/$(basename "$t" .py)" \
            "$san SLUICE_BIN=$PWD/build/asan/sluice SLUICE_TEST_LOGS=$PWD/$LOGS/asan" "$PY -u $t"
    done
fi
# The container image, built with podman from local base images (minutes
# the first time: debootstrap and a static build inside the image).
add "image-test" "" "tools/image-test.sh" 1800
SAN_PATTERN='ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer'

passed=0 failed=0 skipped=0
for i in "${!names[@]}"; do
    name=${names[i]}
    selected "$name" "$@" || continue
    log=$LOGS/$name.log
    mkdir -p "$(dirname "$log")"
    marker=$(mktemp)
    start=$(date +%s%N)
    rc=0
    # shellcheck disable=SC2086 # envs and cmds are word lists by design
    env ${envs[i]} timeout --kill-after=10 "${limits[i]}" ${cmds[i]} >"$log" 2>&1 </dev/null || rc=$?
    if ((rc == 0)) && [[ $name == asan/* ]] &&
        find "$LOGS" -type f -newer "$marker" -print0 | xargs -0 -r grep -qaE "$SAN_PATTERN"; then
        echo "sanitizer report in a log written by this test" >>"$log"
        rc=1
    fi
    rm -f "$marker"
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
        ((rc == 124 || rc == 137)) && why="timed out after ${limits[i]}s"
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
