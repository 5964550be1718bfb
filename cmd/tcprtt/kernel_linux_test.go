//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

var (
	clientV4 = netip.MustParseAddr("127.0.0.2")
	serverA  = netip.MustParseAddr("127.0.0.3")
	serverB  = netip.MustParseAddr("127.0.0.4")
	loopV6   = netip.IPv6Loopback()
)

// commandEnv names a prebuilt tcprtt binary to test instead of building
// one: the kernel matrix (tools/kernels) runs this test in a VM without Go.
const commandEnv = "TCPRTT_COMMAND"

// runTimeout bounds one run of the command: it catches hangs, and is far
// above the seconds a run takes even in an emulated arm64 VM, where
// loading the program (parsing the kernel's BTF) alone takes tens of
// seconds.
const runTimeout = 2 * time.Minute

// buildCommand builds this command into dir, as a user would, or copies
// the binary $TCPRTT_COMMAND names there.
func buildCommand(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "tcprtt")
	if prebuilt := os.Getenv(commandEnv); prebuilt != "" {
		b, err := os.ReadFile(prebuilt)
		if err != nil {
			t.Fatalf("%s: %v", commandEnv, err)
		}
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return bin
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go" // sudo's PATH often lacks it
	}
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// traffic keeps request/response round trips going on conns until the
// test ends.
func traffic(t *testing.T, conns ...*tcptest.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			var b [tcptest.MessageSize]byte
			for ctx.Err() == nil {
				if err := tcptest.RoundTrip(c.Client, b[:]); err != nil {
					t.Errorf("traffic %s: %v", c.ServerAddr(), err)
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
		})
	}
	// Registered after tcptest.Dial's cleanups, so it runs before them.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// interval is one printed interval: the time line (if any) and the sample
// count of each histogram, by header.
type interval struct {
	stamp   string
	counts  map[string]uint64
	retrans map[string]uint64 // RETRANS of each histogram
}

var stampRE = regexp.MustCompile(`^\d\d:\d\d:\d\d$`)

// parseOutput splits the command's stdout into intervals. Histograms
// must have the extended header (-e), whose COUNT checkConsistent
// compares with the rows.
func parseOutput(t *testing.T, out string) []interval {
	t.Helper()
	checkConsistent(t, out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "Tracing TCP RTT") {
		t.Fatalf("output does not start with the Tracing line:\n%s", out)
	}
	var ivs []interval
	for _, l := range lines[1:] {
		switch {
		case l == "":
			ivs = append(ivs, interval{counts: map[string]uint64{}, retrans: map[string]uint64{}})
		case len(ivs) == 0:
			t.Fatalf("line %q before the first interval:\n%s", l, out)
		case stampRE.MatchString(l):
			ivs[len(ivs)-1].stamp = l
		default:
			m := headerRE.FindStringSubmatch(l)
			if m == nil {
				if !rowRE.MatchString(l) && !strings.HasPrefix(l, "     usecs ") && !strings.HasPrefix(l, "     msecs ") {
					t.Errorf("unexpected line %q", l)
				}
				continue
			}
			if m[3] == "" {
				t.Fatalf("header %q has no extended part", l)
			}
			n, _ := strconv.ParseUint(m[3], 10, 64)
			ivs[len(ivs)-1].counts[m[1]] = n
			r, _ := strconv.ParseUint(m[4], 10, 64)
			ivs[len(ivs)-1].retrans[m[1]] = r
		}
	}
	return ivs
}

// onlyIPv6 checks that every histogram is of an IPv6 remote address:
// other tests' IPv6 peers may add histograms, never an IPv4 one.
func onlyIPv6(t *testing.T, stdout, _ string, ivs []interval) {
	t.Helper()
	for i, iv := range ivs {
		for h := range iv.counts {
			a, err := netip.ParseAddr(strings.TrimPrefix(h, "Remote Address = "))
			if err != nil || !a.Is6() || a.Is4In6() {
				t.Errorf("interval %d: %q is not an IPv6 remote address\n%s", i+1, h, stdout)
			}
		}
	}
}

