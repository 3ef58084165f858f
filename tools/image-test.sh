#!/usr/bin/env bash
# `make image-test`: build Dockerfile.distroless with podman, with no
# container registry at all, and run the image against the local servers.
#
#   1. checks compose.yaml (parses; services rabbitmq, postgres, sluice,
#      loadgen; health-gated start; every file it names exists) and
#      deploy/seccomp-io_uring.json (an allow-list that allows io_uring)
#   2. docker.io/library/debian:bookworm, made here: debootstrap --variant=
#      minbase from Debian's archive (the tarball is cached in build/image),
#      shaped like the official image (deb822 sources with -updates and
#      -security, policy-rc.d, its apt/dpkg settings), then dist-upgraded
#   3. gcr.io/distroless/static-debian13:nonroot, a local stand-in with the
#      real image's files, users and configuration (no binaries, no libc;
#      passwd/group with nonroot 65532, nsswitch.conf, the CA bundle,
#      tzdata, netbase's files, /tmp, /home/nonroot; USER 65532, WORKDIR
#      /home/nonroot, PATH and SSL_CERT_FILE as distroless sets them)
#   4. podman build -f Dockerfile.distroless (docker format: HEALTHCHECK);
#      its builder stage is tagged too, so that pruning the dangling images
#      of earlier builds keeps the builder's cached layers
#   5. the image: its user, entrypoint, environment, health check, files
#      (no shell), size; sluice --version and loadgen --version in it
#   6. sluice in the image, as uid 65532, read-only root, no capabilities,
#      host networking (the servers listen on 127.0.0.1), --until-empty:
#      once under podman's default seccomp profile (expects the epoll
#      backend and its warning) and once under deploy/seccomp-io_uring.json
#      (expects io_uring); build/loadgen publishes on the host first and the
#      row count in PostgreSQL must match
#   7. the health check (sluice --health-check, see deploy/README.md) when
#      the binary has it: unhealthy with no sluice running, healthy while
#      one runs, and a clean exit on SIGTERM
#
# Podman runs through tools/podman.sh: storage and configuration under
# build/image (nothing in /etc changes, and the stand-ins never shadow real
# images in the system's storage). Idempotent: a second run reuses the
# tarball, the base images (re-imported only when their content changes) and
# podman's layer cache. Containers it starts are removed on exit.
#
# Usage: tools/image-test.sh      (as root; make image-test runs it)
# Env:   IMAGE_TEST_COUNT=N       messages per run (default 20000)
#        IMAGE_TEST_REBUILD=1     build the image with --no-cache
#        SLUICE_IMAGE_DIR=DIR     cache, podman storage, logs (default build/image)
#        DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR   archive URIs
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
# shellcheck source=tools/distroless-root.sh
. "$REPO/tools/distroless-root.sh"

DIR=${SLUICE_IMAGE_DIR:-$REPO/build/image}
export SLUICE_IMAGE_DIR=$DIR # tools/podman.sh: the same config and storage
LOGS=$DIR/logs
IMAGE=localhost/sluice:distroless
DEBIAN_TAG=docker.io/library/debian:bookworm
DEBIAN_RAW=localhost/sluice-image-test/debian-debootstrap:bookworm
BUILDER=localhost/sluice-image-test/build:latest # Dockerfile.distroless's builder stage
DISTROLESS_TAG=gcr.io/distroless/static-debian13:nonroot
SECCOMP=$REPO/deploy/seccomp-io_uring.json
COUNT=${IMAGE_TEST_COUNT:-20000}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
TARBALL=$DIR/debian-bookworm-minbase.tar
LABEL=org.sluice.image-test # labels on the images made here: what they were made from

T0=$(date +%s)
step() { printf 'image-test: [%4ds] %s\n' $(($(date +%s) - T0)) "$*"; }
die() {
    echo "image-test: FAILED: $*" >&2
    exit 1
}
pm() { "$REPO/tools/podman.sh" "$@"; }
# run LOG CMD...: CMD's output into $LOGS/LOG; on failure its last lines and stop.
run() {
    local log=$LOGS/$1
    shift
    if ! "$@" >>"$log" 2>&1 </dev/null; then
        echo "---- last lines of $log ----" >&2
        tail -n 40 "$log" | sed 's/^/    /' >&2
        die "$* (full log: $log)"
    fi
}
# timed NAME CMD...: run CMD, remember how long it took under NAME.
declare -A TIMES BIN_SIZE BACKEND
timed() {
    local name=$1 t
    shift
    t=$(date +%s)
    "$@"
    TIMES[$name]=$(($(date +%s) - t))
}

