#!/usr/bin/env bash
# Install the Debian packages sluice needs (build, local servers, tests).
# Idempotent and fast: checks each package with dpkg-query and only runs
# apt-get (as root) when something is missing; silent when nothing is.
set -euo pipefail

PACKAGES=(
    # build: compiler toolchain and the libraries src/ links against
    build-essential pkg-config liburing-dev librabbitmq-dev libpq-dev
    libmimalloc-dev libssl-dev
    # servers: binaries used by tools/servers.sh (its own clusters, not the system ones)
    postgresql-15 postgresql-client-15 rabbitmq-server
    # tests: python3-psycopg is psycopg 3; clang for libFuzzer and the
    # sanitizer builds (tests/fuzz, tools/sanitize.sh)
    python3 python3-pika python3-psycopg procps
    clang-14 libclang-rt-14-dev llvm-14
)

is_installed() {
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -qx 'install ok installed'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then exit 0; fi

if ((EUID != 0)); then
    echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
    echo "deps.sh: run as root to install them: sudo $0" >&2
    exit 1
fi

log=$(mktemp /tmp/sluice-deps.XXXXXX.log)
apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install "${apt_opts[@]}" "${missing[@]}"; } >"$log" 2>&1 </dev/null; then
    tail -n 40 "$log" >&2
    echo "deps.sh: apt-get failed installing: ${missing[*]} (full log: $log)" >&2
    exit 1
fi
rm -f "$log"
echo "deps.sh: installed ${missing[*]}"
