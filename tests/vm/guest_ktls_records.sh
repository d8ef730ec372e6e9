#!/bin/sh
# Runs INSIDE the VM (busybox sh), put there by test_ktls_records_vm.sh.
# Starts /bin/kite -v with an mTLS listener (PKI from `kite cert`) and, for
# TLS 1.3 and TLS 1.2, sends TLS control records after kite has moved the
# connection to kernel TLS (ktls_records_client), checking what kite did:
#   notify     close_notify      -> "closed by client (TLS close_notify)",
#                                   and kite's own close_notify back
#   alert      fatal alert 40    -> "TLS alert 40 from client"
#   reneg      ClientHello (1.2) -> a no_renegotiation warning: the client
#                                   reports "no renegotiation", kite logs
#                                   the refusal (the client then gives up
#                                   with alert 40, as with OpenSSL alone)
#   KeyUpdate (1.3), where the kernel can re-key (/proc/net/tls_stat has
#   TlsRxRekeyOk, Linux 6.14+), for each TLS 1.3 cipher:
#              keyupdate-rounds: three client KeyUpdates (two asking for
#              ours), a pub/sub round trip after each on the same
#              connection, TlsRxRekeyOk +3 and TlsTxRekeyOk +2, no rekey or
#              decrypt errors, and a clean DISCONNECT
#              and twelve KeyUpdates in a burst -> closed with "too many
#              TLS KeyUpdates" (8 a second are allowed)
#   KeyUpdate (1.3) on older kernels -> closed with "this kernel cannot
#              replace kernel TLS keys"
# Each case also needs kite's RX to be in the kernel before the record
# (TlsCurrRxSw +1 seen by the client), kite still running, and a second
# client's publish/subscribe round trip afterwards.
# Prints "PASS|FAIL <case>" per case; exit 0 iff all pass.
D=/etc/kite-vm/records
PKI=$D/pki
PORT=8883
CA=$PKI/ca.pem
CERT=$PKI/clients/dev1.pem
KEY=$PKI/clients/dev1.key
LOG=/tmp/kite.log

listening() {
    hex=$(printf '%04X' $PORT)
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}
stat_of() { awk -v k="$1" '$1==k{v=$2} END{print v+0}' /proc/net/tls_stat; }

cat > /tmp/kite.conf <<EOF
listener $PORT 127.0.0.1
cafile $CA
certfile $PKI/server.pem
keyfile $PKI/server.key
require_certificate true
use_identity_as_username true
EOF

kite -c /tmp/kite.conf -v > $LOG 2>&1 &
KPID=$!
i=0
while ! listening && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
listening || { echo "FAIL setup: kite not listening"; cat $LOG; exit 1; }
grep -i "tls" $LOG | head -3 | sed 's/^/  kite: /'

fails=0
n=0
# case_run NAME MODE VERSION KITE_LOG_TEXT [CLIENT_TEXT [SUITE]]
case_run() {
    name=$1 mode=$2 ver=$3 want=$4 want_client=${5:-} suite=${6:-}
    n=$((n + 1))
    id=rec$n
    de0=$(stat_of TlsDecryptError)
    rxk0=$(stat_of TlsRxRekeyOk) txk0=$(stat_of TlsTxRekeyOk)
    rke0=$(( $(stat_of TlsRxRekeyError) + $(stat_of TlsTxRekeyError) ))
    lines0=$(wc -l < $LOG)
    timeout 40 ktls_records_client $mode $ver $PORT $CA $CERT $KEY $id 500 $suite \
        > /tmp/c.out 2>&1
    crc=$?
    # kite logs "Client ID PEER disconnected: REASON" once it has handled
    # the close (the record's counters are in /proc by then): wait for
    # that line, up to 5 s, instead of a fixed time.
    i=0
    while [ $i -lt 50 ] && ! tail -n +$((lines0 + 1)) $LOG | grep -a "$id " |
            grep -aq "disconnected: "; do
        sleep 0.1; i=$((i + 1))
    done
    sed 's/^/  /' /tmp/c.out
    tail -n +$((lines0 + 1)) $LOG > /tmp/new.log
    grep -a "$id " /tmp/new.log | sed 's/^/  kite: /'
    crx=$(sed -n 's/.*TlsCurrRxSw +*\([-0-9]*\).*/\1/p' /tmp/c.out)
    why=
    [ $crc = 0 ] || why="$why client exit $crc;"
    [ "${crx:-0}" -ge 1 ] 2>/dev/null || why="$why kite RX not in the kernel before the record (TlsCurrRxSw ${crx:-?});"
    grep -a "$id " /tmp/new.log | grep -aq "disconnected: $want" ||
        why="$why no 'disconnected: $want' in kite's log for $id;"
    if [ -n "$want_client" ]; then
        grep -aq "$want_client" /tmp/c.out || why="$why client did not report '$want_client';"
    fi
    if [ $mode = reneg ]; then
        grep -a "$id " /tmp/new.log | grep -aq "TLS renegotiation refused" ||
            why="$why kite did not log the refused renegotiation;"
    fi
    extra=
    if [ $mode = keyupdate-rounds ]; then
        rxk=$(( $(stat_of TlsRxRekeyOk) - rxk0 )) txk=$(( $(stat_of TlsTxRekeyOk) - txk0 ))
        rke=$(( $(stat_of TlsRxRekeyError) + $(stat_of TlsTxRekeyError) - rke0 ))
        [ $rxk = 3 ] || why="$why TlsRxRekeyOk +$rxk, want +3;"
        [ $txk = 2 ] || why="$why TlsTxRekeyOk +$txk, want +2;"
        [ $rke = 0 ] || why="$why rekey errors +$rke;"
        grep -aq "peer key updates 2" /tmp/c.out || why="$why the client did not see kite's 2 KeyUpdates;"
        extra=", TlsRxRekeyOk +$rxk, TlsTxRekeyOk +$txk"
    fi
    kill -0 $KPID 2>/dev/null || why="$why kite is not running;"
    de=$(( $(stat_of TlsDecryptError) - de0 ))
    [ $de = 0 ] || why="$why TlsDecryptError +$de;"
    timeout 20 ktls_records_client pubsub $ver $PORT $CA $CERT $KEY after$n \
        > /tmp/p.out 2>&1 || why="$why second client's pub/sub failed: $(tr '\n' ' ' < /tmp/p.out);"
    if [ -z "$why" ]; then
        echo "PASS $name (TlsCurrRxSw +$crx, TlsDecryptError +$de$extra; second client pub/sub ok)"
    else
        echo "FAIL $name:$why"
        fails=$((fails + 1))
        sed 's/^/  kite log: /' /tmp/new.log | tail -20
    fi
}

