#!/bin/bash
# kTLS check for a real broker (kite, once it has kTLS) in the VM: TLS 1.2
# and 1.3 x AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 through a
# Mosquitto-style TLS listener, with mosquitto_pub/mosquitto_sub as clients
# (they never use kTLS, so the guest's /proc/net/tls_stat counts the broker).
#
#   tests/vm/test_broker_ktls_vm.sh                 # BROKER=build/kite, EXPECT=tx
#   BROKER=/usr/sbin/mosquitto EXPECT=none EXTRA_CONF='user root' \
#       tests/vm/test_broker_ktls_vm.sh             # plumbing check, no kTLS
#
#   PROXY=2 BROKER=build/kite EXPECT=txrx tests/vm/test_broker_ktls_vm.sh
#                                                   # behind HAProxy (send-proxy-v2)
#
#   Env: BROKER (binary taking -c FILE), EXPECT (txrx|tx|none), EXTRA_CONF (lines
#   appended to every generated config, e.g. kite's kTLS switch),
#   PROXY (1|2: HAProxy in TCP mode in front with send-proxy/send-proxy-v2,
#   the listener with enable_proxy_protocol; the clients connect from
#   127.0.0.2 and the broker must log that address),
#   VM_TIMEOUT (default 180 s). Exit 0 pass, 1 fail, 77 VM unavailable.
set -uo pipefail

NAME=test_broker_ktls_vm
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
BROKER=${BROKER:-$ROOT/build/kite}
W=$VM_BUILD_DIR/broker

[ -x "$BROKER" ] || fail "no broker binary $BROKER"
for p in mosquitto-clients openssl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=300 "$p" >/dev/null || skip "cannot install $p"
done

rm -rf "$W"
mkdir -p "$W/pki"
# Test CA and an ECDSA P-256 server cert for 127.0.0.1/localhost (ECDSA so
# the TLS 1.2 ECDHE-ECDSA-* suites below apply).
(
    cd "$W/pki" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=kite-vm-ca -keyout ca.key -out ca.crt &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=localhost -keyout server.key -out server.csr &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n') -out server.crt
) >/dev/null 2>&1 || fail "certificate generation"
chmod 644 "$W"/pki/*
cat > "$W/matrix" <<'EOF'
tlsv1.2 ECDHE-ECDSA-AES128-GCM-SHA256
tlsv1.2 ECDHE-ECDSA-AES256-GCM-SHA384
tlsv1.2 ECDHE-ECDSA-CHACHA20-POLY1305
tlsv1.3 TLS_AES_128_GCM_SHA256
tlsv1.3 TLS_AES_256_GCM_SHA384
tlsv1.3 TLS_CHACHA20_POLY1305_SHA256
EOF
printf '%s\n' "${EXTRA_CONF:-}" | tr ';' '\n' | sed '/^$/d' > "$W/extra.conf"
echo "${EXPECT:-tx}" > "$W/expect"
PROXY_BINS=()
if [ -n "${PROXY:-}" ]; then
    HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
    [ -x "$HAPROXY" ] || skip "PROXY=$PROXY needs haproxy (Debian package haproxy)"
    echo "$PROXY" > "$W/proxy"
    PROXY_BINS=("$HAPROXY")
fi

"$HERE/build-initramfs.sh" -o "$VM_BUILD_DIR/broker-initramfs.cpio.gz" \
    -f "$BROKER:/bin/broker" -f "$W:/etc/kite-vm/broker" \
    -f "$HERE/guest_broker_ktls.sh:/bin/guest_broker_ktls.sh" \
    /usr/bin/mosquitto_pub /usr/bin/mosquitto_sub "${PROXY_BINS[@]}" >/dev/null
rc=$?
[ $rc = 77 ] && skip "cannot build the VM"
[ $rc = 0 ] || fail "build-initramfs.sh exit $rc"
"$HERE/run-vm.sh" -t "${VM_TIMEOUT:-180}" -i "$VM_BUILD_DIR/broker-initramfs.cpio.gz" \
    -l "$VM_BUILD_DIR/broker-console.log" 'sh /bin/guest_broker_ktls.sh'
