#!/usr/bin/env bash
# Build and run sluice's libFuzzer targets (tests/fuzz/fuzz_*.c), one at a
# time: AddressSanitizer + UndefinedBehaviorSanitizer + leak detection.
#
# Usage: tests/fuzz/run.sh [--short|--long|--repro] [TARGET...]
#   --short  (default) the seeds, then FUZZ_RUNS (300000) mutated inputs
#            per target from a fixed random seed: reproducible; for
#            `make check`.
#   --long   FUZZ_SECONDS (600) per target; for `make fuzz`.
#   --repro  run the reproducers of known, unfixed findings
#            (tests/fuzz/crashes/TARGET/*) once each; say which still fail.
#   TARGET   fuzz_amqp_input, fuzz_row, fuzz_config (default: all)
# Env: FUZZ_SECONDS  seconds per target (--long)
#      FUZZ_RUNS     mutated inputs per target (--short)
#      FUZZ_NICE     nice level for the fuzzers (default 0)
#      FUZZ_CC       compiler (default clang-14, else clang)
#
# Inputs: the committed seeds tests/fuzz/corpus/TARGET/ (read only; made by
# tests/fuzz/gen_seeds.c) and build/fuzz/corpus-TARGET/, where new inputs
# that reach new code are kept from run to run. A crash, leak, sanitizer
# report, timeout or invariant failure stops that target and saves the input
# as build/fuzz/artifacts/TARGET/crash-* (or leak-*, timeout-*, oom-*); the
# output is in build/fuzz/logs/TARGET.log. Exit status: 0 when every target
# ran clean, 1 otherwise, 2 on a usage or build error.
#
# Reproduce a finding:  build/fuzz/TARGET build/fuzz/artifacts/TARGET/crash-...
# (prints sluice's log lines too, which the runs here hide).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ALL=(fuzz_amqp_input fuzz_row fuzz_config)

mode=short
targets=()
for a in "$@"; do
    case $a in
        --short) mode=short ;;
        --long) mode=long ;;
        --repro) mode=repro ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        fuzz_*) targets+=("$a") ;;
        *) echo "run.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
    esac
done
((${#targets[@]})) || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
    [[ -f tests/fuzz/$t.c ]] || { echo "run.sh: no target $t" >&2; exit 2; }
done
secs=${FUZZ_SECONDS:-600}

OUT=build/fuzz
mkdir -p "$OUT/logs"
if ! make -s -f tests/fuzz/fuzz.mk -j1 "${targets[@]/#/$OUT/}" >"$OUT/logs/build.log" 2>&1; then
    tail -n 40 "$OUT/logs/build.log" >&2
    echo "run.sh: building the fuzzers failed (log: $OUT/logs/build.log)" >&2
    exit 2
fi

# Fatal sanitizers; libFuzzer itself checks for leaks after each input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:handle_abort=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
if [[ $mode == repro ]]; then
    for t in "${targets[@]}"; do
        for f in "tests/fuzz/crashes/$t"/*; do
            [[ -f $f ]] || continue
            log=$OUT/logs/repro-$t-$(basename "$f").log
            if "$OUT/$t" "$f" >"$log" 2>&1 </dev/null; then
                echo "fixed       $f"
            else
                failed=1
                echo "STILL FAILS $f (log: $log)"
                grep -aE 'ERROR: |runtime error|invariant failed' "$log" | head -n 2 |
                    sed 's/^/    /' || true
            fi
        done
    done
    exit $failed
fi

for t in "${targets[@]}"; do
    artifacts=$OUT/artifacts/$t/
    log=$OUT/logs/$t.log
    if [[ $mode == short ]]; then
        # Reproducible for make check: a fixed seed, a fixed number of
        # inputs and only the committed seeds (a scratch corpus), so the
        # same build explores the same inputs on every machine.
        corpus=$(mktemp -d)
        limit=(-seed=1 -runs="${FUZZ_RUNS:-300000}")
    else
        corpus=$OUT/corpus-$t
        limit=(-max_total_time="$secs")
    fi
    mkdir -p "$corpus" "$artifacts"
    args=(
        "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -use_value_profile=1
        -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$artifacts"
        "$corpus" "tests/fuzz/corpus/$t"
    )
    before=$(find "$artifacts" -type f | sort)
    start=$(date +%s)
    rc=0
    nice -n "${FUZZ_NICE:-0}" "$OUT/$t" "${args[@]}" >"$log" 2>&1 </dev/null || rc=$?
    took=$(($(date +%s) - start))
    [[ $mode == short ]] && rm -rf "$corpus"
    stats=$(grep -aE '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
    cov=$(grep -aoE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || true)
    if ((rc == 0)); then
        echo "PASS $t (${took}s, ${stats:-?} inputs; $cov)"
    else
        failed=1
        echo "FAIL $t (${took}s, exit $rc; log: $log)"
        grep -aE 'ERROR: |runtime error|invariant failed|SUMMARY|^    #[0-9]+ ' "$log" | head -n 30 |
            sed 's/^/    /' || true
        new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort))
        if [[ -n $new ]]; then
            sed "s|^|    reproduce: $OUT/$t |" <<<"$new"
        else
            tail -n 20 "$log" | sed 's/^/    /'
        fi
    fi
done
exit $failed
