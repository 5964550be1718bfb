package bucket

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var allUnits = []Unit{Seconds, Milliseconds, Microseconds}

// forEachTable runs f in parallel for every (scale, unit).
func forEachTable(t *testing.T, f func(t *testing.T, tbl *Table)) {
	t.Helper()
	for scale := MinScale; scale <= MaxScale; scale++ {
		for _, u := range allUnits {
			t.Run(fmt.Sprintf("scale=%d/unit=%s", scale, u), func(t *testing.T) {
				t.Parallel()
				tbl, err := NewTable(scale, u)
				require.NoError(t, err)
				f(t, tbl)
			})
		}
	}
}

func mustDivisor(t testing.TB, u Unit) uint64 {
	d, err := u.Divisor()
	require.NoError(t, err)
	return d
}

// refMemo caches ReferenceIndex for one table; many probes coincide.
type refMemo struct {
	d     uint64
	scale int
	m     map[uint32]int32
}

func newRefMemo(tbl *Table) *refMemo {
	return &refMemo{d: tbl.Divisor, scale: tbl.Scale, m: map[uint32]int32{}}
}

func (r *refMemo) index(raw uint32) int32 {
	if i, ok := r.m[raw]; ok {
		return i
	}
	i := ReferenceIndex(raw, r.d, r.scale)
	r.m[raw] = i
	return i
}

// fastTruth gives the exact index of any raw from boundary raws that have
// been verified against ReferenceIndex: index = MinIndex + #{b : b < raw}.
func fastTruth(tbl *Table, br []uint32, raw uint32) int32 {
	n := sort.Search(len(br), func(i int) bool { return br[i] >= raw })
	return tbl.MinIndex + int32(n)
}

func TestUnit(t *testing.T) {
	for u, want := range map[Unit]uint64{Seconds: 8_000_000, Milliseconds: 8_000, Microseconds: 8} {
		d, err := u.Divisor()
		require.NoError(t, err)
		assert.Equal(t, want, d, "unit %s", u)
		assert.True(t, u.Valid())
	}
	for _, u := range []Unit{"min", "", "S", "µs", "ns"} {
		assert.False(t, u.Valid(), "unit %q", u)
		_, err := u.Divisor()
		require.Error(t, err)
		assert.Contains(t, err.Error(), fmt.Sprintf("%q", string(u)))
	}
}

