// Package loader loads the tcprtt eBPF program configured for one receiver,
// attaches it with the first flavour the running kernel accepts, and reads
// its maps into kmaps snapshots.
package loader

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Mode is an attach flavour of the program.
type Mode string

const (
	ModeAuto       Mode = "auto"
	ModeFentry     Mode = "fentry"     // fentry/tcp_rcv_established
	ModeTpBtf      Mode = "tp_btf"     // tp_btf/tcp_probe
	ModeRawTp      Mode = "raw_tp"     // raw_tp/tcp_probe
	ModeTracepoint Mode = "tracepoint" // tracepoint/tcp/tcp_probe
)

// AutoOrder is the order in which ModeAuto tries the flavours: cheapest
// first. Every flavour uses the same per-CPU socket cache; fentry and
// tp_btf get a typed socket pointer (direct loads on every kernel), raw_tp
// and the classic tracepoint an untyped one (direct loads through
// bpf_rdonly_cast from 6.2, probe reads before), and the classic
// tracepoint pays the perf event on top.
var AutoOrder = []Mode{ModeFentry, ModeTpBtf, ModeRawTp, ModeTracepoint}

// OrderFor is the order ModeAuto tries the flavours in on a kernel of
// release (uname -r). Before 5.11 raw_tp comes first: on Debian 11's
// 5.10.0-46 under qemu, several fentry programs attached to
// tcp_rcv_established at once (tcprtt started in parallel) left every
// CPU in soft lockups, while raw_tp did not. That may be an artefact of
// emulation (6.12 once hit an int3 oops at the same patched call site
// there), but raw_tp costs little more now that every flavour uses the
// same per-CPU cache, so old kernels get the flavour that does not patch
// kernel text. fentry and tp_btf stay available when forced.
func OrderFor(release string) []Mode {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err == nil && (major < 5 || major == 5 && minor < 11) {
		return []Mode{ModeRawTp, ModeTpBtf, ModeFentry, ModeTracepoint}
	}
	return AutoOrder
}

// Modes lists every valid Mode, for validation and docs.
func Modes() []Mode { return append([]Mode{ModeAuto}, AutoOrder...) }

// Hook names the kernel hook of m ("tp_btf/tcp_probe"), or m itself for
// auto and unknown modes.
func (m Mode) Hook() string {
	switch m {
	case ModeFentry:
		return "fentry/tcp_rcv_established"
	case ModeTpBtf:
		return "tp_btf/tcp_probe"
	case ModeRawTp:
		return "raw_tp/tcp_probe"
	case ModeTracepoint:
		return "tracepoint/tcp/tcp_probe"
	}
	return string(m)
}

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool {
	for _, v := range Modes() {
		if m == v {
			return true
		}
	}
	return false
}

// Requirement is appended to the error when no flavour attaches.
const Requirement = "tcprtt needs a Linux kernel with BTF (/sys/kernel/btf/vmlinux; 5.10 is the oldest tested) " +
	"and CAP_BPF and CAP_PERFMON (or root)"

// Spec is what one program instance counts and how.
type Spec struct {
	Mode      Mode
	GroupBy   kmaps.GroupBy
	Table     *bucket.Table
	MaxSeries uint32
	// IdleTimeout, if positive, expires series without new samples for
	// that long, freeing their rows for new series.
	IdleTimeout time.Duration
	// HelperReads makes the program read sockets with BPF helpers as on
	// kernels before 6.2, even where bpf_rdonly_cast allows direct loads
	// (for tests of that path).
	HelperReads bool
	// OneCacheEntry makes every socket of a CPU share one entry of the
	// per-CPU socket cache (for tests of colliding sockets).
	OneCacheEntry bool
	// RowCountsOnly makes the program count every sample in the rows, as
	// it does where its cache entries cannot count (for tests of that
	// path).
	RowCountsOnly bool
	// KernelTypes, if set, are the kernel types CO-RE relocates against
	// instead of the running kernel's (for tests of other kernels'
	// struct layouts, such as sock_cgroup_data before 5.15).
	KernelTypes *btf.Spec
	// Family, if 4 or 6, counts only sockets of that family (a v4-mapped
	// IPv6 socket is IPv4); 0 counts both.
	Family uint8
	// Retransmits attaches the retransmit program too: retransmitted
	// segments per series (kmaps.Series.Retransmits).
	Retransmits bool
	// RetransMode, if set, is the only flavour of the retransmit hook
	// tried (tests); otherwise RetransOrder.
	RetransMode Mode

	LocalPorts     []uint16
	RemotePorts    []uint16
	LocalPrefixes  []netip.Prefix
	RemotePrefixes []netip.Prefix
}

// Layout returns the counts array geometry of s.
func (s *Spec) Layout() kmaps.Layout {
	return kmaps.Layout{NumBuckets: s.Table.NumBuckets, MaxSeries: s.MaxSeries}
}

// Filters returns the active filter bits of s.
func (s *Spec) Filters() kmaps.Filters {
	var f kmaps.Filters
	if len(s.LocalPorts) > 0 {
		f |= kmaps.FilterLocalPort
	}
	if len(s.RemotePorts) > 0 {
		f |= kmaps.FilterRemotePort
	}
	if len(s.LocalPrefixes) > 0 {
		f |= kmaps.FilterLocalAddress
	}
	if len(s.RemotePrefixes) > 0 {
		f |= kmaps.FilterRemoteAddress
	}
	return f
}

// Attempt is the outcome of trying one attach flavour.
type Attempt struct {
	Mode Mode
	Err  error // nil for the flavour that attached
}

// AttachError reports that no flavour could be attached.
type AttachError struct {
	Attempts []Attempt
}

func (e *AttachError) Error() string {
	return "no attach flavour of the tcprtt program worked (" + DescribeAttempts(e.Attempts) + "); " + Requirement
}

// DescribeAttempts lists attempts as "mode: error; mode: error".
func DescribeAttempts(attempts []Attempt) string {
	parts := make([]string, len(attempts))
	for i, a := range attempts {
		parts[i] = fmt.Sprintf("%s: %v", a.Mode, a.Err)
	}
	return strings.Join(parts, "; ")
}

// Unwrap exposes the attempts' errors to errors.Is.
func (e *AttachError) Unwrap() []error {
	errs := make([]error, 0, len(e.Attempts))
	for _, a := range e.Attempts {
		errs = append(errs, a.Err)
	}
	return errs
}
