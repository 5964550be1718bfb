package lifecycle

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// fakeRows is an in-memory model of the program's maps: rows of bucket
// counts and sums, the index, the free queue, and the generations.
type fakeRows struct {
	rows       map[uint32]*kmaps.Series
	index      map[kmaps.Key]uint32
	free       []uint32
	generation map[uint32]uint32
	reresolved int
	added      map[uint32]kmaps.Series // AddToRow calls, by target slot
	fail       map[string]int          // call name -> failures left
	held       map[uint32]int          // slot -> Invalidate calls left that find it still held
	calls      []string
}

func newFakeRows() *fakeRows {
	return &fakeRows{
		rows: map[uint32]*kmaps.Series{}, index: map[kmaps.Key]uint32{},
		generation: map[uint32]uint32{}, added: map[uint32]kmaps.Series{}, fail: map[string]int{},
		held: map[uint32]int{},
	}
}

var errInjected = errors.New("injected map failure")

func (f *fakeRows) call(name string) error {
	f.calls = append(f.calls, name)
	if f.fail[name] > 0 {
		f.fail[name]--
		return errInjected
	}
	return nil
}

func (f *fakeRows) row(slot uint32) *kmaps.Series {
	r, ok := f.rows[slot]
	if !ok {
		r = &kmaps.Series{Buckets: make([]uint64, 8)}
		f.rows[slot] = r
	}
	return r
}

// count adds n samples of raw value raw at bucket position pos to slot.
func (f *fakeRows) count(slot uint32, pos int, raw uint64, n uint64) {
	r := f.row(slot)
	r.Buckets[pos] += n
	r.Sum += raw * n
}

func (f *fakeRows) Unindex(key kmaps.Key) error {
	if err := f.call("Unindex"); err != nil {
		return err
	}
	delete(f.index, key)
	return nil
}

func (f *fakeRows) Invalidate(slot, generation uint32) (bool, error) {
	if err := f.call("Invalidate"); err != nil {
		return false, err
	}
	f.generation[slot] = generation + 1
	if f.held[slot] > 0 {
		f.held[slot]--
		return true, nil
	}
	return false, nil
}

func (f *fakeRows) ReadRow(slot uint32, s *kmaps.Series) error {
	if err := f.call("ReadRow"); err != nil {
		return err
	}
	r := f.row(slot)
	s.Sum, s.Zero, s.Offset, s.Retransmits = r.Sum, r.Zero, 0, r.Retransmits
	s.Buckets = append(s.Buckets[:0], r.Buckets...)
	s.Summarize()
	return nil
}

func (f *fakeRows) AddToRow(slot uint32, d *kmaps.Series) error {
	if err := f.call("AddToRow"); err != nil {
		return err
	}
	r := f.row(slot)
	for i, c := range d.Buckets {
		r.Buckets[d.Offset+i] += c
	}
	r.Zero += d.Zero
	r.Sum += d.Sum
	r.Retransmits += d.Retransmits
	a := f.added[slot]
	a.Total += d.Total
	a.Sum += d.Sum
	a.Retransmits += d.Retransmits
	f.added[slot] = a
	return nil
}

func (f *fakeRows) ClearRow(slot uint32) error {
	if err := f.call("ClearRow"); err != nil {
		return err
	}
	delete(f.rows, slot)
	return nil
}

func (f *fakeRows) Release(slot uint32) error {
	if err := f.call("Release"); err != nil {
		return err
	}
	f.free = append(f.free, slot)
	return nil
}

func (f *fakeRows) HasFreeRow() (bool, error) {
	if err := f.call("HasFreeRow"); err != nil {
		return false, err
	}
	return len(f.free) > 0, nil
}

func (f *fakeRows) ReresolveOverflow() error {
	if err := f.call("ReresolveOverflow"); err != nil {
		return err
	}
	f.reresolved++
	return nil
}

// reader drives a Machine the way the loader's Read does.
type reader struct {
	t    *testing.T
	f    *fakeRows
	m    *Machine
	now  time.Time
	last []kmaps.Series // the live series read
	out  []kmaps.Series // the retired series emitted
}

func newReader(t *testing.T, maxSeries uint32, idle time.Duration) *reader {
	f := newFakeRows()
	return &reader{t: t, f: f, m: New(f, maxSeries, idle), now: time.Unix(1000, 0)}
}

