//go:build linux

package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// The privileges tests run the built collector as the unprivileged user
// nobody (uid/gid 65534, no supplementary groups, no_new_privs) through
// util-linux setpriv, with a chosen set of capabilities that is at the same
// time its effective, permitted, inheritable, ambient and bounding set: the
// process cannot hold or regain anything else.
//
//   - Without CAP_BPF and CAP_PERFMON, Start fails with one clear error naming
//     the missing capabilities and the collector exits non-zero, no panic.
//   - With only CAP_BPF and CAP_PERFMON (ambient), the collector attaches and
//     exports tcp.rtt for real traffic. Each attach flavour is also forced in
//     turn; a flavour that needs more than those two is reported with the
//     smallest extra capability that makes it work.

const (
	nobodyID        = 65534
	unprivExitLimit = 30 * time.Second // start to exit of a collector that must fail
	// signalGrace separates readyLogLine from SIGTERM: otelcol v0.165.0
	// (Collector.Run) installs its SIGTERM handler only after the service
	// logged it is ready, so an immediate SIGTERM kills the process with
	// "signal: terminated" instead of shutting it down.
	signalGrace = time.Second
)

// Capability numbers (linux/capability.h) of the names given to setpriv.
var capBits = map[string]uint{
	"dac_override":    1,
	"dac_read_search": 2,
	"sys_admin":       21,
	"perfmon":         38,
	"bpf":             39,
}

// minimalCaps is the capability set the README documents.
var minimalCaps = []string{"bpf", "perfmon"}

// extraCandidates are tried one at a time, in this order, when a flavour
// does not work with minimalCaps alone.
var extraCandidates = []string{"dac_read_search", "dac_override", "sys_admin"}

// unprivEnv is a copy of the collector binary and its config that nobody
// may execute and read.
type unprivEnv struct {
	setpriv string
	dir     string
	exe     string
	cfg     string
	sink    *otlpSink
}

func newUnprivEnv(t *testing.T) *unprivEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the otelcol-tcprtt binary; skipped with -short")
	}
	testenv.RequireBPF(t) // root is needed to hand out capabilities
	setpriv := lookPath(t, "setpriv")
	bin := collectorBinary(t)
	e := &unprivEnv{setpriv: setpriv, dir: publicDir(t), sink: newOTLPSink(t)}
	e.exe = copyFile(t, bin, e.dir, "otelcol-tcprtt", 0o755)
	// writeConfig's file is 0600 in a 0700 directory: publish a 0644 copy.
	e.cfg = copyFile(t, writeConfig(t, e.sink.url), e.dir, "otelcol.yaml", 0o644)
	return e
}

// setprivArgv returns the setpriv command running the collector as nobody
// with exactly caps (setpriv names: bpf, perfmon, ...), nothing else.
func (e *unprivEnv) setprivArgv(caps []string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return []string{
		e.setpriv,
		"--reuid=" + strconv.Itoa(nobodyID),
		"--regid=" + strconv.Itoa(nobodyID),
		"--clear-groups",
		"--no-new-privs",
		"--inh-caps=" + set,
		"--ambient-caps=" + set,
		"--bounding-set=" + set,
		"--pdeathsig=KILL",
		e.exe,
	}
}

// modeArgs forces attach_mode through the yaml config provider, merged
// over the config file ("" keeps the file's auto).
func modeArgs(mode string) []string {
	if mode == "" || mode == "auto" {
		return nil
	}
	return []string{"--config=yaml:receivers::tcprtt::attach_mode: " + mode}
}

// start runs the collector through a wrapper running argv and logs the
// full command line.
func (e *unprivEnv) start(t *testing.T, name string, argv []string) *collector {
	t.Helper()
	wrapper, cmdline := writeWrapper(t, e.dir, name+".sh", argv...)
	t.Logf("command: %s --config %s", cmdline, e.cfg)
	return startCollector(t, wrapper, e.cfg)
}

// capNames spells caps as the kernel does: CAP_BPF,CAP_PERFMON.
func capNames(caps []string) string {
	if len(caps) == 0 {
		return "root"
	}
	return "CAP_" + strings.ToUpper(strings.Join(caps, ",CAP_"))
}

