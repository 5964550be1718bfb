//go:build linux

package tcprttreceiver

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// Addresses of the cgroup test alone (the program sees the whole host).
var (
	cgServer = netip.MustParseAddr("127.0.11.1")
	cgNet    = "127.0.11.0/24"
)

// The socket owners run in child processes: this test binary, re-executed
// with childRoleEnv set, which init() turns into the child's main.
const (
	childRoleEnv   = "TCPRTT_CGROUP_CHILD"       // server or client
	childPathEnv   = "TCPRTT_CGROUP_CHILD_PATH"  // the cgroup the child must be in before its first socket
	childLocalEnv  = "TCPRTT_CGROUP_CHILD_LOCAL" // client: local address
	childServerEnv = "TCPRTT_CGROUP_CHILD_SERVER"
	childTrips     = "TCPRTT_CGROUP_CHILD_TRIPS"
)

func init() {
	if role := os.Getenv(childRoleEnv); role != "" {
		if err := runChild(role); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// runChild waits for "go" on stdin (sent once the parent has moved it
// into its cgroup), checks that it is there, and then serves (server) or
// connects and makes round trips (client). A client that reads "move"
// instead of "go" connects first, lets the parent move it, and then makes
// its round trips: its socket must stay in the cgroup it was created in.
// Both stay alive until stdin closes.
func runChild(role string) error {
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return fmt.Errorf("no go from the parent")
	}
	cmd := in.Text()
	path, err := cgroup.ProcPath("self")
	if err != nil {
		return err
	}
	if want := os.Getenv(childPathEnv); path != want {
		return fmt.Errorf("in cgroup %q before the first socket, want %q", path, want)
	}
	switch role {
	case "server":
		ln, err := net.Listen("tcp", netip.AddrPortFrom(cgServer, 0).String())
		if err != nil {
			return err
		}
		fmt.Println("listening", ln.Addr().String())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.(*net.TCPConn).SetNoDelay(true)
				go tcptest.Echo(c, tcptest.MessageSize)
			}
		}()
	case "client":
		local := netip.MustParseAddr(os.Getenv(childLocalEnv))
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
		c, err := d.Dial("tcp", os.Getenv(childServerEnv))
		if err != nil {
			return err
		}
		_ = c.(*net.TCPConn).SetNoDelay(true)
		if cmd == "move" {
			fmt.Println("connected")
			if !in.Scan() {
				return fmt.Errorf("no go after the move")
			}
		}
		n, _ := strconv.Atoi(os.Getenv(childTrips))
		buf := make([]byte, tcptest.MessageSize)
		for range n {
			if err := tcptest.RoundTrip(c, buf); err != nil {
				return err
			}
		}
		// Segments received, the SYN-ACK included: all the others
		// arrived in the established state, each one sample.
		info, err := tcptest.TCPInfo(c.(*net.TCPConn))
		if err != nil {
			return err
		}
		fmt.Println("done", info.Segs_in)
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	return nil
}

// child is one socket owner process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

// startChild starts role with env and moves it into the cgroup dir (of
// the v2 hierarchy mounted at root) before telling it to go on with cmd.
func startChild(t *testing.T, root, dir, role, cmd string, env ...string) *child {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	rel := "/" + strings.TrimPrefix(dir, root+"/")
	c.Env = append(os.Environ(), append(env, childRoleEnv+"="+role, childPathEnv+"="+rel)...)
	c.Stderr = os.Stderr
	stdin, err := c.StdinPipe()
	require.NoError(t, err)
	stdout, err := c.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, c.Start())
	ch := &child{cmd: c, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(ch.stop)
	moveInto(t, dir, c.Process.Pid)
	ch.send(t, cmd)
	return ch
}

func moveInto(t *testing.T, dir string, pid int) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644),
		"move process %d into %s", pid, dir)
}

func (c *child) send(t *testing.T, line string) {
	t.Helper()
	_, err := fmt.Fprintln(c.stdin, line)
	require.NoError(t, err)
}

// expect reads the child's next line, which must start with word, and
// returns the rest.
func (c *child) expect(t *testing.T, word string) string {
	t.Helper()
	require.True(t, c.out.Scan(), "child %d ended before %q", c.cmd.Process.Pid, word)
	line := c.out.Text()
	rest, ok := strings.CutPrefix(line, word+" ")
	if !ok && line != word {
		t.Fatalf("child %d said %q, want %q", c.cmd.Process.Pid, line, word)
	}
	return rest
}

// stop closes the child's stdin and waits for it to exit.
func (c *child) stop() {
	if c.stdin != nil {
		c.stdin.Close()
		c.stdin = nil
		done := make(chan struct{})
		go func() { _ = c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-done
		}
	}
}

// makeCgroup creates root/rel and its missing parents, removed (deepest
// first) when the test ends; the processes in them must be gone by then.
func makeCgroup(t *testing.T, root, rel string) string {
	t.Helper()
	dir := root
	for _, seg := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, seg)
		if err := os.Mkdir(dir, 0o755); err == nil {
			d := dir
			t.Cleanup(func() {
				if err := rmCgroup(d); err != nil {
					t.Errorf("remove cgroup %s: %v", d, err)
				}
			})
		} else if !os.IsExist(err) {
			t.Fatalf("create cgroup %s: %v", dir, err)
		}
	}
	return dir
}

// rmCgroup removes an empty cgroup, waiting a little for exited
// processes to leave it.
func rmCgroup(dir string) error {
	var err error
	for range 50 {
		if err = syscall.Rmdir(dir); err == nil || os.IsNotExist(err) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n/2)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

func inodeOf(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(dir, &st))
	return int64(st.Ino)
}

// resourcesByID indexes the resources of md by their cgroup id.
func resourcesByID(t *testing.T, md pmetric.Metrics) map[int64]pmetric.ResourceMetrics {
	t.Helper()
	out := map[int64]pmetric.ResourceMetrics{}
	for i := range md.ResourceMetrics().Len() {
		rm := md.ResourceMetrics().At(i)
		id, ok := rm.Resource().Attributes().Get(convert.AttrCgroupID)
		require.True(t, ok, "resource without %s: %v", convert.AttrCgroupID, rm.Resource().Attributes().AsRaw())
		out[id.Int()] = rm
	}
	return out
}
