package reader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/lifecycle"
)

// Maps is what a read needs of the kernel maps that are not mmapped.
type Maps interface {
	// ReadIndex returns the series index: each key and its row.
	ReadIndex(keys []kmaps.Key, refs []kmaps.Ref) ([]kmaps.Key, []kmaps.Ref, error)
	// DeleteKey removes key from the index (a key already gone is not an
	// error).
	DeleteKey(key kmaps.Key) error
	// PushFree hands slot to the program's free queue.
	PushFree(slot uint32) error
	// HasFree reports whether the free queue holds a slot.
	HasFree() (bool, error)
	// Stats returns the program's counters (Filtered, Errors, Missed).
	Stats() (kmaps.Stats, error)
}

// Config is what a Reader needs to know of the program instance.
type Config struct {
	Layout      kmaps.Layout
	IdleTimeout time.Duration // series without new samples that long are expired; 0 never
	// EntryCounts is true when the program counts samples in its cache
	// entries; false when it counts them in the rows only (its entries
	// then cache the row and count its samples in their misses word).
	EntryCounts bool
	Now         func() time.Time // time.Now if nil
}

// maxTries bounds the attempts at an exact reading of one row.
const maxTries = 4

// Reader is the user-space half of the protocol: it reads the counts,
// hands cache entries back, and runs the series lifecycle. It is not safe
// for concurrent use.
type Reader struct {
	layout      kmaps.Layout
	mem         Memory
	maps        Maps
	entryCounts bool
	now         func() time.Time

	cs       cacheState
	machine  *lifecycle.Machine
	sumCarry []uint64       // by slot: sums moved in by user space (drained entries, late samples)
	last     []kmaps.Series // by slot: the counts of its last reading (own buckets)

	// Counters for self-telemetry and tests.
	dropped uint64 // entry counts outside their row (never written so): errors
	retries uint64 // row readings tried again because a holder moved
	inexact uint64 // row readings left as a lower bound after maxTries

	// Reused across reads.
	keys    []kmaps.Key
	refs    []kmaps.Ref
	scratch []uint64 // one row
	seqs    []uint32
	live    map[kmaps.Key]uint32

	maxTries int
	yield    func(Point) // tests: interleave the program's steps
}

// Point names a step of a read at which a test may run the program.
type Point int

const (
	PointScanned   Point = iota // after the cache scan
	PointIndexRead              // after the index was read
	PointSeries                 // before each series is read
	PointRowRead                // inside a row reading, before the row's words
	PointEntryRead              // inside a row reading, after a holder's counts
	PointMarked                 // after idle entries were marked
)

