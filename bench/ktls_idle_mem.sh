#!/bin/bash
# Memory per idle mutual-TLS connection, kite with kernel TLS, kite with
# userspace TLS (OpenSSL) and Debian's Mosquitto, measured in the kTLS VM
# (tests/vm: Debian's stock 6.1 kernel under qemu TCG). A benchmark, not a
# test: it prints numbers, it does not judge them. VM_KERNEL=rekey boots a
# newer Debian kernel instead (one that can re-key kTLS, see below).
#
#   bench/ktls_idle_mem.sh
#   STEPS="500 1000 1500 2000" MODES="kite-ktls kite-user mosquitto" \
#       VM_MEM=2G VM_TIMEOUT=900 bench/ktls_idle_mem.sh
#   VM_KERNEL=rekey MODES="kite-ktls" bench/ktls_idle_mem.sh
#
# For each mode one VM boots and runs the broker with an mTLS listener on
# 127.0.0.1:8883 (certificates from `build/kite cert`, made on the host).
# bench/ktls_idle_client then adds idle connections in steps (a new holder
# process per step, each connection: TLS handshake with a client
# certificate, MQTT 3.1.1 CONNECT, CONNACK, then silence; keepalive 0) up
# to each count in STEPS. After every step (2 s settle) the guest records
# the broker's VmRSS/RssAnon from /proc/PID/status, TlsCurrTxSw/TlsCurrRxSw
# from /proc/net/tls_stat and Slab from /proc/meminfo.
#
#   kite-ktls  tls.ko loaded (the VM's init does that); kite moves every
#              connection's records into the kernel and frees the SSL object.
#              TlsCurrTxSw/RxSw must reach the connection count.
#   kite-user  the guest `rmmod tls` and points kernel.modprobe at a
#              missing file, so TCP_ULP "tls" fails and cannot autoload the
#              module; kite falls back to OpenSSL for the records.
#   mosquitto  /usr/sbin/mosquitto (`user root`), userspace TLS only, run
#              without tls.ko too.
#
# Reported per mode: RSS with no clients, total KiB per connection
# ((RSS(N) - RSS(0)) / N) at each step, and the marginal cost (RSS slope
# between two steps), which leaves out fixed costs such as kite's
# per-shard receive buffers. Slab is system-wide (clients included), shown
# only to see where kTLS puts its state.
#
# Env: STEPS (cumulative connection counts, default "500 1000 1500 2000"),
# MODES, VM_MEM (default 2G), VM_SMP (2), VM_TIMEOUT per VM (default 900 s),
# VM_KERNEL:
#   stock  (default) the host's Debian 12 kernel (6.1), as build-initramfs.sh
#          picks it; files in build/vm/idle/ and build/vm/idle-initramfs.*
#   rekey  the newest trixie-backports kernel >= 6.14 from
#          `tests/vm/fetch-kernel.sh -n 6.14` (downloaded and verified, or
#          cached in build/vm/kernels/), image built with -k; files in
#          build/vm/idle-rekey/ and build/vm/idle-rekey-initramfs.*, so the
#          stock ones stay. There kite logs "TLS 1.3 key updates are followed
#          in the kernel" and keeps each kTLS connection's TLS 1.3 traffic
#          secrets (a 4 + 2 * hash-size byte malloc); on 6.1 it logs
#          "cannot replace TLS keys" and keeps none. If fetch-kernel.sh
#          fails, exits with its code (77: no kernel to be had).
# The guest prints its kernel (IDLE-KERNEL) and the broker's kTLS log lines.
# Raw guest output: build/vm/idle/<mode>.console.log (idle-rekey/ with rekey).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export VM_BUILD_DIR=${VM_BUILD_DIR:-$ROOT/build/vm}
export VM_MEM=${VM_MEM:-2G}
STEPS=${STEPS:-500 1000 1500 2000}
MODES=${MODES:-kite-ktls kite-user mosquitto}
VM_TIMEOUT=${VM_TIMEOUT:-900}
VM_KERNEL=${VM_KERNEL:-stock}
case $VM_KERNEL in
    stock) W=$VM_BUILD_DIR/idle ;;
    rekey) W=$VM_BUILD_DIR/idle-rekey ;;
    *) echo "ktls_idle_mem: VM_KERNEL must be stock or rekey, not '$VM_KERNEL'" >&2; exit 2 ;;
