package reader

import (
	"iter"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// A model of the program (bpf/tcprtt.bpf.c, record and bpf/entry.h) over
// the same memory the Reader reads, for the schedule harness. Each run is
// a coroutine that stops at every point where another CPU or a read can
// see its writes in between, so a schedule can interleave runs of
// different CPUs and a read at any of them. It keeps the truth: which
// samples it counted into which key's row, or the overflow row.

// Offsets of the entry's identity words (the program compares the
// socket's address and port words; the model uses one id word).
const (
	entryIDOffset     = 0
	entryMissesOffset = 14
)

// socket is one TCP socket of the model.
type socket struct {
	id  uint64 // stands for its address and port words (never 0)
	key kmaps.Key
	cpu int // the CPU its segments arrive on; a schedule may move it
}

// truth is what the program counted, by key (and in overflow).
type truth struct {
	zero    uint64
	buckets map[int]uint64 // by position
	sum     uint64
}

func (t *truth) add(pos int, raw uint32) {
	if t.buckets == nil {
		t.buckets = map[int]uint64{}
	}
	if raw == 0 {
		t.zero++
	} else {
		t.buckets[pos]++
	}
	t.sum += uint64(raw)
}

// program is the model of the loaded program and of the maps it shares
// with user space that are not mmapped (the index, the free queue and the
// stats), with Maps for the Reader on top of them.
type program struct {
	layout      kmaps.Layout
	table       *bucket.Table
	mem         Memory
	perCPU      int  // cache entries per CPU (a power of two)
	entryCounts bool // count in the entries (else the rows only)
	filtered    func(kmaps.Key) bool

	index    map[kmaps.Key]uint32
	free     []uint32 // a BPF queue: FIFO
	stats    kmaps.Stats
	truth    map[kmaps.Key]*truth
	overflow truth
	runs     uint64

	failDelete int                              // DeleteKey calls left to fail
	shuffle    func(n int, swap func(i, j int)) // the order the index is read in
}

func newProgram(layout kmaps.Layout, table *bucket.Table, cpus, perCPU int, entryCounts bool) *program {
	p := &program{
		layout: layout, table: table, perCPU: perCPU, entryCounts: entryCounts,
		index: map[kmaps.Key]uint32{}, truth: map[kmaps.Key]*truth{},
		filtered: func(kmaps.Key) bool { return false },
	}
	alloc := func(n uint64) []byte {
		w := make([]uint64, (n+7)/8)
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(w))), len(w)*8)
	}
	p.mem = Memory{
		Counts: alloc(layout.CountBytes()),
		Sums:   alloc(layout.SumBytes(cpus)),
		Cache:  alloc(uint64(cpus * perCPU * kmaps.CacheEntryBytes)),
		CPUs:   cpus,
		// Retrans: one u64 per row, as the loader sizes it.
		Retrans: alloc(uint64(layout.Rows()) * 8),
	}
	for slot := range layout.MaxSeries {
		p.free = append(p.free, slot)
	}
	return p
}

func (p *program) u64(e, off int) *uint64 {
	return (*uint64)(unsafe.Pointer(&p.mem.Cache[e*kmaps.CacheEntryBytes+off]))
}

func (p *program) u16(e, off int) *uint16 {
	return (*uint16)(unsafe.Pointer(&p.mem.Cache[e*kmaps.CacheEntryBytes+off]))
}

// rowWordOf is row_word_of: the row word a sample of raw is counted in.
func (p *program) rowWordOf(raw uint32) uint32 {
	if raw == 0 {
		return kmaps.RowZero
	}
	return kmaps.RowBuckets + p.table.Position(raw)
}

func windowBase(word uint32) uint32 {
	if word > kmaps.RowZero+kmaps.CacheWindow/2 {
		return word - kmaps.CacheWindow/2
	}
	return kmaps.RowZero
}

// credit records in the truth that a sample of key was counted in slot.
func (p *program) credit(key kmaps.Key, slot uint32, raw uint32) {
	pos := int(p.table.Position(max(raw, 1)))
	if slot == p.layout.OverflowSlot() {
		p.overflow.add(pos, raw)
		return
	}
	t := p.truth[key]
	if t == nil {
		t = &truth{}
		p.truth[key] = t
	}
	t.add(pos, raw)
}

// countInRow is count_in_row: the bucket (atomic), then this CPU's sum.
func (p *program) countInRow(slot, raw uint32, cpu int) {
	atomic.AddUint64(p.mem.word(p.layout, slot, p.rowWordOf(raw)), 1)
	atomic.AddUint64(p.mem.sumWord(p.layout, cpu, slot), uint64(raw))
}

// resolve is resolve/lookup_series: filtered, the key's row, a free row,
// or the overflow row.
func (p *program) resolve(key kmaps.Key) uint32 {
	if p.filtered(key) {
		return kmaps.CacheSlotFiltered
	}
	if slot, ok := p.index[key]; ok {
		return slot
	}
	if len(p.free) == 0 {
		return p.layout.OverflowSlot()
	}
	slot := p.free[0]
	p.free = p.free[1:]
	p.index[key] = slot
	return slot
}