func remote(a netip.Addr) string { return "Remote Address = " + a.String() }
func local(a netip.Addr) string  { return "Local Address = " + a.String() }

// TestKernel runs the built command against loopback traffic between
// distinct addresses: conn A 127.0.0.2 -> 127.0.0.3, conn B 127.0.0.2 ->
// 127.0.0.4, conn C ::1 -> ::1. Both ends of each are measured, so the
// remote addresses seen are 127.0.0.2 (the servers' peer), 127.0.0.3,
// 127.0.0.4 and ::1.
func TestKernel(t *testing.T) {
	testenv.RequireBPF(t)
	dir := t.TempDir()
	bin := buildCommand(t, dir)

	connA := tcptest.Dial(t, serverA, clientV4)
	connB := tcptest.Dial(t, serverB, clientV4)
	connC := tcptest.Dial(t, loopV6, loopV6)
	traffic(t, connA, connB, connC)
	portA := strconv.Itoa(int(connA.ServerAddr().Port()))
	portB := strconv.Itoa(int(connB.ServerAddr().Port()))

	run := func(t *testing.T, args ...string) (stdout, stderr string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			t.Fatalf("tcprtt %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, o.String(), e.String())
		}
		return o.String(), e.String()
	}

	// Each case runs for 2 s with 1 s intervals: two intervals, each with
	// samples of exactly the histograms in want (others would be traffic
	// the filters should have excluded). Without filters, other traffic on
	// the host may add histograms: want need only be among them.
	cases := []struct {
		name     string
		args     []string
		want     []string
		unfilter bool
		checkFn  func(t *testing.T, stdout, stderr string, ivs []interval)
	}{
		{name: "per remote address", args: []string{"-i", "1", "-d", "2", "-B", "-e"}, unfilter: true,
			want: []string{remote(clientV4), remote(serverA), remote(serverB), remote(loopV6)}},
		{name: "remote address filter", args: []string{"-i", "1", "-d", "2", "-B", "-e", "-v", "-A", serverA.String()},
			want: []string{remote(serverA)},
			checkFn: func(t *testing.T, _, stderr string, _ []interval) {
				if !regexp.MustCompile(`(?m)^tcprtt: attached with flavour (fentry|tp_btf|raw_tp|tracepoint) \(`).MatchString(stderr) {
					t.Errorf("-v does not report the attach flavour:\n%s", stderr)
				}
			}},
		{name: "remote CIDR filter", args: []string{"-i", "1", "-d", "2", "-B", "-e", "-A", "127.0.0.4/31,::1"},
			want: []string{remote(serverB), remote(loopV6)}},
		{name: "remote port filter", args: []string{"-i", "1", "-d", "2", "-B", "-e", "-P", portA},
			want: []string{remote(serverA)}},
		{name: "local address, local port, IPv4", args: []string{"-i", "1", "-d", "2", "-b", "-e", "-4", "-p", portB + "," + portA},
			want: []string{local(serverA), local(serverB)}},
		{name: "IPv6 only", args: []string{"-i", "1", "-d", "2", "-B", "-e", "-6"},
			want: []string{remote(loopV6)}, unfilter: true, checkFn: onlyIPv6},
		// An IPv6 prefix matches IPv6 sockets only, although the program
		// keys IPv4 ones v4-mapped; written v4-mapped, it is the IPv4 one.
		{name: "IPv6 prefix ::/0 is IPv6 only", args: []string{"-i", "1", "-d", "2", "-B", "-e", "-A", "::/0"},
			want: []string{remote(loopV6)}, unfilter: true, checkFn: onlyIPv6},
		{name: "v4-mapped prefix is IPv4", args: []string{"-i", "1", "-d", "2", "-B", "-e", "-A", "::ffff:" + serverA.String() + "/128"},
			want: []string{remote(serverA)}},
		{name: "msecs scale 3 timestamps", args: []string{"-i1", "-d2", "-Tme", "-s", "3", "-A", serverA.String()},
			want: []string{"All Addresses"},
			checkFn: func(t *testing.T, stdout, _ string, ivs []interval) {
				for _, iv := range ivs {
					if iv.stamp == "" {
						t.Errorf("-T: interval without a time line")
					}
				}
				if !strings.Contains(stdout, "\n     msecs               : count    distribution\n") {
					t.Errorf("-m: no msecs column header:\n%s", stdout)
				}
			}},
	}
	t.Run("group", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				stdout, stderr := run(t, c.args...)
				ivs := parseOutput(t, stdout)
				if len(ivs) != 2 {
					t.Fatalf("%d intervals, want 2:\n%s", len(ivs), stdout)
				}
				for i, iv := range ivs {
					var got []string
					for h, n := range iv.counts {
						// Other tests' sockets may only retransmit in an
						// interval (the loss tests): printed with COUNT 0.
						if n == 0 && iv.retrans[h] == 0 {
							t.Errorf("interval %d: %q printed with COUNT 0 and RETRANS 0", i+1, h)
						}
						got = append(got, h)
					}
					slices.Sort(got)
					want := slices.Sorted(slices.Values(c.want))
					if c.unfilter {
						got = slices.DeleteFunc(got, func(h string) bool { return !slices.Contains(want, h) })
					}
					if !slices.Equal(got, want) {
						t.Errorf("interval %d: histograms %q, want %q\n%s", i+1, got, want, stdout)
					}
				}
				if c.checkFn != nil {
					c.checkFn(t, stdout, stderr, ivs)
				}
			})
		}

		for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
			t.Run(fmt.Sprintf("%v prints the last interval and exits 0", sig), func(t *testing.T) {
				t.Parallel()
				cmd := exec.Command(bin, "-e", "-A", serverA.String())
				var o, e bytes.Buffer
				pipe, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				cmd.Stderr = &e
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				// The first line comes once the program is attached, which
				// takes seconds in an emulated VM (tools/kernels): count
				// the 1.5 s of tracing from there.
				copied := make(chan error, 1)
				go func() {
					first, err := bufio.NewReader(pipe).ReadString('\n')
					o.WriteString(first)
					copied <- err
				}()
				select {
				case err := <-copied:
					if err != nil {
						t.Fatalf("no first line: %v\nstderr:\n%s", err, e.String())
					}
				case <-time.After(runTimeout):
					_ = cmd.Process.Kill()
					t.Fatalf("no first line after %v\nstderr:\n%s", runTimeout, e.String())
				}
				rest := make(chan []byte, 1)
				go func() { b, _ := io.ReadAll(pipe); rest <- b }()
				time.Sleep(1500 * time.Millisecond)
				if err := cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { o.Write(<-rest); done <- cmd.Wait() }()
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("exit after %v: %v\nstderr:\n%s", sig, err, e.String())
					}
				case <-time.After(30 * time.Second):
					_ = cmd.Process.Kill()
					t.Fatalf("no exit 30 s after %v", sig)
				}
				if !strings.HasPrefix(o.String(), "Tracing TCP RTT... Hit Ctrl-C to end.\n") {
					t.Errorf("no Ctrl-C hint:\n%s", o.String())
				}
				ivs := parseOutput(t, o.String())
				if len(ivs) != 1 || ivs[0].counts["All Addresses"] == 0 {
					t.Errorf("want one interval with samples:\n%s", o.String())
				}
			})
		}

		t.Run("without privileges", func(t *testing.T) {
			t.Parallel()
			// The unprivileged user must reach the binary.
			for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(bin, "-d", "1")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit %v, want status 1\nstdout:\n%s\nstderr:\n%s", err, o.String(), e.String())
			}
			// The same error the receiver gives.
			want := "tcprtt: missing capabilities [CAP_BPF CAP_PERFMON]: tcprtt needs CAP_BPF and CAP_PERFMON (or root)"
			if !strings.HasPrefix(e.String(), want) || o.Len() != 0 {
				t.Errorf("stderr %q, want it to start with %q; stdout %q", e.String(), want, o.String())
			}
		})
	})
}