((EUID == 0)) || die "run as root (debootstrap, rootful podman)"
mkdir -p "$DIR" "$LOGS"
exec 9>"$DIR/.lock"
flock -n 9 || {
    step "waiting for another tools/image-test.sh to finish"
    flock 9
}

# ---------------------------------------------------------------- packages
missing=()
for pkg in podman runc debootstrap python3-yaml postgresql-client-15 tar file; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -qx 'install ok installed' ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    : >"$LOGS/apt-install.log"
    run apt-install.log apt-get update -q
    run apt-install.log env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}"
fi
[[ -x build/loadgen ]] || die "build/loadgen is missing (run make; make image-test does)"
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || die "IMAGE_TEST_COUNT must be a positive number, got '$COUNT'"

# Containers this run starts; removed on exit, whatever happens.
STARTED=()
cleanup() {
    local c
    for c in "${STARTED[@]}"; do
        pm rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. files
step "checking compose.yaml and deploy/seccomp-io_uring.json"
/usr/bin/python3 - "$REPO" <<'EOF' || die "compose.yaml or the seccomp profile (see above)"
import json, os, sys
import yaml

repo = sys.argv[1]
errors = []
def err(msg):
    errors.append(msg)

with open(os.path.join(repo, "compose.yaml")) as f:
    doc = yaml.safe_load(f)  # YAML 1.1 merge keys (<<) included
services = doc.get("services") or {}
want = {"rabbitmq", "postgres", "sluice", "loadgen"}
if set(services) != want:
    err(f"services are {sorted(services)}, want {sorted(want)}")

def exists(path, what, kind="any"):
    p = os.path.normpath(os.path.join(repo, path))
    ok = os.path.isdir(p) if kind == "dir" else os.path.isfile(p) if kind == "file" else os.path.exists(p)
    if not ok:
        err(f"{what}: {path} does not exist")
    return p

refs = 0
for name, svc in services.items():
    svc = svc or {}
    build = svc.get("build")
    if build is not None:
        if isinstance(build, str):
            build = {"context": build}
        ctx = exists(build.get("context", "."), f"{name}: build context", "dir")
        exists(os.path.relpath(os.path.join(ctx, build.get("dockerfile", "Dockerfile")), repo),
               f"{name}: dockerfile", "file")
        refs += 2
    for v in svc.get("volumes") or []:
        src = v.get("source") if isinstance(v, dict) and v.get("type") == "bind" else \
            v.split(":", 1)[0] if isinstance(v, str) else None
        if src and src[0] in "./~":
            exists(src, f"{name}: bind mount")
            refs += 1
    for o in svc.get("security_opt") or []:
        key, _, val = o.partition("=") if "=" in o else o.partition(":")
        if key == "seccomp" and val not in ("unconfined", "builtin"):
            exists(val, f"{name}: seccomp profile", "file")
            refs += 1
    ef = svc.get("env_file") or []
    for e in [ef] if isinstance(ef, str) else ef:
        exists(e if isinstance(e, str) else e["path"], f"{name}: env_file", "file")
        refs += 1

def need(cond, msg):
    if not cond:
        err(msg)

if want <= set(services):
    rmq, pg, sl, lg = (services[n] for n in ("rabbitmq", "postgres", "sluice", "loadgen"))
    need(str(rmq.get("image", "")).startswith("rabbitmq:3-management"), "rabbitmq: image is not rabbitmq:3-management")
    need(str(pg.get("image", "")).startswith("postgres:15"), "postgres: image is not postgres:15")
    for n in ("rabbitmq", "postgres", "sluice"):
        hc = services[n].get("healthcheck") or {}
        need(hc.get("test") and not hc.get("disable"), f"{n}: no healthcheck")
    need((sl.get("build") or {}).get("dockerfile") == "Dockerfile.distroless",
         "sluice: not built from Dockerfile.distroless")
    need(lg.get("image") == sl.get("image") and lg.get("build") == sl.get("build"),
         "loadgen: not the same image as sluice")
    need(lg.get("entrypoint") == ["/usr/local/bin/loadgen"], "loadgen: entrypoint is not /usr/local/bin/loadgen")
    for n, deps in (("sluice", ("rabbitmq", "postgres")), ("loadgen", ("rabbitmq",))):
        d = services[n].get("depends_on") or {}
        for dep in deps:
            need(isinstance(d, dict) and (d.get(dep) or {}).get("condition") == "service_healthy",
                 f"{n}: does not wait for {dep} to be healthy")
    need("seccomp=deploy/seccomp-io_uring.json" in (sl.get("security_opt") or []),
         "sluice: security_opt lacks seccomp=deploy/seccomp-io_uring.json")
    env = sl.get("environment") or {}
    for k in ("RABBITMQ_URL", "POSTGRES_DSN", "SLUICE_QUEUE"):
        need(k in env, f"sluice: environment lacks {k}")

prof = json.load(open(os.path.join(repo, "deploy/seccomp-io_uring.json")))
need(prof.get("defaultAction") == "SCMP_ACT_ERRNO", "seccomp profile: defaultAction is not SCMP_ACT_ERRNO")
for s in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
    allow = [r for r in prof["syscalls"] if s in (r.get("names") or []) and r.get("action") == "SCMP_ACT_ALLOW"
             and not r.get("args") and not r.get("includes") and not r.get("excludes")]
    deny = [r for r in prof["syscalls"] if s in (r.get("names") or []) and r.get("action") != "SCMP_ACT_ALLOW"]
    need(allow and not deny, f"seccomp profile: {s} is not allowed unconditionally")
need(len([r for r in prof["syscalls"] if r.get("action") == "SCMP_ACT_ALLOW"]) > 5,
     "seccomp profile: not a default profile's allow-list")

for e in errors:
    print(f"image-test: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"image-test:         compose.yaml: services {', '.join(services)}; "
      f"{refs} file references, all present; seccomp profile: {len(prof['syscalls'])} rules, io_uring allowed")
EOF
rc=0
deploy/seccomp-io_uring.py --check >"$LOGS/seccomp-check.log" 2>&1 || rc=$?
case $rc in
    0) step "  deploy/seccomp-io_uring.json is /usr/share/containers/seccomp.json plus io_uring" ;;
    77) step "  note: no /usr/share/containers/seccomp.json to compare the profile with" ;;
    *) step "  note: $(cat "$LOGS/seccomp-check.log") (this host's default profile differs from its base)" ;;
