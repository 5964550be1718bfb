//go:build linux

package loader

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Read fills snap with the current state of the maps, reusing its
// buffers (rows holds the series' bucket counts). Rows are read from the
// mmapped counts array with atomic loads, so a concurrent increment is
// never torn.
//
// Read also runs the series lifecycle (internal/lifecycle): it expires
// series idle for Spec.IdleTimeout, frees their rows one Read later
// (reporting a final point only for samples that landed after the
// retirement and had no new row of their key to go to), and sends
// sockets cached in the overflow row to a free row when there is one.
func (t *Tracer) Read(snap *kmaps.Snapshot, rows *[]uint64) error {
	if t.coll == nil {
		return errors.New("tcprtt program is closed")
	}
	now := t.now()
	t.scanCache()
	if err := t.readIndex(); err != nil {
		return err
	}
	// Each series keeps only its non-empty bucket range, packed into rows;
	// the capacity covers the worst case, so appends never move earlier
	// series' buckets.
	need := (len(t.keys) + t.machine.Retiring() + 1) * int(t.layout.NumBuckets)
	if cap(*rows) < need {
		*rows = make([]uint64, 0, need)
	}
	packed := (*rows)[:0]
	snap.Series = snap.Series[:0]

	emit := func(s *kmaps.Series) {
		final := *s
		pack(&final, &packed) // s.Buckets is the lifecycle's scratch
		snap.Series = append(snap.Series, final)
	}
	t.live = nil // built on first use, from this Read's index
	if err := t.machine.FreeRetired(t.liveSlot, emit); err != nil {
		return err
	}
	for i, ref := range t.refs {
		s := kmaps.Series{Key: t.keys[i], Slot: ref.Slot}
		if err := t.readSeries(&s, &packed); err != nil {
			return err
		}
		snap.Series = append(snap.Series, s)
		if err := t.machine.Observe(&snap.Series[len(snap.Series)-1], now); err != nil {
			return err
		}
	}
	o := kmaps.Series{Overflow: true, Slot: t.layout.OverflowSlot()}
	if err := t.readSeries(&o, &packed); err != nil {
		return err
	}
	// The overflow row is never reset: one cumulative run.
	o.Generation = 0
	if o.Total > 0 {
		snap.Series = append(snap.Series, o)
	}
	if err := t.machine.ObserveOverflow(o.Total); err != nil {
		return err
	}
	// The sums are read after the counts: the program adds to a bucket
	// first, so every counted sample is in its sum (a sample landing in
	// between may be in the sum a read early). A retired series' final
	// sum was read with its counts, before its row was cleared.
	for i := range snap.Series {
		if s := &snap.Series[i]; !s.Retired {
			s.Sum = t.slotSum(s.Slot)
		}
	}
	t.markIdle()
	var err error
	snap.Stats, err = t.readStats()
	snap.Stats.Expired = t.machine.Expired()
	return err
}

// readSeries decodes the row of s.Slot and appends its non-empty bucket
// range to packed, which s.Buckets then aliases. The row is first copied
// to a scratch row that stays in cache; only the few non-empty buckets
// are kept.
func (t *Tracer) readSeries(s *kmaps.Series, packed *[]uint64) error {
	t.loadRow(s.Slot, t.scratch)
	if err := kmaps.DecodeRow(t.scratch, t.layout, s); err != nil {
		return err
	}
	pack(s, packed)
	return nil
}

// pack appends s.Buckets to packed and makes s.Buckets alias the copy.
func pack(s *kmaps.Series, packed *[]uint64) {
	start := len(*packed)
	*packed = append(*packed, s.Buckets...)
	s.Buckets = (*packed)[start:len(*packed):len(*packed)]
}

// asWords views an mmapped array of u64 values as a slice.
func asWords(b []byte) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
}

// words is the mmapped counts array as u64 words.
func (t *Tracer) words() []uint64 { return asWords(t.counts) }

func (t *Tracer) word(slot, word uint32) *uint64 {
	return &t.words()[uint64(slot)*uint64(t.layout.Stride())+uint64(word)]
}

func (t *Tracer) storeWord(slot, word uint32, v uint64) {
	atomic.StoreUint64(t.word(slot, word), v)
}

// loadRow copies slot's row, with the counts of the cache entries that
// hold it, to row.
func (t *Tracer) loadRow(slot uint32, row []uint64) {
	start := uint64(slot) * uint64(t.layout.Stride())
	src := t.words()[start : start+uint64(len(row))]
	t.stable(slot, func() {
		for i := range row {
			row[i] = atomic.LoadUint64(&src[i])
		}
		t.addHeldCounts(slot, row)
	})
}

// sumWord is CPU cpu's sum of slot in the mmapped cpu_sums array.
func (t *Tracer) sumWord(cpu int, slot uint32) *uint64 {
	return &asWords(t.sums)[uint64(cpu)*uint64(t.layout.SumStride())+uint64(slot)]
}

// slotSum is the sum of slot over every CPU and the cache entries that
// hold it, plus what user space moved into it (drained entries, lifecycle
// AddToRow).
func (t *Tracer) slotSum(slot uint32) uint64 {
	var sum uint64
	t.stable(slot, func() {
		sum = t.sumCarry[slot] + t.heldSum(slot)
		for cpu := range t.ncpu {
			sum += atomic.LoadUint64(t.sumWord(cpu, slot))
		}
	})
	return sum
}

const indexBatch = 1024

// readIndex reads series_index into t.keys/t.refs with batched lookups.
func (t *Tracer) readIndex() error {
	t.keys, t.refs = t.keys[:0], t.refs[:0]
	if t.batchKeys == nil {
		t.batchKeys = make([]kmaps.Key, indexBatch)
		t.batchRefs = make([]kmaps.Ref, indexBatch)
	}
	keys, refs := t.batchKeys, t.batchRefs
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.index.BatchLookup(&cursor, keys, refs, nil)
		t.keys = append(t.keys, keys[:n]...)
		t.refs = append(t.refs, refs[:n]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return t.iterateIndex()
		}
		if err != nil {
			return fmt.Errorf("read series index: %w", err)
		}
	}
}

func (t *Tracer) iterateIndex() error {
	t.keys, t.refs = t.keys[:0], t.refs[:0]
	var k kmaps.Key
	var r kmaps.Ref
	it := t.index.Iterate()
	for it.Next(&k, &r) {
		t.keys = append(t.keys, k)
		t.refs = append(t.refs, r)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read series index: %w", err)
	}
	return nil
}

func (t *Tracer) readStats() (kmaps.Stats, error) {
	var s kmaps.Stats
	// Runs the kernel skipped because another program was running on the
	// CPU (a softirq interrupting the hook, say): no sample could be taken.
	// Counted on every kernel that has the field (5.12+), stats on or off.
	ps, err := t.prog.Stats()
	if err != nil {
		return s, fmt.Errorf("read program stats: %w", err)
	}
	s.Missed = ps.RecursionMisses
	var perCPU []uint64
	for i, dst := range []*uint64{&s.Filtered, &s.Errors} {
		if err := t.stats.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read stats: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return s, nil
}
