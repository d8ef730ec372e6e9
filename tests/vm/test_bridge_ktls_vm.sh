#!/bin/bash
# A bridge over TLS with kernel TLS, on a kernel that has it (Debian 12's,
# in qemu): a local kite bridges to a remote kite and to Mosquitto 2.0.11
# over TLS 1.2 and 1.3 (AES-GCM and ChaCha20-Poly1305; certificates and
# TLS-PSK); messages both ways,
# small and large; and a session ticket that comes after the move
# (bridge_late_ticket_remote.c). See guest_bridge_ktls.sh for what is
# asserted.
#
#   tests/vm/test_bridge_ktls_vm.sh
#   Env: KITE (default build/asan/kite, else build/kite), VM_TIMEOUT (300 s),
#   MATRIX (one line of the matrix below instead of all of it).
#   Exit 0 pass, 1 fail, 77 VM unavailable.
set -uo pipefail

NAME=test_bridge_ktls_vm
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
export VM_MEM=${VM_MEM:-1G}
vm_kite "$ROOT/build/asan/kite"
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
W=$VM_BUILD_DIR/bridge
LOG=$VM_BUILD_DIR/bridge-console.log

[ -x "$MOSQUITTO" ] || fail "no $MOSQUITTO (Debian package mosquitto, tools/deps.sh)"
[ -x /usr/bin/mosquitto_pub ] || fail "no mosquitto_pub (Debian package mosquitto-clients)"

rm -rf "$W"
mkdir -p "$W"
TICKET=$VM_BUILD_DIR/bridge_late_ticket_remote
${CC:-cc} -std=c17 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter \
    -o "$TICKET" "$HERE/bridge_late_ticket_remote.c" -lssl -lcrypto ||
    fail "cannot build bridge_late_ticket_remote"
vm_kite_pki "$W"/pki
echo "edge-7:00112233445566778899aabbccddeeff" > "$W/psk"
# Printable payloads (mosquitto_sub -N prints them as they are), many
# TLS records each.
head -c 112500 /dev/urandom | base64 -w0 > "$W/big1" # 150000 bytes
head -c 30000 /dev/urandom | base64 -w0 > "$W/big2"  # 40000 bytes
# remote, bridge_tls_version, the remote's only cipher for that version;
# MATRIX="mosquitto tlsv1.3 TLS_AES_128_GCM_SHA256" runs just that line.
if [ -n "${MATRIX:-}" ]; then
    printf '%s\n' "$MATRIX" > "$W/matrix"
    touch "$W/matrix-only" # and not the late ticket
else cat > "$W/matrix" <<'MATRIX'
kite tlsv1.2 ECDHE-ECDSA-AES128-GCM-SHA256
kite tlsv1.3 TLS_AES_256_GCM_SHA384
kite tlsv1.3 TLS_CHACHA20_POLY1305_SHA256
mosquitto tlsv1.2 ECDHE-ECDSA-CHACHA20-POLY1305
mosquitto tlsv1.3 TLS_AES_128_GCM_SHA256
mosquitto tlsv1.3 TLS_AES_256_GCM_SHA384
kite-psk tlsv1.2 PSK-AES128-GCM-SHA256
kite-psk tlsv1.3 TLS_AES_128_GCM_SHA256
mosquitto-psk tlsv1.2 PSK-CHACHA20-POLY1305
MATRIX
fi

vm_boot "$VM_BUILD_DIR/bridge-initramfs.cpio.gz" "$LOG" "${VM_TIMEOUT:-300}" \
    'sh /bin/guest_bridge_ktls.sh' \
    -f "$KITE:/bin/kite" -f "$MOSQUITTO:/bin/mosquitto" -f "$W:/etc/kite-vm/bridge" \
    -f "$HERE/guest_bridge_ktls.sh:/bin/guest_bridge_ktls.sh" \
    -f "$TICKET:/bin/bridge_late_ticket_remote" \
    /usr/bin/mosquitto_pub /usr/bin/mosquitto_sub
vm_report "$LOG" bridge
vm_verdict "$LOG" bridge