echo "kernel $(uname -r)"
if grep -q '^TlsRxRekeyOk' /proc/net/tls_stat; then
    rekey=1
    echo "kernel TLS re-keying: yes (TlsRxRekeyOk in /proc/net/tls_stat)"
    grep -q "TLS 1.3 key updates are followed in the kernel" $LOG ||
        { echo "FAIL startup: kite did not say it follows key updates"; fails=$((fails + 1)); }
else
    rekey=0
    echo "kernel TLS re-keying: no (Linux < 6.14)"
    grep -q "this kernel cannot replace TLS keys" $LOG ||
        { echo "FAIL startup: kite did not say key updates will close connections"; fails=$((fails + 1)); }
fi
case_run "tls1.3 close_notify" notify tls1.3 "closed by client (TLS close_notify)" "peer: close_notify"
if [ $rekey = 1 ]; then
    for suite in TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256; do
        case_run "tls1.3 KeyUpdate x3 $suite" keyupdate-rounds tls1.3 "disconnected$" \
            "KeyUpdate (update_requested), round trip 2 ok" $suite
    done
    case_run "tls1.3 KeyUpdate then PINGREQ" keyupdate tls1.3 "closed by client$" \
        "peer: MQTT packet 0xd0"
    case_run "tls1.3 KeyUpdate flood" keyupdate-flood tls1.3 \
        "too many TLS KeyUpdates from client"
else
    case_run "tls1.3 KeyUpdate" keyupdate tls1.3 \
        "TLS KeyUpdate from client: this kernel cannot replace kernel TLS keys"
fi
case_run "tls1.3 fatal alert" alert tls1.3 "TLS alert 40 from client"
case_run "tls1.2 close_notify" notify tls1.2 "closed by client (TLS close_notify)" "peer: close_notify"
case_run "tls1.2 renegotiation ClientHello" reneg tls1.2 "TLS alert 40 from client" \
    "no renegotiation"
case_run "tls1.2 fatal alert" alert tls1.2 "TLS alert 40 from client"

echo "tls_stat at the end:"
sed 's/^/  /' /proc/net/tls_stat
if kill -0 $KPID 2>/dev/null; then
    kill $KPID; wait $KPID
    st=$?
    echo "kite exit status after SIGTERM: $st"
    # 0 is a clean stop; a sanitizer build reports leaks/errors otherwise.
    [ $st = 0 ] || { echo "FAIL kite did not stop cleanly"; fails=$((fails + 1)); }
    if grep -aq "Sanitizer" $LOG; then
        echo "FAIL sanitizer report in kite's log:"
        grep -a -A30 "Sanitizer" $LOG | head -60 | sed 's/^/  kite: /'
        fails=$((fails + 1))
    fi
else
    wait $KPID
    echo "FAIL kite died (status $?)"
    fails=$((fails + 1))
fi
echo "kite log (last 40 lines):"
tail -40 $LOG | sed 's/^/  kite: /'
echo "records: $((n - fails)) of $n cases passed"
[ $fails = 0 ]
