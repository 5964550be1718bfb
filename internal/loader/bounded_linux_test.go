//go:build linux

package loader

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
)

// cacheEntriesHolding scans the mmapped socket cache for the entries that
// hold slot (marked or not).
func cacheEntriesHolding(tr *Tracer, slot uint32) []int {
	var es []int
	for e := range len(tr.cache) / kmaps.CacheEntryBytes {
		v := atomic.LoadUint32(tr.entrySlot(e))
		if v&^kmaps.CacheSlotDrain == slot && v != kmaps.CacheSlotFree && v != kmaps.CacheSlotFiltered {
			es = append(es, e)
		}
	}
	return es
}

// TestReadEndsWhileAnEntryMoves: a program run preempted while it moves
// an entry's window leaves the entry's sequence word odd for as long as
// it is off the CPU. Read must still end, with at least what the
// previous read reported, and be exact again once the word is even.
// (Read used to try again without bound: the scrape spun.)
func TestReadEndsWhileAnEntryMoves(t *testing.T) {
	tr, _ := openLifecycle(t, 8, 0, netip.PrefixFrom(lifeOther, 32))
	requireEntryCounts(t, tr)
	c := tcptest.Dial(t, lifeOther, lifeClient)
	c.RoundTrips(t, 20)
	before := seriesOf(readSnap(t, tr), lifeOther)
	if len(before) != 1 {
		t.Fatalf("want one series, got %+v", before)
	}
	es := cacheEntriesHolding(tr, before[0].Slot)
	if len(es) == 0 {
		t.Fatal("no cache entry holds the socket's row")
	}
	seq := tr.entrySeq(es[0])
	atomic.AddUint32(seq, 1) // odd: a move in progress
	even := func() { atomic.AddUint32(seq, 1) }
	c.RoundTrips(t, 5)

	done := make(chan []kmaps.Series, 1)
	go func() {
		var snap kmaps.Snapshot
		var rows []uint64
		err := tr.Read(&snap, &rows)
		if err != nil {
			t.Error(err)
		}
		done <- seriesOf(snap.Series, lifeOther)
	}()
	var during []kmaps.Series
	select {
	case during = <-done:
	case <-time.After(20 * time.Second):
		even() // let it end before the maps go away
		<-done
		t.Fatal("Read did not end in 20 s while an entry's sequence word was odd")
	}
	even()
	if len(during) != 1 || during[0].Total < before[0].Total || during[0].Sum < before[0].Sum {
		t.Fatalf("read during the move: %+v, want at least the previous reading %+v", during, before[0])
	}
	want := uint64(c.ClientInfo(t).Segs_in) - 1
	after := seriesOf(readSnap(t, tr), lifeOther)
	if len(after) != 1 || after[0].Total != want {
		t.Fatalf("read after the move: %+v, want %d samples (TCP_INFO)", after, want)
	}
}

// TestRowOnlyEntriesStayWhileActive: where the program counts in the rows
// only, a cache entry still caches its socket's row, and stays held while
// the socket is active: its misses word counts the samples, so user space
// does not see it idle.
// (User space used to see every such entry idle, its sum and counts being
// always 0, and mark it at every read: the socket then resolved its series
// through the index on every segment until the entry was freed.)
func TestRowOnlyEntriesStayWhileActive(t *testing.T) {
	tr := openRowOnly(t)
	c := tcptest.Dial(t, lifeOther, lifeClient)
	for read := range 4 {
		c.RoundTrips(t, 5)
		got := seriesOf(readSnap(t, tr), lifeOther)
		want := uint64(c.ClientInfo(t).Segs_in) - 1
		if len(got) != 1 || got[0].Total != want {
			t.Fatalf("read %d: %+v, want one series of %d samples (TCP_INFO)", read, got, want)
		}
		// The socket's segments may have moved to another CPU's entry
		// meanwhile (that one then holds it, and the old one is rightly
		// idle): at least one entry holds it unmarked.
		es := cacheEntriesHolding(tr, got[0].Slot)
		if len(es) == 0 {
			t.Fatalf("read %d: no cache entry holds the active socket's row", read)
		}
		unmarked := 0
		for _, e := range es {
			v := atomic.LoadUint32(tr.entrySlot(e))
			if v&kmaps.CacheSlotDrain == 0 {
				unmarked++
			}
		}
		if unmarked == 0 {
			t.Fatalf("read %d: every entry holding the active socket (%v) was marked idle", read, es)
		}
	}
}

func openRowOnly(t *testing.T) *Tracer {
	t.Helper()
	tr, _ := openLifecycle(t, 8, 0, netip.PrefixFrom(lifeOther, 32))
	spec := tr.spec
	tr.Close()
	spec.RowCountsOnly = true
	tr, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}
