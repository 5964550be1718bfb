package bucket

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReferenceIndexAtNegativeScales(t *testing.T) {
	for _, c := range []struct {
		raw   uint32
		unit  Unit
		scale int
		want  int32
		why   string
	}{
		{8, Microseconds, -1, -1, "1 µs in (1/4, 1], base 4"},
		{9, Microseconds, -1, 0, "1.125 µs in (1, 4]"},
		{32, Microseconds, -1, 0, "4 µs in (1, 4]"},
		{33, Microseconds, -1, 1, "4.125 µs in (4, 16]"},
		{1, Microseconds, -1, -2, "1/8 µs in (1/16, 1/4]"},
		{129, Microseconds, -2, 1, "16.125 µs in (16, 256], base 16"},
		{128, Microseconds, -2, 0, "16 µs in (1, 16]"},
		{80, Seconds, -4, -2, "10 µs = 2^-16.6 s in (2^-32, 2^-16], base 2^16"},
		{80, Seconds, -5, -1, "10 µs in (2^-32, 1], base 2^32"},
		{8_000_001, Seconds, -5, 0, "just above 1 s in (1, 2^32]"},
	} {
		assert.Equal(t, c.want, ReferenceIndexAt(c.raw, mustDivisor(t, c.unit), c.scale), "raw=%d %s scale %d: %s", c.raw, c.unit, c.scale, c.why)
	}
	for scale := MinScale; scale <= MaxScale; scale++ {
		assert.Equal(t, ReferenceIndex(12345, 8000, scale), ReferenceIndexAt(12345, 8000, scale), "scale %d", scale)
	}
	assert.Panics(t, func() { ReferenceIndexAt(1, 8, MinDownscale-1) })
	assert.Panics(t, func() { ReferenceIndexAt(1, 8, MaxScale+1) })
	assert.Panics(t, func() { ReferenceIndexAt(0, 8, -1) })
}

