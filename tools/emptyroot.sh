#!/usr/bin/env bash
# Make an otherwise empty root filesystem shaped like gcr.io/distroless/static
# (Debian 13; files from tools/distroless-root.sh) with the static binaries in /usr/local/bin: no libc, no NSS
# modules, no shell. For trying build/static/* the way the image runs them:
#
#   tools/emptyroot.sh /tmp/root
#   chroot --userspec=65532:65532 /tmp/root /usr/local/bin/sluice --version
#
# What distroless/static has, copied from this host or written here:
#   /etc/passwd, /etc/group   root 0, nobody 65534, nonroot 65532 (distroless's)
#   /etc/nsswitch.conf        distroless's file: "hosts: files dns", and
#                             "passwd: compat" (a static glibc has no compat
#                             module: getpwuid() finds no one; see the test)
#   /etc/ssl/certs/ca-certificates.crt   the CA bundle (SSL_CERT_FILE)
#   /usr/share/zoneinfo, /etc/services, /etc/protocols   tzdata and netbase
#   /etc/os-release, /tmp (1777), /root (700), /home/nonroot (700, 65532)
# and what a container runtime adds at run time:
#   /etc/hosts                127.0.0.1 and ::1 localhost, as Docker writes it
#   /etc/resolv.conf          this host's (Docker copies the host's too)
#
# Usage: tools/emptyroot.sh DIR [BINARY...]
#   BINARYs default to build/static/sluice and build/static/loadgen.
#   DIR must not exist, be empty, or be a root this script made (it is then
#   made again); anything else is refused.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
MARK=.sluice-emptyroot

die() { echo "emptyroot.sh: $*" >&2; exit 1; }
# shellcheck source=tools/distroless-root.sh
. "$REPO/tools/distroless-root.sh"

(($# >= 1)) || die "usage: tools/emptyroot.sh DIR [BINARY...]"
dir=$1
shift
bins=("$@")
((${#bins[@]})) || bins=("$REPO/build/static/sluice" "$REPO/build/static/loadgen")
((EUID == 0)) || die "run as root (files must belong to root and to uid 65532)"

for f in /etc/ssl/certs/ca-certificates.crt /etc/services /etc/protocols /usr/share/zoneinfo; do
    [[ -e $f ]] || die "$f is missing on this host (ca-certificates, netbase, tzdata)"
done
for b in "${bins[@]}"; do
    [[ -f $b && -x $b ]] || die "$b is missing (run tools/static.sh)"
    file -b "$b" | grep -q 'statically linked' || die "$b is not statically linked"
done

case $(realpath -m -- "$dir") in
    / | /etc | /usr | /tmp | /home | /root | "$REPO") die "refusing to use $dir" ;;
esac
if [[ -e $dir ]]; then
    [[ -d $dir ]] || die "$dir exists and is not a directory"
    if [[ -e $dir/$MARK ]]; then
        rm -rf --one-file-system -- "$dir"
    elif [[ -n $(ls -A -- "$dir") ]]; then
        die "$dir is not empty and was not made by this script"
    fi
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
touch "$dir/$MARK"
distroless_files "$dir"
install -d -m 755 "$dir/usr/local/bin"

# As Docker writes it for a container on the default network.
cat >"$dir/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
if [[ -f /etc/resolv.conf ]]; then
    cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
fi
find "$dir/etc" -maxdepth 1 -type f -exec chmod 644 {} +

for b in "${bins[@]}"; do
    install -m 755 "$b" "$dir/usr/local/bin/$(basename "$b")"
done

# Nothing that could make a static binary work by accident.
found=$(find "$dir" \( -name 'ld-linux*' -o -name 'libc.so*' -o -name 'libnss_*' \
    -o -name '*.so' -o -name '*.so.*' \) -print)
[[ -z $found ]] || die "unexpected shared objects in $dir: $found"
echo "emptyroot.sh: made $dir ($(du -sh "$dir" | cut -f1)): ${bins[*]##*/} in /usr/local/bin"
