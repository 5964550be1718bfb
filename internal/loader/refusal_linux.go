//go:build linux

package loader

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Cause is why the kernel refused to load a flavour.
type Cause string

const (
	CauseMemlock    Cause = "memlock"             // RLIMIT_MEMLOCK too low on a kernel that charges BPF memory to it
	CauseMissing    Cause = "missing helper"      // the verifier does not offer a helper or kfunc to this program type
	CauseVerifier   Cause = "verifier"            // the verifier rejected the program for another reason
	CauseLockdown   Cause = "lockdown"            // EPERM under kernel lockdown
	CauseCapability Cause = "capability"          // EPERM without CAP_SYS_ADMIN
	CauseSeccomp    Cause = "seccomp"             // EPERM under a seccomp filter (a container runtime's profile)
	CausePermission Cause = "permission"          // EPERM with none of the above
	CauseNoSupport  Cause = "not supported"       // the kernel lacks the hook or program type
	CauseOther      Cause = "other"               // anything else
	CauseRecord     Cause = "no socket in record" // the tracepoint's record lacks skaddr (see probe_linux.go)
)

// LoadError is a refused load, with what was refused and why.
type LoadError struct {
	Cause  Cause
	Reason string // for a person: what the kernel refused, why, and what to do
	Err    error  // the error from cilium/ebpf
}

func (e *LoadError) Error() string {
	// cilium/ebpf adds a MEMLOCK hint to every EPERM; the limit has been
	// dealt with (raiseMemlock) and Reason says whether it is the cause.
	return e.Reason + ": " + strings.TrimSuffix(e.Err.Error(), memlockHint)
}

const memlockHint = " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)"

// Unwrap exposes the kernel's error (unix.EPERM, ebpf.ErrNotSupported, a
// *ebpf.VerifierError) to errors.Is and errors.As.
func (e *LoadError) Unwrap() error { return e.Err }

// loadEnv is what explainLoad needs to know about the process and the
// kernel, gathered only once a load failed.
type loadEnv struct {
	// MemlockErr is the error of raising RLIMIT_MEMLOCK (nil: raised, or
	// not needed because the kernel accounts BPF memory to the memory
	// cgroup, as from 5.11).
	MemlockErr error
	// ChargesMemlock says the kernel charges BPF memory to RLIMIT_MEMLOCK
	// (before 5.11). MemlockErr alone does not: where a seccomp filter
	// refuses bpf(), cilium/ebpf's probe takes the refusal for a memlock
	// kernel and tries to raise the limit.
	ChargesMemlock bool
	// Seccomp says a seccomp filter is active on the process
	// (/proc/self/status "Seccomp: 2").
	Seccomp bool
	// Lockdown is the active kernel lockdown mode ("none", "integrity",
	// "confidentiality"), "" if unknown.
	Lockdown string
	// CapsKnown says whether the effective capabilities could be read;
	// CapSysAdmin whether CAP_SYS_ADMIN is among them.
	CapsKnown, CapSysAdmin bool
}

var (
	memlockOnce sync.Once
	memlockErr  error
)

// raiseMemlock lifts RLIMIT_MEMLOCK on kernels that charge BPF memory to it
// (before 5.11, where the 64 KiB default makes every map creation fail
// with EPERM), as BPF loaders do. On newer kernels it changes nothing.
func raiseMemlock() error {
	memlockOnce.Do(func() { memlockErr = rlimit.RemoveMemlock() })
	return memlockErr
}

// currentLoadEnv reads the environment of a failed load.
func currentLoadEnv() loadEnv {
	env := loadEnv{MemlockErr: raiseMemlock(), ChargesMemlock: chargesMemlock()}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		env.Seccomp = seccompFiltered(string(b))
	}
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil {
		env.Lockdown = activeLockdown(string(b))
	}
	if eff, err := effectiveCapabilities(); err == nil {
		env.CapsKnown = true
		env.CapSysAdmin = eff&(1<<unix.CAP_SYS_ADMIN) != 0
	}
	return env
}

// chargesMemlock reports whether the running kernel is older than 5.11,
// when BPF memory moved from RLIMIT_MEMLOCK to the memory cgroup; true if
// the release cannot be read (the old rule then applies).
func chargesMemlock() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return true
	}
	major, minor, ok := kernelRelease(unix.ByteSliceToString(u.Release[:]))
	return !ok || major < 5 || major == 5 && minor < 11
}

// kernelRelease parses the major and minor numbers of a release such as
// "6.1.0-40-amd64".
func kernelRelease(r string) (major, minor int, ok bool) {
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major, minor, err1 == nil && err2 == nil
}

