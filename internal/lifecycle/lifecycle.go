// Package lifecycle is the state machine of the tcprtt program's series
// rows, in pure Go: it notices idle series, retires them, frees their rows
// one read later, and sends sockets cached in the overflow row back to
// look for a row when one is free. It works on the kernel maps only
// through Rows, so every transition is testable without root; the loader
// implements Rows with the real map calls.
//
// A row's life:
//
//	live ──idle for IdleTimeout──▶ retired ──next read──▶ accounted ─▶ cleared ─▶ released (free)
//
// A row is idle when neither its samples nor its retransmitted segments
// changed for IdleTimeout: a series whose sockets only retransmit is
// active. Late retransmits of a retired row move like late samples.
//
// Retiring takes the series' key out of the index (a new socket with that
// key takes a new row) and invalidates the row for sockets that cached it.
// A program that picked the row before that may still count into it for a
// moment, so the row is read a last time and freed only at the next read.
// Samples that landed in between ("late" samples) are folded into the
// key's new row if it already has one — so one batch never holds two
// points with the same attributes and overlapping windows — or else
// reported once more as the retired series' final point.
//
// Each step after a failed map call is retried at the next read without
// repeating the steps already done: a row is accounted once, cleared
// before it is released, and released once.
package lifecycle

import (
	"fmt"
	"time"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Rows is what the state machine needs of the kernel maps.
type Rows interface {
	// Unindex removes key from the series index, so a new socket with
	// key takes a new row (a key already gone is not an error).
	Unindex(key kmaps.Key) error
	// Invalidate makes sockets that cached slot at generation resolve
	// their series again. held reports that some still held it: what they
	// counted reaches the row only at the next read.
	Invalidate(slot, generation uint32) (held bool, err error)
	// ReadRow reads the counts and the sum of slot into s. s.Buckets may
	// alias a buffer that is valid until the next ReadRow.
	ReadRow(slot uint32, s *kmaps.Series) error
	// AddToRow adds the counts and sum of d to the row of slot. It either
	// adds all of d or nothing.
	AddToRow(slot uint32, d *kmaps.Series) error
	// ClearRow zeroes the counts and sum of slot.
	ClearRow(slot uint32) error
	// Release hands slot back to the program's free queue.
	Release(slot uint32) error
	// HasFreeRow reports whether the free queue holds a slot.
	HasFreeRow() (bool, error)
	// ReresolveOverflow makes the sockets cached in the overflow row look
	// for a free row again.
	ReresolveOverflow() error
}

// stage is how far the freeing of a retired row got.
type stage uint8

const (
	toUnindex    stage = iota // take its key out of the index
	toInvalidate              // tell the sockets that cached it
	waiting                   // until the next read: programs may still count into it
	toAccount                 // read it a last time and account for it
	toClear                   // zero its counts and sum
	toRelease                 // hand it back to the free queue
	released
)

// retiredRow is a row taken from its series at an earlier read.
type retiredRow struct {
	key        kmaps.Key
	slot       uint32
	generation uint32       // the series' generation before invalidation
	atRetire   kmaps.Series // its counts when it was retired (own buckets)
	stage      stage
}

// activity is what the machine remembers of a live row to detect idleness.
type activity struct {
	generation uint32
	count      uint64
	retrans    uint64    // retransmitted segments: activity too
	since      time.Time // last time count or retrans changed
	retiring   bool      // a retiredRow holds the slot until it is released
}

// Machine tracks the rows of one program instance. It is not safe for
// concurrent use; the reader calls it from one goroutine.
type Machine struct {
	rows        Rows
	idleTimeout time.Duration

	activity []activity // by slot
	retired  []retiredRow

	expired          uint64 // samples of freed rows, so totals stay monotonic
	pending          uint64 // samples of rows retired at earlier reads, not yet freed
	lastOverflow     uint64 // overflow total at the previous read
	overflowGrew     bool   // since overflowed sockets were last sent looking
	pendingReresolve bool   // a release happened; overflow sockets not yet told

	final kmaps.Series // scratch: a retired row's last reading
	late  kmaps.Series // scratch: its samples since it was retired
}

// New returns a Machine for maxSeries rows; idleTimeout ≤ 0 keeps series
// forever.
func New(rows Rows, maxSeries uint32, idleTimeout time.Duration) *Machine {
	return &Machine{rows: rows, idleTimeout: idleTimeout, activity: make([]activity, maxSeries)}
}

// Expired is the number of samples of rows retired at earlier reads: of
// those freed (their final counts; late samples folded into a live row
// excepted) and of those still waiting (their counts when retired), so
// that the sum of every live series read plus Expired only grows, even
// while a retired row waits reads for its holders.
func (m *Machine) Expired() uint64 { return m.expired + m.pending }

// Retiring is the number of rows retired and not yet released.
func (m *Machine) Retiring() int { return len(m.retired) }

// IsRetiring reports whether slot's row is retired and not yet released:
// if its key is still in the index (taking it out failed), the reader
// leaves it out, since the lifecycle reports its final point.
func (m *Machine) IsRetiring(slot uint32) bool { return m.activity[slot].retiring }

// AppendPending appends the rows retired and not yet released, with the
// generation of the series they held: a converter keeps the state of
// those series, so that a final point that comes reads later continues
// their stream (same start time, deltas from their last point).
func (m *Machine) AppendPending(dst []kmaps.RowID) []kmaps.RowID {
	for i := range m.retired {
		dst = append(dst, kmaps.RowID{Slot: m.retired[i].slot, Generation: m.retired[i].generation})
	}
	return dst
}

// FreeRetired finishes freeing the rows retired at earlier reads. It runs
// at the start of a read, after the index was read: liveSlot gives the
// row a key has in the index now, if any. A retired row's final point,
// when it got late samples and its key has no live row, is passed to
// emit (Retired set, s.Buckets valid only during the call).
func (m *Machine) FreeRetired(liveSlot func(kmaps.Key) (uint32, bool), emit func(*kmaps.Series)) error {
	kept := m.retired[:0]
	var err error
	for i := range m.retired {
		r := &m.retired[i]
		if err == nil {
			if r.stage < waiting {
				err = m.retire(r) // an earlier attempt failed: finish it, free it next time
			} else {
				err = m.free(r, liveSlot, emit)
			}
		}
		if r.stage != released {
			kept = append(kept, *r)
		}
	}
	clear(m.retired[len(kept):])
	m.retired = kept
	m.pending = 0
	for i := range kept {
		m.pending += kept[i].atRetire.Total
	}
	if err != nil {
		return err
	}
	return m.reresolveIfPending()
}

// free advances r, retired at an earlier read, as far as it goes.
func (m *Machine) free(r *retiredRow, liveSlot func(kmaps.Key) (uint32, bool), emit func(*kmaps.Series)) error {
	if r.stage == waiting {
		// Once more: a program that had resolved the row just before it
		// was retired may have cached it after the first invalidation.
		// None can still be doing so now, an interval later; if one did,
		// the row waits one more read for what it counted.
		held, err := m.rows.Invalidate(r.slot, r.generation+1)
		if err != nil {
			return fmt.Errorf("expire idle series: %w", err)
		}
		if held {
			return nil
		}
		r.stage = toAccount
	}
	if r.stage == toAccount {
		if err := m.account(r, liveSlot, emit); err != nil {
			return err
		}
		r.stage = toClear
	}
	if r.stage == toClear {
		if err := m.rows.ClearRow(r.slot); err != nil {
			return fmt.Errorf("clear expired series row %d: %w", r.slot, err)
		}
		r.stage = toRelease
	}
	if err := m.rows.Release(r.slot); err != nil {
		return fmt.Errorf("free expired series row %d: %w", r.slot, err)
	}
	r.stage = released
	m.activity[r.slot] = activity{}
	m.pendingReresolve = true
	return nil
}

// account reads r a last time: late samples go to the key's live row if
// there is one, or out as the retired series' final point.
func (m *Machine) account(r *retiredRow, liveSlot func(kmaps.Key) (uint32, bool), emit func(*kmaps.Series)) error {
	m.final = kmaps.Series{Key: r.key, Slot: r.slot, Generation: r.generation, Retired: true, Buckets: m.final.Buckets[:0]}
	if err := m.rows.ReadRow(r.slot, &m.final); err != nil {
		return fmt.Errorf("read expired series row %d: %w", r.slot, err)
	}
	m.final.Key, m.final.Slot, m.final.Generation, m.final.Retired = r.key, r.slot, r.generation, true
	if m.final.Total == r.atRetire.Total && m.final.Retransmits == r.atRetire.Retransmits {
		m.expired += m.final.Total
		return nil
	}
	if live, ok := liveSlot(r.key); ok && live != r.slot {
		m.final.Since(&r.atRetire, &m.late)
		if err := m.rows.AddToRow(live, &m.late); err != nil {
			return fmt.Errorf("move late samples of expired row %d to row %d: %w", r.slot, live, err)
		}
		m.expired += r.atRetire.Total
		return nil
	}
	emit(&m.final)
	m.expired += m.final.Total
	return nil
}

// Observe notes a live series read just now and retires it once it has
// had no new samples for the idle timeout.
func (m *Machine) Observe(s *kmaps.Series, now time.Time) error {
	a := &m.activity[s.Slot]
	if a.retiring {
		return nil // still indexed only because unindexing it failed; FreeRetired retries
	}
	if a.since.IsZero() || a.generation != s.Generation || a.count != s.Total || a.retrans != s.Retransmits {
		*a = activity{generation: s.Generation, count: s.Total, retrans: s.Retransmits, since: now}
		return nil
	}
	if m.idleTimeout <= 0 || now.Sub(a.since) < m.idleTimeout {
		return nil
	}
	*a = activity{retiring: true}
	r := retiredRow{key: s.Key, slot: s.Slot, generation: s.Generation}
	s.CopyCounts(&r.atRetire)
	m.retired = append(m.retired, r)
	return m.retire(&m.retired[len(m.retired)-1])
}

// retire takes r's key out of the index and invalidates its row; after a
// failure it resumes where it stopped.
func (m *Machine) retire(r *retiredRow) error {
	if r.stage == toUnindex {
		if err := m.rows.Unindex(r.key); err != nil {
			return fmt.Errorf("expire idle series: %w", err)
		}
		r.stage = toInvalidate
	}
	if _, err := m.rows.Invalidate(r.slot, r.generation); err != nil {
		return fmt.Errorf("expire idle series: %w", err)
	}
	r.stage = waiting
	return nil
}

// ObserveOverflow notes the overflow row's total at this read. Sockets
// cached in the overflow row look again for a row when rows were freed,
// and as soon as a row is free after the overflow row grew (since they
// were last sent looking): a slot can return to the free queue without a
// release (the program pushes back a slot it popped but could not use),
// and without expiry (idle_timeout 0) nothing else would send them.
func (m *Machine) ObserveOverflow(total uint64) error {
	if total != m.lastOverflow {
		m.overflowGrew = true
	}
	m.lastOverflow = total
	if m.overflowGrew && !m.pendingReresolve {
		free, err := m.rows.HasFreeRow()
		if err != nil {
			return fmt.Errorf("peek free series rows: %w", err)
		}
		m.pendingReresolve = free
	}
	return m.reresolveIfPending()
}

func (m *Machine) reresolveIfPending() error {
	if !m.pendingReresolve {
		return nil
	}
	if err := m.rows.ReresolveOverflow(); err != nil {
		return fmt.Errorf("send overflowed sockets to free rows: %w", err)
	}
	m.pendingReresolve, m.overflowGrew = false, false
	return nil
}