esac
IMG=$W-initramfs.cpio.gz     # build-initramfs.sh puts the kernel beside it (.vmlinuz)
KITE=$ROOT/build/kite
MOSQ=${MOSQUITTO:-/usr/sbin/mosquitto}

cd "$ROOT"
make -s
KTREE=
if [ "$VM_KERNEL" = rekey ]; then
    krc=0
    KTREE=$("$ROOT/tests/vm/fetch-kernel.sh" -n 6.14) || krc=$?
    if [ "$krc" != 0 ]; then
        echo "ktls_idle_mem: fetch-kernel.sh -n 6.14 failed (exit $krc)" >&2
        exit "$krc"
    fi
fi
rm -rf "$W"
mkdir -p "$W"
cc -O2 -Wall -Wextra -o "$W/ktls_idle_client" "$HERE/ktls_idle_client.c" -lssl -lcrypto

# PKI: CA, server cert for 127.0.0.1/localhost, one client cert shared by
# all connections (kite cert's defaults: ECDSA P-256).
(
    cd "$W" &&
    "$KITE" cert ca --dir pki &&
    "$KITE" cert server 127.0.0.1 localhost --dir pki &&
    "$KITE" cert client idle --dir pki
) > "$W/cert.log" 2>&1 || { cat "$W/cert.log" >&2; exit 1; }
chmod -R a+rX "$W/pki"

cat > "$W/guest.sh" <<'GUEST'
#!/bin/sh
# Runs inside the VM (busybox sh):  sh /bin/idle_guest.sh MODE "STEPS"
MODE=$1
STEPS=$2
P=/etc/idle/pki
PORT=8883
ulimit -n 65536
echo "IDLE-KERNEL $(uname -r)"
if [ "$MODE" = kite-ktls ]; then
    grep -q '^tls ' /proc/modules || { echo "idle: tls.ko is not loaded"; exit 1; }
else
    # Userspace TLS: unload tls.ko and stop the kernel from autoloading it
    # (setsockopt TCP_ULP "tls" calls request_module("tcp-ulp-tls")).
    echo /nonexistent-modprobe > /proc/sys/kernel/modprobe
    if grep -q '^tls ' /proc/modules; then rmmod tls || { echo "idle: rmmod tls failed"; exit 1; }; fi
    grep -q '^tls ' /proc/modules && { echo "idle: tls.ko still loaded"; exit 1; }
fi
{
    echo "listener $PORT 127.0.0.1"
    echo "cafile $P/ca.pem"
    echo "certfile $P/server.pem"
    echo "keyfile $P/server.key"
    echo "require_certificate true"
    echo "use_identity_as_username true"
    echo "allow_anonymous true"
    [ "$MODE" = mosquitto ] && echo "user root"
} > /tmp/broker.conf
case $MODE in
    mosquitto) mosquitto -c /tmp/broker.conf > /tmp/broker.log 2>&1 & ;;
    *)         kite -c /tmp/broker.conf > /tmp/broker.log 2>&1 & ;;
esac
BPID=$!
hex=$(printf '%04X' $PORT)
i=0
while ! grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp; do
    i=$((i + 1))
    [ $i -gt 200 ] && { echo "idle: broker not listening"; cat /tmp/broker.log; exit 1; }
    sleep 0.1
done
sleep 2
st() { awk -v k="$1" '$1==k{print $2}' /proc/net/tls_stat 2>/dev/null || echo -; }
sample() {
    kill -0 $BPID 2>/dev/null || { echo "idle: broker died"; tail -20 /tmp/broker.log; exit 1; }
    rss=$(awk '$1=="VmRSS:"{print $2}' /proc/$BPID/status)
    anon=$(awk '$1=="RssAnon:"{print $2}' /proc/$BPID/status)
    slab=$(awk '$1=="Slab:"{print $2}' /proc/meminfo)
    tx=$(st TlsCurrTxSw); rx=$(st TlsCurrRxSw)
    echo "IDLEMEM mode=$MODE n=$1 rss=$rss anon=$anon slab=$slab curtx=${tx:--} currx=${rx:--} decerr=$(st TlsDecryptError) up=$(cut -d' ' -f1 /proc/uptime)"
}
sample 0
prev=0
CPIDS=
for n in $STEPS; do
    add=$((n - prev))
    ktls_idle_client 127.0.0.1 $PORT $add $P/ca.pem $P/clients/idle.pem $P/clients/idle.key s$n \
        > /tmp/client.$n.log 2>&1 &
    cp=$!
    CPIDS="$CPIDS $cp"
    while ! grep -q '^ready' /tmp/client.$n.log; do
        if ! kill -0 $cp 2>/dev/null; then
            echo "idle: client step $n failed:"; tail -5 /tmp/client.$n.log
            echo "idle: broker log:"; tail -20 /tmp/broker.log
            exit 1
        fi
        sleep 0.2
    done
    sleep 2
    sample $n
    prev=$n
