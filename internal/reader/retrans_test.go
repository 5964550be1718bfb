package reader

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// retransmit is the retransmit program in the model: it resolves the
// socket's series as record does and adds segs to the row's retrans word.
func (p *program) retransmit(key kmaps.Key, segs uint64) {
	slot := p.resolve(key)
	if slot == kmaps.CacheSlotFiltered {
		return
	}
	atomic.AddUint64(p.mem.retransWord(slot), segs)
}

// TestRetransmitsThroughTheLifecycle: a series that only retransmits is
// read with its count; retransmitting keeps it from expiring; once idle
// it is retired, and retransmits that land in its row after that move to
// the key's new row, so the key's count over both rows is exact; a
// released row starts again from 0.
func TestRetransmitsThroughTheLifecycle(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	layout := kmaps.Layout{NumBuckets: table.NumBuckets, MaxSeries: 4}
	p := newProgram(layout, table, 1, 1, true)
	p.shuffle = func(int, func(i, j int)) {}
	now := time.Unix(1000, 0)
	r := New(Config{Layout: layout, EntryCounts: true, IdleTimeout: time.Minute, Now: func() time.Time { return now }}, p.mem, p)
	key := kmaps.Key{Family: 4, RemotePort: 9}
	read := func() map[uint32]kmaps.Series {
		t.Helper()
		var snap kmaps.Snapshot
		var rows []uint64
		if err := r.Read(context.Background(), &snap, &rows); err != nil {
			t.Fatal(err)
		}
		out := map[uint32]kmaps.Series{}
		for _, s := range snap.Series {
			out[s.Slot] = s
		}
		return out
	}

	p.retransmit(key, 3)
	got := read()
	slot := p.index[key]
	if s, ok := got[slot]; !ok || s.Retransmits != 3 || s.Total != 0 {
		t.Fatalf("a series that only retransmits: %+v", got)
	}
	for i := range 3 {
		now = now.Add(50 * time.Second)
		p.retransmit(key, 2)
		if s := read()[slot]; s.Retransmits != uint64(5+2*i) {
			t.Fatalf("read %d: %d retransmits, want %d", i, s.Retransmits, 5+2*i)
		}
		if _, ok := p.index[key]; !ok {
			t.Fatalf("read %d: a retransmitting series was retired", i)
		}
	}
	now = now.Add(61 * time.Second)
	read() // idle for the timeout: retired
	if _, ok := p.index[key]; ok {
		t.Fatal("an idle series was not retired")
	}
	// A run that resolved the old row before it was retired adds late;
	// the key's next socket takes a new row.
	atomic.AddUint64(p.mem.retransWord(slot), 4)
	p.retransmit(key, 1)
	newSlot := p.index[key]
	if newSlot == slot {
		t.Fatal("the key took its old row again before it was released")
	}
	got = read()
	if s, ok := got[newSlot]; !ok || s.Retransmits != 5 {
		t.Fatalf("the late retransmits did not join the key's new row: %+v", got)
	}
	if _, ok := got[slot]; ok {
		t.Fatalf("the retired row reported again: %+v", got)
	}
	if v := atomic.LoadUint64(p.mem.retransWord(slot)); v != 0 {
		t.Fatalf("the released row kept %d retransmits", v)
	}
}