// capMask is the capability bit set of names.
func capMask(t *testing.T, names []string) uint64 {
	t.Helper()
	var m uint64
	for _, n := range names {
		bit, ok := capBits[n]
		require.True(t, ok, "unknown capability %q", n)
		m |= 1 << bit
	}
	return m
}

// checkCredentials asserts that the running process pid is nobody with
// exactly the capabilities caps in every set.
func checkCredentials(t *testing.T, pid int, caps []string) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	want := capMask(t, caps)
	fields := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	id := strconv.Itoa(nobodyID)
	assert.Equal(t, strings.Repeat(id+"\t", 3)+id, fields["Uid"], "collector uids")
	assert.Equal(t, strings.Repeat(id+"\t", 3)+id, fields["Gid"], "collector gids")
	assert.Empty(t, fields["Groups"], "collector supplementary groups")
	assert.Equal(t, "1", fields["NoNewPrivs"], "collector no_new_privs")
	for _, set := range []string{"CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"} {
		got, err := strconv.ParseUint(fields[set], 16, 64)
		if assert.NoError(t, err, "%s of the collector", set) {
			assert.Equal(t, fmt.Sprintf("%016x", want), fmt.Sprintf("%016x", got), "%s of the collector (want %v)", set, caps)
		}
	}
	t.Logf("collector pid %d: Uid %s, CapEff %s, CapAmb %s, CapBnd %s, NoNewPrivs %s",
		pid, fields["Uid"], fields["CapEff"], fields["CapAmb"], fields["CapBnd"], fields["NoNewPrivs"])
}

func TestPrivilegesUnprivilegedFails(t *testing.T) {
	e := newUnprivEnv(t)
	for _, tc := range []struct {
		name    string
		caps    []string
		missing string
	}{
		{"no capabilities", nil, "missing capabilities [CAP_BPF CAP_PERFMON]"},
		{"CAP_BPF only", []string{"bpf"}, "missing capabilities [CAP_PERFMON]"},
		{"CAP_PERFMON only", []string{"perfmon"}, "missing capabilities [CAP_BPF]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := e.start(t, "unpriv", e.setprivArgv(tc.caps))
			code := waitExit(t, c, unprivExitLimit)
			out := c.stderr.String()
			final := startError(out)
			t.Logf("outcome: exit status %d after %s; %s", code, time.Since(start).Round(time.Millisecond), final)

			assert.NotEqual(t, 0, code, "exit status")
			assert.NotEqual(t, -1, code, "collector killed by a signal instead of exiting")
			assert.NotContains(t, out, "panic", "collector output")
			assert.NotContains(t, out, "goroutine ", "collector output (stack trace)")
			assert.NotContains(t, out, readyLogLine, "collector became ready")

			// The final error names what is missing and what is needed.
			assert.Contains(t, final, tc.missing, "final error")
			assert.Contains(t, final, "CAP_BPF and CAP_PERFMON (or root)", "final error")
			assert.Contains(t, final, `failed to start "tcprtt" receiver`, "final error")
			// One error: the capability check, not a later kernel refusal.
			errs := logLines(out, "error")
			if assert.Len(t, errs, 1, "error-level log lines:\n%s", strings.Join(errs, "\n")) {
				assert.Contains(t, errs[0], tc.missing)
			}
			assert.Equal(t, 1, strings.Count(final, "missing capabilities"), "final error")
			for _, later := range []string{"no attach flavour", "load refused", "operation not permitted", "permission denied"} {
				assert.NotContains(t, out, later, "the capability check must fail before any BPF syscall")
			}
		})
	}
}

// privResult is the outcome of one flavour as nobody with some capabilities.
type privResult struct {
	mode, caps, outcome string
}