// run returns the coroutine of one segment of s with srtt raw: record.
func (p *program) run(s *socket, raw uint32) iter.Seq[struct{}] {
	return func(yield func(struct{}) bool) {
		p.runs++
		m := &p.mem
		e := s.cpu*p.perCPU + int(s.id)&(p.perCPU-1)
		slot := atomic.LoadUint32(m.entrySlot(e))
		holds := slot != kmaps.CacheSlotFree && atomic.LoadUint64(p.u64(e, entryIDOffset)) == s.id
		if holds && slot < kmaps.CacheSlotDrain {
			p.countHeld(e, s, slot, raw, yield)
			return
		}
		if holds && slot == kmaps.CacheSlotFiltered {
			p.stats.Filtered++
			return
		}
		if slot == kmaps.CacheSlotFree || slot == kmaps.CacheSlotFiltered {
			slot = p.resolve(s.key)
			if !yield(struct{}{}) {
				return
			}
			p.take(e, s, slot, raw, yield)
			if slot == kmaps.CacheSlotFiltered {
				p.stats.Filtered++
			}
			return
		}
		// Held by another socket, or this socket's entry being drained.
		slot = p.resolve(s.key)
		if slot == kmaps.CacheSlotFiltered {
			p.stats.Filtered++
			return
		}
		if !yield(struct{}{}) {
			return
		}
		p.countInRow(slot, raw, s.cpu)
		p.credit(s.key, slot, raw)
	}
}

// take is take: the entry's fields, a barrier, then its slot, then the
// sample.
func (p *program) take(e int, s *socket, slot, raw uint32, yield func(struct{}) bool) {
	m := &p.mem
	atomic.StoreUint64(p.u64(e, entryIDOffset), s.id)
	atomic.StoreUint32(m.entryBase(e), windowBase(p.rowWordOf(raw)))
	*p.u16(e, entryMissesOffset) = 0
	for i := range kmaps.CacheWindow {
		atomic.StoreUint32(m.entryCount(e, i), 0)
	}
	atomic.StoreUint64(m.entrySum(e), 0)
	if p.entryCounts {
		atomic.AddUint32(m.entrySeq(e), 2)
	}
	if !yield(struct{}{}) {
		return
	}
	atomic.StoreUint32(m.entrySlot(e), slot)
	if slot < kmaps.CacheSlotDrain {
		if !yield(struct{}{}) {
			return
		}
		p.countHeld(e, s, slot, raw, yield)
	}
}

// countHeld is count_held: in the window, or in the row (moving the
// window after REBASE_AFTER samples outside it).
func (p *program) countHeld(e int, s *socket, slot, raw uint32, yield func(struct{}) bool) {
	m := &p.mem
	word := p.rowWordOf(raw)
	if !p.entryCounts {
		*p.u16(e, entryMissesOffset)++ // counts the samples: user space sees the entry in use
		p.countInRow(slot, raw, s.cpu)
		p.credit(s.key, slot, raw)
		return
	}
	i := word - atomic.LoadUint32(m.entryBase(e))
	if i < kmaps.CacheWindow {
		atomic.AddUint32(m.entryCount(e, int(i)), 1)
		atomic.AddUint64(m.entrySum(e), uint64(raw))
		*p.u16(e, entryMissesOffset) = 0
		p.credit(s.key, slot, raw)
		return
	}
	misses := p.u16(e, entryMissesOffset)
	*misses++
	if *misses >= rebaseAfter {
		if !p.rebase(e, slot, word, s.cpu, yield) {
			return
		}
		i = word - atomic.LoadUint32(m.entryBase(e))
		if i < kmaps.CacheWindow {
			atomic.StoreUint32(m.entryCount(e, int(i)), 1)
			atomic.StoreUint64(m.entrySum(e), uint64(raw))
			p.credit(s.key, slot, raw)
			return
		}
	}
	p.countInRow(slot, raw, s.cpu)
	p.credit(s.key, slot, raw)
}

const rebaseAfter = 4 // REBASE_AFTER

// rebase is rebase: under an odd seq, the counts to the row one by one,
// the sum to this CPU's, then the window moved. It stops at every step.
func (p *program) rebase(e int, slot, word uint32, cpu int, yield func(struct{}) bool) bool {
	m := &p.mem
	base := atomic.LoadUint32(m.entryBase(e))
	atomic.AddUint32(m.entrySeq(e), 1)
	for i := range kmaps.CacheWindow {
		c := atomic.LoadUint32(m.entryCount(e, i))
		if c == 0 {
			continue
		}
		if !yield(struct{}{}) {
			return false
		}
		atomic.AddUint64(m.word(p.layout, slot, base+uint32(i)), uint64(c))
		atomic.StoreUint32(m.entryCount(e, i), 0)
	}
	if !yield(struct{}{}) {
		return false
	}
	atomic.AddUint64(m.sumWord(p.layout, cpu, slot), atomic.SwapUint64(m.entrySum(e), 0))
	atomic.StoreUint32(m.entryBase(e), windowBase(word))
	*p.u16(e, entryMissesOffset) = 0
	atomic.AddUint32(m.entrySeq(e), 1)
	return yield(struct{}{})
}

// Maps of the model, for the Reader.

// ReadIndex returns the index in an order of the schedule's choosing: the
// kernel's hash map promises none.
func (p *program) ReadIndex(keys []kmaps.Key, refs []kmaps.Ref) ([]kmaps.Key, []kmaps.Ref, error) {
	start := len(keys)
	for k := range p.index {
		keys = append(keys, k)
	}
	ks := keys[start:]
	slices.SortFunc(ks, func(a, b kmaps.Key) int { return int(a.RemotePort) - int(b.RemotePort) })
	p.shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
	for _, k := range ks {
		refs = append(refs, kmaps.Ref{Slot: p.index[k]})
	}
	return keys, refs, nil
}

func (p *program) DeleteKey(key kmaps.Key) error {
	if p.failDelete > 0 {
		p.failDelete--
		return errInjected
	}
	delete(p.index, key)
	return nil
}

func (p *program) PushFree(slot uint32) error {
	p.free = append(p.free, slot)
	return nil
}

func (p *program) HasFree() (bool, error) { return len(p.free) > 0, nil }

func (p *program) Stats() (kmaps.Stats, error) { return p.stats, nil }
