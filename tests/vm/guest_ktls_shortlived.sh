#!/bin/sh
# Runs INSIDE the VM (busybox sh), put there by test_ktls_shortlived_vm.sh.
# kite (the ASan+UBSan build) with an mTLS listener, require_certificate
# and use_identity_as_username, as the seeds have it; for TLS 1.2 and 1.3,
# real clients that connect, publish and close at once:
#   20 x mosquitto_pub (client certificate CN=Device123)
#    5 x mosquitto_sub -C 1 on a retained topic (gets it and leaves)
#    5 x paho-mqtt, QoS 1, disconnect on PUBACK
#    5 x openssl s_client, CONNECT + PUBLISH from stdin, gone at EOF
# while one mosquitto_sub stays connected and must receive every message.
# Every connection that waited for its CONNACK must have moved to kernel
# TLS both ways (TlsTxSw/TlsRxSw in /proc/net/tls_stat, exact counts);
# s_client's may close before the move and are only counted. kite must
# still be running after each round, and stop cleanly (exit 0, no
# sanitizer report) at the end.
# Prints "PASS|FAIL <case>" lines and "shortlived: N passed, N failed".
D=/etc/kite-vm/shortlived
PKI=$D/pki
PORT=8883
LOG=/tmp/kite.log
NPUB=20 NSUB=5 NPAHO=5 NSCLIENT=5

listening() {
    hex=$(printf '%04X' $PORT)
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}
stat_of() { awk -v k="$1" '$1==k{v=$2} END{print v+0}' /proc/net/tls_stat; }
passed=0 failed=0
check() { # check NAME CONDITION-RESULT(0 ok) DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1"; passed=$((passed + 1));
    else echo "FAIL $1: $3"; failed=$((failed + 1)); fi
}
cli() { # mosquitto client TLS arguments for CN $1, version $2
    echo "-h localhost -p $PORT --cafile $PKI/ca.pem --cert $PKI/clients/$1.pem --key $PKI/clients/$1.key --tls-version $2"
}
# CONNECT (client id "sclient", clean, keepalive 60) + PUBLISH QoS 0
# "device/Device123/x" "from s_client", as raw bytes.
sclient_bytes() {
    printf '\020\023\000\004MQTT\004\002\000\074\000\007sclient'
    printf '\060\037\000\022device/Device123/x'
    printf 'from s_client'
}

cat > /tmp/kite.conf <<CONF
log_dest stderr
log_type all
listener $PORT 127.0.0.1
cafile $PKI/ca.pem
certfile $PKI/server.pem
keyfile $PKI/server.key
require_certificate true
use_identity_as_username true
CONF
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66
kite -c /tmp/kite.conf > $LOG 2>&1 &
kpid=$!
i=0
while ! listening && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
listening; check "kite listens" $? "$(tail -5 $LOG)"

for ver in tlsv1.2 tlsv1.3; do
    tx0=$(stat_of TlsTxSw); rx0=$(stat_of TlsRxSw); de0=$(stat_of TlsDecryptError)
    total=$((NPUB + NSUB + NPAHO))
    rm -f /tmp/got
    mosquitto_sub $(cli app1 $ver) -t 'device/#' -v -C $((NPUB + NPAHO + NSCLIENT)) -W 60 \
        > /tmp/got 2>/tmp/sub.err &
    spid=$!
    i=0
    while ! grep -q "u'app1'" $LOG && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    sleep 0.5
    bad=0
    n=0; while [ $n -lt $NPUB ]; do
        mosquitto_pub $(cli Device123 $ver) -t device/Device123/x -m "hi $n" 2>>/tmp/pub.err || bad=$((bad + 1))
        n=$((n + 1))
    done
    check "$ver: $NPUB x mosquitto_pub" $bad "$bad failed: $(tail -3 /tmp/pub.err)"
    mosquitto_pub $(cli Device123 $ver) -t status/Device123 -m retained-$ver -r 2>>/tmp/pub.err
    bad=0
    n=0; while [ $n -lt $NSUB ]; do
        got=$(mosquitto_sub $(cli Device123 $ver) -t status/Device123 -C 1 -W 10 2>>/tmp/sub1.err)
        [ "$got" = retained-$ver ] || bad=$((bad + 1))
        n=$((n + 1))
    done
    check "$ver: $NSUB x mosquitto_sub -C 1 (retained)" $bad "$bad failed: $(tail -3 /tmp/sub1.err)"
    python3 /bin/paho_shortlived.py $PORT $PKI/ca.pem $PKI/clients/Device123.pem \
        $PKI/clients/Device123.key $ver device/Device123/paho $NPAHO > /tmp/paho.out 2>&1
    check "$ver: $NPAHO x paho (QoS 1, disconnect on PUBACK)" $? "$(tail -3 /tmp/paho.out)"
    # Everything so far waited for its CONNACK: each connection (the
    # retained publish and the staying subscriber included) moved.
    dtx=$(( $(stat_of TlsTxSw) - tx0 )); drx=$(( $(stat_of TlsRxSw) - rx0 ))
    want=$((total + 2))
    [ $dtx = $want ] && [ $drx = $want ]
    check "$ver: every socket moved to kernel TLS ($want)" $? "TlsTxSw +$dtx, TlsRxSw +$drx"
    if [ $ver = tlsv1.2 ]; then sv=-tls1_2; else sv=-tls1_3; fi
    n=0; while [ $n -lt $NSCLIENT ]; do
        sclient_bytes | openssl s_client -connect 127.0.0.1:$PORT -servername localhost \
            -CAfile $PKI/ca.pem -cert $PKI/clients/Device123.pem \
            -key $PKI/clients/Device123.key $sv -quiet -no_ign_eof >/dev/null 2>&1
        n=$((n + 1))
    done
    wait $spid
    msgs=$(grep -c '^device/' /tmp/got)
    [ "$msgs" = $((NPUB + NPAHO + NSCLIENT)) ]
    check "$ver: the staying subscriber got every message" $? "$msgs of $((NPUB + NPAHO + NSCLIENT)): $(cat /tmp/sub.err)"
    [ $(( $(stat_of TlsDecryptError) - de0 )) = 0 ]
    check "$ver: no TLS decrypt errors" $? "TlsDecryptError moved"
    echo "  $ver: TlsTxSw +$(( $(stat_of TlsTxSw) - tx0 )) TlsRxSw +$(( $(stat_of TlsRxSw) - rx0 )) with s_client"
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
echo "shortlived: $passed passed, $failed failed"
[ $failed = 0 ]
