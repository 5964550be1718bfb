package reader

import (
	"context"
	"iter"
	"testing"
	"time"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// TestReadEndsWhileAMoveIsPreempted: a run preempted in the middle of
// moving its entry's window (seq odd) for several reads does not keep
// Read from ending, with or without a deadline; each such read reports
// at least what the previous one did and no more than was counted; once
// the run goes on, the next read is exact.
func TestReadEndsWhileAMoveIsPreempted(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	layout := kmaps.Layout{NumBuckets: table.NumBuckets, MaxSeries: 4}
	p := newProgram(layout, table, 1, 1, true)
	p.shuffle = func(int, func(i, j int)) {}
	r := New(Config{Layout: layout, EntryCounts: true}, p.mem, p)
	sk := &socket{id: 1, key: kmaps.Key{Family: 4, RemotePort: 9}}
	runAll := func(raw uint32) {
		next, stop := iter.Pull(p.run(sk, raw))
		defer stop()
		for _, ok := next(); ok; _, ok = next() {
		}
	}
	for range 20 {
		runAll(800) // in the entry's window
	}
	read := func(ctx context.Context) kmaps.Series {
		t.Helper()
		var snap kmaps.Snapshot
		var rows []uint64
		if err := r.Read(ctx, &snap, &rows); err != nil {
			t.Fatal(err)
		}
		if len(snap.Series) != 1 {
			t.Fatalf("want one series, got %+v", snap.Series)
		}
		s := snap.Series[0]
		s.Buckets = append([]uint64(nil), s.Buckets...)
		return s
	}
	prev := read(context.Background())
	if prev.Total != 20 {
		t.Fatalf("first read: %d samples, want 20", prev.Total)
	}
	// Samples far from the window: the fourth moves the window, and the
	// run stops half-way through the move (seq odd).
	for range 3 {
		runAll(8000)
	}
	next, stop := iter.Pull(p.run(sk, 8000))
	defer stop()
	next() // seq odd, the first count moved
	next()
	if seq := p.mem.entrySeq(0); *seq&1 == 0 {
		t.Fatalf("the move is not in progress (seq %d)", *seq)
	}
	expired, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	cancel()
	for i, ctx := range []context.Context{context.Background(), expired, context.Background()} {
		got := read(ctx) // ends: no retry without bound
		if got.Total < prev.Total || got.Sum < prev.Sum {
			t.Fatalf("read %d during the move: %d samples, sum %d, below the previous %d, %d", i, got.Total, got.Sum, prev.Total, prev.Sum)
		}
		if got.Total > 23 {
			t.Fatalf("read %d during the move: %d samples, more than the 23 counted", i, got.Total)
		}
		prev = got
	}
	if r.Stats().Inexact == 0 {
		t.Error("no reading was reported inexact")
	}
	for _, ok := next(); ok; _, ok = next() {
	}
	if got := read(context.Background()); got.Total != 24 || got.Sum != 20*800+4*8000 {
		t.Fatalf("after the move: %d samples of sum %d, want 24 of %d", got.Total, got.Sum, 20*800+4*8000)
	}
}
