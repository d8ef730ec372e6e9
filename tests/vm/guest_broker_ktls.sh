#!/bin/sh
# Runs INSIDE the VM (busybox sh), put there by test_broker_ktls_vm.sh.
# For each (TLS version, cipher): starts /bin/broker with a Mosquitto-style
# config (TLS listener on 127.0.0.1:8883), subscribes and publishes through
# it with mosquitto_sub/mosquitto_pub over TLS, and reads /proc/net/tls_stat
# before, during and after. The mosquitto clients never enable kTLS, so every
# counter that moves belongs to the broker.
#   EXPECT=tx (default): a pair passes if data arrived and the broker's TX
#   went to the kernel (TlsTxSw +1 and TlsCurrTxSw +1 while connected).
#   EXPECT=txrx: both directions (kite installs RX keys itself, also for
#   TLS 1.3 where OpenSSL 3.0 would only do TX).
#   EXPECT=none: data only (to check the plumbing with a broker without kTLS).
# With $D/proxy (1 or 2), HAProxy in TCP mode sits in front (send-proxy or
# send-proxy-v2), the listener has enable_proxy_protocol, the clients
# connect to HAProxy from 127.0.0.2, and the broker must log that address:
# kernel TLS must engage on a connection whose first bytes were a PROXY
# header (HAProxy's own sockets carry no TLS, so the counters stay kite's).
# Exit 0 all pairs pass, 1 otherwise.
D=/etc/kite-vm/broker
PKI=$D/pki
EXPECT=${EXPECT:-$(cat $D/expect 2>/dev/null || echo tx)}
PROXY=$(cat $D/proxy 2>/dev/null)
PORT=8883
CPORT=$PORT     # where the clients connect
CBIND=""
if [ -n "$PROXY" ]; then
    CPORT=18883
    CBIND="-A 127.0.0.2"
    send=send-proxy; [ "$PROXY" = 2 ] && send=send-proxy-v2
    printf 'defaults\n mode tcp\n timeout connect 5s\n timeout client 60s\n timeout server 60s\nfrontend f\n bind 127.0.0.1:%s\n default_backend b\nbackend b\n server k 127.0.0.1:%s %s\n' \
        $CPORT $PORT $send > /tmp/haproxy.cfg
    haproxy -f /tmp/haproxy.cfg -db > /tmp/haproxy.log 2>&1 &
    hpid=$!
    sleep 1
fi

stat_of() { awk -v k="$1" '$1==k{print $2}' /proc/net/tls_stat; }
listening() {   # is 127.0.0.1:PORT in LISTEN state?
    hex=$(printf '%04X' $PORT)
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}

# 200 KB payload: several TLS records each way.
head -c 200000 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 200000 > /tmp/payload
fails=0
printf '%-7s %-30s | %-5s %-5s %-5s %-5s | %-5s %-5s | %s\n' version cipher dTx dRx curTx curRx data dErr verdict
while read -r ver cipher; do
    case $ver in ''|\#*) continue ;; esac
    conf=/tmp/broker.conf
    {
        echo "listener $PORT 127.0.0.1"
        echo "certfile $PKI/server.crt"
        echo "keyfile $PKI/server.key"
        echo "tls_version $ver"
        if [ "$ver" = tlsv1.3 ]; then echo "ciphers_tls1.3 $cipher"; else echo "ciphers $cipher"; fi
        echo "allow_anonymous true"
        [ -n "$PROXY" ] && echo "enable_proxy_protocol $PROXY"
        cat $D/extra.conf 2>/dev/null
    } > $conf
    tx0=$(stat_of TlsTxSw); rx0=$(stat_of TlsRxSw)
    ctx0=$(stat_of TlsCurrTxSw); crx0=$(stat_of TlsCurrRxSw); de0=$(stat_of TlsDecryptError)
    broker -c $conf > /tmp/broker.log 2>&1 &
    bpid=$!
    i=0
    while ! listening && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    rm -f /tmp/got
    mosquitto_sub -h 127.0.0.1 -p $CPORT $CBIND --cafile $PKI/ca.crt --tls-version $ver \
        -t kite/ktls -C 1 -W 20 > /tmp/got 2>/tmp/sub.err &
    spid=$!
    sleep 1
    # Sample while the subscriber is connected (its SUBACK went out), and
    # again after the publish; the larger counts (the subscriber may already
    # be gone by the second sample).
    ctx=$(( $(stat_of TlsCurrTxSw) - ctx0 )); crx=$(( $(stat_of TlsCurrRxSw) - crx0 ))
    mosquitto_pub -h 127.0.0.1 -p $CPORT $CBIND --cafile $PKI/ca.crt --tls-version $ver \
        -t kite/ktls -f /tmp/payload 2>/tmp/pub.err
    c=$(( $(stat_of TlsCurrTxSw) - ctx0 )); [ $c -gt $ctx ] && ctx=$c
    c=$(( $(stat_of TlsCurrRxSw) - crx0 )); [ $c -gt $crx ] && crx=$c
    wait $spid
    kill $bpid 2>/dev/null; wait $bpid 2>/dev/null
    dtx=$(( $(stat_of TlsTxSw) - tx0 )); drx=$(( $(stat_of TlsRxSw) - rx0 ))
    derr=$(( $(stat_of TlsDecryptError) - de0 ))
    # mosquitto_sub prints the payload and a newline
    if [ "$(head -c 200000 /tmp/got 2>/dev/null)" = "$(cat /tmp/payload)" ]; then data=ok; else data=BAD; fi
    verdict=OK
    [ $data = ok ] || verdict=FAIL
    if [ -n "$PROXY" ] && ! grep -q "New client connected from 127.0.0.2:" /tmp/broker.log; then
        verdict="FAIL (client address not from the PROXY header)"
    fi
    [ $derr = 0 ] || verdict=FAIL
    if [ "$EXPECT" = tx ] && { [ $dtx -lt 1 ] || [ $ctx -lt 1 ]; }; then verdict="FAIL (TX not offloaded)"; fi
    if [ "$EXPECT" = txrx ] && { [ $dtx -lt 1 ] || [ $ctx -lt 1 ]; }; then verdict="FAIL (TX not offloaded)"; fi
    if [ "$EXPECT" = txrx ] && { [ $drx -lt 1 ] || [ $crx -lt 1 ]; }; then verdict="FAIL (RX not offloaded)"; fi
    printf '%-7s %-30s | %-5s %-5s %-5s %-5s | %-5s %-5s | %s\n' $ver $cipher $dtx $drx $ctx $crx $data $derr "$verdict"
    case $verdict in OK) ;; *)
        fails=$((fails + 1))
        sed 's/^/  broker: /' /tmp/broker.log | tail -5
        sed 's/^/  sub: /' /tmp/sub.err; sed 's/^/  pub: /' /tmp/pub.err ;;
    esac
done < $D/matrix
[ -n "$PROXY" ] && kill $hpid 2>/dev/null
echo "dTx/dRx: TlsTxSw/TlsRxSw delta (broker sockets given kernel TX/RX keys);" \
     "curTx/curRx: TlsCurrTxSw/TlsCurrRxSw while the subscriber was connected; dErr: TlsDecryptError delta"
[ $fails = 0 ]
