#!/bin/bash
# Fetch a newer Debian kernel than the host's (for the VM tests) straight from
# the Debian archive, verified the way apt verifies it: InRelease signed by
# the Debian archive keyring -> SHA256 of Packages.xz -> SHA256 of each .deb.
#
#   tests/vm/fetch-kernel.sh [-s SUITE] [-f FLAVOUR] [-n MIN_VERSION]
#
#   -s  suite (default trixie-backports)
#   -f  kernel flavour (default cloud-amd64)
#   -n  lowest acceptable kernel version (default 6.14, the first with kTLS
#       TLS 1.3 KeyUpdate: TlsRxRekeyOk/TlsTxRekeyOk in /proc/net/tls_stat)
#   Env: VM_BUILD_DIR (build/vm), DEBIAN_MIRROR (http://deb.debian.org/debian)
#
# Picks the newest linux-modules-<KV>-<FLAVOUR> >= MIN_VERSION with its
# linux-binary-<KV>-<FLAVOUR> (or linux-image-<KV>-<FLAVOUR>, which holds
# everything in suites without split packages) and linux-base-<KV>-<FLAVOUR>
# (modules.builtin, modules.order, config) if there is one, extracts them
# into VM_BUILD_DIR/kernels/<KV>/, runs depmod there and prints that
# directory on stdout. A complete tree is reused without downloading the
# .debs again; with no network, the newest cached tree >= MIN_VERSION is used.
# Exit 0 ok, 77 (skip) if the archive or tools are unavailable, 1 on a
# verification mismatch or any other error.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VMDIR=${VM_BUILD_DIR:-$ROOT/build/vm}
KDIR=$VMDIR/kernels
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUITE=trixie-backports
FLAVOUR=cloud-amd64
MIN=6.14

die()  { echo "fetch-kernel: $*" >&2; exit 1; }
skip() { echo "fetch-kernel: SKIP: $*" >&2; exit 77; }

while getopts "s:f:n:h" opt; do
    case $opt in
        s) SUITE=$OPTARG ;;
        f) FLAVOUR=$OPTARG ;;
        n) MIN=$OPTARG ;;
        h) sed -n '2,22p' "$0"; exit 0 ;;
        *) exit 2 ;;
    esac
done

# ---- tools ----------------------------------------------------------------
need=()
command -v curl  >/dev/null || need+=(curl)
command -v gpgv  >/dev/null || need+=(gpgv)
command -v xz    >/dev/null || need+=(xz-utils)
command -v depmod >/dev/null || need+=(kmod)
[ -r "$KEYRING" ] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
    [ "$(id -u)" = 0 ] || skip "missing ${need[*]} and not root"
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    timeout 600 apt-get "${apt_opts[@]}" install "${need[@]}" >&2 || {
        timeout 300 apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
        timeout 600 apt-get "${apt_opts[@]}" install "${need[@]}" >&2 ||
            skip "apt-get could not install ${need[*]}"
    }
fi

