//go:build linux

package loader

import (
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
)

// rowOnlyTotal is the number of samples in slot's row itself, without the
// cache entries that hold it.
func rowOnlyTotal(tr *Tracer, slot uint32) uint64 {
	var n uint64
	for w := uint32(kmaps.RowZero); w < tr.layout.Stride(); w++ {
		n += atomic.LoadUint64(tr.word(slot, w))
	}
	return n
}

// requireEntryCounts skips where the program counts in the rows only.
func requireEntryCounts(t *testing.T, tr *Tracer) {
	t.Helper()
	if !tr.entryCounts {
		t.Skip("this kernel's BPF atomics do not order the cache entries: samples are counted in the rows only")
	}
}

// TestCacheEntryDrainsExactly: a socket's samples are counted in its cache
// entry; read after read its series keeps exactly the socket's count
// (TCP_INFO: every segment it received but the handshake's last) while
// the entry is held, marked idle, drained into the row and taken again.
func TestCacheEntryDrainsExactly(t *testing.T) {
	tr, _ := openLifecycle(t, 8, 0, netip.PrefixFrom(lifeOther, 32))
	requireEntryCounts(t, tr)
	c := tcptest.Dial(t, lifeOther, lifeClient)
	c.RoundTrips(t, 20)
	want := func() uint64 { return uint64(c.ClientInfo(t).Segs_in) - 1 }

	held := seriesOf(readSnap(t, tr), lifeOther)
	if len(held) != 1 || held[0].Total != want() {
		t.Fatalf("series %+v, want one of %d samples", held, want())
	}
	slot := held[0].Slot
	if len(tr.holders(slot)) == 0 || rowOnlyTotal(tr, slot) >= held[0].Total {
		t.Fatalf("the samples are not in the socket's cache entry (holders %v, row %d of %d)",
			tr.holders(slot), rowOnlyTotal(tr, slot), held[0].Total)
	}

	// Idle for a read: marked; at the next read, drained into the row.
	for i, stage := range []string{"idle", "marked", "drained"} {
		got := seriesOf(readSnap(t, tr), lifeOther)
		if len(got) != 1 || got[0].Total != held[0].Total || got[0].Sum != held[0].Sum {
			t.Fatalf("read %d (%s): %+v, want %d samples of sum %d", i, stage, got, held[0].Total, held[0].Sum)
		}
	}
	if n := len(tr.holders(slot)); n != 0 || rowOnlyTotal(tr, slot) != held[0].Total {
		t.Fatalf("after draining: %d holders, row %d of %d samples", n, rowOnlyTotal(tr, slot), held[0].Total)
	}

	// The socket takes an entry again, and the counts go on from there.
	c.RoundTrips(t, 7)
	again := seriesOf(readSnap(t, tr), lifeOther)
	if len(again) != 1 || again[0].Total != want() || again[0].Slot != slot {
		t.Fatalf("after 7 more round trips: %+v, want %d samples in slot %d", again, want(), slot)
	}
	if len(tr.holders(slot)) == 0 {
		t.Errorf("the socket did not take its entry again")
	}
}

// pinToCPU locks the calling goroutine to its thread and that thread to
// cpu, until the returned function is called.
func pinToCPU(t *testing.T, cpu int) func() {
	t.Helper()
	runtime.LockOSThread()
	var set, old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	return func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	}
}

// firstCPU is the first CPU this process may run on.
func firstCPU(t *testing.T) int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	for cpu := range 1024 {
		if set.IsSet(cpu) {
			return cpu
		}
	}
	t.Fatal("no CPU in the affinity mask")
	return 0
}

// TestWindowFollowsTheRTT: when a socket's RTT moves far from where its
// entry's window started, the program moves the window; no sample is lost
// or counted twice on the way, and the window ends around the new RTT.
// Both ends run on one CPU, so one entry sees every segment.
func TestWindowFollowsTheRTT(t *testing.T) {
	tr, _ := openLifecycle(t, 8, 0, netip.PrefixFrom(lifeOther, 32))
	requireEntryCounts(t, tr)
	cpu := firstCPU(t)
	defer pinToCPU(t, cpu)()
	// A server that answers after delay: the client's ACKs come with the
	// answers, so its RTT follows the delay.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(lifeOther, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var delay atomic.Int64
	go func() {
		defer pinToCPU(t, cpu)()
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		var b [tcptest.MessageSize]byte
		for {
			if _, err := io.ReadFull(s, b[:]); err != nil {
				return
			}
			time.Sleep(time.Duration(delay.Load()))
			if _, err := s.Write(b[:]); err != nil {
				return
			}
		}
	}()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(lifeClient, 0))}
	conn, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := conn.(*net.TCPConn)
	client.SetNoDelay(true)
	roundTrips := func(n int) {
		var b [tcptest.MessageSize]byte
		for range n {
			if err := tcptest.RoundTrip(client, b[:]); err != nil {
				t.Fatal(err)
			}
		}
	}

	roundTrips(30) // fast: loopback, microseconds (more under emulation)
	fast := seriesOf(readSnap(t, tr), lifeOther)
	if len(fast) != 1 {
		t.Fatalf("series after the fast round trips: %+v", fast)
	}
	top := fast[0].Offset + len(fast[0].Buckets) - 1 // the highest bucket used so far
	delay.Store(int64(20 * time.Millisecond))
	roundTrips(40) // slow: the client's ACKs wait for the answers
	raw, err := client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var segsIn uint32
	raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		segsIn = info.Segs_in
	})

	got := seriesOf(readSnap(t, tr), lifeOther)
	if len(got) != 1 || got[0].Total != uint64(segsIn)-1 {
		t.Fatalf("series %+v, want one of %d samples", got, segsIn-1)
	}
	s := got[0]
	octave := 1 << tr.spec.Table.Scale
	var far uint64 // samples an octave and more above the fast ones
	for i, n := range s.Buckets {
		if s.Offset+i > top+octave {
			far += n
		}
	}
	if far == 0 {
		t.Fatalf("no sample an octave above the fast ones (top bucket %d): %+v", top, s)
	}
	holders := tr.holders(s.Slot)
	if len(holders) != 1 {
		t.Fatalf("%d cache entries hold the socket's row, want the one of CPU %d", len(holders), cpu)
	}
	if base := int(atomic.LoadUint32(tr.entryBase(int(holders[0])))); base <= kmaps.RowBuckets+top {
		t.Errorf("the entry's window starts at row word %d, not above the fast samples (word %d): it did not follow the RTT",
			base, kmaps.RowBuckets+top)
	}
}
