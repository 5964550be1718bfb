//go:build linux

package loader

import (
	"sync/atomic"
	"unsafe"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Views of the mmapped arrays for tests that look at, or inject into, the
// program's state (the reader has its own; these stay out of production).

func (t *Tracer) word(slot, w uint32) *uint64 {
	i := uint64(slot)*uint64(t.layout.Stride()) + uint64(w)
	return (*uint64)(unsafe.Pointer(&t.counts[8*i]))
}

func (t *Tracer) storeWord(slot, w uint32, v uint64) { atomic.StoreUint64(t.word(slot, w), v) }

func (t *Tracer) sumWord(cpu int, slot uint32) *uint64 {
	i := uint64(cpu)*uint64(t.layout.SumStride()) + uint64(slot)
	return (*uint64)(unsafe.Pointer(&t.sums[8*i]))
}

// entryWord is the u32 at offset off of cache entry e.
func (t *Tracer) entryWord(e, off int) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.cache[e*kmaps.CacheEntryBytes+off]))
}

func (t *Tracer) entryBase(e int) *uint32 { return t.entryWord(e, kmaps.CacheBaseOffset) }
func (t *Tracer) entrySlot(e int) *uint32 { return t.entryWord(e, kmaps.CacheSlotOffset) }
func (t *Tracer) entrySeq(e int) *uint32  { return t.entryWord(e, kmaps.CacheSeqOffset) }

// holders are the cache entries that held slot at the last read.
func (t *Tracer) holders(slot uint32) []uint32 { return t.reader.Holders(slot) }
