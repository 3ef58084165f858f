# The files of gcr.io/distroless/static-debian13 (no binaries, no libc):
# users root 0, nobody 65534 and nonroot 65532, their groups, distroless's
# nsswitch.conf ("hosts: files dns", "passwd: compat"), os-release, this
# host's CA bundle, services, protocols and tzdata, /tmp (1777), /root (700),
# /home/nonroot (700, 65532). Sourced by tools/emptyroot.sh (a root to chroot
# into) and tools/image-test.sh (the stand-in base image).
# shellcheck shell=bash

distroless_files() {
    local root=$1
    umask 022
    install -d -m 755 "$root" "$root/etc" "$root/etc/ssl/certs" "$root/usr/share" "$root/home"
    install -d -m 1777 "$root/tmp"
    install -d -m 700 "$root/root"
    install -d -m 700 -o 65532 -g 65532 "$root/home/nonroot"
    # distroless's users, groups and nsswitch.conf.
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
    cat >"$root/etc/nsswitch.conf" <<'EOF'
# /etc/nsswitch.conf
#
# Example configuration of GNU Name Service Switch functionality.
# If you have the `glibc-doc-reference' and `info' packages installed, try:
# `info libc "Name Service Switch"' for information about this file.

passwd:         compat
group:          compat
shadow:         compat
gshadow:        files

hosts:          files dns
networks:       files

protocols:      db files
services:       db files
ethers:         db files
rpc:            db files

netgroup:       nis
EOF
    cat >"$root/etc/os-release" <<'EOF'
PRETTY_NAME="Distroless"
NAME="Debian GNU/Linux"
ID="debian"
VERSION_ID="13"
VERSION="Debian GNU/Linux 13 (trixie)"
HOME_URL="https://github.com/GoogleContainerTools/distroless"
SUPPORT_URL="https://github.com/GoogleContainerTools/distroless/blob/master/README.md"
BUG_REPORT_URL="https://github.com/GoogleContainerTools/distroless/issues/new"
EOF
    install -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    install -m 644 /etc/services /etc/protocols "$root/etc/"
    cp -a /usr/share/zoneinfo "$root/usr/share/zoneinfo"
}
