#!/bin/bash
# kite's handling of TLS control records once a connection is on kernel TLS
# (io/ktls.c), in the VM: close_notify (TLS 1.3 and 1.2, answered in
# kind), TLS 1.3 KeyUpdates, a TLS 1.2 renegotiation ClientHello and a
# fatal alert (sent raw through the client's own kTLS TX), each after
# CONNECT/CONNACK and a 0.5 s wait, over an mTLS listener with a PKI from
# `kite cert`. See guest_ktls_records.sh and ktls_records_client.c.
#
#   tests/vm/test_ktls_records_vm.sh [stock|rekey]
#
#   stock  Debian 12's own kernel (6.1): kTLS keys are set once, so a
#          KeyUpdate must end its connection with a clear reason (default)
#   rekey  the newest kernel from trixie-backports (fetch-kernel.sh, needs
#          Linux >= 6.14): KeyUpdates in both directions must be followed
#          on the same connection, for each TLS 1.3 cipher
#
#   Env: KITE (default build/kite), VM_TIMEOUT (default 150 s).
#   Exit 0 all cases pass, 1 fail, 77 VM (or the rekey kernel) unavailable.
set -uo pipefail

KERNEL=${1:-stock}
NAME="test_ktls_records_vm ($KERNEL)"
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
W=$VM_BUILD_DIR/records
CLIENT=$VM_BUILD_DIR/ktls_records_client
LOG=$VM_BUILD_DIR/records-$KERNEL-console.log

KOPT=()
case $KERNEL in
    stock) ;;
    rekey)
        rc=0
        tree=$("$HERE/fetch-kernel.sh" -n 6.14) || rc=$?
        [ $rc = 77 ] && skip "no kernel with kTLS re-keying could be fetched (see above)"
        [ $rc = 0 ] || fail "fetch-kernel.sh exit $rc"
        KOPT=(-k "$tree") ;;
    *) echo "usage: $0 [stock|rekey]" >&2; exit 2 ;;
esac

vm_kite "$ROOT/build/kite"
mkdir -p "$VM_BUILD_DIR"
${CC:-cc} -std=c17 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter \
    -o "$CLIENT" "$HERE/ktls_records_client.c" -lssl -lcrypto || fail "cannot build the client"

rm -rf "$W"
mkdir -p "$W"
vm_kite_pki "$W/pki" dev1
vm_boot "$VM_BUILD_DIR/records-$KERNEL-initramfs.cpio.gz" "$LOG" "${VM_TIMEOUT:-150}" \
    'sh /bin/guest_ktls_records.sh' "${KOPT[@]+"${KOPT[@]}"}" \
    -f "$KITE:/bin/kite" -f "$CLIENT:/bin/ktls_records_client" \
    -f "$W:/etc/kite-vm/records" \
    -f "$HERE/guest_ktls_records.sh:/bin/guest_ktls_records.sh"
# The guest's report (PASS/FAIL lines, client and kite output), without
# the boot noise.
tr -d '\r' < "$LOG" | sed -n '/^kernel /,/^records: /p'
vm_verdict "$LOG" records
