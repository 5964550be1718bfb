//go:build linux

package loader

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/tcprtt/tcprtt/bpf"
)

// Programs of the retransmit hook per flavour. There is no fentry one:
// at the entry of tcp_retransmit_skb the segment is neither sent nor
// counted by the kernel yet, and tp_btf exists wherever fentry does.
var retransProgramOf = map[Mode]string{
	ModeTpBtf:      bpf.TcprttProgRetransTpBtf,
	ModeRawTp:      bpf.TcprttProgRetransRawTp,
	ModeTracepoint: bpf.TcprttProgRetransTracepoint,
}

// Programs of the state-change hook (sock:inet_sock_set_state) per
// flavour, attached in the retransmit hook's: they settle each socket's
// growth of total_retrans when it is established and closed (retrans.h).
var settleProgramOf = map[Mode]string{
	ModeTpBtf:      bpf.TcprttProgSettleTpBtf,
	ModeRawTp:      bpf.TcprttProgSettleRawTp,
	ModeTracepoint: bpf.TcprttProgSettleTracepoint,
}

// RetransAttachError reports that no flavour of the retransmit hook
// attached.
type RetransAttachError struct{ Attempts []Attempt }

func (e *RetransAttachError) Error() string {
	return "no flavour of the retransmit hook attached (" + DescribeAttempts(e.Attempts) +
		"); switch the retransmit metric off (metrics: tcp.retransmits: enabled: false) to count RTT only"
}

func (e *RetransAttachError) Unwrap() []error {
	errs := make([]error, len(e.Attempts))
	for i, a := range e.Attempts {
		errs[i] = a.Err
	}
	return errs
}

// openRetrans loads and attaches the retransmit program in the first
// flavour of RetransOrder the kernel accepts. It shares the RTT
// collection's maps (index, free queue, filters, retrans), so it resolves
// a socket to the same series.
func (t *Tracer) openRetrans() error {
	order := RetransOrder
	if t.spec.RetransMode != "" && t.spec.RetransMode != ModeAuto {
		order = []Mode{t.spec.RetransMode}
	}
	var attempts []Attempt
	for _, m := range order {
		err := t.openRetransMode(m)
		if err == nil {
			t.retransAttempts = attempts
			return nil
		}
		attempts = append(attempts, Attempt{Mode: m, Err: err})
	}
	return &RetransAttachError{Attempts: attempts}
}

