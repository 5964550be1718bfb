#!/usr/bin/env bash
# fetch.sh PACKAGE ARCH: prints the path of the kernel image of the Debian
# package PACKAGE (an exact name from tools/kernels/matrix), downloading it
# once into $TCPRTT_CACHE/kernels/PACKAGE/. `fetch.sh busybox-static arm64`
# fetches arm64 busybox the same way (prints its /bin/busybox).
#
# apt runs with a private state (sources list, lists, cache) under
# $TCPRTT_CACHE/kernels/apt, so the system's apt configuration is neither
# read for sources nor changed. Only the named package is downloaded.
set -euo pipefail
pkg=$1 arch=$2
cache=${TCPRTT_CACHE:?TCPRTT_CACHE must name the cache directory}/kernels
dir=$cache/$pkg${arch:+_$arch}
case $pkg in
busybox-static) want=bin/busybox ;;
*) want=vmlinuz ;;
esac
if [ -s "$dir/$want" ]; then
	echo "$dir/$want"
	exit 0
fi

apt=$cache/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dir"
cat > "$apt/sources.list" <<SRC
deb [arch=amd64,arm64] http://deb.debian.org/debian bullseye main
deb [arch=amd64,arm64] http://deb.debian.org/debian-security bullseye-security main
deb [arch=amd64,arm64] http://deb.debian.org/debian bookworm main
deb [arch=amd64,arm64] http://deb.debian.org/debian-security bookworm-security main
deb [arch=amd64,arm64] http://deb.debian.org/debian trixie main
SRC
A=(-o APT::Sandbox::User=root -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- \
	-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" \
	-o APT::Architecture="$arch" -o APT::Architectures::="$arch")
# Lists are refreshed at most once a day (a package missing from them
# refreshes them too: the archive moves on).
stamp=$apt/lists/.updated-$arch
if [ -z "$(find "$stamp" -mtime -1 2>/dev/null)" ] || ! apt-cache "${A[@]}" show "$pkg:$arch" >/dev/null 2>&1; then
	apt-get "${A[@]}" update -qq >&2
	touch "$stamp"
fi
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get "${A[@]}" download -qq "$pkg:$arch" >&2)
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
if [ "$pkg" = busybox-static ]; then
	mkdir -p "$dir/bin"
	bb=$tmp/x/bin/busybox
	[ -e "$bb" ] || bb=$tmp/x/usr/bin/busybox # trixie's is in /usr/bin
	mv "$bb" "$dir/bin/busybox.part"
	mv "$dir/bin/busybox.part" "$dir/bin/busybox"
else
	img=$(ls "$tmp"/x/boot/vmlinuz-* | head -1)
	cp "$tmp/x/boot/config-"* "$dir/" 2>/dev/null || true
	mv "$img" "$dir/vmlinuz.part"
	mv "$dir/vmlinuz.part" "$dir/vmlinuz" # last: a present vmlinuz is complete
fi
echo "$dir/$want"