mkdir -p "$KDIR"
TMP=$(mktemp -d "$KDIR/.fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# A tree is complete once it has .kite-kernel: "<KV> <package version> <suite>".
complete() { [ -s "$KDIR/$1/.kite-kernel" ]; }

# No network (or no index): fall back to the newest complete cached tree
# from this suite and flavour whose package version is >= MIN, else skip.
offline() {
    local best='' bestv='' kv v s
    for f in "$KDIR"/*/.kite-kernel; do
        [ -e "$f" ] || continue
        read -r kv v s < "$f"
        [ "$s" = "$SUITE" ] || continue
        case $kv in *-"$FLAVOUR") ;; *) continue ;; esac
        dpkg --compare-versions "$v" ge "$MIN" || continue
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$bestv"; then
            best=$kv bestv=$v
        fi
    done
    [ -n "$best" ] || skip "$1, and no cached $SUITE kernel >= $MIN in $KDIR"
    echo "fetch-kernel: $1; using cached $best" >&2
    echo "$KDIR/$best"
    exit 0
}

get() {   # URL-path FILE MAX-SECONDS
    curl -fsSL --connect-timeout 10 --retry 2 -m "$3" -o "$2" "$MIRROR/$1"
}

# ---- index: InRelease (signed) -> Packages.xz (hash) ------------------------
t0=$(date +%s.%N)
get "dists/$SUITE/InRelease" "$TMP/InRelease" 30 ||
    offline "cannot download $MIRROR/dists/$SUITE/InRelease"
grep -q '^-----BEGIN PGP SIGNED MESSAGE-----' "$TMP/InRelease" ||
    offline "$MIRROR/dists/$SUITE/InRelease is not a signed file"
# Only what gpgv checked (--output) is used, never the raw file.
gpgv --keyring "$KEYRING" --output "$TMP/Release" "$TMP/InRelease" 2>"$TMP/gpgv.log" ||
    { cat "$TMP/gpgv.log" >&2; die "bad signature on $SUITE/InRelease"; }
grep -Eq "^(Codename|Suite): $SUITE\$" "$TMP/Release" ||
    die "InRelease is not for $SUITE: $(grep -E '^(Suite|Codename):' "$TMP/Release" | tr '\n' ' ')"
until=$(sed -n 's/^Valid-Until: //p' "$TMP/Release")
if [ -n "$until" ] && [ "$(date -d "$until" +%s)" -lt "$(date +%s)" ]; then
    die "$SUITE/InRelease expired on $until (stale mirror?)"
fi
want=$(awk '/^SHA256:/{on=1; next} /^[^ ]/{on=0} on && $3=="main/binary-amd64/Packages.xz"{print $1}' "$TMP/Release")
[ -n "$want" ] || die "InRelease lists no main/binary-amd64/Packages.xz"
get "dists/$SUITE/main/binary-amd64/Packages.xz" "$TMP/Packages.xz" 120 ||
    offline "cannot download $SUITE/main/binary-amd64/Packages.xz"
echo "$want  $TMP/Packages.xz" | sha256sum -c --quiet - >/dev/null 2>&1 ||
    die "SHA256 mismatch for $SUITE/main/binary-amd64/Packages.xz"

# "name version filename sha256" of each linux-{modules,binary,image,base}-*-FLAVOUR.
xz -dc "$TMP/Packages.xz" | awk -v fl="-$FLAVOUR" '
    /^Package: /  { p = $2 } /^Version: / { v = $2 }
    /^Filename: / { f = $2 } /^SHA256: /  { s = $2 }
    /^$/ { if (p ~ /^linux-(modules|binary|image|base)-[0-9]/ && substr(p, length(p) - length(fl) + 1) == fl)
               print p, v, f, s
           p = v = f = s = "" }
    END  { if (p ~ /^linux-(modules|binary|image|base)-[0-9]/ && substr(p, length(p) - length(fl) + 1) == fl)
               print p, v, f, s }' > "$TMP/kernels"

# Newest modules package >= MIN. Suites without split packages (bookworm)
# have everything in linux-image-<KV>-<FLAVOUR>.
pick() {   # prefix: prints "name version filename sha256" of the newest >= MIN
    local best='' bestv='' n v f s
    while read -r n v f s; do
        case $n in "$1"-*) ;; *) continue ;; esac
        dpkg --compare-versions "$v" ge "$MIN" || continue
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$bestv"; then
            best="$n $v $f $s" bestv=$v
        fi
    done < "$TMP/kernels"
    echo "$best"
}
if grep -q '^linux-modules-' "$TMP/kernels"; then
    sel=$(pick linux-modules)
else
    sel=$(pick linux-image)
fi
[ -n "$sel" ] || skip "no linux-modules-*-$FLAVOUR >= $MIN in $SUITE"
read -r name ver _ _ <<< "$sel"
KV=${name#linux-modules-}
KV=${KV#linux-image-}
debs=("$sel")
if [ "$name" = "linux-modules-$KV" ]; then
    img=$(awk -v n="linux-binary-$KV" -v v="$ver" '$1 == n && $2 == v' "$TMP/kernels")
    [ -n "$img" ] || img=$(awk -v n="linux-image-$KV" -v v="$ver" '$1 == n && $2 == v' "$TMP/kernels")
    [ -n "$img" ] || die "$name $ver has no linux-binary-$KV or linux-image-$KV of the same version"
    debs+=("$img")
    # Split suites keep modules.builtin, modules.order and config here (1 MB).
    base=$(awk -v n="linux-base-$KV" -v v="$ver" '$1 == n && $2 == v' "$TMP/kernels")
    [ -z "$base" ] || debs+=("$base")
fi
t_index=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')

TREE=$KDIR/$KV
if complete "$KV" && [ "$(cat "$TREE/.kite-kernel")" = "$KV $ver $SUITE" ]; then
    echo "fetch-kernel: $KV ($ver, newest >= $MIN in $SUITE) cached in $TREE" >&2
    echo "$TREE"
    exit 0
fi

# ---- download, verify, extract -------------------------------------------
t1=$(date +%s.%N)
bytes=0
for d in "${debs[@]}"; do
    read -r n v f s <<< "$d"
    get "$f" "$TMP/$n.deb" 600 || offline "cannot download $MIRROR/$f"
    echo "$s  $TMP/$n.deb" | sha256sum -c --quiet - >/dev/null 2>&1 ||
        die "SHA256 mismatch for $f"
    bytes=$((bytes + $(stat -c %s "$TMP/$n.deb")))
done
t2=$(date +%s.%N)
rm -rf "$TMP/tree"
for d in "${debs[@]}"; do
    read -r n _ <<< "$d"
    dpkg-deb -x "$TMP/$n.deb" "$TMP/tree"
    rm -f "$TMP/$n.deb"
done
# depmod -b wants BASE/lib/modules/KV; trixie ships usr/lib/modules.
if [ -d "$TMP/tree/usr/lib/modules/$KV" ] && [ ! -e "$TMP/tree/lib" ]; then
    ln -s usr/lib "$TMP/tree/lib"
fi
[ -d "$TMP/tree/lib/modules/$KV" ] || die "$name has no lib/modules/$KV"
ls "$TMP/tree/lib/modules/$KV"/kernel/net/tls/tls.ko* >/dev/null 2>&1 ||
    die "$KV has no kernel/net/tls/tls.ko (CONFIG_TLS not a module?)"
[ -e "$TMP/tree/lib/modules/$KV/vmlinuz" ] || [ -e "$TMP/tree/boot/vmlinuz-$KV" ] ||
    die "no vmlinuz for $KV in ${debs[*]%% *}"
depmod -b "$TMP/tree" "$KV"
echo "$KV $ver $SUITE" > "$TMP/tree/.kite-kernel"
t3=$(date +%s.%N)

# Publish with one rename; a concurrent fetch of the same KV may have won.
if [ "$(cat "$TREE/.kite-kernel" 2>/dev/null)" != "$KV $ver $SUITE" ]; then
    rm -rf "$TREE"
    mv -T "$TMP/tree" "$TREE" 2>/dev/null || complete "$KV" || die "cannot create $TREE"
fi
el() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
echo "fetch-kernel: $KV ($ver, newest >= $MIN in $SUITE) in $TREE:" \
     "$((bytes / 1048576)) MiB of verified .debs; index ${t_index}s," \
     "download $(el "$t1" "$t2")s, extract+depmod $(el "$t2" "$t3")s" >&2
echo "$TREE"
