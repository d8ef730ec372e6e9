#!/bin/sh
# Runs INSIDE the VM (busybox sh), put there by test_bridge_ktls_vm.sh.
# A local kite (no TLS listener) bridges over TLS to a remote broker,
# kite or Mosquitto 2.0.11, for each line of the matrix (remote, TLS
# version, cipher; a remote named *-psk uses TLS-PSK instead of
# certificates). Messages go both ways through the bridge, small and
# large ones (150 KB and 40 KB: many TLS records). The bridge's socket
# must have moved to kernel TLS both ways: TlsTxSw/TlsRxSw +1 from the
# bridge, plus +1 from a remote kite (its listener side; Mosquitto never
# uses kernel TLS), TlsCurrTxSw/RxSw that high while it is up, the local
# kite's log says "kernel TLS on", no decrypt error, and the local kite
# stops with exit 0. Mosquitto over TLS 1.3 sends session tickets right
# after the handshake: they must not keep the bridge in userspace. Last,
# a remote (bridge_late_ticket_remote) sends a ticket after the move: the
# bridge drops it and goes on, both ways.
# Prints "PASS|FAIL <case>" lines and "bridge: N passed, N failed".
D=/etc/kite-vm/bridge
PKI=$D/pki
RTLS=8883 RPLAIN=1884 LOCAL=1883
LLOG=/tmp/local.log RLOG=/tmp/remote.log

listening() {
    hex=$(printf '%04X' $1)
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}
wait_listening() { i=0; while ! listening $1 && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done; listening $1; }
stat_of() { awk -v k="$1" '$1==k{v=$2} END{print v+0}' /proc/net/tls_stat; }
passed=0 failed=0
check() { # check NAME CONDITION-RESULT(0 ok) DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1"; passed=$((passed + 1));
    else echo "FAIL $1: $3"; failed=$((failed + 1)); fi
}
# cat of the expected payloads, as mosquitto_sub -N prints them
expect() { for f in "$@"; do cat $f; done; }

printf 'small message out' > /tmp/out-small
printf 'small message in' > /tmp/in-small
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66

while read remote ver cipher; do
    [ -n "$remote" ] || continue
    name="$remote $ver $cipher"
    f0=$failed
    if [ $ver = tlsv1.3 ]; then copt="ciphers_tls1.3 $cipher"; else copt="ciphers $cipher"; fi
    # "kite-psk", "mosquitto-psk": TLS-PSK (psk_hint/psk_file; the bridge's
    # bridge_identity/bridge_psk) instead of certificates.
    case $remote in
    *-psk) ropt="psk_hint kite
psk_file $D/psk"
           bopt="bridge_identity edge-7
bridge_psk $(cut -d: -f2 $D/psk)" ;;
    *) ropt="cafile $PKI/ca.pem
certfile $PKI/server.pem
keyfile $PKI/server.key"
       bopt="bridge_cafile $PKI/ca.pem" ;;
    esac
    cat > /tmp/remote.conf <<CONF
log_dest stderr
log_type all
allow_anonymous true
listener $RPLAIN 127.0.0.1
listener $RTLS 127.0.0.1
$ropt
$copt
CONF
    if [ ${remote%-psk} = mosquitto ]; then
        echo "user root" >> /tmp/remote.conf
        mosquitto -c /tmp/remote.conf > $RLOG 2>&1 &
        rmine=0
    else
        kite -c /tmp/remote.conf > $RLOG 2>&1 &
        rmine=1
    fi
    rpid=$!
    wait_listening $RTLS && wait_listening $RPLAIN
    check "$name: remote listens" $? "$(tail -5 $RLOG)"

    cat > /tmp/local.conf <<CONF
