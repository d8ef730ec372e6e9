#!/bin/bash
# Build a small initramfs that boots Debian's stock kernel (which has
# CONFIG_TLS=m) under qemu, with busybox, the kTLS kernel modules and the
# given test binaries plus their shared libraries.
#
#   tests/vm/build-initramfs.sh [-o OUT.cpio.gz] [-k TREE] [-f SRC[:DEST]]... [-m MODULE]... [BIN...]
#
#   BIN          executable copied to /bin/<basename> with its ldd libraries
#   -f SRC:DEST  extra file or directory (copied recursively) into the image;
#                DEST defaults to SRC's absolute path
#   -m MODULE    extra kernel module (with its dependencies) to load at boot
#   -o OUT       output archive (default build/vm/initramfs.cpio.gz)
#   -k TREE      kernel tree from fetch-kernel.sh instead of the host's
#                Debian kernel (also env VM_KERNEL_ROOT)
#
# Produces OUT and the guest kernel beside it (OUT minus .cpio.gz, plus
# .vmlinuz); with the host's kernel also build/vm/vmlinuz. Prints OUT.
# Exit 77 (skip) only if the kernel package or busybox cannot be installed.
# run-vm.sh boots the result; the test command is given at run time.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VMDIR=${VM_BUILD_DIR:-$ROOT/build/vm}
OUT=$VMDIR/initramfs.cpio.gz
FILES=()
EXTRA_MODS=()
BINS=()
KROOT=${VM_KERNEL_ROOT:-}

# Crypto the kernel's TLS ULP asks for (gcm(aes), ccm(aes),
# rfc7539(chacha20,poly1305)), in generic and x86 (AES-NI, CLMUL, SSSE3/AVX)
# flavours; all are modules in Debian's 6.1 kernel. `tls` itself has no
# deps. From 6.15 or so on, ghash/poly1305 and the x86 chacha code are
# library code (built in, or pulled in as libchacha/libpoly1305) and the
# chacha20 cipher is `chacha`. Only REQUIRED (and -m) must exist, as a
# module or built in; the rest is skipped where the kernel has no such module.
MODULES=(tls gcm ccm ctr seqiv ghash_generic ghash_clmulni_intel aesni_intel
         chacha20poly1305 chacha_generic chacha_x86_64 poly1305_generic
         poly1305_x86_64 chacha)
REQUIRED=(tls gcm chacha20poly1305)

die()  { echo "build-initramfs: $*" >&2; exit 1; }
skip() { echo "build-initramfs: SKIP: $*" >&2; exit 77; }

while getopts "o:f:m:k:h" opt; do
    case $opt in
        o) OUT=$OPTARG ;;
        k) KROOT=$OPTARG ;;
        f) FILES+=("$OPTARG") ;;
        m) EXTRA_MODS+=("$OPTARG") ;;
        h) sed -n '2,19p' "$0"; exit 0 ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
BINS=("$@")
MODULES+=("${EXTRA_MODS[@]+"${EXTRA_MODS[@]}"}")
REQUIRED+=("${EXTRA_MODS[@]+"${EXTRA_MODS[@]}"}")

# ---- packages -------------------------------------------------------------
# linux-image-amd64 pulls initramfs-tools for the host; harmless here (this
# machine does not boot from /boot). The lock timeout lets a concurrent
# apt-get from another session finish instead of failing.
need_pkgs=()
pkgs=(qemu-system-x86 busybox-static cpio kmod gzip)
if [ -n "$KROOT" ]; then pkgs+=(xz-utils); else pkgs=(linux-image-amd64 "${pkgs[@]}"); fi
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    [ "$(id -u)" = 0 ] || skip "missing packages ${need_pkgs[*]} and not root"
    echo "build-initramfs: installing ${need_pkgs[*]}" >&2
    # INITRD=No: the kernel postinst skips building a host initrd we never use.
    export DEBIAN_FRONTEND=noninteractive INITRD=No
    apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    if ! timeout 900 apt-get "${apt_opts[@]}" install "${need_pkgs[@]}" >&2; then
        timeout 300 apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
        timeout 900 apt-get "${apt_opts[@]}" install "${need_pkgs[@]}" >&2 ||
            skip "apt-get could not install ${need_pkgs[*]}"
    fi