// read runs one read after advancing the clock by d.
func (r *reader) read(d time.Duration) error {
	r.now = r.now.Add(d)
	r.last, r.out = nil, nil
	live := func(k kmaps.Key) (uint32, bool) { s, ok := r.f.index[k]; return s, ok }
	if err := r.m.FreeRetired(live, func(s *kmaps.Series) {
		c := *s
		c.Buckets = slices.Clone(s.Buckets)
		r.out = append(r.out, c)
	}); err != nil {
		return err
	}
	for key, slot := range r.f.index {
		s := kmaps.Series{Key: key, Slot: slot, Generation: r.f.generation[slot]}
		require.NoError(r.t, r.f.ReadRow(slot, &s))
		s.Buckets = slices.Clone(s.Buckets)
		r.last = append(r.last, s)
		if err := r.m.Observe(&r.last[len(r.last)-1], r.now); err != nil {
			return err
		}
	}
	return nil
}

func key(port uint16) kmaps.Key { return kmaps.Key{RemotePort: port, Family: 4} }

// TestRowStillHeldWaitsAnotherRead: when the second invalidation finds the
// row still held (a program cached it after the first), the row is read,
// cleared and freed only at a later read, with what was counted meanwhile.
func TestRowStillHeldWaitsAnotherRead(t *testing.T) {
	r := newReader(t, 4, time.Minute)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(61*time.Second))
	require.NotContains(t, r.f.index, key(1), "retired")

	r.f.held[0] = 1
	require.NoError(t, r.read(time.Second))
	assert.Empty(t, r.f.free, "still held: not freed")
	assert.Equal(t, 1, r.m.Retiring())
	assert.NotContains(t, r.f.calls, "ClearRow", "not cleared while held")

	r.f.count(0, 3, 80, 2) // what the holder counted, now in the row
	require.NoError(t, r.read(time.Second))
	assert.Equal(t, []uint32{0}, r.f.free)
	require.Len(t, r.out, 1, "the late samples go out in a final point")
	assert.Equal(t, uint64(7), r.out[0].Total)
	assert.Equal(t, uint64(7), r.m.Expired())
	assert.Zero(t, r.m.Retiring())
}

// TestIdleRowIsRetiredThenFreedOneReadLater: an idle series leaves the
// index at once and its row returns to the free queue at the next read.
func TestIdleRowIsRetiredThenFreedOneReadLater(t *testing.T) {
	r := newReader(t, 4, time.Minute)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(30*time.Second))
	assert.Contains(t, r.f.index, key(1), "not idle long enough")
	require.NoError(t, r.read(31*time.Second))
	assert.NotContains(t, r.f.index, key(1), "idle: out of the index")
	assert.Equal(t, uint32(1), r.f.generation[0], "sockets that cached it are told")
	assert.Empty(t, r.f.free, "not freed while programs may still count into it")
	assert.Zero(t, r.m.Expired())

	require.NoError(t, r.read(time.Second))
	assert.Equal(t, []uint32{0}, r.f.free)
	assert.Empty(t, r.out, "no late samples: no final point")
	assert.Equal(t, uint64(5), r.m.Expired())
	assert.Equal(t, 1, r.f.reresolved, "overflowed sockets look for the freed row")
	assert.Zero(t, r.m.Retiring())
}

// TestLateSamplesKeepTheirSum: samples that land in a retired row before
// it is freed come out in its final point with their exact sum (the
// loader used to clear the sums first and export 0, or a sum smaller than
// the previous one, which delta turned into ~2.3e12 s).
func TestLateSamplesKeepTheirSum(t *testing.T) {
	r := newReader(t, 4, time.Second)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(2*time.Second)) // retired
	r.f.count(0, 4, 100, 2)                   // a program that had the row counts twice more
	require.NoError(t, r.read(time.Second))
	require.Len(t, r.out, 1)
	final := r.out[0]
	assert.True(t, final.Retired)
	assert.Equal(t, uint64(7), final.Total)
	assert.Equal(t, uint64(5*80+2*100), final.Sum, "the sum is read before the row is cleared")
	assert.Equal(t, uint64(7), r.m.Expired())
}