esac

# ---------------------------------------------------------------- servers
tools/servers.sh start >/dev/null
eval "$(tools/servers.sh env)"
case $RABBITMQ_URL$POSTGRES_DSN in
    *@127.0.0.1:*@127.0.0.1:*) ;;
    *) die "the local servers are not on 127.0.0.1 ($RABBITMQ_URL, DSN host)" ;;
esac

drop_table() {
    psql -qX "$POSTGRES_DSN" -c 'SET client_min_messages = warning' -c "DROP TABLE IF EXISTS $1" >/dev/null
}

# ---------------------------------------------------------------- 2. debian:bookworm
# label VALUE of IMAGE, or nothing
label_of() { pm image inspect --format "{{index .Labels \"$LABEL.$2\"}}" "$1" 2>/dev/null || true; }

make_tarball() {
    local root=$DIR/debian-rootfs.tmp
    rm -rf --one-file-system "$root"
    step "debootstrap --variant=minbase bookworm (log: ${LOGS#"$REPO"/}/debootstrap.log)"
    : >"$LOGS/debootstrap.log"
    run debootstrap.log debootstrap --variant=minbase --arch=amd64 \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg bookworm "$root" "$DEBIAN_MIRROR"
    # As the official image (debuerreotype): deb822 sources with updates and
    # security, no services started by package scripts, its apt/dpkg tweaks,
    # no apt lists or caches, no host files.
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    echo 'force-unsafe-io' >"$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/log/* "$root/etc/resolv.conf" "$root/etc/hostname" "$root"/tmp/*
    : >"$root/etc/machine-id"
    tar --numeric-owner --xattrs -C "$root" -cf "$TARBALL.tmp" .
    mv -f "$TARBALL.tmp" "$TARBALL"
    rm -rf --one-file-system "$root"
}

