#!/bin/bash
# Boot Debian's stock kernel under qemu (TCG; -enable-kvm hangs on this
# machine) with the initramfs from build-initramfs.sh and run a command in
# the guest as root, ssh-style: the arguments are joined with spaces and run
# by busybox sh, so  run-vm.sh 'kite -c /etc/kite.conf & sleep 1; client'
# works.
#
#   tests/vm/run-vm.sh [-i INITRAMFS] [-k VMLINUZ] [-t SECONDS] [-l LOG] [-q] [-v] CMD...
#
#   -k  guest kernel (default: the one build-initramfs.sh wrote beside
#       INITRAMFS, i.e. INITRAMFS minus .cpio.gz plus .vmlinuz, if there is
#       one, else build/vm/vmlinuz)
#   -t  hard bound on the whole VM run (default 120 s; the guest command
#       gets the same minus 15 s)
#   -l  console log file (default build/vm/console.log)
#   -q  don't echo the console live (it is still logged)
#   -v  kernel boot messages too (default: quiet)
#   Env: VM_MEM (512M), VM_SMP (2), QEMU (qemu-system-x86_64)
#
# Exit 0 only if the guest printed its PASS marker; 1 on FAIL, SKIP, timeout
# or no marker; 77 only if qemu or the kernel/initramfs are missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VMDIR=${VM_BUILD_DIR:-$ROOT/build/vm}
INITRD=$VMDIR/initramfs.cpio.gz
KERNEL=
TMO=120
LOG=$VMDIR/console.log
QUIET=0
VERBOSE=0
QEMU=${QEMU:-qemu-system-x86_64}

while getopts "i:k:t:l:qvh" opt; do
    case $opt in
        i) INITRD=$OPTARG ;;
        k) KERNEL=$OPTARG ;;
        t) TMO=$OPTARG ;;
        l) LOG=$OPTARG ;;
        q) QUIET=1 ;;
        v) VERBOSE=1 ;;
        h) sed -n '2,22p' "$0"; exit 0 ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($#)) || { echo "usage: run-vm.sh [opts] CMD..." >&2; exit 2; }
if [ -z "$KERNEL" ]; then
    KERNEL=${INITRD%.cpio.gz}.vmlinuz
    [ -r "$KERNEL" ] || KERNEL=$VMDIR/vmlinuz
fi

command -v "$QEMU" >/dev/null || { echo "run-vm: SKIP: $QEMU not found (apt-get install qemu-system-x86)" >&2; exit 77; }
[ -r "$KERNEL" ] || { echo "run-vm: SKIP: no kernel $KERNEL (run build-initramfs.sh)" >&2; exit 77; }
[ -r "$INITRD" ] || { echo "run-vm: SKIP: no initramfs $INITRD (run build-initramfs.sh)" >&2; exit 77; }

TPID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kite-vm.XXXXXX")
QPID=
cleanup() {
    # `timeout` leads its own process group (it calls setpgid): killing the
    # group reaches qemu even if timeout itself is gone.
    if [ -n "$QPID" ]; then
        kill -TERM -- "-$QPID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 -- "-$QPID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$QPID" 2>/dev/null || true
    fi
    [ -n "$TPID" ] && kill "$TPID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Per-run command, token and timeout go in a second cpio archive appended to
# the base one (the kernel unpacks concatenated archives in order).
TOKEN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$WORK/root/etc/kite-vm"
printf '%s\n' "$*" > "$WORK/root/etc/kite-vm/cmd"
echo "$TOKEN" > "$WORK/root/etc/kite-vm/token"
echo $((TMO > 30 ? TMO - 15 : TMO)) > "$WORK/root/etc/kite-vm/timeout"
(cd "$WORK/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$WORK/run.cpio"
# The kernel looks for a following archive only at a 4-byte aligned offset:
# pad the (compressed) base archive with zeros to a 512-byte boundary.
cp "$INITRD" "$WORK/initrd"
pad=$(( (512 - $(stat -c %s "$WORK/initrd") % 512) % 512 ))
head -c "$pad" /dev/zero >> "$WORK/initrd"
cat "$WORK/run.cpio" >> "$WORK/initrd"

APPEND="console=ttyS0 panic=-1 oops=panic rdinit=/init"
((VERBOSE)) || APPEND+=" quiet loglevel=3"

mkdir -p "$(dirname "$LOG")"
: > "$LOG"
start=$(date +%s.%N)
timeout -k 5 "$TMO" "$QEMU" -accel tcg -cpu max -m "${VM_MEM:-512M}" \
    -smp "${VM_SMP:-2}" -nodefaults -no-user-config -display none \
    -no-reboot -serial "file:$LOG" -monitor none \
    -kernel "$KERNEL" -initrd "$WORK/initrd" -append "$APPEND" \
    < /dev/null > "$WORK/qemu.out" 2>&1 &
QPID=$!
if ((QUIET)); then
    wait "$QPID" && qrc=0 || qrc=$?
else
    tail -n +1 -f --pid="$QPID" "$LOG" &
    TPID=$!
    wait "$QPID" && qrc=0 || qrc=$?
    wait "$TPID" 2>/dev/null || true
    TPID=
fi
QPID=
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')

if [ -s "$WORK/qemu.out" ]; then
    sed 's/^/run-vm: qemu: /' "$WORK/qemu.out" >&2
fi
res=$(tr -d '\r' < "$LOG" | grep -a "^KITE-VM-RESULT $TOKEN " | tail -1 || true)
verdict=$(echo "$res" | awk '{print $3}')
case $verdict in
    PASS) echo "run-vm: PASS in ${secs}s (console: $LOG)" >&2; exit 0 ;;
    FAIL|SKIP) echo "run-vm: guest reported $verdict ($(echo "$res" | awk '{print $4}')) after ${secs}s (console: $LOG)" >&2 ;;
    *)
        if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
            echo "run-vm: FAIL: timed out after ${TMO}s with no result (console: $LOG)" >&2
        else
            echo "run-vm: FAIL: no result marker, qemu exit $qrc after ${secs}s (console: $LOG)" >&2
        fi ;;
esac
exit 1