// TestLateSamplesFoldIntoTheKeysNewRow: if the key already has a new
// row, the retired row's late samples go into it, so the batch does not
// hold two points with the same attributes and overlapping windows.
func TestLateSamplesFoldIntoTheKeysNewRow(t *testing.T) {
	r := newReader(t, 4, time.Second)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(2*time.Second)) // retired
	r.f.count(0, 4, 100, 2)                   // late samples in the old row
	r.f.index[key(1)] = 1                     // a new socket of the key took row 1
	r.f.count(1, 2, 60, 1)
	require.NoError(t, r.read(time.Second))
	assert.Empty(t, r.out, "no second point for the key")
	require.Len(t, r.last, 1)
	assert.Equal(t, uint32(1), r.last[0].Slot)
	assert.Equal(t, uint64(3), r.last[0].Total, "its own sample and the two late ones")
	assert.Equal(t, uint64(60+2*100), r.last[0].Sum)
	assert.Equal(t, uint64(5), r.m.Expired(), "only what the old series had exported")
	assert.Equal(t, []uint32{0}, r.f.free)
}

// TestFreeingIsRetrySafe: a map call failing half-way through freeing is
// retried at the next read without repeating what was done: each row is
// accounted once, cleared before release, released once, and a row
// released is never cleared again (it may be live by then).
func TestFreeingIsRetrySafe(t *testing.T) {
	for _, failing := range []string{"ReadRow", "ClearRow", "Release", "ReresolveOverflow"} {
		t.Run(failing, func(t *testing.T) {
			r := newReader(t, 4, time.Second)
			for slot := range uint32(3) {
				r.f.index[key(uint16(slot))] = slot
				r.f.count(slot, 1, 10, 4)
			}
			require.NoError(t, r.read(0))
			require.NoError(t, r.read(2*time.Second)) // all three retired
			require.Equal(t, 3, r.m.Retiring())
			r.f.calls = nil
			r.f.fail[failing] = 1
			require.ErrorIs(t, r.read(time.Second), errInjected)
			require.NoError(t, r.read(time.Second))
			require.NoError(t, r.read(time.Second))

			slices.Sort(r.f.free)
			assert.Equal(t, []uint32{0, 1, 2}, r.f.free, "each slot released exactly once")
			assert.Equal(t, uint64(12), r.m.Expired(), "each row's samples counted once")
			assert.Zero(t, r.m.Retiring())
			assert.GreaterOrEqual(t, r.f.reresolved, 1)
		})
	}
}

// TestClearNeverFollowsRelease: after a release, the row of that slot is
// left alone, even when a later row's freeing fails and is retried.
func TestClearNeverFollowsRelease(t *testing.T) {
	r := newReader(t, 4, time.Second)
	for slot := range uint32(2) {
		r.f.index[key(uint16(slot))] = slot
		r.f.count(slot, 1, 10, 4)
	}
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(2*time.Second))
	r.f.fail["Release"] = 0
	r.f.calls = nil
	// The first row freed frees fine; the second fails at ClearRow. Which
	// slot goes first is the order of retirement, which follows the
	// index's order: none is promised (the kernel's hash map has none).
	failOnSecond := &failAfter{fakeRows: r.f, name: "ClearRow", after: 1}
	r.m.rows = failOnSecond
	require.ErrorIs(t, r.read(time.Second), errInjected)
	// The freed slot is taken by a new series, which counts.
	require.Len(t, r.f.free, 1)
	freed := r.f.free[0]
	r.f.free = nil
	r.f.index[key(9)] = freed
	r.f.count(freed, 2, 20, 3)
	require.NoError(t, r.read(time.Second))
	row := r.f.row(freed)
	assert.Equal(t, uint64(3), row.Buckets[2], "the live row of the freed slot was not cleared again")
	assert.Equal(t, []uint32{1 - freed}, r.f.free, "the other slot freed at the retry")
}

// failAfter fails the named call once, after `after` successful ones.
type failAfter struct {
	*fakeRows
	name  string
	after int
}

func (f *failAfter) ClearRow(slot uint32) error {
	if f.name == "ClearRow" {
		if f.after == 0 {
			f.name = ""
			return errInjected
		}
		f.after--
	}
	return f.fakeRows.ClearRow(slot)
}

