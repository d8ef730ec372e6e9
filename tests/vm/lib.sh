# shellcheck shell=bash
# Sourced by tests/vm/test_*_vm.sh: the steps each of them repeated, so a
# change to how images are built, booted or judged is made once. The
# script sets NAME (how its messages begin) before sourcing.
#
#   fail MSG / skip MSG        exit 1 / exit 77 (the VM could not run)
#   vm_kite DEFAULT            sets KITE: $KITE, else DEFAULT, else
#                              build/kite
#   vm_kite_pki DIR [CLIENT...] `kite cert`: a CA, a server certificate for
#                              127.0.0.1 and localhost, a client certificate
#                              per name; readable by the guest's users
#   vm_python DIR              the host's Python 3 and paho-mqtt for the
#                              guest, staged in DIR: sets PY_FILES, the
#                              build-initramfs.sh options that add them
#   vm_boot IMAGE LOG TIMEOUT GUEST_CMD BUILD_INITRAMFS_ARG...
#                              builds the image, boots it, runs GUEST_CMD;
#                              VM_RC is the run's exit status
#   vm_report LOG TAG [RE]     the guest's PASS/FAIL lines and its "TAG:"
#                              summary (and lines matching RE), without
#                              the boot noise
#   vm_verdict LOG TAG         says PASS or FAIL and exits with VM_RC

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export VM_BUILD_DIR=${VM_BUILD_DIR:-$ROOT/build/vm}

fail() { echo "$NAME: FAIL: $*"; exit 1; }
skip() { echo "$NAME: SKIP: $*"; exit 77; }

vm_kite() {
    KITE=${KITE:-$1}
    [ -x "$KITE" ] || KITE=$ROOT/build/kite
    [ -x "$KITE" ] || fail "no kite binary $KITE (run make)"
}

vm_kite_pki() {
    local dir=$1 c ok=1
    shift
    mkdir -p "$(dirname "$dir")"
    {
        "$KITE" cert ca --dir "$dir" &&
        "$KITE" cert server 127.0.0.1 localhost --dir "$dir"
    } >/dev/null 2>&1 || ok=0
    for c in "$@"; do
        "$KITE" cert client "$c" --dir "$dir" >/dev/null 2>&1 || ok=0
    done
    [ $ok = 1 ] || fail "kite cert"
    chmod -R a+rX "$dir"
}

vm_python() {
    local dir=$1 py pylib so
    py=$(readlink -f /usr/bin/python3)
    pylib=/usr/lib/$(basename "$py")
    [ -d /usr/lib/python3/dist-packages/paho ] ||
        fail "python3-paho-mqtt is not installed (tools/deps.sh)"
    mkdir -p "$dir"
    # The standard library without what a client never imports (tests,
    # GUI, packaging): 38 of its 54 MB.
    tar -C "$(dirname "$pylib")" -cf - --exclude=test --exclude=idlelib --exclude=tkinter \
        --exclude=lib2to3 --exclude=ensurepip --exclude=pydoc_data --exclude=turtledemo \
        --exclude=config-3.\* "$(basename "$pylib")" | tar -C "$dir" -xf - ||
        fail "copying the Python library"
    PY_FILES=(-f "$dir/$(basename "$pylib"):$pylib"
              -f "/usr/lib/python3/dist-packages/paho:/usr/lib/python3/dist-packages/paho"
              -f "$py:/usr/bin/python3")
    for so in "$pylib"/lib-dynload/_ssl.*.so "$pylib"/lib-dynload/_hashlib.*.so; do
        PY_FILES+=(-f "$so:$so")
    done
}

vm_boot() {
    local image=$1 log=$2 timeout=$3 cmd=$4 rc
    shift 4
    "$HERE/build-initramfs.sh" -o "$image" "$@" >/dev/null
    rc=$?
    [ $rc = 77 ] && skip "cannot build the VM"
    [ $rc = 0 ] || fail "build-initramfs.sh exit $rc"
    "$HERE/run-vm.sh" -q -t "$timeout" -i "$image" -l "$log" "$cmd"
    VM_RC=$?
    [ $VM_RC = 77 ] && skip "cannot run the VM"
}

vm_report() {
    local re="^(PASS|FAIL|$2:|---|[0-9]+: ${3:+|$3})"
    tr -d '\r' < "$1" | grep -aE "$re" | head -150
}

vm_verdict() {
    grep -aq "^$2: " "$1" || echo "$NAME: FAIL: no report from the guest (console: $1)"
    if [ "$VM_RC" = 0 ]; then echo "$NAME: PASS"; else echo "$NAME: FAIL"; fi
    exit "$VM_RC"
}
