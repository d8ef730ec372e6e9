#!/bin/bash
# QoS 1 round trips one at a time (kite-bench p2p, window 1, persistent
# sessions) against kite with persistence off / on / always: what an
# acknowledgement waiting for the log costs, with the CPU time of a
# contended machine mostly out of the picture.
#   rtt.sh KITE off|on|always PORT     (GEN: kite-bench; PAIRS, WIN, DUR)
K=$1; MODE=$2; PORT=$3
GEN=${GEN:-build/bench/kite-bench}
D=$(mktemp -d); chmod 777 "$D"   # kite started as root runs as mosquitto
{ echo "listener $PORT 127.0.0.1"; echo "allow_anonymous true"; echo "shards 1";
  if [ "$MODE" != off ]; then echo "persistence true"; echo "persistence_location $D"; fi
  if [ "$MODE" = always ]; then echo "persistence_sync always"; fi; } > "$D/kite.conf"
taskset -c 1 "$K" -c "$D/kite.conf" > "$D/log" 2>&1 &
P=$!
sleep 0.5
taskset -c 0 "$GEN" --port "$PORT" --topology p2p --pairs "${PAIRS:-1}" --qos 1 \
	--window "${WIN:-1}" --persistent --warmup 1 --duration "${DUR:-4}" \
	--broker-pid $P 2>&1 | tail -1 |
	grep -o "[0-9]* deliveries/s\|lat us p50 [0-9]*" | tr "\n" " "; echo
kill $P; wait $P 2>/dev/null; rm -rf "$D"
