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

NAME=test_ktls_wss_vm
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
export VM_MEM=${VM_MEM:-1G}
vm_kite "$ROOT/build/asan/kite"
W=$VM_BUILD_DIR/wss
LOG=$VM_BUILD_DIR/wss-console.log

rm -rf "$W"
vm_kite_pki "$W/pki"
vm_python "$W/py"
vm_boot "$VM_BUILD_DIR/wss-initramfs.cpio.gz" "$LOG" "${VM_TIMEOUT:-240}" \
    'sh /bin/guest_ktls_wss.sh' \
    -f "$KITE:/bin/kite" -f "$W/pki:/etc/kite-vm/wss/pki" "${PY_FILES[@]}" \
    -f "$HERE/paho_wss.py:/bin/paho_wss.py" \
    -f "$HERE/guest_ktls_wss.sh:/bin/guest_ktls_wss.sh"
vm_report "$LOG" wss
vm_verdict "$LOG" wss
