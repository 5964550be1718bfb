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

// Invalidate bumps the row's generation: a socket whose cached reference
// has the old one resolves its series again on its next segment.
func (r kernelRows) Invalidate(slot, generation uint32) error {
	r.t.storeWord(slot, kmaps.RowGeneration, uint64(generation+1))
	return nil
}

func (r kernelRows) ReadRow(slot uint32, s *kmaps.Series) error {
	t := r.t
	t.loadRow(slot, t.scratch)
	if err := kmaps.DecodeRow(t.scratch, t.layout, s); err != nil {
		return err
	}
	if t.slotSums == nil {
		t.allocSums()
	}
	if err := t.lookupSum(slot); err != nil {
		return err
	}
	s.Sum = t.slotSums[slot] + t.sumCarry[slot]
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
	if err := t.sums.Put(slot, make([]uint64, t.ncpu)); err != nil {
		return fmt.Errorf("clear sum: %w", err)
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

// ReresolveOverflow bumps the overflow row's generation: sockets cached
// there see a reference that no longer matches and look for a row.
func (r kernelRows) ReresolveOverflow() error {
	atomic.AddUint64(r.t.word(r.t.layout.OverflowSlot(), kmaps.RowGeneration), 1)
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