debian_image() {
    [[ -f $TARBALL ]] || timed debootstrap make_tarball
    local sum
    sum=$(sha256sum "$TARBALL" | cut -c1-16)
    if [[ $(label_of "$DEBIAN_TAG" tarball) == "$sum" ]]; then
        step "$DEBIAN_TAG: cached (from ${TARBALL#"$REPO"/}, $(du -h "$TARBALL" | cut -f1))"
        return
    fi
    step "importing ${TARBALL#"$REPO"/} and upgrading it (bookworm-updates, -security) into $DEBIAN_TAG"
    : >"$LOGS/debian-image.log"
    run debian-image.log pm import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' "$TARBALL" "$DEBIAN_RAW"
    mkdir -p "$DIR/debian-context"
    cat >"$DIR/debian-context/Containerfile" <<EOF
FROM $DEBIAN_RAW
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get dist-upgrade -y -q \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
LABEL $LABEL.tarball="$sum" \\
      $LABEL.note="local stand-in for $DEBIAN_TAG (debootstrap minbase), made by tools/image-test.sh"
EOF
    run debian-image.log pm build --pull=never --network host --format docker \
        -t "$DEBIAN_TAG" "$DIR/debian-context"
    pm rmi "$DEBIAN_RAW" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- 3. distroless stand-in
distroless_root() {
    local root=$1
    rm -rf --one-file-system "$root"
    distroless_files "$root"
    install -d -m 755 "$root/var/lib/dpkg/status.d"
}

distroless_image() {
    local root=$DIR/distroless-root tar=$DIR/distroless-root.tar sum
    for f in /etc/ssl/certs/ca-certificates.crt /etc/services /etc/protocols /usr/share/zoneinfo/UTC; do
        [[ -e $f ]] || die "$f is missing on this host (ca-certificates, netbase, tzdata)"
    done
    distroless_root "$root"
    # Reproducible tar: the same files give the same checksum, so the image
    # is imported again only when its content changes.
    tar --sort=name --mtime=@0 --numeric-owner --format=gnu -C "$root" -cf "$tar" .
    rm -rf --one-file-system "$root"
    sum=$(sha256sum "$tar" | cut -c1-16)
    if [[ $(label_of "$DISTROLESS_TAG" root) == "$sum" ]]; then
        step "$DISTROLESS_TAG: cached (local stand-in)"
        rm -f "$tar"
        return
    fi
    step "importing the stand-in for $DISTROLESS_TAG"
    : >"$LOGS/distroless-image.log"
    run distroless-image.log pm import \
        --change 'USER 65532' \
        --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL $LABEL.root=$sum" \
        --change "LABEL $LABEL.stand-in=$DISTROLESS_TAG" \
        "$tar" "$DISTROLESS_TAG"
    rm -f "$tar"
}

timed debian-base debian_image
timed distroless-base distroless_image

# ---------------------------------------------------------------- 4. build
# build TAG [ARGS...]: podman build of Dockerfile.distroless, its progress
# (the build's steps, tools/static.sh's step lines) shown, all in build.log.
build() {
    local tag=$1 args
    shift
    args=(build --pull=never --network host --format docker
        --ignorefile deploy/distroless.dockerignore -f Dockerfile.distroless -t "$tag" "$@")
    [[ ${IMAGE_TEST_REBUILD:-0} == 1 ]] && args+=(--no-cache)
    if ! pm "${args[@]}" . 2>&1 </dev/null | tee -a "$LOGS/build.log" |
        grep --line-buffered -E '^(\[[0-9]+/[0-9]+\] )?STEP [0-9]+/[0-9]+|^static\.sh: ' |
        sed -u 's/^/    /'; then
        echo "---- last lines of $LOGS/build.log ----" >&2
        tail -n 40 "$LOGS/build.log" | sed 's/^/    /' >&2
        die "podman build failed (full log: $LOGS/build.log)"
    fi
}
build_image() {
    step "podman build -f Dockerfile.distroless -t $IMAGE (log: ${LOGS#"$REPO"/}/build.log)"
    : >"$LOGS/build.log"
    # The builder stage gets a tag of its own: its layers (the packages
    # above all) stay podman's build cache when dangling images of earlier
    # builds are pruned below; the image's build then reuses them.
    build "$BUILDER" --target build
    build "$IMAGE"
    pm image prune -f >>"$LOGS/build.log" 2>&1 || true
}
timed build build_image

# ---------------------------------------------------------------- 5. the image
step "checking the image"
inspect() { pm image inspect --format "$1" "$IMAGE"; }
user=$(inspect '{{.Config.User}}')
[[ $user == 65532 || $user == 65532:65532 ]] || die "image user is '$user', want 65532 (nonroot)"
entry=$(inspect '{{json .Config.Entrypoint}}')
[[ $entry == '["/usr/local/bin/sluice"]' ]] || die "entrypoint is $entry"
env_=$(inspect '{{json .Config.Env}}')
[[ $env_ == *'"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"'* ]] || die "SSL_CERT_FILE not set: $env_"
health=$(inspect '{{json .Config.Healthcheck.Test}}' 2>/dev/null || true)
[[ $health == '["CMD","/usr/local/bin/sluice","--health-check"]' ]] ||
    die "health check is '$health' (built with --format docker?)"
SIZE=$(inspect '{{.Size}}')

# The files: everything but the two binaries comes from the base.
cid=$(pm create --pull=never --no-healthcheck "$IMAGE")
STARTED+=("$cid")
pm export "$cid" >"$DIR/export.tar"
pm rm -f "$cid" >/dev/null
listing=$(tar -tvf "$DIR/export.tar")
files=$(tar -tf "$DIR/export.tar" | grep -vc '/$' || true)
for f in usr/local/bin/sluice usr/local/bin/loadgen etc/ssl/certs/ca-certificates.crt etc/passwd; do
    grep -qE " \./$f\$| $f\$" <<<"$listing" || die "the image has no /$f"
done
if grep -qE ' (\./)?(bin/sh|usr/bin/sh|bin/bash|lib/x86_64-linux-gnu/libc\.so\.6|lib64/ld-linux-x86-64\.so\.2)( |$)' <<<"$listing"; then
    die "the image has a shell or a dynamic libc: $(grep -E 'bin/sh|libc\.so|ld-linux' <<<"$listing" | head -3)"
fi
mkdir -p "$DIR/export"
tar -xf "$DIR/export.tar" -C "$DIR/export" ./usr/local/bin/sluice ./usr/local/bin/loadgen 2>/dev/null ||
    tar -xf "$DIR/export.tar" -C "$DIR/export" usr/local/bin/sluice usr/local/bin/loadgen
for b in sluice loadgen; do
    desc=$(file -b "$DIR/export/usr/local/bin/$b")
    [[ $desc == *"statically linked"* ]] || die "/usr/local/bin/$b in the image is not static: $desc"
    BIN_SIZE[$b]=$(stat -c %s "$DIR/export/usr/local/bin/$b")
done
rm -rf "$DIR/export" "$DIR/export.tar"

RUN_OPTS=(--pull=never --network host --no-healthcheck --read-only --cap-drop all
    --security-opt no-new-privileges)
version=$(pm run --rm "${RUN_OPTS[@]}" "$IMAGE" --version 2>&1) || die "sluice --version in the image: $version"
lg_version=$(pm run --rm "${RUN_OPTS[@]}" --entrypoint /usr/local/bin/loadgen "$IMAGE" --version 2>&1) ||
    die "loadgen --version in the image: $lg_version"
step "  user $user, entrypoint $entry, health check $health"
step "  $files files, no shell, no libc; size $SIZE bytes; $(head -n 1 <<<"$version")"

# ---------------------------------------------------------------- 6. ingest
# ingest MODE: publish COUNT messages on the host, drain them with sluice in
# the image, check the backend it logged and the row count.
ingest() {
    local mode=$1 q=image_test_$1 name=sluice-image-test-$1-$$ log=$LOGS/run-$1.log opts rows rc=0
    local profile="podman's default seccomp profile"
    opts=("${RUN_OPTS[@]}")
    if [[ $mode == io_uring ]]; then
        opts+=(--security-opt "seccomp=$SECCOMP")
        profile=deploy/seccomp-io_uring.json
    fi
    step "run '$mode': publishing $COUNT messages to queue $q (build/loadgen on the host)"
    drop_table "$q" || die "psql: cannot reach PostgreSQL"
    : >"$LOGS/loadgen-$mode.log"
    run "loadgen-$mode.log" build/loadgen --queue "$q" --declare --purge \
        --count "$COUNT" --size 200 --shape json --connections 2
    step "run '$mode': sluice in the image (uid 65532, read-only, no capabilities, $profile), --until-empty"
    STARTED+=("$name")
    timeout --kill-after=10 300 "$REPO/tools/podman.sh" run --rm --name "$name" "${opts[@]}" \
        -e RABBITMQ_URL -e POSTGRES_DSN -e SLUICE_QUEUE="$q" -e SLUICE_TABLE="$q" \
        -e SLUICE_STATS_INTERVAL=0 "$IMAGE" --until-empty >"$log" 2>&1 </dev/null || rc=$?
    sed 's/^/    | /' "$log"
    ((rc == 0)) || die "sluice in the image exited with $rc (run '$mode', log: $log)"
    BACKEND[$mode]=$(sed -n 's/.*I\/O backend: \([a-z_]*\).*/\1/p' "$log" | head -n 1)
    case $mode in
        default)
            [[ ${BACKEND[$mode]} == epoll ]] ||
                die "under podman's default seccomp profile sluice ran on '${BACKEND[$mode]}', expected epoll"
            grep -q 'io_uring is unavailable' "$log" ||
                die "sluice ran on epoll without its 'io_uring is unavailable' warning"
            ;;
        io_uring)
            [[ ${BACKEND[$mode]} == io_uring ]] ||
                die "under deploy/seccomp-io_uring.json sluice ran on '${BACKEND[$mode]}', expected io_uring"
            ! grep -q 'io_uring is unavailable' "$log" || die "io_uring reported unavailable"
            ;;
    esac
    rows=$(psql -qAtX "$POSTGRES_DSN" -c "SELECT count(*) FROM $q") || die "psql: count of $q"
    [[ $rows == "$COUNT" ]] || die "run '$mode': published $COUNT messages, table $q holds $rows rows"
    drop_table "$q"
    step "run '$mode': backend ${BACKEND[$mode]}, $rows of $COUNT rows"
}
timed run-default ingest default
timed run-io_uring ingest io_uring

