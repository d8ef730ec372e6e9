#!/bin/sh
# Runs INSIDE the VM (busybox sh), put there by test_ktls_wss_vm.sh.
# kite with a WebSockets listener over TLS (wss) and a plain MQTT one; for
# TLS 1.2 and 1.3, paho-mqtt (transport="websockets") exchanges messages
# with a plain paho client both ways (paho_wss.py). The wss connection
# must have moved to kernel TLS both ways (TlsTxSw/TlsRxSw +1), kite must
# log its upgrade (websockets_log_level 4), keep running and stop with
# exit 0.
# Prints "PASS|FAIL <case>" lines and "wss: N passed, N failed".
D=/etc/kite-vm/wss
PKI=$D/pki
PORT=8443
PLAIN=1883
LOG=/tmp/kite.log

listening() {
    hex=$(printf '%04X' $1)
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}
stat_of() { awk -v k="$1" '$1==k{v=$2} END{print v+0}' /proc/net/tls_stat; }
passed=0 failed=0
check() { # check NAME CONDITION-RESULT(0 ok) DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1"; passed=$((passed + 1));
    else echo "FAIL $1: $3"; failed=$((failed + 1)); fi
}

cat > /tmp/kite.conf <<CONF
log_dest stderr
log_type all
websockets_log_level 6
allow_anonymous true
listener $PLAIN 127.0.0.1
listener $PORT 127.0.0.1
protocol websockets
cafile $PKI/ca.pem
certfile $PKI/server.pem
keyfile $PKI/server.key
CONF
kite -c /tmp/kite.conf > $LOG 2>&1 &
kpid=$!
i=0
while ! { listening $PORT && listening $PLAIN; } && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
listening $PORT; check "kite listens (wss)" $? "$(tail -5 $LOG)"

for ver in tlsv1.2 tlsv1.3; do
    tx0=$(stat_of TlsTxSw); rx0=$(stat_of TlsRxSw); de0=$(stat_of TlsDecryptError)
    up0=$(grep -c 'WebSocket N: .*upgrade accepted (subprotocol mqtt)' $LOG)
    python3 /bin/paho_wss.py $PORT $PLAIN $PKI/ca.pem $ver > /tmp/paho.out 2>&1
    check "$ver: paho over wss, both ways" $? "$(tail -5 /tmp/paho.out)"
    dtx=$(( $(stat_of TlsTxSw) - tx0 )); drx=$(( $(stat_of TlsRxSw) - rx0 ))
    [ $dtx = 1 ] && [ $drx = 1 ]
    check "$ver: the wss connection moved to kernel TLS" $? "TlsTxSw +$dtx, TlsRxSw +$drx"
    [ $(( $(stat_of TlsDecryptError) - de0 )) = 0 ]
    check "$ver: no TLS decrypt errors" $? "TlsDecryptError moved"
    up=$(grep -c 'WebSocket N: .*upgrade accepted (subprotocol mqtt)' $LOG)
    [ $((up - up0)) = 1 ]
    check "$ver: kite logged the upgrade (websockets_log_level)" $? "$((up - up0)) lines"
    kill -0 $kpid 2>/dev/null
    check "$ver: kite still running" $? "$(tail -20 $LOG)"
done

kill -TERM $kpid 2>/dev/null
wait $kpid
rc=$?
check "kite stops cleanly" $rc "exit $rc"
! grep -q "Sanitizer\|Assertion" $LOG
check "no assertion or sanitizer report" $? "$(grep -A20 'Sanitizer\|Assertion' $LOG | head -40)"
[ $failed = 0 ] || { echo "--- kite log (tail)"; tail -40 $LOG; }
echo "wss: $passed passed, $failed failed"
[ $failed = 0 ]
