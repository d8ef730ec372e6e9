#!/bin/sh
# Runs INSIDE the VM (busybox sh), put there by test_ktls_soak_vm.sh.
# tests/soak/soak.py against kite (the ASan+UBSan build) on a kernel with
# TLS. Asserted: the soak's own verdict (no crash, clean stop with exit 0
# and, under ASan, no report; RSS and descriptors bounded; every QoS 1/2
# message acknowledged was delivered; every probe round-tripped; no
# reload refused), and that the load did move TLS connections to kernel
# TLS both ways (TlsTxSw and TlsRxSw rose in /proc/net/tls_stat), so the
# kernel-TLS path is what was soaked.
# Prints "PASS|FAIL <case>" lines and "soak: N passed, N failed".
stat_of() { awk -v k="$1" '$1==k{v=$2} END{print v+0}' /proc/net/tls_stat; }
passed=0 failed=0
check() { # check NAME CONDITION-RESULT(0 ok) DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1"; passed=$((passed + 1));
    else echo "FAIL $1: $3"; failed=$((failed + 1)); fi
}

if [ ! -r /proc/net/tls_stat ]; then
    echo "SKIP: no /proc/net/tls_stat (tls.ko not loaded)"
    exit 77
fi
tx0=$(stat_of TlsTxSw) rx0=$(stat_of TlsRxSw)
# ASAN_OPTIONS is soak.py's: a small quarantine, so that its RSS bound
# reads memory kite holds, not memory ASan keeps freed.
KITE_BIN=/bin/kite python3 /opt/kite/tests/soak/soak.py > /tmp/soak.out 2>&1
rc=$?
sed 's/^/  /' /tmp/soak.out | tail -80
tx=$(( $(stat_of TlsTxSw) - tx0 )) rx=$(( $(stat_of TlsRxSw) - rx0 ))
echo "  tls: $tx connections moved to kernel TLS for sending, $rx for receiving"
check "soak verdict (exit $rc)" "$rc" "see the soak's report above"
[ "$tx" -gt 0 ] && [ "$rx" -gt 0 ]
check "TLS clients moved to kernel TLS (tx +$tx, rx +$rx)" $? "the soak did not reach kernel TLS"
decrypt=$(stat_of TlsDecryptError)
echo "  tls: TlsDecryptError $decrypt"
echo "soak: $passed passed, $failed failed"
[ "$failed" = 0 ]
