//go:build linux

package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/tcptest"
)

// Real loss for the retransmit tests (loader, e2e): a network namespace
// of their own, and a cgroup_skb program dropping data segments on their
// way into the receiving socket.

// LockLossNets makes t the only user of the loss addresses (LossNets) on
// this host until it ends, across test processes (go test runs packages
// in parallel): the addresses are the same in every test's namespace and
// the programs see every namespace, so a test counting them must not
// overlap another that makes traffic there. Call it before loading.
func LockLossNets(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "tcprtt-loss-nets.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("open the loss addresses' lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("lock the loss addresses: %v", err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// DropEveryNth attaches to the cgroup2 root a cgroup_skb/ingress program
// that drops every nth packet longer than 256 bytes (data segments, never
// a SYN or a pure ACK) addressed to 127.77.0.0/16 or fd77::/16 (these
// tests' own: no other traffic is touched): real loss on the way into the
// receiving socket, seen by the sender only through missing ACKs, so
// every retransmission leaves the sending socket and fires the hook.
func DropEveryNth(t testing.TB, n int32) {
	t.Helper()
	root, err := cgroup.FindMount()
	if err != nil {
		t.Fatalf("find cgroup2 for the drop program: %v", err)
	}
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create drop counter: %v", err)
	}
	t.Cleanup(func() { counter.Close() })
	const (
		skbLen      = 0  // __sk_buff.len
		skbProtocol = 16 // __sk_buff.protocol, network byte order
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSKB,
		AttachType: ebpf.AttachCGroupInetIngress,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadMem(asm.R0, asm.R6, skbLen, asm.Word),
			asm.JLT.Imm(asm.R0, 256, "pass"),
			asm.LoadMem(asm.R0, asm.R6, skbProtocol, asm.Word),
			asm.Mov.Imm(asm.R2, 16),     // IPv4 destination
			asm.Mov.Imm(asm.R7, 0x4d7f), // 127.77 as loaded
			asm.JEq.Imm(asm.R0, 0x0008, "load"),
			asm.Mov.Imm(asm.R2, 24),     // IPv6 destination
			asm.Mov.Imm(asm.R7, 0x77fd), // fd77
			asm.JEq.Imm(asm.R0, 0xdd86, "load"),
			asm.Ja.Label("pass"),
			asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("load"),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 2),
			asm.Mov.Imm(asm.R5, 0),
			asm.StoreMem(asm.RFP, -8, asm.R5, asm.DWord),
			asm.FnSkbLoadBytes.Call(),
			asm.JNE.Imm(asm.R0, 0, "pass"),
			asm.LoadMem(asm.R0, asm.RFP, -8, asm.Half),
			asm.JNE.Reg(asm.R0, asm.R7, "pass"),
			asm.Mov.Imm(asm.R5, 0),
			asm.StoreMem(asm.RFP, -4, asm.R5, asm.Word), // key 0
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord), // races between CPUs only change which packet drops
			asm.Mod.Imm(asm.R1, n),
			asm.JNE.Imm(asm.R1, 0, "pass"),
			asm.Mov.Imm(asm.R0, 0), // drop
			asm.Return(),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("pass"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load the drop program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: ebpf.AttachCGroupInetIngress, Program: prog})
	if err != nil {
		t.Fatalf("attach the drop program to %s: %v", root, err)
	}
	t.Cleanup(func() { l.Close() })
}

