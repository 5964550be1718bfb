package reader

import (
	"sync/atomic"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// cacheState is what user space keeps of the socket cache between reads
// (see the package doc for the entry's states).
type cacheState struct {
	seq       uint32     // reads so far
	markedAt  []uint32   // by entry: the read that marked it to drain, 0 if none
	lastCheck []uint64   // by entry: sum plus counts at the last read, to see it idle
	holders   [][]uint32 // by slot: the entries holding it at this read's scan
}

// initCache frees every entry, before the program is attached.
func (r *Reader) initCache() {
	n := r.mem.entries()
	r.cs = cacheState{
		markedAt:  make([]uint32, n),
		lastCheck: make([]uint64, n),
		holders:   make([][]uint32, r.layout.Rows()),
	}
	for e := range n {
		atomic.StoreUint32(r.mem.entrySlot(e), kmaps.CacheSlotFree)
	}
}

// scanCache starts a read: it moves the counts of entries marked at an
// earlier read into their rows and frees the entries, and notes which
// entries hold each row now. The program publishes an entry's slot word
// after a full barrier when it takes the entry (bpf/entry.h, take), and
// the load here is an acquire: an entry seen holding a row is seen with
// its base and counts.
func (r *Reader) scanCache() {
	cs := &r.cs
	cs.seq++
	for slot := range cs.holders {
		cs.holders[slot] = cs.holders[slot][:0]
	}
	rows := r.layout.Rows()
	for e := range r.mem.entries() {
		v := atomic.LoadUint32(r.mem.entrySlot(e))
		slot := v &^ kmaps.CacheSlotDrain
		if v == kmaps.CacheSlotFree || v == kmaps.CacheSlotFiltered || slot >= rows {
			continue // holds no row (a slot >= rows was not written by the program)
		}
		if v&kmaps.CacheSlotDrain != 0 {
			if cs.markedAt[e] == 0 {
				cs.markedAt[e] = cs.seq // marked by nobody we know of: wait a read
			} else if cs.markedAt[e] < cs.seq && atomic.LoadUint32(r.mem.entrySeq(e))&1 == 0 {
				r.drain(e, slot)
				continue
			} // else a run preempted while moving the window still writes it: a later read

		}
		cs.holders[slot] = append(cs.holders[slot], uint32(e))
	}
}

// drain moves entry e's counts and sum into slot's row and frees it. No
// program adds to it any more: it was marked at an earlier read.
func (r *Reader) drain(e int, slot uint32) {
	m := &r.mem
	base := atomic.LoadUint32(m.entryBase(e))
	for i := range kmaps.CacheWindow {
		p := m.entryCount(e, i)
		if c := atomic.LoadUint32(p); c > 0 {
			if w := base + uint32(i); w < r.layout.Stride() {
				atomic.AddUint64(m.word(r.layout, slot, w), uint64(c))
			} else {
				r.dropped += uint64(c) // never written by the program: reported as errors
			}
			atomic.StoreUint32(p, 0)
		}
	}
	r.sumCarry[slot] += atomic.SwapUint64(m.entrySum(e), 0)
	r.cs.markedAt[e], r.cs.lastCheck[e] = 0, 0
	atomic.StoreUint32(m.entrySlot(e), kmaps.CacheSlotFree)
}

// entryReading is one entry's counts, read without a lock.
type entryReading struct {
	base   uint32
	counts [kmaps.CacheWindow]uint32
	sum    uint64
}

func (r *Reader) readEntry(e int, into *entryReading) {
	m := &r.mem
	into.base = atomic.LoadUint32(m.entryBase(e))
	for i := range kmaps.CacheWindow {
		into.counts[i] = atomic.LoadUint32(m.entryCount(e, i))
	}
	into.sum = atomic.LoadUint64(m.entrySum(e))
}

// readRow copies slot's row into row and returns the row's sum: the row's
// own words and sums, plus the counts of the entries holding it. It is
// exact when no holder moved its counts to the row meanwhile (the program
// makes an entry's seq odd while it does). It tries again a few times if
// one did; then, or once ctx is done, it keeps a lower bound instead: the
// holders that moved are left out (what they counted is read at a later
// read), and the result is raised to the previous reading of the row, so
// a read never reports fewer samples than the one before, and never
// counts a sample twice. It reports whether the reading is exact.
func (r *Reader) readRow(done func() bool, slot uint32, row []uint64) (uint64, bool) {
	holders := r.cs.holders[slot]
	var sum uint64
	for try := 1; ; try++ {
		seqs := r.seqs[:0]
		for _, e := range holders {
			seqs = append(seqs, atomic.LoadUint32(r.mem.entrySeq(int(e))))
		}
		r.seqs = seqs
		r.yield(PointRowRead)
		for w := range row {
			row[w] = atomic.LoadUint64(r.mem.word(r.layout, slot, uint32(w)))
		}
		sum = r.sumCarry[slot] + r.mem.rowSum(r.layout, slot)
		exact := true
		var er entryReading
		for k, e := range holders {
			r.readEntry(int(e), &er)
			r.yield(PointEntryRead)
			if seqs[k]&1 != 0 || atomic.LoadUint32(r.mem.entrySeq(int(e))) != seqs[k] {
				exact = false // moving, or moved since the row was read: leave it out
				continue
			}
			for i, c := range er.counts {
				if w := int(er.base) + i; w < len(row) {
					row[w] += uint64(c)
				}
			}
			sum += er.sum
		}
		if exact {
			return sum, true
		}
		if try >= r.maxTries || done() {
			break
		}
		r.retries++
	}
	r.inexact++
	return r.raiseToLast(slot, row, sum), false
}

// markHolders marks the entries holding slot to drain, and reports
// whether there were any.
func (r *Reader) markHolders(slot uint32) bool {
	held := false
	for _, e := range r.cs.holders[slot] {
		if r.mark(int(e), slot) {
			held = true
		}
	}
	return held
}

// Holders returns the cache entries that held slot at the last read's
// scan (for tests and diagnostics).
func (r *Reader) Holders(slot uint32) []uint32 { return r.cs.holders[slot] }

// mark marks entry e, if it still holds slot unmarked, to drain.
func (r *Reader) mark(e int, slot uint32) bool {
	if !atomic.CompareAndSwapUint32(r.mem.entrySlot(e), slot, slot|kmaps.CacheSlotDrain) {
		return false
	}
	r.cs.markedAt[e] = r.cs.seq
	return true
}

// markIdle ends a read: holders that counted nothing since the previous
// read are marked to drain, so that entries of closed sockets come back
// (and a socket whose RTT left its window takes a new one). Where the
// program counts in the rows only, the entry's misses word counts its
// socket's samples instead, so idleness is seen the same way.
func (r *Reader) markIdle() {
	for slot, es := range r.cs.holders {
		for _, e := range es {
			var er entryReading
			r.readEntry(int(e), &er)
			check := er.sum + uint64(atomic.LoadUint32(r.mem.entryActivity(int(e))))
			for _, c := range er.counts {
				check += uint64(c)
			}
			if check == r.cs.lastCheck[e] {
				r.mark(int(e), uint32(slot))
			}
			r.cs.lastCheck[e] = check
		}
	}
}
