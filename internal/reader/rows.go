package reader

import (
	"sync/atomic"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// rows gives the series lifecycle (internal/lifecycle) the map calls it
// needs; the decisions are the lifecycle's.
type rows struct{ r *Reader }

func (x rows) Unindex(key kmaps.Key) error { return x.r.maps.DeleteKey(key) }

// Invalidate gives the row a new generation (the converter's identity of
// a run) and marks the cache entries holding it to drain: their sockets
// resolve their series again on their next segment, through the index
// that no longer has the key, and the entries' counts move into the row
// at the next read.
func (x rows) Invalidate(slot, generation uint32) (bool, error) {
	r := x.r
	atomic.StoreUint64(r.mem.word(r.layout, slot, kmaps.RowGeneration), uint64(generation+1))
	return r.markHolders(slot), nil
}

func (x rows) ReadRow(slot uint32, s *kmaps.Series) error {
	return x.r.readRowInto(func() bool { return false }, slot, s)
}

// AddToRow adds d's counts to the row with atomic adds (the program only
// adds too, so nothing is lost); the sum, kept per CPU and added to
// without atomics by the program, gets a carry added at every read.
func (x rows) AddToRow(slot uint32, d *kmaps.Series) error {
	r := x.r
	if d.Zero > 0 {
		atomic.AddUint64(r.mem.word(r.layout, slot, kmaps.RowZero), d.Zero)
	}
	for i, c := range d.Buckets {
		if c > 0 {
			atomic.AddUint64(r.mem.word(r.layout, slot, kmaps.RowBuckets+uint32(d.Offset+i)), c)
		}
	}
	r.sumCarry[slot] += d.Sum
	if w := r.mem.retransWord(slot); w != nil && d.Retransmits > 0 {
		atomic.AddUint64(w, d.Retransmits)
	}
	return nil
}

func (x rows) ClearRow(slot uint32) error {
	r := x.r
	for w := uint32(kmaps.RowZero); w < r.layout.Stride(); w++ {
		atomic.StoreUint64(r.mem.word(r.layout, slot, w), 0)
	}
	for cpu := range r.mem.CPUs {
		atomic.StoreUint64(r.mem.sumWord(r.layout, cpu, slot), 0)
	}
	if w := r.mem.retransWord(slot); w != nil {
		atomic.StoreUint64(w, 0)
	}
	r.sumCarry[slot] = 0
	r.last[slot] = kmaps.Series{Buckets: r.last[slot].Buckets[:0]}
	return nil
}

func (x rows) Release(slot uint32) error { return x.r.maps.PushFree(slot) }

func (x rows) HasFreeRow() (bool, error) { return x.r.maps.HasFree() }

// ReresolveOverflow marks the cache entries holding the overflow row to
// drain: their sockets resolve again, and pop a free row if there is one.
func (x rows) ReresolveOverflow() error {
	x.r.markHolders(x.r.layout.OverflowSlot())
	return nil
}