fi

# ---- kernel ---------------------------------------------------------------
mkdir -p "$VMDIR"
# cp -u would keep an older kernel whose copy is newer than a new source.
put() { cmp -s "$1" "$2" || cp "$1" "$2"; }
MP=()           # modprobe's options to resolve modules against the kernel
if [ -n "$KROOT" ]; then
    # A tree from fetch-kernel.sh: <TREE>/lib/modules/<KV> (lib may be a
    # symlink to usr/lib, which is where trixie's packages put it), depmod'ed.
    [ -d "$KROOT" ] || die "no kernel tree $KROOT"
    KROOT=$(cd "$KROOT" && pwd)
    KV=$(for d in "$KROOT"/lib/modules/*/ "$KROOT"/usr/lib/modules/*/; do
             if [ -d "$d" ]; then basename "$d"; fi; done | sort -u)
    if [ -z "$KV" ] || [ "$(echo "$KV" | wc -l)" != 1 ]; then
        die "$KROOT needs exactly one lib/modules/<version>, found: $(echo "${KV:-none}" | tr '\n' ' ')"
    fi
    MODDIR=$KROOT/lib/modules/$KV
    [ -e "$MODDIR/modules.dep" ] ||
        die "$MODDIR has no modules.dep (use fetch-kernel.sh, or: ln -s usr/lib $KROOT/lib; depmod -b $KROOT $KV)"
    VMLINUZ=$MODDIR/vmlinuz
    [ -r "$VMLINUZ" ] || VMLINUZ=$KROOT/boot/vmlinuz-$KV
    [ -r "$VMLINUZ" ] || die "no $MODDIR/vmlinuz or $KROOT/boot/vmlinuz-$KV"
    MP=(-d "$KROOT")
else
    # The version linux-image-amd64 points at, else the newest with tls.ko.
    KV=${VM_KERNEL_VERSION:-}
    if [ -z "$KV" ]; then
        KV=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null |
             grep -o 'linux-image-[^ ,]*-amd64' | head -1 | sed 's/^linux-image-//') || true
    fi
    if [ -z "$KV" ] || [ ! -e "/boot/vmlinuz-$KV" ]; then
        KV=$(for d in /lib/modules/*-amd64; do [ -d "$d" ] && basename "$d"; done | sort -V | tail -1)
    fi
    if [ -z "$KV" ] || [ ! -r "/boot/vmlinuz-$KV" ]; then skip "no Debian amd64 kernel in /boot"; fi
    MODDIR=/lib/modules/$KV
    ls "$MODDIR"/kernel/net/tls/tls.ko* >/dev/null 2>&1 || skip "$MODDIR has no tls.ko"
    VMLINUZ=/boot/vmlinuz-$KV
    # Existing callers boot build/vm/vmlinuz: the host kernel's copy.
    put "$VMLINUZ" "$VMDIR/vmlinuz"
    echo "$KV" > "$VMDIR/kernel-version"
fi
mkdir -p "$(dirname "$OUT")"
put "$VMLINUZ" "${OUT%.cpio.gz}.vmlinuz"

# ---- staging tree ---------------------------------------------------------
STAGE=${OUT%.cpio.gz}.stage     # one per output, so builds can run side by side
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,lib64,usr/bin,usr/sbin,lib/modules/"$KV"}
cp /bin/busybox "$STAGE/bin/busybox"
file -L "$STAGE/bin/busybox" 2>/dev/null | grep -q "dynamically linked" &&
    die "/bin/busybox is dynamic; install busybox-static"
# A link per applet; don't shadow the test binaries copied below.
for a in $("$STAGE/bin/busybox" --list-full); do
    [ -e "$STAGE/$a" ] || ln -s /bin/busybox "$STAGE/$a"
done

# Modules: copy each with its dependencies (paths as in modules.dep),
# uncompressed, to the guest's /lib/modules/<KV>, then depmod the staging
# tree so busybox modprobe (also the kernel's request_module helper) works
# inside the guest. Only modules (not built-ins) go in the boot-time list.
: > "$STAGE/etc/kite-vm-modules"
absent=() builtin=()
for m in "${MODULES[@]}"; do
    if ! deps=$(modprobe "${MP[@]+"${MP[@]}"}" -S "$KV" --show-depends "$m" 2>/dev/null); then
        [[ " ${REQUIRED[*]} " == *" $m "* ]] && die "unknown module $m for $KV"
        absent+=("$m")
        continue
    fi
    n=0
    while read -r verb path _; do
        [ "$verb" = insmod ] || continue
        n=$((n + 1))
        dst=$STAGE/lib/modules/$KV/${path#*/lib/modules/"$KV"/}
        case $dst in *.ko.xz|*.ko.zst|*.ko.gz) dst=${dst%.*} ;; esac
        [ -e "$dst" ] && continue
        mkdir -p "$(dirname "$dst")"
        case $path in
            *.ko.xz)  xz -dc "$path"    > "$dst" ;;
            *.ko.zst) zstd -qdc "$path" > "$dst" ;;
            *.ko.gz)  gzip -dc "$path"  > "$dst" ;;
            *)        cp "$path" "$dst" ;;
        esac
    done <<< "$deps"
    if ((n)); then echo "$m" >> "$STAGE/etc/kite-vm-modules"; else builtin+=("$m"); fi
