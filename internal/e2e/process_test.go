//go:build linux

package e2e

import (
	"os/exec"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// startProcess runs bin with args (output kept, killed with the test
// process, killed and its output logged on failure at the end of the test)
// and returns it as a *collector, whose exited and output fields are not
// collector-specific.
func startProcess(t *testing.T, bin string, args ...string) *collector {
	t.Helper()
	return startProcessEnv(t, nil, bin, args...)
}

// startProcessEnv is startProcess with the environment env (nil: the test's).
func startProcessEnv(t *testing.T, env []string, bin string, args ...string) *collector {
	t.Helper()
	c := &collector{stderr: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = env
	c.cmd.Stdout = c.stderr
	c.cmd.Stderr = c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, startFromSpawner(c.cmd), "start %s", bin)
	go func() {
		c.werr = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", bin, c.stderr.String())
		}
	})
	return c
}
