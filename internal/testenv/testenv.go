// Package testenv holds helpers shared by tests that need a privileged,
// BPF-capable environment (kernel tests, end-to-end tests).
package testenv

import (
	"os"
	"strings"
	"testing"
)

// RequireBPFEnv is the environment variable that turns the skip of
// RequireBPF into a failure when set to "1" (for CI runs that must exercise
// the kernel code).
const RequireBPFEnv = "TCPRTT_REQUIRE_BPF"

// BTFPath is where the kernel exposes its BTF, needed for CO-RE and tp_btf.
const BTFPath = "/sys/kernel/btf/vmlinux"

const requirement = "needs root (or CAP_BPF and CAP_PERFMON) and kernel BTF at " + BTFPath

// RequireBPF skips the test unless it runs as root on a kernel with BTF.
// With TCPRTT_REQUIRE_BPF=1 it fails the test instead of skipping it.
func RequireBPF(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "not running as root")
	}
	if _, err := os.Stat(BTFPath); err != nil {
		missing = append(missing, "no "+BTFPath)
	}
	if len(missing) == 0 {
		return
	}
	msg := requirement + " (" + strings.Join(missing, "; ") + ")"
	if os.Getenv(RequireBPFEnv) == "1" {
		t.Fatal(msg + "; " + RequireBPFEnv + "=1 makes this a failure")
	}
	t.Skip(msg)
}
