#!/usr/bin/env bash
# Regenerate the mdatagen output of the tcprtt receiver from the root
# metadata.yaml.
#
#   tools/mdatagen.sh            (from anywhere; paths are resolved from this file)
#
# mdatagen (v0.159.0, pinned in tools/go.mod, run with `go tool` from the
# tools module so the root go.mod carries no tool dependency) has no output
# flag: it writes next to the metadata.yaml it is given and into
# <that dir>/internal/metadata. So it is run on receiver/metadata.yaml, a
# committed relative symlink to ../metadata.yaml (the generated
# TestComponentLifecycle also reads "metadata.yaml" from the package
# directory at test time, so the symlink is needed there anyway).
#
# Two fix-ups follow, because mdatagen derives things from the directory name:
#   - it names the Go package of receiver/generated_*_test.go after the
#     directory ("receiver"); the package is tcprttreceiver.
#   - it writes files 0600 and directories 0700; make them 0644/0755.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/tools"
pkgdir="$root/receiver"
pkgname="tcprttreceiver"

bootstrap=""
cleanup() {
	if [ -n "$bootstrap" ]; then rm -f "$bootstrap"; fi
}
trap cleanup EXIT

mkdir -p "$pkgdir"
if [ ! -L "$pkgdir/metadata.yaml" ] || [ "$(readlink "$pkgdir/metadata.yaml")" != "../metadata.yaml" ]; then
	rm -f "$pkgdir/metadata.yaml"
	ln -s ../metadata.yaml "$pkgdir/metadata.yaml"
fi

# mdatagen runs `go list` in the package directory to learn its import path,
# which fails if the directory holds no Go file yet. Only then, add a
# throwaway file for the duration of the run.
if ! compgen -G "$pkgdir/*.go" >/dev/null; then
	bootstrap="$pkgdir/zz_mdatagen_bootstrap.go"
	printf 'package %s\n' "$pkgname" >"$bootstrap"
fi

# `go tool` must run inside the tools module; the path must go through the
# symlink (mdatagen does not resolve it, so its output lands in receiver/).
(cd "$tools" && GOWORK=off go tool mdatagen "$pkgdir/metadata.yaml")

for f in "$pkgdir"/generated_component_test.go "$pkgdir"/generated_package_test.go; do
	if [ -f "$f" ]; then
		sed -i "s/^package receiver\$/package $pkgname/" "$f"
	fi
done

# Normalise permissions of everything mdatagen may have written.
for d in "$pkgdir/internal/metadata" "$pkgdir/internal/metadatatest"; do
	if [ -d "$d" ]; then
		chmod 0755 "$pkgdir/internal" "$d"
		find "$d" -maxdepth 1 -type f -name 'generated_*' -exec chmod 0644 {} +
	fi
done
for f in "$pkgdir"/generated_*.go "$pkgdir"/documentation.md "$pkgdir"/config.schema.*; do
	if [ -f "$f" ]; then chmod 0644 "$f"; fi
done
