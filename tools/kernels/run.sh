#!/usr/bin/env bash
# run.sh [NAME/ARCH ...]: the kernel matrix (`make test-kernels`).
#
# For each kernel of tools/kernels/matrix (or only those named, e.g. 5.10/amd64):
# fetch the Debian kernel once into $TCPRTT_CACHE/kernels (fetch.sh), boot it
# under qemu (TCG: no KVM needed) with an initramfs holding busybox and the
# static kernel-test binaries of internal/loader, receiver, cmd/tcprtt and
# internal/oracle, run them with TCPRTT_REQUIRE_BPF=1, and read the serial
# console back. Prints one
# result line per kernel and exits non-zero if any kernel fails: a test
# failed, the VM hung (VM_TIMEOUT), or the flavours that attached differ from
# the matrix's expected ones, or one of them did not pass the TCP_INFO checks.
#
# Environment: TCPRTT_CACHE (required; the Makefile sets it), GO, VM_SMP (vCPUs per VM, default 1), JOBS (VMs
# at once, default 2), VM_TIMEOUT (seconds per VM, default 1500), OUT (build
# directory, default build/kernels; serial logs in $OUT/logs).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tools/kernels
GO=${GO:-go}
JOBS=${JOBS:-2}
VM_TIMEOUT=${VM_TIMEOUT:-1500}
# One vCPU per VM: with two, TCG does not keep kernel text that one vCPU
# patches (attaching an fentry program rewrites tcp_rcv_established's call
# site) coherent on the other, and 6.12 died with "Oops: int3" at
# tcp_rcv_established+0x5 in two of five runs (5.10 soft-locked once).
# Several CPUs are covered by the host's make test.
VM_SMP=${VM_SMP:-1}
OUT=${OUT:-build/kernels}
: "${TCPRTT_CACHE:?TCPRTT_CACHE must name the cache directory (make test-kernels sets it)}"
export TCPRTT_CACHE

# Packages with kernel tests, and what each skips inside a VM (the host's
# make test runs all of them):
# - the kernel's bucket choice runs at the default scale 3 only (every
#   scale takes minutes under TCG);
# - 100 Start/Shutdown cycles (fd leaks, ~2 min under TCG) and the storm of
#   4000 peers (~75 s) test user-space bookkeeping that does not depend on
#   the kernel; the accounting identity, overflow included, runs per flavour;
# - idle expiry depends on 200 ms timings that a TCG guest on a shared
#   host does not keep.
# internal/oracle (the comparison with the oracle program) runs whole: its
# comparisons are exact whatever the timing.
PKGS="internal/loader receiver cmd/tcprtt internal/oracle"
skip_of() {
	case $1 in
	internal/loader) echo 'TestKernelBucketChoice/scale[^3]' ;;
	receiver) echo '^(TestStartShutdownCycles|TestPeerStorm|TestIdleSeriesExpire)$' ;;
	# One vCPU: the spread over CPUs is the host's; the colliding half
	# (one cache entry for every socket) runs in every VM.
	internal/oracle) echo 'TestManySocketsPerSeries/one_cache_entry=false' ;;
	*) echo '' ;;
	esac
}

