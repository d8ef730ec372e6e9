#!/bin/sh
# Debian 12 packages the benchmark needs beyond tools/deps.sh: Mosquitto to
# compare against and matplotlib for the PNG plots (python3-matplotlib
# installs for /usr/bin/python3). Does nothing when all are present.
set -eu
PKGS="mosquitto python3-matplotlib gcc make"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "bench deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
