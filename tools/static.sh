#!/usr/bin/env bash
# Build fully static binaries: build/static/sluice and build/static/loadgen
# (for a distroless/static or scratch image), from Debian sources only.
#
#   libpq     built from the postgresql-15 Debian source package (OpenSSL;
#             no GSSAPI, LDAP, readline, ICU or zlib): Debian's libpq.a needs
#             GSSAPI and LDAP, which have no usable static libraries
#   mimalloc  built from the mimalloc Debian source package; its override
#             object (mimalloc.o) is linked first, so it is the malloc
#   liburing, librabbitmq, OpenSSL, glibc
#             Debian's own static archives (liburing-dev, librabbitmq-dev,
#             libssl-dev, libc6-dev)
#
# Sources are fetched with `apt-get source` through a private deb-src
# configuration under build/static/apt (/etc/apt is not touched), checked
# against the archive's signed Sources index (as apt-get source does), and
# cached with the built dependencies under build/static, so a second run only
# re-links what changed. Offline apart from Debian's repositories. Source
# trees are unpacked and built in a temporary directory, never under build/:
# keeping foreign *.d files (PostgreSQL has a probes.d, CMake writes *.o.d)
# out of build/ keeps the build tree ours alone.
#
# Usage: tools/static.sh          (as root when packages are missing)
# Env:   STATIC_JOBS     parallel make jobs (default 2)
#        STATIC_STRICT=1 fail (instead of warning) when an installed -dev
#                        package is not the version pinned below
#        DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR  archive URIs for deb-src
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

# ---------------------------------------------------------------- pins
# Source packages built here. Versions from bookworm (main suite); a version
# must be fetchable from the archive: bump the pin when it is superseded.
PG_PKG=postgresql-15
PG_VERSION=15.18-0+deb12u1
MI_PKG=mimalloc
MI_VERSION=2.0.9+ds-2
# Debian packages whose static archives are linked as installed: the versions
# this was tested with (a mismatch warns, or fails with STATIC_STRICT=1).
PINNED_DEV=(
    liburing-dev=2.3-3
    librabbitmq-dev=0.11.0-1+deb12u3
    libssl-dev=3.0.19-1~deb12u2
    libc6-dev=2.36-9+deb12u14
)

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
JOBS=${STATIC_JOBS:-2}
OUT=$REPO/build/static
APTDIR=$OUT/apt        # private apt configuration, lists and cache
SRC=$OUT/src           # verified source packages (.dsc, tarballs)
DEPS=$OUT/deps         # installed static dependencies (include, lib)
MAKEDIR=$OUT/make      # the Makefile's BUILD directory for the static build
LOGS=$OUT/logs

T0=$(date +%s)
step() { printf 'static.sh: [%3ds] %s\n' $(($(date +%s) - T0)) "$*"; }
die() { echo "static.sh: error: $*" >&2; exit 1; }
# run LOG CMD...: run a command with its output in $LOGS/LOG; on failure show
# the end of the log and stop.
run() {
    local log=$LOGS/$1
    shift
    if ! "$@" >>"$log" 2>&1 </dev/null; then
        echo "---- last lines of $log ----" >&2
        tail -n 30 "$log" | sed 's/^/    /' >&2
        die "failed: $* (full log: $log)"
    fi
}

mkdir -p "$OUT" "$SRC" "$DEPS" "$LOGS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-static.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK" # apt downloads as _apt into a directory below
exec 9>"$OUT/.lock"
if ! flock -n 9; then
    step "waiting for another tools/static.sh to finish"
    flock 9
fi

# ---------------------------------------------------------------- tools
# The project's own packages (compiler, -dev packages with the static
# archives), then what this script needs on top.
tools/deps.sh
extra=()
for pkg in cmake dpkg-dev bzip2 xz-utils file perl make; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -qx 'install ok installed' ||
        extra+=("$pkg")
