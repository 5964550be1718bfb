//go:build linux

package loader

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// Addresses of these tests' own (the program sees the whole host).
var (
	lifeServer = netip.MustParseAddr("127.10.10.1")
	lifeClient = netip.MustParseAddr("127.10.10.2")
	lifeOther  = netip.MustParseAddr("127.10.10.3")
	lifeNet    = netip.MustParsePrefix("127.10.10.0/24")
)

// openLifecycle opens the program (whatever flavour this kernel takes)
// grouped by remote address, counting the tests' own addresses (remote
// ones in remote), with a clock
// the test moves; oneCacheEntry makes the sockets of a CPU share one
// cache entry.
func openLifecycle(t *testing.T, maxSeries uint32, idle time.Duration, remote netip.Prefix, oneCacheEntry ...bool) (*Tracer, *time.Time) {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Open(Spec{
		Mode: ModeAuto, GroupBy: kmaps.GroupRemoteAddress, Table: table, MaxSeries: maxSeries,
		IdleTimeout: idle, OneCacheEntry: append(oneCacheEntry, false)[0], LocalPrefixes: []netip.Prefix{lifeNet, netip.MustParsePrefix("127.10.11.0/24")}, RemotePrefixes: []netip.Prefix{remote},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	now := time.Now()
	tr.now = func() time.Time { return now }
	return tr, &now
}

func readSnap(t *testing.T, tr *Tracer) []kmaps.Series {
	t.Helper()
	var snap kmaps.Snapshot
	var rows []uint64
	if err := tr.Read(&snap, &rows); err != nil {
		t.Fatal(err)
	}
	for i := range snap.Series {
		snap.Series[i].Buckets = append([]uint64(nil), snap.Series[i].Buckets...)
	}
	return snap.Series
}

func seriesOf(series []kmaps.Series, peer netip.Addr) []kmaps.Series {
	var out []kmaps.Series
	for _, s := range series {
		if !s.Overflow && s.Key.RemoteAddress() == peer {
			out = append(out, s)
		}
	}
	return out
}

// injectLate counts n samples of raw into slot's row as a program that
// had looked the row up just before its retirement would: bucket, then
// this CPU's sum (CPU 0 here).
func injectLate(t *testing.T, tr *Tracer, slot uint32, raw uint32, n uint64) {
	t.Helper()
	pos := tr.spec.Table.Position(raw)
	atomic.AddUint64(tr.word(slot, kmaps.RowBuckets+pos), n)
	atomic.AddUint64(tr.sumWord(0, slot), uint64(raw)*n)
}

// TestRetiredRowFinalSum: samples that land in a retired row before it is
// freed come out once, in its final point, with their exact sum. (Read
// used to clear the row's per-CPU sums before reading them: the final
// point had sum 0, and its delta an underflowed ~2.3e12 s.)
func TestRetiredRowFinalSum(t *testing.T) {
	tr, now := openLifecycle(t, 4, time.Minute, lifeNet)
	c := tcptest.Dial(t, lifeServer, lifeClient)
	c.RoundTrips(t, 10)
	c.Close()
	time.Sleep(100 * time.Millisecond) // the closing segments are counted too
	first := seriesOf(readSnap(t, tr), lifeServer)
	if len(first) != 1 {
		t.Fatalf("%d series of the server, want 1", len(first))
	}
	before := first[0]

	*now = now.Add(2 * time.Minute)
	if got := seriesOf(readSnap(t, tr), lifeServer); len(got) != 1 || got[0].Total != before.Total {
		t.Fatalf("the idle series is still read once as it retires: %+v", got)
	}
	injectLate(t, tr, before.Slot, 800, 3)

	*now = now.Add(time.Second)
	final := seriesOf(readSnap(t, tr), lifeServer)
	if len(final) != 1 || !final[0].Retired {
		t.Fatalf("want the retired series' final point, got %+v", final)
	}
	if final[0].Total != before.Total+3 || final[0].Sum != before.Sum+3*800 {
		t.Errorf("final point: %d samples, sum %d; want %d, %d", final[0].Total, final[0].Sum,
			before.Total+3, before.Sum+3*800)
	}
	if got := seriesOf(readSnap(t, tr), lifeServer); len(got) != 0 {
		t.Errorf("after its final point the series is gone, got %+v", got)
	}
}

// TestRetiredRowLateSamplesJoinNewRow: when the key already has a new row
// by the time the retired one is freed, the late samples join the new row
// (so no batch holds two points of one key with overlapping windows), and
// its sum includes theirs.
func TestRetiredRowLateSamplesJoinNewRow(t *testing.T) {
	tr, now := openLifecycle(t, 4, time.Minute, lifeNet)
	c := tcptest.Dial(t, lifeServer, lifeClient)
	c.RoundTrips(t, 10)
	old := seriesOf(readSnap(t, tr), lifeServer)[0]

	*now = now.Add(2 * time.Minute)
	readSnap(t, tr) // retires it
	injectLate(t, tr, old.Slot, 800, 3)
	c.RoundTrips(t, 5) // the socket resolves again: a new row for the key
	newRow := seriesOf(readSnap(t, tr), lifeServer)
	if len(newRow) != 1 || newRow[0].Retired || newRow[0].Slot == old.Slot {
		t.Fatalf("want exactly one live series of the key in a new row, got %+v", newRow)
	}
	// The socket's own 5 segments arrive at the client (server series is
	// keyed by remote address = the server's address seen by the client).
	own := newRow[0].Total - 3
	if own < 5 {
		t.Errorf("new row holds %d own samples + 3 late, want ≥ 5 own", own)
	}
	if newRow[0].Bucket(int(tr.spec.Table.Position(800))) < 3 {
		t.Errorf("late samples not in the new row's bucket")
	}
	// The sum is the late samples' 2400 plus the own samples' alone: each
	// own sample lies within its bucket's bounds. (Read used to give the
	// lifecycle the series before its sum, so the whole retired series'
	// sum came along with the late samples.)
	lo, hi := sumBounds(tr, &newRow[0], tr.spec.Table.Position(800), 3)
	if got := float64(newRow[0].Sum) - 3*800; got < lo || got > hi {
		t.Errorf("sum %d - the late 2400 = %.0f, want the own samples' sum, within [%.0f, %.0f] by their buckets (old series' sum %d)",
			newRow[0].Sum, got, lo, hi, old.Sum)
	}
}

// sumBounds returns the least and greatest raw sum the samples of s can
// have by their buckets, leaving out n samples of position skip.
func sumBounds(tr *Tracer, s *kmaps.Series, skip uint32, n uint64) (lo, hi float64) {
	table := tr.spec.Table
	div := float64(table.Divisor)
	for i, c := range s.Buckets {
		pos := s.Offset + i
		if uint32(pos) == skip {
			c -= n
		}
		idx := table.MinIndex + int32(pos)
		lo += float64(c) * table.LowerBound(idx) * div
		hi += float64(c) * table.UpperBound(idx) * div
	}
	return lo, hi
}

// TestOverflowedSocketTakesPushedBackSlot: a socket cached in the
// overflow row while the only free slot was held by another CPU (popped,
// then pushed back after a lost insert race — reproduced here by popping
// and pushing from user space) gets that slot once it is back, even with
// expiry off. It used to stay in the overflow series for good.
func TestOverflowedSocketTakesPushedBackSlot(t *testing.T) {
	// Only the client socket counts (its peer is lifeOther).
	tr, _ := openLifecycle(t, 1, 0, netip.PrefixFrom(lifeOther, 32))
	var slot uint32
	if err := tr.free.LookupAndDelete(nil, &slot); err != nil {
		t.Fatalf("pop the only free slot: %v", err)
	}
	c := tcptest.Dial(t, lifeOther, lifeClient)
	c.RoundTrips(t, 10)
	series := readSnap(t, tr)
	if len(seriesOf(series, lifeOther)) != 0 {
		t.Fatalf("no slot was free, yet the peer has a series")
	}
	if err := tr.free.Update(nil, slot, 0); err != nil {
		t.Fatalf("push the slot back: %v", err)
	}
	readSnap(t, tr) // a slot is free after the overflow grew
	c.RoundTrips(t, 10)
	got := seriesOf(readSnap(t, tr), lifeOther)
	if len(got) != 1 || got[0].Total < 10 {
		t.Fatalf("the overflowed socket did not take the free slot: %+v", got)
	}
}

// TestClosedSocketsKeepTheirCounts: connections opened and closed one
// after another (the kernel reuses freed socket memory for the next ones)
// never add to an earlier connection's series: a cache entry is valid only
// for the exact 4-tuple it was written for. The cache has one entry per
// CPU here, so every socket meets the entries of the others.
func TestClosedSocketsKeepTheirCounts(t *testing.T) {
	tr, _ := openLifecycle(t, 64, 0, netip.MustParsePrefix("127.10.11.0/24"), true)
	server := tcptest.Listen(t, netip.MustParseAddr("127.10.11.1"))
	final := map[netip.Addr]uint64{}
	for i := range 40 {
		client := netip.AddrFrom4([4]byte{127, 10, 11, byte(10 + i)})
		server.Visit(t, client, 5)
		time.Sleep(20 * time.Millisecond) // the closing segments are in
		for _, s := range readSnap(t, tr) {
			if s.Overflow {
				continue
			}
			peer := s.Key.RemoteAddress()
			if old, ok := final[peer]; ok && old != s.Total {
				t.Errorf("series of %s, closed earlier, went from %d to %d samples", peer, old, s.Total)
			}
			if peer == client {
				final[peer] = s.Total
			}
		}
		if final[client] == 0 {
			t.Fatalf("no samples for %s", client)
		}
	}
}
