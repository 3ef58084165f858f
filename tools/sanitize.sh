#!/usr/bin/env bash
# Build sluice and its unit tests with AddressSanitizer (+ LeakSanitizer) and
# UndefinedBehaviorSanitizer into build/asan/. tests/run.sh then runs them as
# the asan/* tests: the unit tests, and every integration test with
# SLUICE_BIN=build/asan/sluice (`make sanitize` runs just those).
#
# Usage: tools/sanitize.sh
# Env:   SAN_CC   compiler (default clang-14, else clang)
#
# mimalloc is linked last: ASan's allocator lives in the executable and still
# interposes malloc; mimalloc only supplies mi_version for --version.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ASAN_BUILD=build/asan
CC_SAN=${SAN_CC:-$(command -v clang-14 >/dev/null 2>&1 && echo clang-14 || echo clang)}
# -ftrivial-auto-var-init=pattern: an uninitialised local holds 0xAA... rather
# than whatever the stack had, so reading one fails the same way every run.
SAN_FLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
SAN_FLAGS+=" -ftrivial-auto-var-init=pattern"
SAN_LIBS="$(pkg-config --libs liburing librabbitmq libpq openssl) -pthread -lm -lmimalloc"

unit_bins=()
for src in tests/unit/test_*.c; do
    unit_bins+=("$ASAN_BUILD/tests/$(basename "$src" .c)")
done
mkdir -p "$ASAN_BUILD"
if ! make -j2 BUILD="$ASAN_BUILD" CC="$CC_SAN" CFLAGS="$SAN_FLAGS" LIBS="$SAN_LIBS" \
    "$ASAN_BUILD/sluice" "${unit_bins[@]}" >"$ASAN_BUILD/build.log" 2>&1; then
    tail -n 40 "$ASAN_BUILD/build.log" >&2
    echo "sanitize.sh: build failed (log: $ASAN_BUILD/build.log)" >&2
    exit 2
fi