log_dest stderr
log_type all
allow_anonymous true
listener $LOCAL 127.0.0.1
connection rb
address 127.0.0.1:$RTLS
cleansession true
topic out/# out 1
topic in/# in 1
$bopt
bridge_tls_version $ver
CONF
    tx0=$(stat_of TlsTxSw); rx0=$(stat_of TlsRxSw); de0=$(stat_of TlsDecryptError)
    ctx0=$(stat_of TlsCurrTxSw); crx0=$(stat_of TlsCurrRxSw)
    kite -c /tmp/local.conf > $LLOG 2>&1 &
    lpid=$!
    wait_listening $LOCAL
    check "$name: local kite listens" $? "$(tail -5 $LLOG)"
    i=0
    while ! grep -q 'kernel TLS on for' $LLOG && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    grep -q 'Bridge rb connected to' $LLOG
    check "$name: the bridge is up" $? "$(tail -10 $LLOG)"
    grep -q 'kernel TLS on for' $LLOG
    check "$name: the local kite logs the bridge's move to kernel TLS" $? \
        "$(grep -i 'tls\|bridge' $LLOG | tail -10)"
    want=$((1 + rmine))
    dtx=$(( $(stat_of TlsTxSw) - tx0 )); drx=$(( $(stat_of TlsRxSw) - rx0 ))
    ctx=$(( $(stat_of TlsCurrTxSw) - ctx0 )); crx=$(( $(stat_of TlsCurrRxSw) - crx0 ))
    # The local kite's startup probe (tls_kernel_ktls_support) sets a TX
    # key on a throwaway socket pair once: TlsTxSw may count it.
    [ $drx = $want ] && [ $ctx = $want ] && [ $crx = $want ] &&
        { [ $dtx = $want ] || [ $dtx = $((want + 1)) ]; }
    check "$name: kernel TLS both ways (TlsCurrTxSw/RxSw +$want)" $? \
        "TlsTxSw +$dtx TlsRxSw +$drx TlsCurrTxSw +$ctx TlsCurrRxSw +$crx"

    # Both subscribers first; the bridge's own subscription on the
    # remote was sent after its CONNACK, through the kernel already.
    mosquitto_sub -h 127.0.0.1 -p $RPLAIN -t 'out/#' -q 1 -N -C 4 -W 60 > /tmp/got-out 2>/tmp/sub-out.err &
    sopid=$!
    mosquitto_sub -h 127.0.0.1 -p $LOCAL -t 'in/#' -q 1 -N -C 4 -W 60 > /tmp/got-in 2>/tmp/sub-in.err &
    sipid=$!
    sleep 1.5
    bad=0
    for f in /tmp/out-small $D/big1 $D/big2 /tmp/out-small; do
        mosquitto_pub -h 127.0.0.1 -p $LOCAL -t out/x -q 1 -f $f 2>>/tmp/pub.err || bad=$((bad + 1))
    done
    for f in /tmp/in-small $D/big2 $D/big1 /tmp/in-small; do
        mosquitto_pub -h 127.0.0.1 -p $RPLAIN -t in/x -q 1 -f $f 2>>/tmp/pub.err || bad=$((bad + 1))
    done
    check "$name: 8 publishes" $bad "$(tail -3 /tmp/pub.err)"
    wait $sopid; wait $sipid
    expect /tmp/out-small $D/big1 $D/big2 /tmp/out-small > /tmp/want-out
    expect /tmp/in-small $D/big2 $D/big1 /tmp/in-small > /tmp/want-in
    cmp -s /tmp/got-out /tmp/want-out
    check "$name: local -> remote, intact and in order" $? \
        "got $(wc -c < /tmp/got-out) of $(wc -c < /tmp/want-out) bytes $(cat /tmp/sub-out.err)"
    cmp -s /tmp/got-in /tmp/want-in
    check "$name: remote -> local, intact and in order" $? \
        "got $(wc -c < /tmp/got-in) of $(wc -c < /tmp/want-in) bytes $(cat /tmp/sub-in.err)"
    [ $(( $(stat_of TlsDecryptError) - de0 )) = 0 ]
    check "$name: no TLS decrypt errors" $? "TlsDecryptError moved"
    [ "$(grep -c 'Connecting bridge rb' $LLOG)" = 1 ] && [ $(( $(stat_of TlsRxSw) - rx0 )) = $want ] &&
        [ $(( $(stat_of TlsCurrRxSw) - crx0 )) = $want ]
    check "$name: the bridge stayed up (one connection)" $? \
        "$(grep -c 'Connecting bridge rb' $LLOG) attempts, TlsRxSw +$(( $(stat_of TlsRxSw) - rx0 ))"

    kill -TERM $lpid 2>/dev/null
    wait $lpid
    rc=$?
    check "$name: local kite stops cleanly" $rc "exit $rc: $(tail -5 $LLOG)"
    i=0
    while [ $(stat_of TlsCurrTxSw) != $ctx0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    [ $(stat_of TlsCurrTxSw) = $ctx0 ] && [ $(stat_of TlsCurrRxSw) = $crx0 ]
    check "$name: both ends' kernel TLS sockets closed" $? \
        "TlsCurrTxSw $(stat_of TlsCurrTxSw) (was $ctx0), TlsCurrRxSw $(stat_of TlsCurrRxSw) (was $crx0)"
    ! grep -q "Sanitizer\|Assertion" $LLOG $RLOG
    check "$name: no assertion or sanitizer report" $? \
        "$(grep -h -A20 'Sanitizer\|Assertion' $LLOG $RLOG | head -40)"
    kill -TERM $rpid 2>/dev/null
    wait $rpid
    [ $failed = $f0 ] || { echo "--- local kite log (tail)"; tail -30 $LLOG;
                         echo "--- remote log (tail)"; tail -15 $RLOG; }
done < $D/matrix

# A session ticket after the move: the kernel hands kite a handshake
# record, which a bridge drops; messages go on both ways.
TPORT=8884
name="late ticket"
f0=$failed
if [ ! -e $D/matrix-only ]; then
    bridge_late_ticket_remote $TPORT $PKI/server.pem $PKI/server.key in/late after-ticket 2500 \
        > /tmp/ticket.out 2> /tmp/ticket.err &
    tpid=$!
    wait_listening $TPORT
    cat > /tmp/local.conf <<CONF
log_dest stderr
log_type all
allow_anonymous true
listener $LOCAL 127.0.0.1
connection rt
address 127.0.0.1:$TPORT
cleansession true
topic out/# out 0
topic in/# in 0
bridge_cafile $PKI/ca.pem
bridge_tls_version tlsv1.3
CONF
    kite -c /tmp/local.conf > $LLOG 2>&1 &
    lpid=$!
    wait_listening $LOCAL
    mosquitto_sub -h 127.0.0.1 -p $LOCAL -t 'in/#' -N -C 1 -W 30 > /tmp/got-late 2>/tmp/sub-late.err &
    sipid=$!
    i=0
    while ! grep -q 'kernel TLS on for' $LLOG && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ! grep -q 'ticket sent' /tmp/ticket.err && grep -q 'kernel TLS on for' $LLOG
    check "$name: the bridge moved to kernel TLS before the ticket came" $? \
        "$(cat /tmp/ticket.err; grep -i 'tls\|bridge' $LLOG | tail -5)"
    wait $sipid
    [ "$(cat /tmp/got-late)" = after-ticket ]
    check "$name: the remote's PUBLISH after its ticket arrived" $? \
        "got '$(cat /tmp/got-late)' $(cat /tmp/sub-late.err; cat /tmp/ticket.err)"
    mosquitto_pub -h 127.0.0.1 -p $LOCAL -t out/back -m back-after-ticket
    i=0
    while kill -0 $tpid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ "$(cat /tmp/ticket.out)" = "got out/back back-after-ticket" ]
    check "$name: the bridge's PUBLISH reached the remote after the ticket" $? \
        "$(cat /tmp/ticket.out /tmp/ticket.err)"
    [ "$(grep -c 'Connecting bridge rt' $LLOG)" = 1 ] && ! grep -q 'unexpected TLS handshake' $LLOG
    check "$name: the bridge stayed up (one connection)" $? "$(grep -i 'bridge rt\|TLS' $LLOG | tail -5)"
    kill $tpid 2>/dev/null
    kill -TERM $lpid 2>/dev/null
    wait $lpid
    rc=$?
    check "$name: local kite stops cleanly" $rc "exit $rc"
    ! grep -q "Sanitizer\|Assertion" $LLOG
    check "$name: no assertion or sanitizer report" $? "$(grep -A20 'Sanitizer\|Assertion' $LLOG | head -40)"
    [ $failed = $f0 ] || { echo "--- local kite log (tail)"; tail -30 $LLOG; }
fi

echo "bridge: $passed passed, $failed failed"
[ $failed = 0 ]
