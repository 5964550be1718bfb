//go:build linux

package loader

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// kernelRows gives the series lifecycle (internal/lifecycle) the map
// calls it needs; the decisions are the lifecycle's.
type kernelRows struct{ t *Tracer }

func (r kernelRows) Unindex(key kmaps.Key) error {
	if err := r.t.index.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete series key: %w", err)
	}
	return nil
}

// Invalidate gives the row a new generation (the converter's identity of
// a run) and marks the cache entries holding it to drain: their sockets
// resolve their series again on their next segment, through the index
// that no longer has the key, and the entries' counts move into the row
// at the next read.
func (r kernelRows) Invalidate(slot, generation uint32) (bool, error) {
	r.t.storeWord(slot, kmaps.RowGeneration, uint64(generation+1))
	return r.t.markHolders(slot), nil
}

func (r kernelRows) ReadRow(slot uint32, s *kmaps.Series) error {
	t := r.t
	t.loadRow(slot, t.scratch)
	if err := kmaps.DecodeRow(t.scratch, t.layout, s); err != nil {
		return err
	}
	s.Sum = t.slotSum(slot)
	return nil
}

// AddToRow adds d's counts to the row with atomic adds (the program only
// adds too, so nothing is lost); the sum, kept per CPU and added to
// without atomics by the program, gets a carry added at every read.
func (r kernelRows) AddToRow(slot uint32, d *kmaps.Series) error {
	t := r.t
	if d.Zero > 0 {
		atomic.AddUint64(t.word(slot, kmaps.RowZero), d.Zero)
	}
	for i, c := range d.Buckets {
		if c > 0 {
			atomic.AddUint64(t.word(slot, kmaps.RowBuckets+uint32(d.Offset+i)), c)
		}
	}
	t.sumCarry[slot] += d.Sum
	return nil
}

func (r kernelRows) ClearRow(slot uint32) error {
	t := r.t
	for w := uint32(kmaps.RowZero); w < t.layout.Stride(); w++ {
		t.storeWord(slot, w, 0)
	}
	for cpu := range t.ncpu {
		atomic.StoreUint64(t.sumWord(cpu, slot), 0)
	}
	t.sumCarry[slot] = 0
	return nil
}

func (r kernelRows) Release(slot uint32) error {
	if err := r.t.free.Update(nil, slot, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("push free slot: %w", err)
	}
	return nil
}

// HasFreeRow peeks at the free queue.
func (r kernelRows) HasFreeRow() (bool, error) {
	var slot uint32
	err := r.t.free.Lookup(nil, &slot)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

// ReresolveOverflow marks the cache entries holding the overflow row to
// drain: their sockets resolve again, and pop a free row if there is one.
func (r kernelRows) ReresolveOverflow() error {
	r.t.markHolders(r.t.layout.OverflowSlot())
	return nil
}

// liveSlot returns the row key has in the index read by this Read.
func (t *Tracer) liveSlot(key kmaps.Key) (uint32, bool) {
	if t.live == nil {
		t.live = make(map[kmaps.Key]uint32, len(t.keys))
		for i, k := range t.keys {
			t.live[k] = t.refs[i].Slot
		}
	}
	slot, ok := t.live[key]
	return slot, ok
}
