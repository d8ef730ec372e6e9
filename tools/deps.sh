#!/bin/sh
# Installs the Debian 12 packages kite needs to build, run and test, if any
# is missing. Safe to run again: does nothing when all are present.
#   sh tools/deps.sh       build, run and test (make run, make test)
#   sh tools/deps.sh deb   also what `make deb` / `make deb-test` need
#   sh tools/deps.sh bench only what the benchmark adds (bench/deps.sh)
set -eu
PKGS="gcc clang make pkg-config libssl-dev liburing-dev libjemalloc-dev
liburcu-dev libbpf-dev libclang-rt-14-dev mosquitto mosquitto-clients
python3 python3-pytest python3-pytest-xdist python3-paho-mqtt openssl bpftool libelf-dev
zlib1g-dev iproute2 libsystemd-dev libwslay-dev
nodejs node-mqtt chromium libnats-dev nats-server haproxy"
# The package: debhelper builds it, lintian checks it, systemd-analyze
# (package systemd) verifies the unit, logrotate checks its config, man
# (man-db) checks the pages, adduser runs in its postinst.
DEB_PKGS="debhelper dpkg-dev lintian systemd logrotate man-db adduser"
# The benchmark: Mosquitto to compare against, matplotlib for the PNG
# plots (python3-matplotlib installs for /usr/bin/python3).
BENCH_PKGS="mosquitto python3-matplotlib gcc make"
what=deps
case "${1:-}" in
deb) PKGS="$PKGS $DEB_PKGS" ;;
bench) PKGS="$BENCH_PKGS" what="bench deps" ;;
esac
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "$what: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
