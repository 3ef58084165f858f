#!/usr/bin/env bash
# podman with tools/image-test.sh's configuration: its own storage under
# build/image/storage (so the local stand-ins for debian:bookworm and
# gcr.io/distroless/static-debian13:nonroot never shadow the real images in
# the system's storage) and the settings podman needs on this kind of VM
# (runc, cgroupfs, file events, host networking, bounded ulimits); its
# temporary files and build cache mounts under build/image/tmp.
# /etc/containers is not touched.
#
#   tools/podman.sh images                 the test's images
#   tools/podman.sh run --rm localhost/sluice:distroless --version
#   tools/podman.sh --print-env            the environment it sets, for eval
#
# Env: SLUICE_IMAGE_DIR  where config and storage live (default build/image)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DIR=${SLUICE_IMAGE_DIR:-$REPO/build/image}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
# runroot and libpod's tmp_dir: on tmpfs (cleared at boot), one per DIR.
RUN_DIR=/run/sluice-image-$(printf '%s' "$DIR" | md5sum | cut -c1-8)

# Written every time (cheap), so that edits here take effect.
write_if_changed() { # FILE: stdin into FILE unless it already holds that
    local new
    new=$(cat)
    [[ -f $1 && $(<"$1") == "$new" ]] || printf '%s\n' "$new" >"$1"
}

write_if_changed "$DIR/containers.conf" <<EOF
# Written by tools/podman.sh for tools/image-test.sh; used through
# CONTAINERS_CONF, never installed in /etc.
[containers]
# podman's default (1048576) is above what this VM allows.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$DIR/podman-events.log"
tmp_dir = "$RUN_DIR/libpod"
# Locks as files under tmp_dir, not in the shared memory segment every
# podman with the default configuration uses.
lock_type = "file"
EOF

write_if_changed "$DIR/storage.conf" <<EOF
# Written by tools/podman.sh for tools/image-test.sh (CONTAINERS_STORAGE_CONF).
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "$RUN_DIR/storage"
EOF

export CONTAINERS_CONF=$DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$DIR/storage.conf
# Temporary files, and buildah's RUN --mount=type=cache directories
# ($TMPDIR/buildah-cache), under DIR too rather than in /var/tmp.
export TMPDIR=$DIR/tmp
mkdir -p "$TMPDIR"

if [[ ${1:-} == --print-env ]]; then
    printf 'export CONTAINERS_CONF=%q\nexport CONTAINERS_STORAGE_CONF=%q\nexport TMPDIR=%q\n' \
        "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF" "$TMPDIR"
    exit 0
fi
exec podman "$@"