func (t *Tracer) openRetransMode(mode Mode) error {
	progName := retransProgramOf[mode]
	cs, err := collectionSpec()
	if err != nil {
		return err
	}
	settleName := settleProgramOf[mode]
	for name := range cs.Programs {
		if name != progName && name != settleName {
			delete(cs.Programs, name)
		}
	}
	delete(cs.Maps, bpf.TcprttMapSelftest)
	if err := configure(cs, &t.spec); err != nil {
		return err
	}
	if err := cs.Variables[bpf.TcprttVarCfgEntryCounts].Set(t.entryCounts); err != nil {
		return fmt.Errorf("set %s: %w", bpf.TcprttVarCfgEntryCounts, err)
	}
	errArg, err := retransHasErr(t.spec.KernelTypes)
	if err != nil {
		return err
	}
	if err := cs.Variables[bpf.TcprttVarCfgRtxErrArg].Set(errArg); err != nil {
		return fmt.Errorf("set %s: %w", bpf.TcprttVarCfgRtxErrArg, err)
	}
	// The maps both programs use are the RTT collection's; the data
	// sections (the constants) are this collection's own copy.
	shared := map[string]*ebpf.Map{}
	for name, m := range t.coll.Maps {
		if _, ok := cs.Maps[name]; ok && !strings.HasPrefix(name, ".") {
			shared[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(cs, ebpf.CollectionOptions{
		Programs:        ebpf.ProgramOptions{KernelTypes: t.spec.KernelTypes},
		MapReplacements: shared,
	})
	if err != nil {
		return explainLoad(mode, err, currentLoadEnv())
	}
	prog := coll.Programs[progName]
	l, err := attachEvent(mode, prog, "tcp", "tcp_retransmit_skb")
	if err != nil {
		coll.Close()
		return attachError(RetransHook(mode), err)
	}
	settle, err := attachEvent(mode, coll.Programs[settleName], "sock", "inet_sock_set_state")
	if err != nil {
		l.Close()
		coll.Close()
		return attachError(SettleHook(mode), err)
	}
	t.retransColl, t.retransProg, t.retransLink, t.retransMode = coll, prog, l, mode
	t.settleProg, t.settleLink = coll.Programs[settleName], settle
	return nil
}

// retransHasErr reports whether the kernel's tcp_retransmit_skb event has
// an err argument (later than 6.12: it then fires on failures too), from
// the BTF of its raw tracepoint (btf_trace_tcp_retransmit_skb: a pointer
// to a function of the tracepoint's data and its arguments).
func retransHasErr(kernel *btf.Spec) (bool, error) {
	if kernel == nil {
		var err error
		if kernel, err = btf.LoadKernelSpec(); err != nil {
			return false, fmt.Errorf("read the kernel's BTF for the tcp_retransmit_skb event: %w", err)
		}
	}
	var td *btf.Typedef
	if err := kernel.TypeByName("btf_trace_tcp_retransmit_skb", &td); err != nil {
		return false, &LoadError{Cause: CauseNoSupport, Err: err,
			Reason: "the kernel's BTF has no tcp_retransmit_skb event (btf_trace_tcp_retransmit_skb)"}
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return false, fmt.Errorf("btf_trace_tcp_retransmit_skb is %v, not a function pointer", td.Type)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return false, fmt.Errorf("btf_trace_tcp_retransmit_skb points to %v, not a function", ptr.Target)
	}
	// data, sk, skb[, err]
	return len(proto.Params) >= 4, nil
}

// attachError reports that hook did not attach; a kernel without the
// attach type is a refusal (a *LoadError), not a failure.
func attachError(hook string, err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) {
		return &LoadError{Cause: CauseNoSupport, Reason: "this kernel loads but cannot attach " + hook, Err: err}
	}
	return fmt.Errorf("attach %s: %w", hook, err)
}

// RetransMode returns the flavour of the retransmit hook that attached,
// "" when the hook is off.
func (t *Tracer) RetransMode() Mode { return t.retransMode }

// RetransAttempts returns the retransmit hook's flavours tried and
// refused before RetransMode.
func (t *Tracer) RetransAttempts() []Attempt { return t.retransAttempts }

// RetransProgram returns the attached retransmit program, nil when the
// hook is off (for run statistics).
func (t *Tracer) RetransProgram() *ebpf.Program { return t.retransProg }

// SettleProgram returns the attached state-change program, nil when the
// retransmit hook is off (for run statistics).
func (t *Tracer) SettleProgram() *ebpf.Program { return t.settleProg }

// closeRetrans detaches the retransmit program.
func (t *Tracer) closeRetrans() error {
	var err error
	if t.settleLink != nil {
		err = t.settleLink.Close()
		t.settleLink = nil
	}
	if t.retransLink != nil {
		err = errors.Join(err, t.retransLink.Close())
		t.retransLink = nil
	}
	if t.retransColl != nil {
		t.retransColl.Close()
		t.retransColl = nil
	}
	return err
}

// retransStats adds the retransmit program's counters to s.
func (t *Tracer) retransStats(counted, filtered, errs, missed *uint64) error {
	if t.retransProg == nil {
		return nil
	}
	ps, err := t.retransProg.Stats()
	if err != nil {
		return fmt.Errorf("read retransmit program stats: %w", err)
	}
	*missed = ps.RecursionMisses
	m := t.coll.Maps[bpf.TcprttMapRetransStats]
	var perCPU []uint64
	for i, dst := range []*uint64{counted, filtered, errs} {
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return fmt.Errorf("read retransmit stats: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return nil
}