// TestRetireResumesAfterFailure: if taking the key out of the index or
// invalidating the row fails, the series is neither lost nor retired
// twice; the retire finishes at the next read and the row is freed one
// read after that.
func TestRetireResumesAfterFailure(t *testing.T) {
	for _, failing := range []string{"Unindex", "Invalidate"} {
		t.Run(failing, func(t *testing.T) {
			r := newReader(t, 4, time.Second)
			r.f.index[key(1)] = 0
			r.f.count(0, 3, 80, 5)
			require.NoError(t, r.read(0))
			r.f.fail[failing] = 1
			require.ErrorIs(t, r.read(2*time.Second), errInjected)
			assert.Equal(t, 1, r.m.Retiring())
			require.NoError(t, r.read(time.Second)) // retire finishes
			assert.NotContains(t, r.f.index, key(1))
			assert.Empty(t, r.f.free, "freed only a read after the invalidation")
			assert.Equal(t, 1, r.m.Retiring(), "not retired twice")
			require.NoError(t, r.read(time.Second))
			assert.Equal(t, []uint32{0}, r.f.free)
			assert.Equal(t, uint64(5), r.m.Expired())
		})
	}
}

// TestOverflowReresolvesWhenARowIsFree: sockets cached in the overflow
// row look for a row again as soon as one is free after the overflow grew
// — after a slot was pushed back by the program, and with expiry off
// (idle_timeout 0), where nothing else would ever tell them.
func TestOverflowReresolvesWhenARowIsFree(t *testing.T) {
	r := newReader(t, 2, 0)
	require.NoError(t, r.m.ObserveOverflow(0))
	assert.Zero(t, r.f.reresolved)

	require.NoError(t, r.m.ObserveOverflow(10)) // overflow grew, queue empty
	assert.Zero(t, r.f.reresolved, "no free row: nothing to look for")

	r.f.free = []uint32{1} // a slot pushed back after a lost insert race
	require.NoError(t, r.m.ObserveOverflow(10))
	assert.Equal(t, 1, r.f.reresolved, "overflowed sockets look for the free row")

	require.NoError(t, r.m.ObserveOverflow(10))
	assert.Equal(t, 1, r.f.reresolved, "overflow steady since: nothing to do")

	require.NoError(t, r.m.ObserveOverflow(12))
	assert.Equal(t, 2, r.f.reresolved, "grew again while a row is free")

	r.f.fail["ReresolveOverflow"] = 1
	require.ErrorIs(t, r.m.ObserveOverflow(20), errInjected)
	require.NoError(t, r.m.ObserveOverflow(20))
	assert.Equal(t, 3, r.f.reresolved, "a failed re-resolution is retried")
}

// TestReturningSeriesIsTrackedAfresh: a slot freed and taken by a new
// series (new generation) starts a new idle clock.
func TestReturningSeriesIsTrackedAfresh(t *testing.T) {
	r := newReader(t, 1, time.Second)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(2*time.Second)) // retired
	require.NoError(t, r.read(time.Second))   // freed
	r.f.free = nil
	r.f.index[key(2)] = 0
	r.f.count(0, 1, 10, 1)
	require.NoError(t, r.read(500*time.Millisecond))
	require.NoError(t, r.read(600*time.Millisecond))
	assert.Contains(t, r.f.index, key(2), "idle for 0.6 s of its own, not since the old series")
}

// TestRetiredRowsCountWhileTheyWait: a row retired at an earlier read and
// still waiting for its holders is in Expired with its counts at
// retirement, and listed as pending with the generation of its series,
// so samples recorded never go down while it waits and its converter
// state is kept. (It used to vanish for the reads it waited: its total
// left the recorded samples, and its final point came as a new series.)
func TestRetiredRowsCountWhileTheyWait(t *testing.T) {
	r := newReader(t, 4, time.Second)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(2*time.Second)) // retired at this read: still among the live ones
	assert.Zero(t, r.m.Expired())
	assert.True(t, r.m.IsRetiring(0))

	r.f.held[0] = 2 // two more reads find it held
	for i := range 2 {
		require.NoError(t, r.read(time.Second))
		assert.Empty(t, r.last, "read %d: not live", i)
		assert.Equal(t, uint64(5), r.m.Expired(), "read %d: its samples still counted", i)
		assert.Equal(t, []kmaps.RowID{{Slot: 0, Generation: 0}}, r.m.AppendPending(nil), "read %d", i)
	}
	r.f.count(0, 3, 80, 1) // a late sample
	require.NoError(t, r.read(time.Second))
	require.Len(t, r.out, 1)
	assert.Equal(t, uint64(6), r.out[0].Total)
	assert.Equal(t, uint64(6), r.m.Expired())
	assert.Empty(t, r.m.AppendPending(nil))
	assert.False(t, r.m.IsRetiring(0))
}