done
grep -i -m5 'kernel TLS\|kTLS\|key update\|TLS keys\|listen socket' /tmp/broker.log | sed 's/^/idle: broker: /'
echo "idle: broker log lines: $(wc -l < /tmp/broker.log)"
kill $CPIDS 2>/dev/null
kill $BPID 2>/dev/null
wait 2>/dev/null
exit 0
GUEST

"$ROOT/tests/vm/build-initramfs.sh" -o "$IMG" ${KTREE:+-k "$KTREE"} \
    -f "$W/pki:/etc/idle/pki" -f "$W/guest.sh:/bin/idle_guest.sh" \
    "$KITE" "$MOSQ" "$W/ktls_idle_client" > /dev/null

date_utc=$(date -u '+%Y-%m-%d %H:%M UTC')
fails=0
for m in $MODES; do
    echo "== $m (VM_MEM=$VM_MEM, steps: $STEPS)" >&2
    "$ROOT/tests/vm/run-vm.sh" -q -t "$VM_TIMEOUT" -i "$IMG" \
        -l "$W/$m.console.log" "sh /bin/idle_guest.sh $m '$STEPS'" || fails=$((fails + 1))
    tr -d '\r' < "$W/$m.console.log" | grep -a '^IDLEMEM\|^idle:' >&2 || true
done

kv=$(tr -d '\r' < "$W/$(set -- $MODES; echo "$1").console.log" | grep -a -m1 '^IDLE-KERNEL' | awk '{print $2}')
echo
echo "Idle mTLS connections (TLS 1.3, ECDSA P-256 client certificate), $date_utc, guest kernel ${kv:-?}, VM ${VM_MEM} / ${VM_SMP:-2} vCPU (qemu TCG)"
echo "RSS in KiB (VmRSS of the broker); total = (RSS(N) - RSS(0)) / N; marginal = RSS slope between two steps"
for m in $MODES; do
    tr -d '\r' < "$W/$m.console.log" | grep -a '^IDLEMEM' | awk -v mode="$m" '
        { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          n = v["n"]; ns[++k] = n; rss[n] = v["rss"]; anon[n] = v["anon"]
          tx[n] = v["curtx"]; rx[n] = v["currx"]; slab[n] = v["slab"] }
        END {
          if (k < 2) { printf "%s: no data\n", mode; exit }
          printf "%s: RSS(0) %d KiB (anon %d)\n", mode, rss[0], anon[0]
          for (j = 2; j <= k; j++) {
              n = ns[j]
              printf "  N=%-5d RSS %7d KiB  total %6.2f KiB/conn  anon %6.2f KiB/conn  slab(system) %+7.2f KiB/conn  TlsCurrTxSw %s TlsCurrRxSw %s\n",
                  n, rss[n], (rss[n] - rss[0]) / n, (anon[n] - anon[0]) / n,
                  (slab[n] - slab[0]) / n, tx[n], rx[n]
          }
          for (a = 2; a <= k; a++) for (b = a + 1; b <= k; b++) {
              n1 = ns[a]; n2 = ns[b]
              if (n2 - n1 < 1000) continue
              printf "  marginal %d -> %d: %6.2f KiB/conn (anon %6.2f)\n", n1, n2,
                  (rss[n2] - rss[n1]) / (n2 - n1), (anon[n2] - anon[n1]) / (n2 - n1)
          }
        }'
done
echo
echo "command: ${KTREE:+VM_KERNEL=rekey }STEPS=\"$STEPS\" MODES=\"$MODES\" VM_MEM=$VM_MEM VM_TIMEOUT=$VM_TIMEOUT bench/ktls_idle_mem.sh"
echo "raw: $W/<mode>.console.log"
exit $((fails > 0))
