//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Children of the tests are started with Pdeathsig (SIGKILL), so none
// outlives a test binary that dies. The signal is tied to the thread that
// forked the child, not to the process (prctl(2), PR_SET_PDEATHSIG: "the
// parent thread"), and some test threads do end while the binary runs: a
// goroutine that locked its thread to enter a namespace ends with it
// (testenv.InLossNetns, writeUnderReadOnlyBind). A Prometheus forked from
// such a thread was killed mid-test, and the query in flight read
// "connection reset by peer" (the kernel's reset of its closing listener).
// Every child is therefore forked from one thread that never ends.

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan<- error
}

var (
	spawnOnce     sync.Once
	spawnRequests = make(chan spawnRequest)
)

// startFromSpawner runs cmd.Start on the spawner thread.
func startFromSpawner(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked, never returns: the thread lives as long as the binary
			for r := range spawnRequests {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnRequests <- spawnRequest{cmd: cmd, done: done}
	return <-done
}

// TestChildOutlivesStartingThread starts a child from a goroutine that
// locks its thread and ends with it, as the namespace helpers do: the child
// must keep running once that thread is gone.
func TestChildOutlivesStartingThread(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("sleep(1) not found: %v", err)
	}
	started := make(chan struct {
		c   *collector
		tid int
	})
	go func() {
		// Never unlocked: the thread ends with this goroutine. Not the main
		// thread, which the runtime keeps (wedged) instead.
		for runtime.LockOSThread(); unix.Gettid() == unix.Getpid(); runtime.LockOSThread() {
			runtime.UnlockOSThread()
			time.Sleep(time.Millisecond)
		}
		started <- struct {
			c   *collector
			tid int
		}{startProcess(t, sleep, "60"), unix.Gettid()}
	}()
	s := <-started
	task := fmt.Sprintf("/proc/self/task/%d", s.tid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(task); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d of the ended goroutine still exists after 10s", s.tid)
		}
	}
	// The parent-death signal, if any, was sent as the thread exited.
	select {
	case <-s.c.done:
		t.Fatalf("the child died with the thread that started it: %v", s.c.werr)
	case <-time.After(time.Second):
	}
}