// InLossNetns runs f on a thread moved to a new network namespace whose
// loopback is up and holds fd77::1 and fd77::2. Sockets f creates stay in
// that namespace; the thread ends with f's goroutine.
func InLossNetns(t testing.TB, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare the network namespace: %w", err)
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctls: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("read lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	for _, a := range []netip.Addr{LossServer6, LossClient6} {
		req := struct {
			addr      [16]byte
			prefixlen uint32
			ifindex   int32
		}{addr: a.As16(), prefixlen: 128, ifindex: int32(lo.Index)}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCSIFADDR, uintptr(unsafe.Pointer(&req))); errno != 0 {
			return fmt.Errorf("add %s to lo: %w", a, errno)
		}
	}
	// An address just added may not be bindable at once (its duplicate
	// address detection): wait until both are.
	for _, a := range []netip.Addr{LossServer6, LossClient6} {
		for i := 0; ; i++ {
			l, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
			if err == nil {
				l.Close()
				break
			}
			if i == 100 {
				return fmt.Errorf("%s on lo not usable after 2 s: %w", a, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// RetransFail reads TcpExt TCPRetransFail of the calling thread's network
// namespace: retransmissions the local stack failed to send.
func RetransFail() (uint64, error) {
	f, err := os.Open("/proc/thread-self/net/netstat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var names []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "TCPRetransFail" && i < len(fields) {
				return strconv.ParseUint(fields[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no TcpExt TCPRetransFail in /proc/net/netstat")
}

// The retransmit tests' addresses, in a network namespace of their own
// (the program sees every namespace: the filters keep other traffic out).
var (
	LossServer4 = netip.MustParseAddr("127.77.0.1")
	LossClient4 = netip.MustParseAddr("127.77.0.2")
	LossServer6 = netip.MustParseAddr("fd77::1")
	LossClient6 = netip.MustParseAddr("fd77::2")
	LossNets    = []netip.Prefix{netip.MustParsePrefix("127.77.0.0/16"), netip.MustParsePrefix("fd77::/16")}
)

// LossyTransfers sends size bytes on each of conns connections from
// client to server, with every 7th data segment dropped, and returns the
// sums of the client sockets' and of the server sockets'
// tcpi_total_retrans once all data is acknowledged, and the namespace's
// TCPRetransFail.
func LossyTransfers(t testing.TB, server, client netip.Addr, conns, size int) (clientSide, serverSide, fail uint64) {
	t.Helper()
	DropEveryNth(t, 7)
	var errs []error
	InLossNetns(t, func() {
		defer func() {
			if r := recover(); r != nil {
				errs = append(errs, fmt.Errorf("%v", r))
			}
		}()
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(server, 0)))
		if err != nil {
			errs = append(errs, err)
			return
		}
		defer ln.Close()
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range conns {
			c, s, err := tcptest.Connect(ln, client)
			if err != nil {
				mu.Lock() // transfers already started append too
				errs = append(errs, err)
				mu.Unlock()
				break // and wait for them below
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				defer s.Close()
				err := Transfer(c, s, size)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				for _, side := range []struct {
					conn *net.TCPConn
					sum  *uint64
				}{{c, &clientSide}, {s, &serverSide}} {
					ti, err := tcptest.TCPInfo(side.conn)
					if err != nil {
						errs = append(errs, err)
						return
					}
					*side.sum += uint64(ti.Total_retrans)
				}
			}()
		}
		wg.Wait()
		if fail, err = RetransFail(); err != nil {
			errs = append(errs, err)
		}
	})
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return clientSide, serverSide, fail
}

// Transfer sends size bytes from c to s and one byte back, so that when
// it returns every byte sent either way is acknowledged (nothing left to
// retransmit while TCP_INFO is read): the byte back is acknowledged by a
// last byte from c, whose own acknowledgement Transfer waits for (s may
// delay it; a tail loss probe of that byte after TCP_INFO was read made a
// count one more than TCP_INFO's on the arm64 6.1 VM).
func Transfer(c, s *net.TCPConn, size int) error {
	errc := make(chan error, 1)
	go func() {
		if _, err := io.CopyN(io.Discard, s, int64(size)); err != nil {
			errc <- fmt.Errorf("receive: %w", err)
			return
		}
		_, err := s.Write([]byte{1})
		errc <- err
	}()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	if err := <-errc; err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read the last byte: %w", err)
	}
	// The last byte's ACK: a round trip the server waits for.
	if _, err := c.Write(b[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return err
	}
	return waitAcked(c)
}

// waitAcked waits until c has no segment in flight unacknowledged.
func waitAcked(c *net.TCPConn) error {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		ti, err := tcptest.TCPInfo(c)
		if err != nil {
			return err
		}
		if ti.Unacked == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d segments still unacknowledged after 30s", ti.Unacked)
		}
	}
}
