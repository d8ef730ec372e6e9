#!/bin/bash
# tests/soak/soak.py where the kernel has TLS (Debian 12's, in qemu):
# its churn (a third vanish without DISCONNECT), stalled ClientHellos and
# packets, garbage on the TLS port, slow readers, QoS 1/2 accounting,
# SIGHUPs and probes, against kite (the ASan+UBSan build) whose TLS
# clients move to kernel TLS after their handshake. The short-lived-client
# crash of round one was found on this path; the host's soak cannot reach
# it (no CONFIG_TLS there). See guest_ktls_soak.sh for what is asserted.
#
#   tests/vm/test_ktls_soak_vm.sh
#   Env: KITE (default build/asan/kite, else build/kite), SOAK_SECONDS
#   (120), SOAK_TLS_CHURN (TLS clients a second, 10), SOAK_MTLS (1: the
#   seeds' mutual TLS, CN as username, an acl_file; 0: server-only TLS), VM_TIMEOUT
#   (SOAK_SECONDS + 240). Exit 0 pass, 1 fail, 77 VM unavailable.
set -uo pipefail

NAME=test_ktls_soak_vm
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
export VM_MEM=${VM_MEM:-1G}
vm_kite "$ROOT/build/asan/kite"
W=$VM_BUILD_DIR/soak
LOG=$VM_BUILD_DIR/soak-console.log
SECS=${SOAK_SECONDS:-120}
CHURN=${SOAK_TLS_CHURN:-10}
MTLS=${SOAK_MTLS:-1}

rm -rf "$W"
vm_python "$W/py"
vm_boot "$VM_BUILD_DIR/soak-initramfs.cpio.gz" "$LOG" "${VM_TIMEOUT:-$((SECS + 240))}" \
    "SOAK_SECONDS=$SECS SOAK_TLS_CHURN=$CHURN SOAK_MTLS=$MTLS sh /bin/guest_ktls_soak.sh" \
    -f "$KITE:/bin/kite" "${PY_FILES[@]}" \
    -f "$ROOT/tests/soak/soak.py:/opt/kite/tests/soak/soak.py" \
    -f "$ROOT/tests/integration/mqttraw.py:/opt/kite/tests/integration/mqttraw.py" \
    -f "$HERE/guest_ktls_soak.sh:/bin/guest_ktls_soak.sh" \
    /usr/bin/openssl
vm_report "$LOG" soak '  (start|end|after|churn|stalled|garbage|qos|probe|slow|sighup|RSS|fds|tls)'
vm_verdict "$LOG" soak