// seccompFiltered reports whether /proc/self/status (s) says a seccomp
// filter is active ("Seccomp:" mode 2).
func seccompFiltered(s string) bool {
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "Seccomp:"); ok {
			return strings.TrimSpace(v) == "2"
		}
	}
	return false
}

// activeLockdown returns the bracketed mode of the lockdown file's
// contents, "none [integrity] confidentiality" → "integrity".
func activeLockdown(s string) string {
	for _, w := range strings.Fields(s) {
		if len(w) > 2 && w[0] == '[' && w[len(w)-1] == ']' {
			return w[1 : len(w)-1]
		}
	}
	return ""
}

// missingFuncRE matches the verifier's lines for a helper or kfunc that
// this kernel does not offer to the program's type, e.g. "unknown func
// bpf_sk_storage_get#107" (5.10, tracing programs) or "program of this
// type cannot use helper bpf_probe_read#4".
var missingFuncRE = regexp.MustCompile(`unknown func |cannot use helper |calling kernel function .* is not allowed|kernel function .* not found|kfunc .* not (found|allowed)`)

// missingFunc returns the first verifier line naming a helper or kfunc
// the kernel refused, or "".
func missingFunc(log []string) string {
	for _, l := range log {
		if missingFuncRE.MatchString(l) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// explainLoad turns the error of loading flavour mode into a LoadError
// that says what was refused and why. It is pure: env holds everything it
// needs to know about the system.
func explainLoad(mode Mode, err error, env loadEnv) *LoadError {
	e := &LoadError{Err: err}
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		if line := missingFunc(ve.Log); line != "" {
			e.Cause = CauseMissing
			e.Reason = fmt.Sprintf("this kernel does not offer %s programs a helper or kfunc the program needs (verifier: %q)",
				mode.Hook(), line)
		} else {
			e.Cause = CauseVerifier
			e.Reason = fmt.Sprintf("the kernel's verifier rejected the %s program", mode.Hook())
		}
	case errors.Is(err, unix.EPERM):
		switch {
		case env.MemlockErr != nil && env.ChargesMemlock:
			e.Cause = CauseMemlock
			e.Reason = fmt.Sprintf("load refused by the kernel (EPERM): this kernel (before 5.11) charges BPF "+
				"memory to RLIMIT_MEMLOCK and raising the limit failed (%v); grant CAP_SYS_RESOURCE or raise the "+
				"limit (LimitMEMLOCK=infinity in a systemd unit, ulimit -l unlimited)", env.MemlockErr)
		case env.Seccomp && !env.ChargesMemlock && env.MemlockErr != nil:
			// cilium/ebpf's memlock probe got EPERM creating a map with
			// the limit at 0 on a kernel that does not charge it: the bpf()
			// call itself was refused, as a seccomp filter does.
			e.Cause = CauseSeccomp
			e.Reason = "load refused by the kernel (EPERM): the bpf() system call itself is refused, and a seccomp " +
				"filter is active on this process (/proc/self/status Seccomp: 2); the container runtime's profile must " +
				"allow bpf (and perf_event_open): use a profile that does, or run the container seccomp Unconfined, " +
				"with CAP_BPF and CAP_PERFMON"
		case env.CapsKnown && !env.CapSysAdmin:
			e.Cause = CauseCapability
			e.Reason = "load refused by the kernel (EPERM) without CAP_SYS_ADMIN: this kernel wants more than " +
				"CAP_BPF and CAP_PERFMON for " + mode.Hook() + " (run as root, or try another attach_mode)"
		case env.Lockdown != "" && env.Lockdown != "none":
			e.Cause = CauseLockdown
			e.Reason = fmt.Sprintf("load refused by the kernel (EPERM) under kernel lockdown %q "+
				"(/sys/kernel/security/lockdown), which can forbid %s programs; the memlock limit and "+
				"capabilities are not the cause", env.Lockdown, mode.Hook())
		default:
			lockdown := "no lockdown is active"
			if env.Lockdown == "" {
				lockdown = "the lockdown mode is unknown (securityfs is not mounted at /sys/kernel/security)"
			}
			e.Cause = CausePermission
			e.Reason = "load refused by the kernel (EPERM) although the memlock limit is raised, CAP_SYS_ADMIN is " +
				"held and " + lockdown + ": the kernel's configuration, lockdown or a security module " +
				"(SELinux, AppArmor, BPF LSM) forbids " + mode.Hook() + " programs"
		}
	case errors.Is(err, ebpf.ErrNotSupported):
		e.Cause = CauseNoSupport
		e.Reason = "this kernel does not support " + mode.Hook()
	default:
		e.Cause = CauseOther
		e.Reason = "load " + mode.Hook()
	}
	return e
}