func TestNewTableErrors(t *testing.T) {
	for _, scale := range []int{-1, 9, 100} {
		_, err := NewTable(scale, Microseconds)
		require.Error(t, err)
		assert.Contains(t, err.Error(), fmt.Sprintf("scale %d", scale))
	}
	_, err := NewTable(0, "min")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"min"`)
	// An invalid scale is reported even with a valid unit, and vice versa,
	// and errors are not memoised as tables.
	_, err = NewTable(3, "min")
	require.ErrorContains(t, err, "min")
}

func TestReferenceIndexPanics(t *testing.T) {
	assert.Panics(t, func() { ReferenceIndex(0, 8, 0) })
	assert.Panics(t, func() { ReferenceIndex(1, 0, 0) })
	assert.Panics(t, func() { ReferenceIndex(1, 8, -1) })
	assert.Panics(t, func() { ReferenceIndex(1, 8, 9) })
	tbl, err := NewTable(0, Microseconds)
	require.NoError(t, err)
	assert.Panics(t, func() { tbl.Position(0) })
}

func TestReferenceIndexHandChecked(t *testing.T) {
	cases := []struct {
		raw   uint32
		unit  Unit
		scale int
		want  int32
		why   string
	}{
		{8, Microseconds, 0, -1, "v=1 µs is in (0.5, 1]"},
		{9, Microseconds, 0, 0, "v=1.125 µs is in (1, 2]"},
		{16, Microseconds, 0, 0, "v=2 µs is in (1, 2]"},
		{17, Microseconds, 0, 1, "v=2.125 µs is in (2, 4]"},
		{1, Microseconds, 0, -4, "v=1/8 µs is in (1/16, 1/8]"},
		{1, Microseconds, 1, -7, "v=2^-3, scale 1: (-3<<1)-1"},
		{8000, Milliseconds, 0, -1, "v=1 ms is in (0.5, 1]"},
		{8001, Milliseconds, 0, 0, "just above 1 ms"},
		{12000, Milliseconds, 0, 0, "v=1.5 ms is in (1, 2]"},
		// scale 8: log2(1.5)*256 = 149.75..., so 2^(149/256) < 1.5 <= 2^(150/256).
		{12000, Milliseconds, 8, 149, "v=1.5 ms at scale 8"},
		// scale 3, v = 1e-3 s: log2(1e-3)*8 = -9.9658*8 = -79.726, so the
		// largest i with i/8 < -9.9658 is -80: 2^-10 = 0.000977 < 0.001 <=
		// 2^(-79/8) = 0.001065.
		{8000, Seconds, 3, -80, "v=1 ms in seconds at scale 3"},
		// scale 2, v = 3 µs: log2(3)*4 = 6.34, index 6: 2^(6/4)=2.83 < 3 <= 2^(7/4)=3.36.
		{24, Microseconds, 2, 6, "v=3 µs at scale 2"},
		// v = 10 ms at scale 4: log2(10)*16 = 53.15 -> 53.
		{80000, Milliseconds, 4, 53, "v=10 ms at scale 4"},
		// largest raw, us, scale 0: v = (2^32-1)/8 just below 2^29 -> 28.
		{math.MaxUint32, Microseconds, 0, 28, "max raw in µs"},
		// largest raw, s, scale 0: v = 536.87 s in (512, 1024] -> 9.
		{math.MaxUint32, Seconds, 0, 9, "max raw in s"},
	}
	for _, c := range cases {
		d := mustDivisor(t, c.unit)
		assert.Equal(t, c.want, ReferenceIndex(c.raw, d, c.scale), "raw=%d unit=%s scale=%d: %s", c.raw, c.unit, c.scale, c.why)
	}
}

// v = 2^k exactly lies on the upper edge of bucket (k<<s)-1.
func TestReferenceIndexPowersOfTwo(t *testing.T) {
	for _, u := range allUnits {
		d := mustDivisor(t, u)
		tz := 0
		for d>>tz&1 == 0 {
			tz++
		}
		n := 0
		// raw = d * 2^k must be an integer in uint32, so k >= -tz.
		for k := -tz; ; k++ {
			var raw uint64
			if k < 0 {
				raw = d >> -k
			} else {
				raw = d << k
			}
			if raw > math.MaxUint32 {
				break
			}
			n++
			for scale := MinScale; scale <= MaxScale; scale++ {
				want := int32(k<<scale) - 1
				require.Equal(t, want, ReferenceIndex(uint32(raw), d, scale), "unit=%s v=2^%d scale=%d", u, k, scale)
				// raw±1 is in the neighbouring bucket when a bucket is wider
				// than one raw step there (ratio base), else further away.
				base := math.Exp2(math.Exp2(-float64(scale)))
				if raw > 1 {
					below := ReferenceIndex(uint32(raw-1), d, scale)
					if float64(raw)*(1-1/base) > 1.001 {
						require.Equal(t, want, below, "unit=%s v just below 2^%d scale=%d", u, k, scale)
					} else {
						require.LessOrEqual(t, below, want, "unit=%s v just below 2^%d scale=%d", u, k, scale)
					}
				}
				above := ReferenceIndex(uint32(raw+1), d, scale)
				if float64(raw)*(base-1) > 1.001 {
					require.Equal(t, want+1, above, "unit=%s v just above 2^%d scale=%d", u, k, scale)
				} else {
					require.Greater(t, above, want, "unit=%s v just above 2^%d scale=%d", u, k, scale)
				}
			}
		}
		assert.Greater(t, n, 15, "unit %s", u)
	}
}

// Away from boundaries a plain float computation must agree: an independent
// sanity check of the big-int arithmetic (signs, shifts, negative indexes).
func TestReferenceIndexAgreesWithFloatAwayFromBoundaries(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, u := range allUnits {
		d := mustDivisor(t, u)
		for scale := MinScale; scale <= MaxScale; scale++ {
			checked := 0
			for range 300 {
				raw := uint32(rng.Uint64N(math.MaxUint32)) + 1
				if rng.IntN(2) == 0 { // also small raws, for negative indexes
					raw = uint32(rng.IntN(5000)) + 1
				}
				f := math.Log2(float64(raw)/float64(d)) * float64(int(1)<<scale)
				if math.Abs(f-math.Round(f)) < 1e-6 {
					continue
				}
				checked++
				require.Equal(t, int32(math.Ceil(f))-1, ReferenceIndex(raw, d, scale), "raw=%d unit=%s scale=%d", raw, u, scale)
			}
			require.Greater(t, checked, 250)
		}
	}
}

func TestEntryLayout(t *testing.T) {
	assert.Equal(t, uintptr(8), unsafe.Sizeof(Entry{}))
	assert.Equal(t, uintptr(0), unsafe.Offsetof(Entry{}.Base))
	assert.Equal(t, uintptr(4), unsafe.Offsetof(Entry{}.Threshold))
	assert.Equal(t, 8, binary.Size(Entry{}))
	var tbl Table
	assert.Equal(t, 8*TableSize, binary.Size(tbl.Entries))
}

func TestNewTableCacheReturnsCopies(t *testing.T) {
	a, err := NewTable(5, Milliseconds)
	require.NoError(t, err)
	want := *a
	a.Entries[3].Base = 12345
	a.MinIndex = 7
	b, err := NewTable(5, Milliseconds)
	require.NoError(t, err)
	assert.Equal(t, want, *b)
	fresh, err := buildTable(5, Milliseconds)
	require.NoError(t, err)
	assert.Equal(t, *fresh, *b)
}

func TestNewTableConcurrent(t *testing.T) {
	for range 8 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			for scale := MinScale; scale <= MaxScale; scale++ {
				tbl, err := NewTable(scale, Seconds)
				require.NoError(t, err)
				require.Equal(t, scale, tbl.Scale)
			}
		})
	}
}

func TestTableInvariants(t *testing.T) {
	forEachTable(t, func(t *testing.T, tbl *Table) {
		n := uint32(1) << tbl.Scale
		d := tbl.Divisor
		assert.Equal(t, mustDivisor(t, tbl.Unit), d)
		assert.Equal(t, ReferenceIndex(1, d, tbl.Scale), tbl.MinIndex)
		assert.Equal(t, uint32(ReferenceIndex(math.MaxUint32, d, tbl.Scale)-tbl.MinIndex+1), tbl.NumBuckets)
		// 32 octaves of raw: 31*2^s + (buckets reached in the top octave).
		assert.GreaterOrEqual(t, tbl.NumBuckets, 31*n+1)
		assert.LessOrEqual(t, tbl.NumBuckets, 32*n+1)
		assert.Equal(t, uint32(0), tbl.Entries[0].Base)
		assert.Equal(t, uint32(0), tbl.Position(1))
		var last uint32 // bucket of the previous cell's end
		for c, e := range tbl.Entries {
			start := uint32(1)<<31 | uint32(c)<<22
			end := start + 1<<22 - 1
			require.Contains(t, []uint32{last, last + 1}, e.Base, "cell %d", c)
			last = e.Base
			if e.Threshold != math.MaxUint32 {
				require.GreaterOrEqual(t, e.Threshold, start, "cell %d", c)
				require.Less(t, e.Threshold, end, "cell %d", c)
				last++
			}
		}
		assert.LessOrEqual(t, last, n)
	})
}

// TestExact is the main correctness test: the table's kernel algorithm and
// BoundaryRaws against ReferenceIndex at and around every boundary.
func TestExact(t *testing.T) {
	forEachTable(t, func(t *testing.T, tbl *Table) {
		ref := newRefMemo(tbl)
		check := func(raw uint32, what string) {
			t.Helper()
			want := ref.index(raw)
			if got := tbl.Index(raw); got != want {
				t.Fatalf("%s: Index(%d) = %d, ReferenceIndex = %d", what, raw, got, want)
			}
			if got := tbl.Position(raw); got != uint32(want-tbl.MinIndex) {
				t.Fatalf("%s: Position(%d) = %d, want %d", what, raw, got, want-tbl.MinIndex)
			}
		}

		br := tbl.BoundaryRaws()
		require.Len(t, br, int(tbl.NumBuckets)-1)
		require.True(t, slices.IsSorted(br), "BoundaryRaws must be non-decreasing")

		// BoundaryRaws: b = br[p] is the last raw with index <= i and b+1
		// the first with index > i; exact equality when the buckets are
		// non-empty (an entry repeats the previous one iff bucket i is empty).
		distinct := 0
		for p, b := range br {
			i := tbl.MinIndex + int32(p)
			require.GreaterOrEqual(t, b, uint32(1))
			require.Less(t, b, uint32(math.MaxUint32))
			nonEmpty := p == 0 || b > br[p-1]
			nextNonEmpty := p == len(br)-1 || br[p+1] > b
			ib, ib1 := ref.index(b), ref.index(b+1)
			if nonEmpty {
				distinct++
				require.Equal(t, i, ib, "boundary raw %d of index %d", b, i)
			} else {
				require.Less(t, ib, i, "boundary raw %d of empty index %d", b, i)
			}
			if nextNonEmpty {
				require.Equal(t, i+1, ib1, "raw %d after boundary of index %d", b+1, i)
			} else {
				require.Greater(t, ib1, i+1, "raw %d after boundary of index %d", b+1, i)
			}
		}
		// Buckets wider than one raw step are never empty, so the slice is
		// strictly increasing from raw ~ 1/(2^(2^-s)-1) on, and every
		// bucket from that point on is covered.
		wide := 1/(math.Exp2(math.Exp2(-float64(tbl.Scale)))-1) + 1
		for p := 1; p < len(br); p++ {
			if float64(br[p-1]) > wide {
				require.Greater(t, br[p], br[p-1], "p=%d", p)
			}
		}
		t.Logf("%d buckets, %d distinct boundary raws", tbl.NumBuckets, distinct)

		// Position at and around every boundary.
		for p, b := range br {
			if p > 0 && b == br[p-1] {
				continue
			}
			if b > 1 {
				check(b-1, "boundary-1")
			}
			check(b, "boundary")
			check(b+1, "boundary+1")
		}

		// Powers of two and their neighbours, and the extremes.
		check(1, "one")
		check(2, "two")
		check(math.MaxUint32, "max")
		check(math.MaxUint32-1, "max-1")
		for k := range 32 {
			p := uint32(1) << k
			check(p, "2^k")
			check(p+1, "2^k+1")
			if p > 1 {
				check(p-1, "2^k-1")
			}
		}

		// Random raws against the reference, log-uniform and uniform.
		rng := rand.New(rand.NewPCG(uint64(tbl.Scale), uint64(tbl.Divisor)))
		for j := range 5000 {
			var raw uint32
			if j%2 == 0 {
				raw = uint32(rng.Uint64N(math.MaxUint32)) + 1
			} else {
				raw = uint32(rng.Uint64N(uint64(1)<<rng.IntN(33))) | 1
			}
			check(raw, "random")
		}
	})
}

// TestExactDense uses BoundaryRaws (verified against ReferenceIndex in
// TestExact) as a fast exact oracle for far more raws than big ints allow:
// both edges of every table cell in every octave, and many random raws.
func TestExactDense(t *testing.T) {
	forEachTable(t, func(t *testing.T, tbl *Table) {
		br := tbl.BoundaryRaws()
		check := func(raw uint32) {
			if got, want := tbl.Index(raw), fastTruth(tbl, br, raw); got != want {
				t.Fatalf("Index(%d) = %d, want %d", raw, got, want)
			}
		}
		for k := range 32 {
			for c := range uint32(TableSize) {
				// Cell c at octave k covers norms start..end; shifted down.
				start := uint64(1)<<31 | uint64(c)<<22
				end := start + 1<<22 - 1
				for _, norm := range []uint64{start, start + 1, end - 1, end} {
					if raw := uint32(norm >> (31 - k)); raw != 0 {
						check(raw)
					}
				}
			}
		}
		rng := rand.New(rand.NewPCG(uint64(tbl.Scale)+100, uint64(tbl.Divisor)))
		for range 200_000 {
			check(uint32(rng.Uint64N(math.MaxUint32)) + 1)
			check(uint32(rng.Uint64N(uint64(1)<<rng.IntN(33))) | 1)
		}
		// Doubling adds exactly 2^s.
		for range 10_000 {
			raw := uint32(rng.Uint64N(math.MaxUint32>>1)) + 1
			require.Equal(t, tbl.Index(raw)+int32(1)<<tbl.Scale, tbl.Index(2*raw), "raw=%d", raw)
		}
	})
}

func TestBounds(t *testing.T) {
	// Hand values.
	t0, err := NewTable(0, Microseconds)
	require.NoError(t, err)
	assert.Equal(t, 0.5, t0.LowerBound(-1))
	assert.Equal(t, 1.0, t0.UpperBound(-1))
	assert.Equal(t, 1.0/16, t0.LowerBound(-4))
	t1, err := NewTable(1, Microseconds)
	require.NoError(t, err)
	assert.InDelta(t, math.Sqrt2, t1.LowerBound(1), 1e-15)
	assert.Equal(t, 0.25, t1.UpperBound(-5))
	t8, err := NewTable(8, Seconds)
	require.NoError(t, err)
	assert.Equal(t, math.Exp2(-23), t8.LowerBound(-23*256))
	assert.InEpsilon(t, math.Exp2(-22.5), t8.UpperBound(-22*256-129), 1e-15)

	// Every boundary raw and its successor lie inside their bucket bounds.
	// Float rounding may only bite exactly on a bound, so a violation must
	// be within a few ulps of it.
	forEachTable(t, func(t *testing.T, tbl *Table) {
		within := func(raw uint32) {
			i := tbl.Index(raw)
			v := float64(raw) / float64(tbl.Divisor)
			lo, hi := tbl.LowerBound(i), tbl.UpperBound(i)
			require.InEpsilon(t, math.Exp2(1/math.Exp2(float64(tbl.Scale))), hi/lo, 1e-12)
			if !(lo < v) {
				require.InEpsilon(t, lo, v, 1e-13, "raw=%d index=%d: %g <= lower bound %g", raw, i, v, lo)
			}
			if !(v <= hi) {
				require.InEpsilon(t, hi, v, 1e-13, "raw=%d index=%d: %g > upper bound %g", raw, i, v, hi)
			}
		}
		for _, b := range tbl.BoundaryRaws() {
			within(b)
			within(b + 1)
		}
		within(1)
		within(math.MaxUint32)
		assert.Equal(t, tbl.LowerBound(tbl.MinIndex+1), tbl.UpperBound(tbl.MinIndex))
	})
}

func BenchmarkPosition(b *testing.B) {
	tbl, err := NewTable(8, Milliseconds)
	require.NoError(b, err)
	rng := rand.New(rand.NewPCG(1, 2))
	raws := make([]uint32, 4096)
	for i := range raws {
		raws[i] = uint32(rng.Uint64N(math.MaxUint32)) + 1
	}
	var sink uint32
	i := 0
	for b.Loop() {
		sink += tbl.Position(raws[i&4095])
		i++
	}
	_ = sink
}

func BenchmarkNewTable(b *testing.B) {
	for _, u := range allUnits {
		b.Run("scale=8/unit="+string(u)+"/build", func(b *testing.B) {
			for b.Loop() {
				if _, err := buildTable(8, u); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("scale=8/cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := NewTable(8, Milliseconds); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkReferenceIndex(b *testing.B) {
	for b.Loop() {
		ReferenceIndex(3_000_000_000, 8000, 8)
	}
}
