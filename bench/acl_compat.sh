#!/bin/sh
# Compatibility of `kite passwd` files with the real Mosquitto 2.0 broker:
# builds a tiny driver around passwd_main, writes a file with $7$ and $6$
# users, starts /usr/sbin/mosquitto on a free 127.0.0.1 port with
# password_file + allow_anonymous false, and connects with mosquitto_pub
# using good and bad passwords. Usage: sh bench/acl_compat.sh (from the repo).
set -eu
for b in /usr/sbin/mosquitto /usr/bin/mosquitto_pub; do
	[ -x "$b" ] || { echo "SKIP: $b not installed"; exit 77; }
done
dir=$(mktemp -d /tmp/kite-compat-XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
cat > "$dir/driver.c" <<'C'
#include "acl/acl.h"
int main(int argc, char **argv) { return passwd_main(argc, argv); }
C
cc -std=c17 -D_GNU_SOURCE -I. -o "$dir/kite-passwd" "$dir/driver.c" acl/*.c core/hash.c core/htab.c core/topic.c -lssl -lcrypto -lpthread
"$dir/kite-passwd" -c -b "$dir/pw" alice 'alice pw' >/dev/null
"$dir/kite-passwd" -H sha512 -b "$dir/pw" bob 'b0b:x' >/dev/null
"$dir/kite-passwd" -I 1000 -b "$dir/pw" carol 'c' >/dev/null
# Mosquitto started as root drops to user "mosquitto": let it read the
# 0600 file by owning it (kite's own mode is what we keep testing).
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
	chown -R mosquitto "$dir"
fi
[ "$(stat -c %a "$dir/pw")" = 600 ] || { echo "FAIL: mode not 0600"; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/m.conf" <<C
listener $port 127.0.0.1
allow_anonymous false
password_file $dir/pw
C
/usr/sbin/mosquitto -c "$dir/m.conf" >"$dir/log" 2>&1 &
pid=$!
sleep 0.5
fail=0
try() { # user password expected(0 ok, 1 refused)
	if mosquitto_pub -p "$port" -h 127.0.0.1 -u "$1" -P "$2" -t t -m x 2>/dev/null; then got=0; else got=1; fi
	if [ "$got" = "$3" ]; then echo "ok   $1/$2 -> $3"; else echo "FAIL $1/$2 -> $got (want $3)"; fail=1; fi
}
try alice 'alice pw' 0
try alice 'alice' 1
try bob 'b0b:x' 0
try bob 'b0b' 1
try carol 'c' 0
try nobody 'c' 1
exit $fail