# ---------------------------------------------------------------- 7. health check
HEALTH="skipped: this sluice has no --health-check yet (contract: deploy/README.md)"
if grep -q -- '--health-check' <<<"$(pm run --rm "${RUN_OPTS[@]}" "$IMAGE" --help 2>&1)"; then
    step "health check: none running -> unhealthy; running -> healthy; SIGTERM -> exit 0"
    rc=0
    pm run --rm "${RUN_OPTS[@]}" "$IMAGE" --health-check >"$LOGS/health.log" 2>&1 || rc=$?
    ((rc == 1)) || die "sluice --health-check with no sluice running exited $rc, want 1 ($(cat "$LOGS/health.log"))"
    q=image_test_health name=sluice-image-test-health-$$
    run health.log build/loadgen --queue "$q" --declare --purge --count 100
    drop_table "$q"
    STARTED+=("$name")
    run health.log pm run -d --name "$name" "${RUN_OPTS[@]}" --security-opt "seccomp=$SECCOMP" \
        -e RABBITMQ_URL -e POSTGRES_DSN -e SLUICE_QUEUE="$q" -e SLUICE_TABLE="$q" "$IMAGE"
    ok=0
    for ((i = 0; i < 30; i++)); do
        if pm exec "$name" /usr/local/bin/sluice --health-check >>"$LOGS/health.log" 2>&1; then
            ok=1
            break
        fi
        sleep 1
    done
    ((ok)) || {
        pm logs "$name" 2>&1 | tail -n 20 | sed 's/^/    | /' >&2
        die "sluice --health-check never turned healthy in 30 s (log: $LOGS/health.log)"
    }
    run health.log pm stop -t 40 "$name"
    code=$(pm inspect --format '{{.State.ExitCode}}' "$name")
    ((code == 0)) || die "sluice exited $code after SIGTERM"
    pm rm -f "$name" >/dev/null
    rows=$(psql -qAtX "$POSTGRES_DSN" -c "SELECT count(*) FROM $q")
    drop_table "$q"
    [[ $rows == 100 ]] || die "health run: 100 published, $rows rows"
    HEALTH="ok: unhealthy (1) with none running, healthy after $i s, exit 0 on SIGTERM"
fi

# ---------------------------------------------------------------- summary
step "PASSED"
cat <<EOF
    image          $IMAGE, $SIZE bytes (podman image inspect .Size), $files files
                   sluice $(printf '%s' "${BIN_SIZE[sluice]:-?}") bytes, loadgen ${BIN_SIZE[loadgen]:-?} bytes (stripped)
    default seccomp        backend ${BACKEND[default]} (io_uring blocked), $COUNT rows
    seccomp-io_uring.json  backend ${BACKEND[io_uring]}, $COUNT rows
    health check   $HEALTH
    times (s)      debian base ${TIMES[debian-base]} (debootstrap ${TIMES[debootstrap]:-cached}),
                   distroless base ${TIMES[distroless-base]}, build ${TIMES[build]},
                   run default ${TIMES[run-default]}, run io_uring ${TIMES[run-io_uring]},
                   total $(($(date +%s) - T0))
EOF
