//go:build linux

package loader

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// TestExplainLoad: each kind of refusal gets its own cause and a reason
// that names it, and the kernel's error stays reachable. Pure Go: the
// errors and the environment are made up.
func TestExplainLoad(t *testing.T) {
	root := loadEnv{Lockdown: "none", CapsKnown: true, CapSysAdmin: true}
	memlock := root
	memlock.MemlockErr = errors.New("failed to set memlock rlimit: operation not permitted")
	memlock.ChargesMemlock = true
	// A kernel from 5.11 under a container's seccomp profile that refuses
	// bpf(): cilium/ebpf's memlock probe fails as on an old kernel.
	seccomp := memlock
	seccomp.ChargesMemlock = false
	seccomp.Seccomp = true
	newKernelMemlockErr := seccomp
	newKernelMemlockErr.Seccomp = false
	noAdmin := root
	noAdmin.CapSysAdmin = false
	locked := root
	locked.Lockdown = "integrity"
	helper510 := &ebpf.VerifierError{Cause: unix.EINVAL, Log: []string{
		"reg type unsupported for arg#0 function tcprtt_tp_btf#7",
		"0: R1=ctx(id=0,off=0,imm=0) R10=fp0",
		"; int BPF_PROG(tcprtt_tp_btf, struct sock *sk)",
		"unknown func bpf_sk_storage_get#107",
		"processed 212 insns (limit 1000000)",
	}}
	rejected := &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"R1 invalid mem access 'scalar'"}}

	cases := []struct {
		name   string
		err    error
		env    loadEnv
		cause  Cause
		reason []string // substrings of Reason
		is     error    // errors.Is target kept
	}{
		{"memlock", fmt.Errorf("map counts: %w"+memlockHint, unix.EPERM), memlock, CauseMemlock,
			[]string{"RLIMIT_MEMLOCK", "before 5.11", "operation not permitted", "CAP_SYS_RESOURCE"}, unix.EPERM},
		// Memlock first: before 5.11 a low limit is the likelier EPERM
		// even under lockdown.
		{"memlock under lockdown", unix.EPERM, loadEnv{MemlockErr: memlock.MemlockErr, ChargesMemlock: true, Lockdown: "integrity", CapsKnown: true, CapSysAdmin: true},
			CauseMemlock, []string{"RLIMIT_MEMLOCK"}, unix.EPERM},
		{"seccomp, not memlock, from 5.11", fmt.Errorf("map counts: %w"+memlockHint, unix.EPERM), seccomp, CauseSeccomp,
			[]string{"seccomp", "bpf", "Unconfined"}, unix.EPERM},
		{"memlock error from 5.11 without seccomp", unix.EPERM, newKernelMemlockErr, CausePermission,
			[]string{"security module"}, unix.EPERM},
		{"capability", unix.EPERM, noAdmin, CauseCapability, []string{"CAP_SYS_ADMIN", "tp_btf/tcp_probe"}, unix.EPERM},
		{"lockdown", fmt.Errorf("load program: %w", unix.EPERM), locked, CauseLockdown,
			[]string{`lockdown "integrity"`, "/sys/kernel/security/lockdown", "tp_btf/tcp_probe"}, unix.EPERM},
		{"unexplained EPERM", unix.EPERM, root, CausePermission, []string{"security module", "no lockdown is active"}, unix.EPERM},
		{"EPERM, lockdown unknown", unix.EPERM, loadEnv{CapsKnown: true, CapSysAdmin: true}, CausePermission,
			[]string{"lockdown mode is unknown", "securityfs"}, unix.EPERM},
		{"missing helper", fmt.Errorf("load program: %w", helper510), root, CauseMissing,
			[]string{"helper or kfunc", `"unknown func bpf_sk_storage_get#107"`}, unix.EINVAL},
		{"other verifier rejection", rejected, root, CauseVerifier, []string{"verifier rejected"}, unix.EACCES},
		{"not supported", fmt.Errorf("attach: %w", ebpf.ErrNotSupported), root, CauseNoSupport,
			[]string{"does not support tp_btf/tcp_probe"}, ebpf.ErrNotSupported},
		{"other", unix.E2BIG, root, CauseOther, []string{"load tp_btf/tcp_probe"}, unix.E2BIG},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := explainLoad(ModeTpBtf, c.err, c.env)
			if e.Cause != c.cause {
				t.Errorf("cause %q, want %q (%v)", e.Cause, c.cause, e)
			}
			for _, s := range c.reason {
				if !strings.Contains(e.Reason, s) {
					t.Errorf("reason %q lacks %q", e.Reason, s)
				}
			}
			if strings.Contains(e.Error(), "consider rlimit.RemoveMemlock") {
				t.Errorf("%q keeps cilium/ebpf's memlock hint", e)
			}
			if !errors.Is(e, c.is) {
				t.Errorf("%v: errors.Is(%v) is false", e, c.is)
			}
			if !strings.HasSuffix(e.Error(), strings.TrimSuffix(c.err.Error(), memlockHint)) {
				t.Errorf("error %q does not end with the kernel's %q", e.Error(), c.err.Error())
			}
		})
	}
}