done
if ((${#absent[@]} + ${#builtin[@]})); then
    echo "build-initramfs: $KV: built in: ${builtin[*]:-none}; no such module (skipped): ${absent[*]:-none}" >&2
fi
for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ -e "$MODDIR/$f" ] && cp "$MODDIR/$f" "$STAGE/lib/modules/$KV/"
done
depmod -b "$STAGE" "$KV"

# ---- binaries and libraries ----------------------------------------------
copy_libs() {   # copy the ELF's shared libraries (and the loader) at their paths
    local lib
    for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$STAGE$lib" ] && continue
        mkdir -p "$STAGE$(dirname "$lib")"
        cp -L "$lib" "$STAGE$lib"
    done
}
for b in "${BINS[@]+"${BINS[@]}"}"; do
    [ -x "$b" ] || die "not an executable: $b"
    rm -f "$STAGE/bin/$(basename "$b")"
    cp -L "$b" "$STAGE/bin/$(basename "$b")"
    copy_libs "$b"
done
for spec in "${FILES[@]+"${FILES[@]}"}"; do
    src=${spec%%:*}
    dst=${spec#*:}
    [ "$dst" = "$spec" ] && dst=$(readlink -f "$src")
    [ -e "$src" ] || die "no such file: $src"
    mkdir -p "$STAGE$(dirname "$dst")"
    rm -rf "${STAGE:?}$dst"
    cp -rL "$src" "$STAGE$dst"
    # Executables passed as files get their libraries too.
    if [ -f "$src" ] && [ -x "$src" ]; then copy_libs "$src"; fi
done
# OpenSSL's default config and the names glibc looks up for localhost.
if [ -e /usr/lib/ssl/openssl.cnf ]; then
    mkdir -p "$STAGE/usr/lib/ssl" "$STAGE/etc/ssl"
    cp -L /usr/lib/ssl/openssl.cnf "$STAGE/etc/ssl/openssl.cnf"
    ln -sf /etc/ssl/openssl.cnf "$STAGE/usr/lib/ssl/openssl.cnf"
fi
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' > "$STAGE/etc/hosts"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n' > "$STAGE/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$STAGE/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files\nservices: files\n' > "$STAGE/etc/nsswitch.conf"
echo "$KV" > "$STAGE/etc/kite-vm-kernel"

install -m 0755 "$HERE/init" "$STAGE/init"

# ---- archive ---------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --quiet --reproducible |
    gzip -1 -n) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "build-initramfs: kernel ${OUT%.cpio.gz}.vmlinuz ($KV), initramfs $OUT ($(du -h "$OUT" | cut -f1))" >&2
echo "$OUT"
