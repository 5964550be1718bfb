//go:build linux

package loader

import (
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// The per-CPU socket cache (sk_cache, mmapped) holds, per entry, the
// counts and sum of one socket's samples in a window of row words. The
// program only adds to an entry it holds and takes only free ones; user
// space hands entries back:
//
//	held ──idle a read, or its row retired/overflowed──▶ marked (slot|drain)
//	     ──next read: counts moved into the row──▶ free
//
// A sample counted in an entry belongs to its row from the start: every
// read adds the counts of the entries that hold a row (marked ones too) to
// the row's own. Counts move, entry to row, in two ways only: by the
// program when it moves an entry's window, with the entry's sequence word
// odd meanwhile (stable reads the row and its entries again if a word
// changed), and by user space at the start of a read, at least one read
// after the entry was marked, when no program that saw it held can still
// be adding to it. So a read never counts a sample twice, and a later read
// never counts fewer.

// cacheState is what user space keeps of the socket cache between reads.
type cacheState struct {
	seq       uint32     // reads so far
	markedAt  []uint32   // by entry: the read that marked it to drain, 0 if none
	lastCheck []uint64   // by entry: sum plus counts at the last read, to see it idle
	holders   [][]uint32 // by slot: the entries holding it at this read's scan
	seqs      []uint32   // scratch of stable
}

func (t *Tracer) entries() int { return len(t.cache) / kmaps.CacheEntryBytes }

func (t *Tracer) entrySlot(e int) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.cache[e*kmaps.CacheEntryBytes+kmaps.CacheSlotOffset]))
}

func (t *Tracer) entryBase(e int) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.cache[e*kmaps.CacheEntryBytes+kmaps.CacheBaseOffset]))
}

func (t *Tracer) entrySum(e int) *uint64 {
	return (*uint64)(unsafe.Pointer(&t.cache[e*kmaps.CacheEntryBytes+kmaps.CacheSumOffset]))
}

func (t *Tracer) entrySeq(e int) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.cache[e*kmaps.CacheEntryBytes+kmaps.CacheSeqOffset]))
}

func (t *Tracer) entryCount(e, i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.cache[e*kmaps.CacheEntryBytes+kmaps.CacheCountOffset+4*i]))
}

// initCache frees every entry, before the program is attached.
func (t *Tracer) initCache() {
	n := t.entries()
	t.cs = cacheState{
		markedAt:  make([]uint32, n),
		lastCheck: make([]uint64, n),
		holders:   make([][]uint32, t.layout.Rows()),
	}
	for e := range n {
		atomic.StoreUint32(t.entrySlot(e), kmaps.CacheSlotFree)
	}
}

// scanCache starts a read: it moves the counts of entries marked at an
// earlier read into their rows and frees the entries, and notes which
// entries hold each row now.
func (t *Tracer) scanCache() {
	cs := &t.cs
	cs.seq++
	for slot := range cs.holders {
		cs.holders[slot] = cs.holders[slot][:0]
	}
	rows := t.layout.Rows()
	for e := range t.entries() {
		v := atomic.LoadUint32(t.entrySlot(e))
		if v == kmaps.CacheSlotFree || v == kmaps.CacheSlotFiltered {
			continue
		}
		slot := v &^ kmaps.CacheSlotDrain
		if slot >= rows {
			continue // not written by the program: never counted in
		}
		if v&kmaps.CacheSlotDrain != 0 {
			if cs.markedAt[e] == 0 {
				cs.markedAt[e] = cs.seq // marked by nobody we know of: wait a read
			} else if cs.markedAt[e] < cs.seq {
				t.drain(e, slot)
				continue
			}
		}
		cs.holders[slot] = append(cs.holders[slot], uint32(e))
	}
}

// drain moves entry e's counts and sum into slot's row and frees it.
func (t *Tracer) drain(e int, slot uint32) {
	base := atomic.LoadUint32(t.entryBase(e))
	for i := range kmaps.CacheWindow {
		p := t.entryCount(e, i)
		if c := atomic.LoadUint32(p); c > 0 {
			if w := base + uint32(i); w < t.layout.Stride() {
				atomic.AddUint64(t.word(slot, w), uint64(c))
			}
			atomic.StoreUint32(p, 0)
		}
	}
	t.sumCarry[slot] += atomic.SwapUint64(t.entrySum(e), 0)
	t.cs.markedAt[e], t.cs.lastCheck[e] = 0, 0
	atomic.StoreUint32(t.entrySlot(e), kmaps.CacheSlotFree)
}

// stable runs read, which reads slot's row or sums and the entries that
// hold it, until no entry moved its counts to the row meanwhile (the
// program makes an entry's seq odd while it does): so a count is read
// once, in the entry or in the row.
func (t *Tracer) stable(slot uint32, read func()) {
	holders := t.cs.holders[slot]
	for {
		seqs, moving := t.cs.seqs[:0], false
		for _, e := range holders {
			s := atomic.LoadUint32(t.entrySeq(int(e)))
			moving = moving || s&1 != 0
			seqs = append(seqs, s)
		}
		t.cs.seqs = seqs
		if moving {
			runtime.Gosched()
			continue
		}
		read()
		same := true
		for k, e := range holders {
			same = same && atomic.LoadUint32(t.entrySeq(int(e))) == seqs[k]
		}
		if same {
			return
		}
	}
}

// addHeldCounts adds the window counts of the entries holding slot to
// row, a copy of slot's row.
func (t *Tracer) addHeldCounts(slot uint32, row []uint64) {
	for _, e := range t.cs.holders[slot] {
		base := atomic.LoadUint32(t.entryBase(int(e)))
		for i := range kmaps.CacheWindow {
			if w := int(base) + i; w < len(row) {
				row[w] += uint64(atomic.LoadUint32(t.entryCount(int(e), i)))
			}
		}
	}
}

// heldSum is the sum of the samples counted in the entries holding slot.
func (t *Tracer) heldSum(slot uint32) uint64 {
	var sum uint64
	for _, e := range t.cs.holders[slot] {
		sum += atomic.LoadUint64(t.entrySum(int(e)))
	}
	return sum
}

// markHolders marks the entries that held slot at this read's scan to
// drain, and reports whether there were any.
func (t *Tracer) markHolders(slot uint32) bool {
	held := false
	for _, e := range t.cs.holders[slot] {
		if t.mark(int(e), slot) {
			held = true
		}
	}
	return held
}

// mark marks entry e, if it still holds slot unmarked, to drain.
func (t *Tracer) mark(e int, slot uint32) bool {
	if !atomic.CompareAndSwapUint32(t.entrySlot(e), slot, slot|kmaps.CacheSlotDrain) {
		return false
	}
	t.cs.markedAt[e] = t.cs.seq
	return true
}

// markIdle ends a read: entries that counted nothing since the previous
// read are marked to drain, so that entries of closed sockets come back
// (and a socket whose RTT left its window takes a new one).
func (t *Tracer) markIdle() {
	for slot, es := range t.cs.holders {
		for _, e := range es {
			check := atomic.LoadUint64(t.entrySum(int(e)))
			for i := range kmaps.CacheWindow {
				check += uint64(atomic.LoadUint32(t.entryCount(int(e), i)))
			}
			if check == t.cs.lastCheck[e] {
				t.mark(int(e), uint32(slot))
			}
			t.cs.lastCheck[e] = check
		}
	}
}
