package reader

import (
	"sync/atomic"
	"unsafe"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Memory is the state the program and user space share without system
// calls: the three arrays the loader mmaps (tests give byte slices laid
// out the same way). Every word is read and written with atomics, since
// the program writes them concurrently.
type Memory struct {
	Counts []byte // counts: one row of u64 words per slot (kmaps.Layout)
	Sums   []byte // cpu_sums: per CPU, one u64 per slot (Layout.SumStride apart)
	Cache  []byte // sk_cache: kmaps.CacheEntryBytes per entry, every CPU's in turn
	// Retrans is the retrans array: one u64 per slot, the segments the
	// retransmit program counted for the row (nil: no retransmit program).
	Retrans []byte
	CPUs    int // CPUs the sums are kept for
}

// words views an array of u64 values as a slice. The arrays are page
// aligned when mmapped; tests allocate them as []uint64.
func words(b []byte) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
}

func (m *Memory) entries() int { return len(m.Cache) / kmaps.CacheEntryBytes }

func (m *Memory) u32(e, off int) *uint32 {
	return (*uint32)(unsafe.Pointer(&m.Cache[e*kmaps.CacheEntryBytes+off]))
}

func (m *Memory) entrySlot(e int) *uint32     { return m.u32(e, kmaps.CacheSlotOffset) }
func (m *Memory) entryBase(e int) *uint32     { return m.u32(e, kmaps.CacheBaseOffset) }
func (m *Memory) entrySeq(e int) *uint32      { return m.u32(e, kmaps.CacheSeqOffset) }
func (m *Memory) entryCount(e, i int) *uint32 { return m.u32(e, kmaps.CacheCountOffset+4*i) }

func (m *Memory) entrySum(e int) *uint64 {
	return (*uint64)(unsafe.Pointer(&m.Cache[e*kmaps.CacheEntryBytes+kmaps.CacheSumOffset]))
}

// word is word w of slot's row.
func (m *Memory) word(l kmaps.Layout, slot, w uint32) *uint64 {
	return &words(m.Counts)[uint64(slot)*uint64(l.Stride())+uint64(w)]
}

// sumWord is CPU cpu's sum of slot.
func (m *Memory) sumWord(l kmaps.Layout, cpu int, slot uint32) *uint64 {
	return &words(m.Sums)[uint64(cpu)*uint64(l.SumStride())+uint64(slot)]
}

// rowSum is the sum of slot over every CPU's sums.
func (m *Memory) rowSum(l kmaps.Layout, slot uint32) uint64 {
	var sum uint64
	for cpu := range m.CPUs {
		sum += atomic.LoadUint64(m.sumWord(l, cpu, slot))
	}
	return sum
}

// entryActivity is the entry's family and misses words as one u32: where
// the program counts in the rows only, misses counts its samples.
func (m *Memory) entryActivity(e int) *uint32 { return m.u32(e, kmaps.CacheFamilyOffset) }

// retransWord is slot's retransmit count, nil without a retrans array.
func (m *Memory) retransWord(slot uint32) *uint64 {
	w := words(m.Retrans)
	if uint64(slot) >= uint64(len(w)) {
		return nil
	}
	return &w[slot]
}

// retransmits reads slot's retransmit count (0 without a retrans array).
func (m *Memory) retransmits(slot uint32) uint64 {
	if w := m.retransWord(slot); w != nil {
		return atomic.LoadUint64(w)
	}
	return 0
}
