#!/bin/sh
# `make deb`: builds $BUILD/kite_$VERSION_<arch>.deb with dpkg-buildpackage
# (debhelper) from a copy of the source tree in $BUILD/deb/kite-$VERSION,
# so the tree itself is never written to and its build/ is not reused.
# The version comes from io/version.h (KITE_VERSION), via the Makefile.
set -eu
: "${BUILD:=build}" "${VERSION:?VERSION unset (run make deb)}"
cd "$(dirname "$0")/.."
top=$(pwd)
case "$BUILD" in
/*) build="$BUILD" ;;
*) build="$top/$BUILD" ;;
esac
out="$build/deb"
src="$out/kite-$VERSION"
rm -rf "$out" "$build"/kite_*.deb
mkdir -p "$src"
# The tree without build output, VCS data, caches and local test PKIs.
tar -C "$top" --exclude=./build --exclude=./.git --exclude=./pki \
	--exclude=__pycache__ --exclude=./bench/results -cf - . | tar -C "$src" -xf -
cp -r packaging/debian "$src/debian"
# debian/changelog: one entry for this version, dated by the last commit
# (reproducible), or now outside git.
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
cat > "$src/debian/changelog" <<EOC
kite ($VERSION) bookworm; urgency=medium

  * kite $VERSION.

 -- $(sed -n 's/^Maintainer: //p' packaging/debian/control)  $when
EOC
cd "$src"
# -b: binary only; -us -uc: unsigned; dpkg-buildpackage checks the
# Build-Depends (tools/deps.sh deb installs them).
dpkg-buildpackage -b -us -uc --no-sign >"$out/build.log" 2>&1 || {
	tail -40 "$out/build.log" >&2
	echo "make deb: dpkg-buildpackage failed; log: $out/build.log" >&2
	exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb="kite_${VERSION}_${arch}.deb"
mv "$out/$deb" "$build/$deb"
echo "make deb: $build/$deb"