func TestPrivilegesMinimalCapabilities(t *testing.T) {
	e := newUnprivEnv(t)
	var results []privResult
	record := func(mode string, caps []string, format string, args ...any) {
		results = append(results, privResult{mode, capNames(caps), fmt.Sprintf(format, args...)})
	}

	for _, mode := range []string{"auto", "fentry", "tp_btf", "raw_tp", "tracepoint"} {
		t.Run(mode, func(t *testing.T) {
			if mode != "auto" {
				// Does this kernel accept the flavour at all (as root)?
				c := e.start(t, "root-"+mode, append([]string{e.exe}, modeArgs(mode)...))
				if !waitStarted(t, c, readyTimeout) {
					err := startError(c.stderr.String())
					record(mode, nil, "refused even as root: %s", err)
					t.Skipf("this kernel refuses %s even as root: %s", mode, err)
				}
				time.Sleep(signalGrace)
				c.stop(t)
			}

			ok, got, refused, err := e.runUnprivileged(t, mode, minimalCaps)
			if ok {
				record(mode, minimalCaps, "works: attach_mode=%s refused=[%s]", got, refused)
				return
			}
			record(mode, minimalCaps, "FAILS: %s", err)
			if mode == "auto" || mode == "tp_btf" || mode == "raw_tp" {
				// These must work with CAP_BPF and CAP_PERFMON only.
				t.Errorf("attach_mode %s does not work as nobody with only %v: %s", mode, minimalCaps, err)
			} else {
				t.Logf("attach_mode %s needs more than %v: %s", mode, minimalCaps, err)
			}
			for _, extra := range extraCandidates {
				caps := append(append([]string(nil), minimalCaps...), extra)
				ok, got, refused, err := e.runUnprivileged(t, mode, caps)
				if ok {
					record(mode, caps, "works: attach_mode=%s refused=[%s]", got, refused)
					t.Logf("FINDING: attach_mode %s needs CAP_%s besides CAP_BPF and CAP_PERFMON", mode, strings.ToUpper(extra))
					return
				}
				record(mode, caps, "FAILS: %s", err)
			}
			t.Errorf("attach_mode %s works as root but not as nobody with %v plus any one of %v", mode, minimalCaps, extraCandidates)
		})
	}

	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "\n  %-10s %-44s %s", r.mode, r.caps+":", r.outcome)
	}
	t.Logf("summary (nobody with the listed capabilities; \"root\" rows only probe whether the kernel accepts a flavour):%s", b.String())
}

// runUnprivileged starts the collector as nobody with caps and the given
// attach_mode. If it becomes ready it must export tcp.rtt with count > 0
// for generated traffic and stop cleanly; ok is then true and mode/refused
// are the attached flavour and the flavours refused before it. If it exits
// instead, err is its final error line.
func (e *unprivEnv) runUnprivileged(t *testing.T, mode string, caps []string) (ok bool, attached, refused, err string) {
	t.Helper()
	argv := append(e.setprivArgv(caps), modeArgs(mode)...)
	c := e.start(t, "nobody-"+mode, argv)
	if !waitStarted(t, c, readyTimeout) {
		out := c.stderr.String()
		assert.NotContains(t, out, "panic", "collector output")
		assert.NotEqual(t, 0, c.cmd.ProcessState.ExitCode(), "exit status of a collector that failed to start")
		err = startError(out)
		t.Logf("outcome: exit status %d: %s", c.cmd.ProcessState.ExitCode(), err)
		return false, "", "", err
	}
	checkCredentials(t, c.cmd.Process.Pid, caps)
	attached, refused = attachedLog(c.stderr.String())
	t.Logf("outcome: ready; tcprtt program attached with attach_mode=%s refused=[%s]", attached, refused)
	if mode != "auto" {
		assert.Equal(t, mode, attached, "attach_mode in the log")
	} else {
		assert.NotEmpty(t, attached, "no \"tcprtt program attached\" log line with attach_mode")
	}

	seen := len(e.sink.metrics())
	traffic := startTraffic(t, dataTimeout+5*time.Second)
	summaries := awaitPeers(t, c, e.sink, seen)
	rounds, terr := traffic.stop()
	require.NoError(t, terr, "traffic generator")
	t.Logf("tcp.rtt as nobody (%s, %v), %d round trips: client side (peer %s): %s; server side (peer %s): %s",
		attached, caps, rounds, serverIP, summaries[serverIP], clientIP, summaries[clientIP])
	c.stop(t)
	require.NoError(t, e.sink.err(), "OTLP endpoint")
	return !t.Failed(), attached, refused, ""
}