// New returns a Reader of mem and maps, and frees every cache entry: call
// it before the program is attached.
func New(cfg Config, mem Memory, maps Maps) *Reader {
	r := &Reader{
		layout:      cfg.Layout,
		mem:         mem,
		maps:        maps,
		entryCounts: cfg.EntryCounts,
		now:         cfg.Now,
		sumCarry:    make([]uint64, cfg.Layout.Rows()),
		last:        make([]kmaps.Series, cfg.Layout.Rows()),
		scratch:     make([]uint64, cfg.Layout.Stride()),
		maxTries:    maxTries,
		yield:       func(Point) {},
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.machine = lifecycle.New(rows{r}, cfg.Layout.MaxSeries, cfg.IdleTimeout)
	r.initCache()
	return r
}

// LifecycleError reports that a step of the series lifecycle failed (a
// map call). The snapshot it came with is complete and must be used: the
// step is retried at the next read.
type LifecycleError struct{ Err error }

func (e *LifecycleError) Error() string { return "series lifecycle: " + e.Err.Error() }
func (e *LifecycleError) Unwrap() error { return e.Err }

// Read fills snap with the current state of the maps, reusing its buffers
// (rows holds the series' bucket counts), in the order the package doc
// gives. ctx bounds the retries of readings that a moving cache entry
// disturbs: once it is done, such readings are kept as lower bounds
// (exact again at the next read). An error other than *LifecycleError
// means snap is not usable.
func (r *Reader) Read(ctx context.Context, snap *kmaps.Snapshot, rows *[]uint64) error {
	done := func() bool { return ctx.Err() != nil }
	now := r.now()
	r.scanCache()
	r.yield(PointScanned)
	var err error
	if r.keys, r.refs, err = r.maps.ReadIndex(r.keys[:0], r.refs[:0]); err != nil {
		return fmt.Errorf("read series index: %w", err)
	}
	r.yield(PointIndexRead)
	// Each series keeps only its non-empty bucket range, packed into rows;
	// the capacity covers the worst case, so appends never move earlier
	// series' buckets.
	need := (len(r.keys) + r.machine.Retiring() + 1) * int(r.layout.NumBuckets)
	if cap(*rows) < need {
		*rows = make([]uint64, 0, need)
	}
	packed := (*rows)[:0]
	snap.Series = snap.Series[:0]
	snap.Pending = snap.Pending[:0]

	var lifeErrs []error
	emit := func(s *kmaps.Series) {
		final := *s
		pack(&final, &packed) // s.Buckets is the lifecycle's scratch
		snap.Series = append(snap.Series, final)
	}
	r.live = nil // built on first use, from this read's index
	if err := r.machine.FreeRetired(r.liveSlot, emit); err != nil {
		lifeErrs = append(lifeErrs, err)
	}
	for i, ref := range r.refs {
		if r.machine.IsRetiring(ref.Slot) {
			// Still indexed because taking it out failed: the lifecycle
			// owns the row and reports its final point.
			continue
		}
		r.yield(PointSeries)
		s := kmaps.Series{Key: r.keys[i], Slot: ref.Slot}
		if err := r.readSeries(done, &s, &packed); err != nil {
			return err
		}
		snap.Series = append(snap.Series, s)
		if err := r.machine.Observe(&snap.Series[len(snap.Series)-1], now); err != nil {
			lifeErrs = append(lifeErrs, err)
		}
	}
	o := kmaps.Series{Overflow: true, Slot: r.layout.OverflowSlot()}
	if err := r.readSeries(done, &o, &packed); err != nil {
		return err
	}
	// The overflow row is never reset: one cumulative run.
	o.Generation = 0
	if o.Total > 0 || o.Retransmits > 0 {
		snap.Series = append(snap.Series, o)
	}
	if err := r.machine.ObserveOverflow(o.Total); err != nil {
		lifeErrs = append(lifeErrs, err)
	}
	snap.Pending = r.machine.AppendPending(snap.Pending)
	r.markIdle()
	r.yield(PointMarked)
	snap.Stats, err = r.maps.Stats()
	if err != nil {
		return fmt.Errorf("read stats: %w", err)
	}
	snap.Stats.Errors += r.dropped
	snap.Stats.Expired = r.machine.Expired()
	if len(lifeErrs) > 0 {
		return &LifecycleError{Err: errors.Join(lifeErrs...)}
	}
	return nil
}

// readSeries reads s.Slot's row (counts and sum together, so that what
// the lifecycle sees of a series is one reading) and appends its
// non-empty bucket range to packed, which s.Buckets then aliases.
func (r *Reader) readSeries(done func() bool, s *kmaps.Series, packed *[]uint64) error {
	if err := r.readRowInto(done, s.Slot, s); err != nil {
		return err
	}
	pack(s, packed)
	return nil
}

// readRowInto reads slot's row and sum into s (s.Buckets aliases the
// scratch row until the next reading) and remembers the reading.
func (r *Reader) readRowInto(done func() bool, slot uint32, s *kmaps.Series) error {
	sum, _ := r.readRow(done, slot, r.scratch)
	if err := kmaps.DecodeRow(r.scratch, r.layout, s); err != nil {
		return err
	}
	s.Sum = sum
	// One word the program only adds to: any load is a reading of it.
	s.Retransmits = r.mem.retransmits(slot)
	s.CopyCounts(&r.last[slot])
	return nil
}

// raiseToLast raises row, a lower bound of slot's counts, and sum to the
// previous reading of the row, bucket by bucket: every count of that
// reading is still there (counts only grow), so the result is still at
// most the true counts, and never below what was reported before.
func (r *Reader) raiseToLast(slot uint32, row []uint64, sum uint64) uint64 {
	last := &r.last[slot]
	row[kmaps.RowZero] = max(row[kmaps.RowZero], last.Zero)
	for i, c := range last.Buckets {
		w := kmaps.RowBuckets + last.Offset + i
		row[w] = max(row[w], c)
	}
	return max(sum, last.Sum)
}

// pack appends s.Buckets to packed and makes s.Buckets alias the copy.
func pack(s *kmaps.Series, packed *[]uint64) {
	start := len(*packed)
	*packed = append(*packed, s.Buckets...)
	s.Buckets = (*packed)[start:len(*packed):len(*packed)]
}

// liveSlot returns the row key has in the index read by this read.
func (r *Reader) liveSlot(key kmaps.Key) (uint32, bool) {
	if r.live == nil {
		r.live = make(map[kmaps.Key]uint32, len(r.keys))
		for i, k := range r.keys {
			r.live[k] = r.refs[i].Slot
		}
	}
	slot, ok := r.live[key]
	return slot, ok
}

// Stats of the reader itself, for self-telemetry and tests.
type Stats struct {
	Retries uint64 // row readings tried again because a cache entry moved its counts meanwhile
	Inexact uint64 // row readings kept as a lower bound after maxTries (or the deadline)
}

// Stats returns the reader's own counters.
func (r *Reader) Stats() Stats { return Stats{Retries: r.retries, Inexact: r.inexact} }