// fineCounts counts each raw (weight w[raw]) at the table's scale with the
// kernel's algorithm and returns the non-empty range with its index offset,
// as a data point carries it.
func fineCounts(tbl *Table, w map[uint32]uint64) ([]uint64, int32) {
	dense := make([]uint64, tbl.NumBuckets)
	for raw, n := range w {
		dense[tbl.Position(raw)] += n
	}
	first, last := -1, -1
	for i, c := range dense {
		if c != 0 {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	return dense[first : last+1], tbl.MinIndex + int32(first)
}

// checkDownscale checks Downscale by k of the counts of w against the exact
// index of every raw at scale tbl.Scale−k: the coarser table (verified
// against ReferenceIndex in TestExact) at scales ≥ 0, ReferenceIndexAt below,
// and ReferenceIndex itself for the first raws.
func checkDownscale(t *testing.T, tbl *Table, w map[uint32]uint64, k int) {
	t.Helper()
	fine, off := fineCounts(tbl, w)
	target := tbl.Scale - k
	index := func(raw uint32) int32 { return ReferenceIndexAt(raw, tbl.Divisor, target) }
	if target >= 0 {
		coarse, err := NewTable(target, tbl.Unit)
		require.NoError(t, err)
		index = coarse.Index
	}
	want := map[int32]uint64{}
	lo, hi := int32(math.MaxInt32), int32(math.MinInt32)
	var total uint64
	checked := 0
	for raw, n := range w {
		i := index(raw)
		if checked < 100 {
			require.Equal(t, ReferenceIndexAt(raw, tbl.Divisor, target), i, "raw %d at scale %d", raw, target)
			checked++
		}
		want[i] += n
		lo, hi, total = min(lo, i), max(hi, i), total+n
	}
	got, gotOff := Downscale(nil, fine, off, k)
	require.Equal(t, lo, gotOff, "offset at scale %d (k=%d)", target, k)
	require.Len(t, got, int(hi-lo)+1, "buckets at scale %d (k=%d)", target, k)
	var sum uint64
	for j, c := range got {
		if c != want[lo+int32(j)] {
			t.Fatalf("scale %d→%d: bucket %d has %d, the reference %d", tbl.Scale, target, lo+int32(j), c, want[lo+int32(j)])
		}
		sum += c
	}
	require.Equal(t, total, sum, "total at scale %d", target)
	require.NotZero(t, got[0])
	require.NotZero(t, got[len(got)-1])
}

// TestDownscaleExact: for every scale and unit, raws at and around every
// bucket boundary of the table, powers of two, the extremes and random
// raws, counted at the table's scale and downscaled by every k down to
// scale −6, land in the buckets the exact reference gives at that scale.
// Then narrow random windows, for offsets and lengths of every kind.
func TestDownscaleExact(t *testing.T) {
	forEachTable(t, func(t *testing.T, tbl *Table) {
		rng := rand.New(rand.NewPCG(uint64(tbl.Scale)+7, tbl.Divisor))
		w := map[uint32]uint64{}
		add := func(raw uint32) {
			if raw != 0 {
				w[raw] += 1 + rng.Uint64N(3)
			}
		}
		for _, b := range tbl.BoundaryRaws() {
			add(b)
			add(b + 1)
		}
		for k := range 32 {
			add(1<<k - 1)
			add(1 << k)
			add(1<<k + 1)
		}
		add(math.MaxUint32)
		for range 3000 {
			add(uint32(rng.Uint64N(uint64(1) << (1 + rng.IntN(32)))))
		}
		for k := 0; tbl.Scale-k >= -6; k++ {
			checkDownscale(t, tbl, w, k)
		}

		for range 200 {
			center := float64(rng.Uint64N(math.MaxUint32)) + 1
			if rng.IntN(2) == 0 {
				center = math.Exp2(32 * rng.Float64())
			}
			spread := math.Exp2(4 * rng.Float64()) // up to 16×
			n := 1 + rng.IntN(40)
			win := map[uint32]uint64{}
			for range n {
				raw := center * math.Exp2((rng.Float64()*2-1)*math.Log2(spread))
				if raw >= 1 && raw <= math.MaxUint32 {
					win[uint32(raw)] += 1 + rng.Uint64N(5)
				}
			}
			if len(win) == 0 {
				continue
			}
			k := rng.IntN(tbl.Scale + 7)
			checkDownscale(t, tbl, win, k)
		}
	})
}

// TestFitSteps: the steps fit and are the fewest that fit, for ranges on
// both sides of 0 and every small bound; the extremes of int32 fit in two.
func TestFitSteps(t *testing.T) {
	span := func(lo, hi int32, k int) int64 { return int64(hi>>k) - int64(lo>>k) + 1 }
	for _, maxBuckets := range []int{2, 3, 4, 5, 7, 8, 9, 33, 160, 161} {
		for lo := int32(-300); lo <= 300; lo += 7 {
			for hi := lo; hi <= lo+700; hi += 3 {
				k := FitSteps(lo, hi, maxBuckets)
				require.LessOrEqual(t, span(lo, hi, k), int64(maxBuckets), "%d..%d max %d: k=%d", lo, hi, maxBuckets, k)
				if k > 0 {
					require.Greater(t, span(lo, hi, k-1), int64(maxBuckets), "%d..%d max %d: k=%d is not the fewest", lo, hi, maxBuckets, k)
				}
			}
		}
	}
	assert.Equal(t, 0, FitSteps(5, 5, 2))
	assert.Equal(t, 0, FitSteps(-1, 0, 2))
	assert.Equal(t, 0, FitSteps(0, 159, 160))
	assert.Equal(t, 1, FitSteps(0, 160, 160), "161 buckets from an even index: pairs")
	assert.Equal(t, 0, FitSteps(1, 160, 160))
	assert.Equal(t, 1, FitSteps(1, 161, 160), "0..80 after one step")
	assert.Equal(t, 2, FitSteps(1, 320, 160), "1>>1=0 … 320>>1=160 is 161 buckets")
	assert.Equal(t, 31, FitSteps(math.MinInt32, math.MaxInt32, 2))
	assert.Equal(t, 1, FitSteps(-2, 1, 2), "−2,−1 → −1 and 0,1 → 0")
	assert.Panics(t, func() { FitSteps(0, 1, 1) })
	assert.Panics(t, func() { FitSteps(0, 1, 0) })
	assert.Panics(t, func() { FitSteps(2, 1, 160) })
}

func TestDownscaleHandChecked(t *testing.T) {
	// Buckets −3..4 at scale 1 → scale 0: (−3)>>1 = −2; −2,−1 → −1; 0,1 → 0;
	// 2,3 → 1; 4 → 2.
	got, off := Downscale(nil, []uint64{1, 2, 3, 4, 5, 6, 7, 8}, -3, 1)
	assert.Equal(t, int32(-2), off)
	assert.Equal(t, []uint64{1, 2 + 3, 4 + 5, 6 + 7, 8}, got)
	// k = 0 returns the input itself.
	in := []uint64{4, 0, 1}
	got, off = Downscale(nil, in, 9, 0)
	assert.Equal(t, int32(9), off)
	assert.Same(t, &in[0], &got[0])
	// dst is reused and cleared.
	dst := []uint64{99, 99, 99, 99}
	got, off = Downscale(dst, []uint64{1, 1, 1}, 7, 2) // 7 → 1, 8,9 → 2
	assert.Equal(t, int32(1), off)
	assert.Equal(t, []uint64{1, 2}, got)
	assert.Same(t, &dst[0], &got[0])
	assert.Panics(t, func() { Downscale(nil, in, 0, -1) })
}

// TestCoarsestScale pins the README's claims: from 3 buckets up no point
// goes below scale −4 (Prometheus' coarsest schema); with 2 it can reach −5;
// a bound of the table's NumBuckets (or MaxPointBuckets) never downscales.
func TestCoarsestScale(t *testing.T) {
	for scale := MinScale; scale <= MaxScale; scale++ {
		for _, u := range allUnits {
			tbl, err := NewTable(scale, u)
			require.NoError(t, err)
			name := fmt.Sprintf("scale %d unit %s", scale, u)
			assert.Equal(t, -4, tbl.CoarsestScale(3), name)
			assert.Equal(t, -5, tbl.CoarsestScale(2), name)
			assert.Equal(t, 0, tbl.CoarsestScale(33), name+": 33 buckets hold every raw at scale 0")
			assert.Equal(t, scale, tbl.CoarsestScale(int(tbl.NumBuckets)), name)
			assert.Equal(t, scale, tbl.CoarsestScale(MaxPointBuckets), name)
			assert.LessOrEqual(t, int(tbl.NumBuckets), MaxPointBuckets, name)
			if scale > 0 {
				assert.Equal(t, scale-1, tbl.CoarsestScale(int(tbl.NumBuckets)-1), name)
			}
		}
	}
}

// BenchmarkDownscale merges 400 buckets at scale 8 by 2 steps, one series'
// share of the converter's downscaling cost.
func BenchmarkDownscale(b *testing.B) {
	counts := make([]uint64, 400)
	for j := range counts {
		counts[j] = uint64(j + 1)
	}
	var dst []uint64
	for b.Loop() {
		dst, _ = Downscale(dst, counts, -2871, 2)
	}
}