func TestActiveLockdown(t *testing.T) {
	for in, want := range map[string]string{
		"none [integrity] confidentiality\n": "integrity",
		"[none] integrity confidentiality\n": "none",
		"none integrity [confidentiality]":   "confidentiality",
		"":                                   "",
	} {
		if got := activeLockdown(in); got != want {
			t.Errorf("activeLockdown(%q) = %q, want %q", in, got, want)
		}
	}
}

// tcpProbeRecord builds a BTF spec holding struct
// trace_event_raw_tcp_probe with the given members (each a u64), as a
// kernel's BTF would.
func tcpProbeRecord(t *testing.T, members ...string) *btf.Spec {
	t.Helper()
	u64 := &btf.Int{Name: "u64", Size: 8}
	rec := &btf.Struct{Name: tracepointRecord, Size: uint32(8 * len(members))}
	for i, m := range members {
		rec.Members = append(rec.Members, btf.Member{Name: m, Type: u64, Offset: btf.Bits(64 * i)})
	}
	b, err := btf.NewBuilder([]btf.Type{rec}, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := b.Spec()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestRecordHasSkaddr: the classic tracepoint is refused, naming the
// record's fields, where the record has no skaddr (6.1's fields below),
// and accepted where it has one (6.12's).
func TestRecordHasSkaddr(t *testing.T) {
	v61 := []string{"ent", "saddr", "daddr", "sport", "dport", "family", "mark", "data_len", "snd_nxt",
		"snd_una", "snd_cwnd", "ssthresh", "snd_wnd", "srtt", "rcv_wnd", "sock_cookie", "__data"}
	err := recordHasSkaddr(tcpProbeRecord(t, v61...))
	var le *LoadError
	if !errors.As(err, &le) || le.Cause != CauseRecord || !errors.Is(err, ErrNoSkaddr) {
		t.Fatalf("6.1 record: %v, want a LoadError with cause %q wrapping ErrNoSkaddr", err, CauseRecord)
	}
	for _, s := range []string{"no skaddr", "saddr, daddr, sport", "sock_cookie", "tracepoint/tcp/tcp_probe", "raw_tp"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q lacks %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "__data") || strings.Contains(err.Error(), "ent,") {
		t.Errorf("%q lists the record header or payload", err)
	}

	v612 := []string{"ent", "saddr", "daddr", "sport", "dport", "family", "mark", "data_len", "snd_nxt",
		"snd_una", "snd_cwnd", "ssthresh", "snd_wnd", "srtt", "rcv_wnd", "sock_cookie", "skbaddr", "skaddr", "__data"}
	if err := recordHasSkaddr(tcpProbeRecord(t, v612...)); err != nil {
		t.Errorf("6.12 record: %v", err)
	}

	empty, err := btf.NewBuilder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	none, err := empty.Spec()
	if err != nil {
		t.Fatal(err)
	}
	if err := recordHasSkaddr(none); !errors.As(err, &le) || !strings.Contains(err.Error(), "no struct "+tracepointRecord) {
		t.Errorf("BTF without the record: %v", err)
	}
}

func TestKernelRelease(t *testing.T) {
	for r, want := range map[string][3]int{
		"5.10.0-35-amd64": {5, 10, 1}, "5.11.0": {5, 11, 1}, "6.18.0-rc3": {6, 18, 1}, "4.19": {4, 19, 1},
		"6.1+deb": {6, 1, 1}, "garbage": {0, 0, 0},
	} {
		major, minor, ok := kernelRelease(r)
		if got := [3]int{major, minor, map[bool]int{true: 1}[ok]}; got != want {
			t.Errorf("kernelRelease(%q) = %v, want %v", r, got, want)
		}
	}
}

func TestSeccompFiltered(t *testing.T) {
	for s, want := range map[string]bool{
		"Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n": true,
		"Name:\tx\nSeccomp:\t0\n":                      false,
		"Name:\tx\n":                                   false,
	} {
		if got := seccompFiltered(s); got != want {
			t.Errorf("seccompFiltered(%q) = %v, want %v", s, got, want)
		}
	}
}
