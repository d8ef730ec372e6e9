#!/bin/bash
# Short-lived TLS clients against kite on a kernel with TLS (Debian 12's,
# in qemu): mosquitto_pub, mosquitto_sub -C 1, paho-mqtt and openssl
# s_client that connect, publish and close at once, over TLS 1.2 and 1.3,
# on an mTLS listener with use_identity_as_username. kite used to abort on
# the first few (tls_conn_feed: Assertion !c->exported). See
# guest_ktls_shortlived.sh for what is asserted.
#
#   tests/vm/test_ktls_shortlived_vm.sh
#   Env: KITE (default build/asan/kite, else build/kite), VM_TIMEOUT (240 s).
#   Exit 0 pass, 1 fail, 77 VM unavailable.
set -uo pipefail

NAME=test_ktls_shortlived_vm
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
export VM_MEM=${VM_MEM:-1G}
vm_kite "$ROOT/build/asan/kite"
W=$VM_BUILD_DIR/shortlived
LOG=$VM_BUILD_DIR/shortlived-console.log

rm -rf "$W"
vm_kite_pki "$W/pki" Device123 app1
vm_python "$W/py"
vm_boot "$VM_BUILD_DIR/shortlived-initramfs.cpio.gz" "$LOG" "${VM_TIMEOUT:-240}" \
    'sh /bin/guest_ktls_shortlived.sh' \
    -f "$KITE:/bin/kite" -f "$W/pki:/etc/kite-vm/shortlived/pki" "${PY_FILES[@]}" \
    -f "$HERE/paho_shortlived.py:/bin/paho_shortlived.py" \
    -f "$HERE/guest_ktls_shortlived.sh:/bin/guest_ktls_shortlived.sh" \
    /usr/bin/mosquitto_pub /usr/bin/mosquitto_sub /usr/bin/openssl
vm_report "$LOG" shortlived '  tlsv'
vm_verdict "$LOG" shortlived
