#!/bin/bash
# MQTT over WebSockets over TLS (a wss listener) with kernel TLS, on a
# kernel that has it (Debian 12's, in qemu): paho-mqtt with
# transport="websockets" against kite, TLS 1.2 and 1.3. See
# guest_ktls_wss.sh for what is asserted.
#
#   tests/vm/test_ktls_wss_vm.sh
#   Env: KITE (default build/asan/kite, else build/kite), VM_TIMEOUT (240 s).
#   Exit 0 pass, 1 fail, 77 VM unavailable.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export VM_BUILD_DIR=${VM_BUILD_DIR:-$ROOT/build/vm}
export VM_MEM=${VM_MEM:-1G}
KITE=${KITE:-$ROOT/build/asan/kite}
[ -x "$KITE" ] || KITE=$ROOT/build/kite
W=$VM_BUILD_DIR/wss
LOG=$VM_BUILD_DIR/wss-console.log
IMAGE=$VM_BUILD_DIR/wss-initramfs.cpio.gz
fail() { echo "test_ktls_wss_vm: FAIL: $*"; exit 1; }
skip() { echo "test_ktls_wss_vm: SKIP: $*"; exit 77; }

[ -x "$KITE" ] || fail "no kite binary (run make)"
PY=$(readlink -f /usr/bin/python3)
PYLIB=/usr/lib/$(basename "$PY")
[ -d /usr/lib/python3/dist-packages/paho ] || fail "python3-paho-mqtt is not installed (tools/deps.sh)"

rm -rf "$W"
mkdir -p "$W/py"
{
    "$KITE" cert ca --dir "$W/pki" &&
    "$KITE" cert server 127.0.0.1 localhost --dir "$W/pki"
} >/dev/null 2>&1 || fail "kite cert"
chmod -R a+rX "$W/pki"
# Python's standard library without what a client never imports.
tar -C "$(dirname "$PYLIB")" -cf - --exclude=test --exclude=idlelib --exclude=tkinter \
    --exclude=lib2to3 --exclude=ensurepip --exclude=pydoc_data --exclude=turtledemo \
    --exclude=config-3.\* "$(basename "$PYLIB")" | tar -C "$W/py" -xf - ||
    fail "copying the Python library"
PYSO=()
for so in "$PYLIB"/lib-dynload/_ssl.*.so "$PYLIB"/lib-dynload/_hashlib.*.so; do
    PYSO+=(-f "$so:$so")
done

"$HERE/build-initramfs.sh" -o "$IMAGE" \
    -f "$KITE:/bin/kite" -f "$W/pki:/etc/kite-vm/wss/pki" \
    -f "$W/py/$(basename "$PYLIB"):$PYLIB" \
    -f "/usr/lib/python3/dist-packages/paho:/usr/lib/python3/dist-packages/paho" \
    "${PYSO[@]}" -f "$PY:/usr/bin/python3" \
    -f "$HERE/paho_wss.py:/bin/paho_wss.py" \
    -f "$HERE/guest_ktls_wss.sh:/bin/guest_ktls_wss.sh" >/dev/null
rc=$?
[ $rc = 77 ] && skip "cannot build the VM"
[ $rc = 0 ] || fail "build-initramfs.sh exit $rc"

"$HERE/run-vm.sh" -q -t "${VM_TIMEOUT:-240}" -i "$IMAGE" \
    -l "$LOG" 'sh /bin/guest_ktls_wss.sh'
rc=$?
[ $rc = 77 ] && skip "cannot run the VM"
tr -d '\r' < "$LOG" | grep -aE '^(PASS|FAIL|wss:|---|[0-9]+: )' | head -120
grep -aq '^wss: ' "$LOG" || echo "test_ktls_wss_vm: FAIL: no report from the guest (console: $LOG)"
if [ $rc = 0 ]; then echo "test_ktls_wss_vm: PASS"; else echo "test_ktls_wss_vm: FAIL"; fi
exit $rc
