//go:build linux

package e2e

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// Helpers for privileges_test.go and validate_test.go. They build on the
// helpers of e2e_test.go (collectorBinary, writeConfig, newOTLPSink,
// startCollector, startTraffic, checkExport) rather than copying them.

// publicDir returns a new directory that every user may enter and read
// (t.TempDir's parent is 0700, so it cannot be used for files that the
// collector reads after dropping to an unprivileged user). It is removed
// when the test ends.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcprtt-e2e-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	return dir
}

// copyFile copies src to dir/name with mode perm and returns the new path.
func copyFile(t *testing.T, src, dir, name string, perm os.FileMode) string {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	dst := filepath.Join(dir, name)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
	require.NoError(t, os.Chmod(dst, perm)) // not subject to the umask
	return dst
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// writeWrapper writes an executable script dir/name that runs argv followed
// by its own arguments (exec, so the process keeps the script's PID and
// startCollector's kill and wait apply to argv[0]'s final image). It lets
// startCollector, which runs `bin --config cfg`, start the collector under
// setpriv or with extra flags. It returns the script's path and the command
// line it runs.
func writeWrapper(t *testing.T, dir, name string, argv ...string) (string, string) {
	t.Helper()
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	cmdline := strings.Join(quoted, " ")
	script := "#!/bin/sh\nexec " + cmdline + ` "$@"` + "\n"
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	require.NoError(t, os.Chmod(path, 0o755))
	return path, cmdline
}

// waitStarted waits until c logged readyLogLine (true) or exited (false).
func waitStarted(t *testing.T, c *collector, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(c.stderr.String(), readyLogLine) {
			return true
		}
		select {
		case <-c.done:
			return strings.Contains(c.stderr.String(), readyLogLine)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("collector neither ready nor exited within %s; output:\n%s", timeout, c.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitExit waits until c exits and returns its exit code (-1 if it was
// killed by a signal).
func waitExit(t *testing.T, c *collector, timeout time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		t.Fatalf("collector still running after %s; output:\n%s", timeout, c.stderr.String())
	}
	return c.cmd.ProcessState.ExitCode()
}

// startError returns the collector's final "Error: ..." line, if any.
func startError(log string) string {
	var last string
	for _, line := range strings.Split(log, "\n") {
		if strings.HasPrefix(line, "Error: ") {
			last = line
		}
	}
	return last
}

// logLines returns the collector's log lines with the given zap level.
func logLines(log, level string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if f := strings.Split(line, "\t"); len(f) > 1 && f[1] == level {
			out = append(out, line)
		}
	}
	return out
}

// attachedLog returns the "tcprtt program attached" log line's attach_mode
// and refused fields ("" if absent).
func attachedLog(log string) (mode, refused string) {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "tcprtt program attached") {
			continue
		}
		return jsonField(line, "attach_mode"), jsonField(line, "refused")
	}
	return "", ""
}

// jsonField extracts the string value of "key": "value" from a zap console
// line's JSON fields (values here contain no escaped quotes that matter).
func jsonField(line, key string) string {
	marker := `"` + key + `": "`
	i := strings.Index(line, marker)
	if i < 0 {
		return ""
	}
	rest := line[i+len(marker):]
	if j := strings.Index(rest, `"`); j >= 0 {
		return rest[:j]
	}
	return rest
}

// lookPath returns the absolute path of a program or skips the test (fails
// it with TCPRTT_REQUIRE_BPF=1, like testenv.RequireBPF).
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		msg := name + " not found in PATH: " + err.Error()
		if os.Getenv(testenv.RequireBPFEnv) == "1" {
			t.Fatal(msg + "; " + testenv.RequireBPFEnv + "=1 makes this a failure")
		}
		t.Skip(msg)
	}
	abs, err := filepath.Abs(p)
	require.NoError(t, err)
	return abs
}
