//go:build linux

package loader

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"

	"github.com/tcprtt/tcprtt/internal/bucket"
)

// Probe loads and attaches flavour m with a minimal spec and detaches it
// again. It returns nil if the running kernel accepts m, or the reason it
// refuses it (a *LoadError for refusals the loader recognises).
func Probe(m Mode) error {
	if m == ModeAuto || !m.Valid() {
		return fmt.Errorf("probe: %q is not a single flavour", m)
	}
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		return err
	}
	t, err := Open(Spec{Mode: m, Table: table, MaxSeries: 1})
	if err != nil {
		var ae *AttachError
		if errors.As(err, &ae) && len(ae.Attempts) == 1 {
			return ae.Attempts[0].Err
		}
		return err
	}
	return t.Close()
}

// tracepointRecord is the kernel's struct for the tcp_probe event's
// record, and skaddr the member the classic tracepoint program reads the
// socket from.
const (
	tracepointRecord = "trace_event_raw_tcp_probe"
	skaddrMember     = "skaddr"
)

// checkTracepointRecord refuses the classic tracepoint on kernels whose
// tcp_probe record does not carry the socket pointer (6.1 and 5.10 among
// the tested ones): there the program would attach and then find no
// socket on any segment.
func checkTracepointRecord() error {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("read the kernel's BTF to check the tcp_probe record: %w", err)
	}
	return recordHasSkaddr(kernel)
}

// recordHasSkaddr is the check of checkTracepointRecord against the BTF
// spec kernel.
func recordHasSkaddr(kernel *btf.Spec) error {
	var rec *btf.Struct
	if err := kernel.TypeByName(tracepointRecord, &rec); err != nil {
		return &LoadError{Cause: CauseRecord, Err: err,
			Reason: "the kernel's BTF has no struct " + tracepointRecord + ", so the tcp_probe record cannot be checked for " + skaddrMember}
	}
	names := make([]string, 0, len(rec.Members))
	for _, m := range rec.Members {
		if m.Name == skaddrMember {
			return nil
		}
		if m.Name != "" && m.Name != "ent" && !strings.HasPrefix(m.Name, "__") {
			names = append(names, m.Name)
		}
	}
	return &LoadError{Cause: CauseRecord, Err: ErrNoSkaddr,
		Reason: fmt.Sprintf("this kernel's tcp_probe event record has no %s (its fields: %s), so the %s program "+
			"cannot find the socket; use raw_tp or tp_btf", skaddrMember, strings.Join(names, ", "), ModeTracepoint.Hook())}
}

// ErrNoSkaddr is the error under a LoadError of the tracepoint flavour
// on kernels whose tcp_probe record lacks the socket pointer.
var ErrNoSkaddr = errors.New("tracepoint refused before load: no skaddr in the tcp_probe record")