mapfile -t rows < <(grep -Ev '^\s*(#|$)' "$here/matrix")
want=("$@")
selected=()
for r in "${rows[@]}"; do
	read -r name arch _ _ _ <<<"$r"
	if [ ${#want[@]} -eq 0 ] || printf '%s\n' "${want[@]}" | grep -qxF "$name/$arch"; then
		selected+=("$r")
	fi
done
[ ${#selected[@]} -gt 0 ] || { echo "run.sh: no kernel of $here/matrix matches: $*" >&2; exit 2; }

mkdir -p "$OUT/logs"
t0=$(date +%s)

# Build the test binaries and the initramfs once per architecture.
initrd_of() { echo "$OUT/initramfs-$1.cpio"; }
build_arch() {
	local arch=$1 root=$OUT/root-$1
	rm -rf "$root"
	mkdir -p "$root"/{bin,proc,sys,dev,tmp,t}
	local bb=/bin/busybox
	[ "$arch" = amd64 ] || bb=$("$here/fetch.sh" busybox-static "$arch")
	[ "$arch" != amd64 ] || [ -x "$bb" ] || { echo "run.sh: /bin/busybox missing: apt-get install busybox-static" >&2; return 1; }
	cp "$bb" "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	for p in $PKGS; do
		local n=${p##*/} d=$root/t/${p##*/}
		mkdir -p "$d"
		CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" test -c -o "$d/$n.test" "./$p"
		[ ! -d "$p/testdata" ] || cp -r "$p/testdata" "$d/"
		cp "$p"/*.yaml "$d/" 2>/dev/null || true # metadata.yaml: the generated component tests read it
	done
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -o "$root/t/tcprtt/tcprtt" ./cmd/tcprtt
	{
		echo '#!/bin/sh'
		echo "PKGS='$(for p in $PKGS; do printf '%s ' "${p##*/}"; done)'"
		for p in $PKGS; do echo "SKIP_${p##*/}='$(skip_of "$p")'"; done
		cat "$here/init"
	} >"$root/init"
	chmod 755 "$root/init"
	# Uncompressed: the kernel unpacks it faster than it would gunzip.
	(cd "$root" && find . | cpio -o -H newc --quiet) >"$(initrd_of "$arch").part"
	mv "$(initrd_of "$arch").part" "$(initrd_of "$arch")"
}

for arch in $(printf '%s\n' "${selected[@]}" | awk '{print $2}' | sort -u); do
	echo "run.sh: building the $arch test binaries and initramfs" >&2
	build_arch "$arch"
done
# Kernels are fetched before the VMs start, so downloads do not count
# against VM_TIMEOUT.
for r in "${selected[@]}"; do
	read -r _ arch _ pkg _ <<<"$r"
	"$here/fetch.sh" "$pkg" "$arch" >/dev/null
done
tbuild=$(($(date +%s) - t0))

# boot NAME ARCH PACKAGE EXPECTED: runs one VM, then writes its result line
# to $OUT/logs/NAME-ARCH.result and exits 0 on PASS.
boot() {
	local name=$1 arch=$2 pkg=$3 expected=$4
	local id=$name-$arch log=$OUT/logs/$name-$arch.log res=$OUT/logs/$name-$arch.result
	local kernel
	kernel=$("$here/fetch.sh" "$pkg" "$arch")
	local start=$(date +%s) rc=0
	case $arch in
	amd64) qemu=(qemu-system-x86_64 -cpu max -append "console=ttyS0 quiet panic=-1") ;;
	arm64) qemu=(qemu-system-aarch64 -M virt -cpu max -append "console=ttyAMA0 quiet panic=-1") ;;
	*) echo "run.sh: unknown arch $arch" >&2; return 1 ;;
	esac
	timeout --kill-after=10 "$VM_TIMEOUT" "${qemu[@]}" -m 2048 -smp "$VM_SMP" -nographic -no-reboot \
		-kernel "$kernel" -initrd "$(initrd_of "$arch")" </dev/null >"$log" 2>&1 || rc=$?
	local secs=$(($(date +%s) - start))
	tr -d '\r' <"$log" >"$log.txt" && mv "$log.txt" "$log"
	"$here/verdict.sh" "$log" "$name" "$arch" "$expected" "$secs" "$rc" "$VM_TIMEOUT" >"$res"
}

export -f boot initrd_of
export OUT here VM_TIMEOUT
printf '%s\n' "${selected[@]}" | awk '{print $1, $2, $4, $5}' |
	xargs -P "$JOBS" -L 1 bash -c 'boot "$@" || true' _

status=0
echo
printf '%-6s %-6s %-5s %s\n' kernel arch verdict "flavours (attached = passed the TCP_INFO checks; refused: cause), VM time"
for r in "${selected[@]}"; do
	read -r name arch _ _ _ <<<"$r"
	res=$OUT/logs/$name-$arch.result
	if [ -s "$res" ]; then cat "$res"; else printf '%-6s %-6s FAIL  no result (see %s)\n' "$name" "$arch" "$OUT/logs/$name-$arch.log"; fi
	[ "$(awk '{print $3}' "$res" 2>/dev/null)" = PASS ] || status=1
done
echo "matrix: $(($(date +%s) - t0)) s in all (${tbuild} s building and fetching, JOBS=$JOBS); serial logs in $OUT/logs"
exit $status