done
if ((${#extra[@]})); then
    ((EUID == 0)) || die "missing Debian packages: ${extra[*]} (run as root, or apt-get install them)"
    step "installing ${extra[*]}"
    : >"$LOGS/apt-install.log"
    run apt-install.log apt-get update -q
    run apt-install.log env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o DPkg::Lock::Timeout=300 "${extra[@]}"
fi

for p in "${PINNED_DEV[@]}"; do
    name=${p%%=*} want=${p#*=}
    have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null) || die "$name is not installed"
    if [[ $have != "$want" ]]; then
        msg="$name is $have, static.sh was tested with $want (update PINNED_DEV after checking)"
        [[ ${STATIC_STRICT:-0} == 1 ]] && die "$msg"
        echo "static.sh: warning: $msg" >&2
    fi
done
for lib in liburing librabbitmq libssl libcrypto libc; do
    [[ -f /usr/lib/x86_64-linux-gnu/$lib.a ]] ||
        die "/usr/lib/x86_64-linux-gnu/$lib.a is missing (its -dev package ships no static archive?)"
done

# ---------------------------------------------------------------- sources
APT_OPTS=(
    -q
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$APTDIR/sources"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Get::Only-Source=true"
)
apt_updated=0
apt_update() {
    ((apt_updated)) && return 0
    mkdir -p "$APTDIR/sources" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    cat >"$APTDIR/sources/debian-src.sources" <<EOF
# Written by tools/static.sh: deb-src entries for bookworm, used only through
# apt-get -o Dir::Etc::SourceParts=$APTDIR/sources.
Types: deb-src
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $DEBIAN_SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    step "apt-get update (deb-src, private lists in ${APTDIR#"$REPO"/})"
    : >"$LOGS/apt-update.log"
    run apt-update.log apt-get "${APT_OPTS[@]}" update
    # apt-get update exits 0 even when an index could not be fetched.
    if grep -qE '^(W|E): Failed to fetch|^Err:' "$LOGS/apt-update.log"; then
        grep -E '^(W|E): |^Err:' "$LOGS/apt-update.log" >&2
        die "apt-get update could not fetch the deb-src indexes (log: $LOGS/apt-update.log)"
    fi
    apt_updated=1
}

# fetch PKG VERSION: the source package's files into $SRC, verified.
# apt-get source checks every file against the hashes in the archive's signed
# Sources index. When the pool of the suite that lists the version lacks a
# file (seen on debian-security for an .orig tarball), each missing file is
# fetched from the main archive's pool with apt-helper, checked against the
# same index hashes.
fetch() {
    local pkg=$1 ver=$2 stamp="$SRC/.ok-$1_$2"
    [[ -f $stamp ]] && return 0
    apt_update
    local log=fetch-$pkg.log uris tmp line uri name hash alt
    : >"$LOGS/$log"
    if ! uris=$(apt-get "${APT_OPTS[@]}" source --print-uris "$pkg=$ver" 2>>"$LOGS/$log"); then
        local known
        known=$(apt-cache "${APT_OPTS[@]}" showsrc "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sort -u | tr '\n' ' ')
        die "source package $pkg=$ver is not in the archive's indexes (available: ${known:-none}); update the pin in tools/static.sh"
    fi
    uris=$(grep "^'" <<<"$uris")
    [[ -n $uris ]] || die "apt-get source --print-uris $pkg=$ver listed no files (log: $LOGS/$log)"
    tmp=$(mktemp -d "$WORK/download.XXXXXX")
    chown _apt "$tmp" 2>/dev/null || true # apt downloads as _apt (sandbox)
    step "downloading $pkg $ver"
    if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" source --download-only "$pkg=$ver") >>"$LOGS/$log" 2>&1 </dev/null; then
        step "  apt-get source failed for some files; trying the main archive's pool"
        while read -r line; do
            read -r uri name _ hash <<<"$line"
            uri=${uri//\'/}
            [[ -f $tmp/$name ]] && continue
            alt=$uri
            case $uri in
                "$DEBIAN_SECURITY_MIRROR"/pool/updates/*)
                    alt=$DEBIAN_MIRROR/pool/${uri#"$DEBIAN_SECURITY_MIRROR"/pool/updates/} ;;
            esac
            if [[ $alt == "$uri" ]] ||
                ! /usr/lib/apt/apt-helper download-file "$alt" "$tmp/$name" "$hash" >>"$LOGS/$log" 2>&1 </dev/null; then
                grep -E '^(E|Err):|^  [0-9]{3} ' "$LOGS/$log" | sed 's/^/    /' >&2 || true
                [[ $alt == "$uri" ]] && alt="" || alt=" and $alt"
                die "download of $name ($pkg $ver) failed from $uri$alt (log: $LOGS/$log)"
            fi
            echo "fetched $name from $alt ($hash verified)" >>"$LOGS/$log"
        done <<<"$uris"
    fi
    while read -r line; do
        read -r _ name _ _ <<<"$line"
        [[ -f $tmp/$name ]] || die "$name ($pkg $ver) is missing after the download"
        mv -f "$tmp/$name" "$SRC/$name"
    done <<<"$uris"
    rm -rf "$tmp"
    touch "$stamp"
}

# unpack PKG VERSION DIR: fresh tree in DIR (dpkg-source checks the .dsc's
# checksums and applies Debian's patches).
unpack() {
    local pkg=$1 ver=$2 dir=$3
    rm -rf "$dir"
    run "unpack-$pkg.log" dpkg-source --no-copy -x "$SRC/${pkg}_${ver#*:}.dsc" "$dir"
}

# Hardened flags the way Debian builds its packages.
DEP_CFLAGS=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CFLAGS)
DEP_CPPFLAGS=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CPPFLAGS)
# A built dependency is reused while its version and flags are unchanged.
flags_id=$(printf '%s\n' "$DEP_CFLAGS" "$DEP_CPPFLAGS" "$(cc -dumpfullversion)" | md5sum | cut -c1-8)

# ---------------------------------------------------------------- libpq
PG_STAMP=$DEPS/.ok-libpq-$PG_VERSION-$flags_id
if [[ -f $PG_STAMP ]]; then
    step "libpq $PG_VERSION: cached"
else
    fetch "$PG_PKG" "$PG_VERSION"
    tree=$WORK/$PG_PKG-$PG_VERSION
    rm -f "$LOGS"/libpq-*.log
    step "unpacking $PG_PKG $PG_VERSION"
    unpack "$PG_PKG" "$PG_VERSION" "$tree"
    step "configuring libpq (OpenSSL; no GSSAPI, LDAP, readline, ICU, zlib)"
    run libpq-configure.log env -C "$tree" ./configure --prefix="$DEPS" \
        --with-ssl=openssl --without-gssapi --without-ldap --without-readline \
        --without-icu --without-zlib --without-lz4 --without-zstd --without-libxml \
        --without-libxslt --without-systemd --without-pam --without-selinux \
        --disable-nls CFLAGS="$DEP_CFLAGS" CPPFLAGS="$DEP_CPPFLAGS"
    step "building libpq (src/port, src/common, src/interfaces/libpq; -j$JOBS)"
    # The generated headers first (utils/errcodes.h, ...): src/port's server
    # objects include them, and a parallel libpq build does not order that.
    run libpq-build.log make -C "$tree/src/backend" generated-headers
    run libpq-build.log make -C "$tree/src/interfaces/libpq" -j"$JOBS"
    step "installing libpq into ${DEPS#"$REPO"/}"
    # Into a staging directory first: Debian's patches point some install
    # paths (src/port, src/common) at /usr/lib/postgresql, never write there.
    stage=$WORK/stage
    run libpq-install.log make -C "$tree/src/interfaces/libpq" install DESTDIR="$stage"
    outside=$(find "$stage" -type f ! -path "$stage$DEPS/*")
    [[ -z $outside ]] || die "libpq's install wrote outside $DEPS: $outside"
    rm -rf "$DEPS/lib/libpq."* "$DEPS/lib/libpgport.a" "$DEPS/lib/libpgcommon.a"
    cp -R "$stage/$DEPS/." "$DEPS/"
    rm -f "$DEPS"/lib/libpq.so*
    # libpq.pc's Libs.private: the frontend builds of src/port and src/common.
    install -m 644 "$tree/src/port/libpgport.a" "$tree/src/common/libpgcommon.a" "$DEPS/lib/"
    # The public headers libpq-fe.h includes (src/include's install would also
    # copy the whole server tree).
    install -m 644 "$tree/src/include/postgres_ext.h" "$tree/src/include/pg_config_ext.h" \
        "$DEPS/include/"
    rm -rf "$tree" # sources stay in $SRC; the installed library is all we use
    touch "$PG_STAMP"
fi

# ---------------------------------------------------------------- mimalloc
MI_STAMP=$DEPS/.ok-mimalloc-$MI_VERSION-$flags_id
if [[ -f $MI_STAMP ]]; then
    step "mimalloc $MI_VERSION: cached"
else
    fetch "$MI_PKG" "$MI_VERSION"
    tree=$WORK/$MI_PKG-$MI_VERSION
    rm -f "$LOGS"/mimalloc-*.log
    step "unpacking $MI_PKG $MI_VERSION"
    unpack "$MI_PKG" "$MI_VERSION" "$tree"
    step "building mimalloc (static library and override object)"
    # As Debian's rules (RelWithDebInfo, toplevel install), but static: the
    # object library mimalloc.o carries the malloc/free/... override.
    run mimalloc-build.log cmake -S "$tree" -B "$tree/build" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX="$DEPS" \
        -DCMAKE_C_FLAGS="$DEP_CFLAGS $DEP_CPPFLAGS" \
        -DMI_BUILD_SHARED=OFF -DMI_BUILD_STATIC=ON -DMI_BUILD_OBJECT=ON \
        -DMI_BUILD_TESTS=OFF -DMI_OVERRIDE=ON -DMI_INSTALL_TOPLEVEL=ON
    run mimalloc-build.log cmake --build "$tree/build" -j"$JOBS"
    rm -f "$DEPS"/lib/libmimalloc* "$DEPS"/lib/mimalloc.o
    run mimalloc-build.log cmake --install "$tree/build"
    [[ -f $DEPS/lib/mimalloc.o ]] || die "mimalloc's install did not produce lib/mimalloc.o"
    rm -rf "$tree"
    touch "$MI_STAMP"
fi

# ---------------------------------------------------------------- sluice, loadgen
export PKG_CONFIG_PATH=$DEPS/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
[[ $(pkg-config --variable=prefix libpq) == "$DEPS" ]] ||
    die "pkg-config does not find the built libpq.pc in $DEPS/lib/pkgconfig"
# Values from the Makefile, so this follows its edits.
# shellcheck disable=SC2016 # $($*) is make's, not the shell's
mkvar() {
    make -s --no-print-directory BUILD="$MAKEDIR" --eval='print-%: ; @echo $($*)' "print-$1"
}
PKGS=$(mkvar PKGS)
WARN=$(mkvar WARN)
MK_CFLAGS=$(mkvar CFLAGS)
LOADGEN_SRCS=$(mkvar LOADGEN_SRCS)
# mimalloc.o first: it defines malloc & co, so libc.a's malloc is never
# pulled in (checked below).
# shellcheck disable=SC2086 # PKGS is a list
LIBS="$DEPS/lib/mimalloc.o -static $(pkg-config --static --libs $PKGS) -pthread -lm"

step "building sluice (make BUILD=${MAKEDIR#"$REPO"/}; -j$JOBS)"
: >"$LOGS/sluice.log"
rm -f "$MAKEDIR/sluice" # relink: make does not know when the deps changed
# Nor when the flags changed: then compile everything again.
mk_flags="$MK_CFLAGS -DSLUICE_STATIC|$LIBS|$(stat -c '%n %Y' "$DEPS"/.ok-*)"
if [[ ! -f $MAKEDIR/.flags || $(<"$MAKEDIR/.flags") != "$mk_flags" ]]; then
    rm -rf "$MAKEDIR"
    mkdir -p "$MAKEDIR"
    printf '%s' "$mk_flags" >"$MAKEDIR/.flags"
fi
# SLUICE_STATIC: code that differs in a static binary (NSS set-up in main.c).
run sluice.log make -j"$JOBS" BUILD="$MAKEDIR" CFLAGS="$MK_CFLAGS -DSLUICE_STATIC" LIBS="$LIBS" \
    "$MAKEDIR/sluice"
install -m 755 "$MAKEDIR/sluice" "$OUT/sluice"

step "building loadgen"
# The Makefile's loadgen recipe hard-codes its libraries; the same compile
# flags and sources, linked statically (librabbitmq.a needs OpenSSL).
: >"$LOGS/loadgen.log"
# shellcheck disable=SC2046,SC2086 # word lists
run loadgen.log cc -std=gnu11 $WARN $MK_CFLAGS -D_GNU_SOURCE $LOADGEN_SRCS \
    -o "$OUT/loadgen.tmp" -static $(pkg-config --static --libs librabbitmq) -lpthread -lm
mv -f "$OUT/loadgen.tmp" "$OUT/loadgen"

# ---------------------------------------------------------------- checks
step "checking the binaries"
for b in sluice loadgen; do
    desc=$(file -b "$OUT/$b")
    [[ $desc == *"statically linked"* ]] || die "$OUT/$b is not statically linked: $desc"
done
addr() { nm "$OUT/sluice" | awk -v s="$1" '$3 == s && $2 ~ /^[TtWw]$/ { print $1; exit }'; }
[[ -n $(addr mi_malloc) && $(addr malloc) == "$(addr mi_malloc)" && $(addr free) == "$(addr mi_free)" ]] ||
    die "malloc/free in sluice are not mimalloc's (malloc at $(addr malloc), mi_malloc at $(addr mi_malloc))"
if nm "$OUT/sluice" | grep -qwE '_int_malloc|__libc_malloc_impl|malloc_consolidate'; then
    die "glibc's malloc was linked into sluice next to mimalloc"
fi
verbose=$(MIMALLOC_VERBOSE=1 "$OUT/sluice" --version 2>&1 >/dev/null) || true
grep -q '^mimalloc: ' <<<"$verbose" || die "MIMALLOC_VERBOSE=1 sluice --version printed no mimalloc lines"
"$OUT/sluice" --version >"$LOGS/version.txt" 2>&1 || die "build/static/sluice --version failed"
"$OUT/loadgen" --version >/dev/null 2>&1 || die "build/static/loadgen --version failed"

{
    echo "# build/static: what went into the static binaries ($(date -u +%FT%TZ))"
    echo "source $PG_PKG $PG_VERSION (libpq, built here)"
    echo "source $MI_PKG $MI_VERSION (mimalloc, built here)"
    for p in "${PINNED_DEV[@]}"; do
        echo "installed ${p%%=*} $(dpkg-query -W -f='${Version}' "${p%%=*}")"
    done
    echo "compiler $(cc --version | head -n 1)"
    sed 's/^/# /' "$LOGS/version.txt"
} >"$OUT/VERSIONS.txt"

nss=$(grep -c "statically linked applications requires at runtime" "$LOGS/sluice.log" || true)
step "done in $(($(date +%s) - T0)) s"
sed 's/^/    /' "$LOGS/version.txt"
for b in sluice loadgen; do
    size=$(stat -c %s "$OUT/$b")
    strip -o "$OUT/.stripped" "$OUT/$b"
    stripped=$(stat -c %s "$OUT/.stripped")
    rm -f "$OUT/.stripped"
    printf '    %-8s %9d bytes (%d stripped): %s\n' "$b" "$size" "$stripped" "$(file -b "$OUT/$b" | cut -d, -f1-4)"
done
if ((nss)); then
    echo "    note: the linker's $nss 'Using ... in statically linked applications' warnings" \
        "(getaddrinfo, getpwuid, dlopen) are expected: glibc 2.36 builds the 'files' and" \
        "'dns' NSS services into libc.a; see tests/integration/test_emptyroot.py"
fi
