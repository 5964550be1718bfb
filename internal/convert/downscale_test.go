package convert

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

const defaultMaxBuckets = 160 // the receiver's default, the SDKs' max_size

// points returns the data points of md by peer address.
func points(t *testing.T, md pmetric.Metrics) map[string]pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	out := map[string]pmetric.ExponentialHistogramDataPoint{}
	if md.MetricCount() == 0 {
		return out
	}
	dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
	for i := range dps.Len() {
		v, ok := dps.At(i).Attributes().Get(AttrPeerAddress)
		require.True(t, ok)
		out[v.Str()] = dps.At(i)
	}
	return out
}

// checkPoint checks dp against the raw samples it covers: count, sum and
// zero count as counted, at most maxBuckets buckets, and each sample in
// the bucket the exact mapping gives at the point's scale (the tables are
// verified against bucket.ReferenceIndex; ReferenceIndex itself is used
// for the first samples).
func checkPoint(t *testing.T, dp pmetric.ExponentialHistogramDataPoint, unit bucket.Unit, maxBuckets int, raws []uint32) {
	t.Helper()
	var zero, sum uint64
	want := map[int32]uint64{}
	lo, hi := int32(math.MaxInt32), int32(math.MinInt32)
	scale := int(dp.Scale())
	divisor, err := unit.Divisor()
	require.NoError(t, err)
	index := func(raw uint32) int32 { return bucket.ReferenceIndexAt(raw, divisor, scale) }
	if scale >= 0 {
		tbl, err := bucket.NewTable(scale, unit)
		require.NoError(t, err)
		index = tbl.Index
	}
	for n, raw := range raws {
		sum += uint64(raw)
		if raw == 0 {
			zero++
			continue
		}
		i := index(raw)
		if n < 20 {
			require.Equal(t, bucket.ReferenceIndexAt(raw, divisor, scale), i, "raw %d", raw)
		}
		want[i]++
		lo, hi = min(lo, i), max(hi, i)
	}
	assert.Equal(t, uint64(len(raws)), dp.Count(), "count")
	assert.Equal(t, zero, dp.ZeroCount(), "zero count")
	if sum == 0 {
		assert.Zero(t, dp.Sum(), "sum")
	} else {
		assert.InEpsilon(t, float64(sum)/float64(divisor), dp.Sum(), 1e-12, "sum")
	}
	got := dp.Positive().BucketCounts().AsRaw()
	require.LessOrEqual(t, len(got), maxBuckets, "buckets at scale %d", scale)
	require.Equal(t, lo, dp.Positive().Offset(), "offset at scale %d", scale)
	require.Len(t, got, int(hi-lo)+1, "buckets at scale %d", scale)
	for j, c := range got {
		require.Equal(t, want[lo+int32(j)], c, "bucket %d at scale %d", lo+int32(j), scale)
	}
}

// fitsAt reports whether samples' positive range spans at most maxBuckets
// buckets at scale (the exact mapping, independent of the converter).
func fitsAt(t *testing.T, unit bucket.Unit, scale, maxBuckets int, raws []uint32) bool {
	t.Helper()
	divisor, err := unit.Divisor()
	require.NoError(t, err)
	lo, hi := int32(math.MaxInt32), int32(math.MinInt32)
	for _, raw := range raws {
		if raw != 0 {
			i := bucket.ReferenceIndexAt(raw, divisor, scale)
			lo, hi = min(lo, i), max(hi, i)
		}
	}
	return lo > hi || int(hi-lo)+1 <= maxBuckets
}

// randomRaw draws an RTT between 2 µs and 30 ms (log-uniform), sometimes 0.
func randomRaw(rng *rand.Rand) uint32 {
	if rng.IntN(50) == 0 {
		return 0
	}
	return uint32(math.Exp2(4 + rng.Float64()*14.9)) // 16 .. ~2^18.9 raw
}

// TestMaxBucketsCumulative: a series gaining samples over many scrapes
// (ever wider, the way RTTs spread) never exceeds the bound, keeps its
// counts exact, and its scale only goes down; each point is at the finest
// scale at which it fits, for every unit and a few bounds.
func TestMaxBucketsCumulative(t *testing.T) {
	for _, unit := range []bucket.Unit{bucket.Seconds, bucket.Milliseconds, bucket.Microseconds} {
		for _, maxBuckets := range []int{2, 3, 20, defaultMaxBuckets} {
			table, err := bucket.NewTable(bucket.MaxScale, unit)
			require.NoError(t, err)
			g := kmaps.GroupRemoteAddress
			c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach, MaxBuckets: maxBuckets})
			require.NoError(t, err)
			rng := rand.New(rand.NewPCG(uint64(maxBuckets), 1))
			k := key(g, "::1", "2001:db8::7", 0, 0)
			raws := []uint32{1000} // 125 µs: one bucket at scale 8
			last := int32(bucket.MaxScale)
			scales := map[int32]bool{}
			for round := range 12 {
				snap := &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, k, 3, raws...)}}
				dp, ok := points(t, convert(t, c, snap, scrape.Add(time.Duration(round)*time.Second)))["2001:db8::7"]
				require.True(t, ok)
				// From 3 buckets up no point goes below −4 (README);
				// the samples are on both sides of 1 unit only in ms.
				require.GreaterOrEqual(t, dp.Scale(), int32(-4))
				checkPoint(t, dp, unit, maxBuckets, raws)
				require.LessOrEqual(t, dp.Scale(), last, "round %d: a cumulative series' scale never rises", round)
				if dp.Scale() < bucket.MaxScale {
					assert.False(t, fitsAt(t, unit, int(dp.Scale())+1, maxBuckets, raws),
						"round %d: scale %d is not the finest that fits", round, dp.Scale())
				}
				last = dp.Scale()
				scales[last] = true
				for range 1 << round {
					raws = append(raws, randomRaw(rng))
				}
			}
			t.Logf("unit %s max %d: scales seen %v", unit, maxBuckets, scales)
			assert.Greater(t, len(scales), 1, "unit %s max %d: the test should cross scales", unit, maxBuckets)
		}
	}
}

// TestMaxBucketsCumulativeNeverRises: once lowered, a cumulative series
// stays at its scale even if a later reading would fit at a finer one (the
// kernel's counts only grow, so this takes a hand-made snapshot), while
// another series, and a new run of the same row, start at the table's scale.
func TestMaxBucketsCumulativeNeverRises(t *testing.T) {
	table, err := bucket.NewTable(8, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach, MaxBuckets: defaultMaxBuckets})
	require.NoError(t, err)
	wide, narrow := key(g, "::1", "2001:db8::1", 0, 0), key(g, "::1", "2001:db8::2", 0, 0)
	wideRaws := []uint32{80, 8000} // 10 µs and 1 ms: 6.6 octaves, 1701 buckets at scale 8
	snap := &kmaps.Snapshot{Series: []kmaps.Series{
		series(t, table, wide, 0, wideRaws...),
		series(t, table, narrow, 1, 1000, 1001),
	}}
	p := points(t, convert(t, c, snap, scrape))
	assert.Equal(t, int32(4), p["2001:db8::1"].Scale(), "1701 buckets: 4 steps give 107")
	checkPoint(t, p["2001:db8::1"], bucket.Seconds, defaultMaxBuckets, wideRaws)
	assert.Equal(t, int32(8), p["2001:db8::2"].Scale(), "a narrow series keeps the finest scale")

	// The same run (slot 0, generation 0), now narrow.
	later := []uint32{1000, 1001, 1002}
	snap = &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, wide, 0, later...)}}
	p = points(t, convert(t, c, snap, scrape.Add(time.Second)))
	assert.Equal(t, int32(4), p["2001:db8::1"].Scale(), "a cumulative series' scale does not rise")
	checkPoint(t, p["2001:db8::1"], bucket.Seconds, defaultMaxBuckets, later)

	// A new run of the row (new generation): a new series, a new scale.
	s := series(t, table, wide, 0, later...)
	s.Generation = 1
	p = points(t, convert(t, c, &kmaps.Snapshot{Series: []kmaps.Series{s}}, scrape.Add(2*time.Second)))
	assert.Equal(t, int32(8), p["2001:db8::1"].Scale(), "a new run starts at the table's scale")
}

// TestMaxBucketsDelta: each delta point is bounded on its own: a wide
// interval is downscaled, a following narrow one is not.
func TestMaxBucketsDelta(t *testing.T) {
	table, err := bucket.NewTable(8, bucket.Milliseconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Delta, Start: attach, MaxBuckets: defaultMaxBuckets})
	require.NoError(t, err)
	k := key(g, "::1", "2001:db8::3", 0, 0)
	rng := rand.New(rand.NewPCG(3, 3))
	var all, fresh []uint32
	for round := range 8 {
		fresh = fresh[:0]
		for range 50 {
			raw := randomRaw(rng)
			if round%2 == 1 { // a narrow interval: 1.00–1.25 ms
				raw = 8000 + uint32(rng.IntN(2000))
			}
			fresh = append(fresh, raw)
		}
		all = append(all, fresh...)
		snap := &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, k, 0, all...)}}
		dp, ok := points(t, convert(t, c, snap, scrape.Add(time.Duration(round)*time.Second)))["2001:db8::3"]
		require.True(t, ok)
		checkPoint(t, dp, bucket.Milliseconds, defaultMaxBuckets, fresh)
		if round%2 == 1 {
			assert.Equal(t, int32(8), dp.Scale(), "round %d: a narrow delta point after a wide one is at the finest scale", round)
		} else {
			assert.Less(t, dp.Scale(), int32(8), "round %d: wide", round)
			assert.False(t, fitsAt(t, bucket.Milliseconds, int(dp.Scale())+1, defaultMaxBuckets, fresh), "round %d: not the finest", round)
		}
	}
}

// TestMaxBucketsUnbound: MaxBuckets 0 leaves points at the table's scale
// however wide (the behaviour before max_buckets); New rejects a bound of 1
// or less, which no scale can satisfy for samples on both sides of 1 unit.
func TestMaxBucketsUnbound(t *testing.T) {
	table, err := bucket.NewTable(8, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach})
	require.NoError(t, err)
	raws := []uint32{80, 8000, 8_000_000}
	p := points(t, convert(t, c, &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, key(g, "::1", "::2", 0, 0), 0, raws...)}}, scrape))
	assert.Equal(t, int32(8), p["::2"].Scale())
	checkPoint(t, p["::2"], bucket.Seconds, bucket.MaxPointBuckets, raws)
	assert.Greater(t, p["::2"].Positive().BucketCounts().Len(), 4000)

	for _, bad := range []int{1, -1, -160} {
		_, err := New(Options{Table: table, Temporality: Cumulative, MaxBuckets: bad})
		assert.ErrorContains(t, err, "max buckets", "MaxBuckets %d", bad)
	}
}

// TestDownscaledGolden pins one downscaled and one untouched point at
// scale 8 with the default bound.
func TestDownscaledGolden(t *testing.T) {
	table, err := bucket.NewTable(8, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach, MaxBuckets: defaultMaxBuckets})
	require.NoError(t, err)
	snap := &kmaps.Snapshot{Series: []kmaps.Series{
		// 10 µs … 1 ms and a zero: 1701 buckets at scale 8, 107 at scale 4.
		series(t, table, key(g, "127.0.0.2", "127.0.0.3", 0, 0), 0, 0, 80, 100, 400, 8000, 8000),
		// 125 µs and 126 µs: 2 buckets at scale 8.
		series(t, table, key(g, "127.0.0.3", "127.0.0.2", 0, 0), 1, 1000, 1008),
	}}
	md := convert(t, c, snap, scrape)
	checkGolden(t, "cumulative_downscaled.yaml", md)
	p := points(t, md)
	checkPoint(t, p["127.0.0.3"], bucket.Seconds, defaultMaxBuckets, []uint32{0, 80, 100, 400, 8000, 8000})
	checkPoint(t, p["127.0.0.2"], bucket.Seconds, defaultMaxBuckets, []uint32{1000, 1008})
}

// BenchmarkAppendScale8 converts 10k series of 400 contiguous non-empty
// buckets at scale 8 (about 1.6 octaves, a narrow peer at the finest
// scale; four loopback peers span ~1950), unbounded and with the default
// bound, which merges them by 2 steps into 100 or 101 buckets at scale 6.
// Next to BenchmarkAppend (scale 3, 30 buckets, never downscaled) it gives
// the cost of downscaling at scrape time. In delta every bucket gains a
// sample between conversions. Without the kernel.
func BenchmarkAppendScale8(b *testing.B) {
	const width = 400
	table, err := bucket.NewTable(8, bucket.Seconds)
	require.NoError(b, err)
	g := kmaps.GroupRemoteAddress
	snap := syntheticSnapshot(table, 3000, width)
	for _, maxBuckets := range []int{0, defaultMaxBuckets} {
		for _, temp := range []Temporality{Cumulative, Delta} {
			name := fmt.Sprintf("buckets=%d/max=%d/%s", width, maxBuckets, temp)
			b.Run(name, func(b *testing.B) {
				c, err := New(Options{Table: table, GroupBy: g, Temporality: temp, Start: attach, MaxBuckets: maxBuckets})
				require.NoError(b, err)
				b.ReportAllocs()
				for b.Loop() {
					if temp == Delta {
						// A sample in every bucket, so each delta point
						// spans all 400 (outside the timing).
						b.StopTimer()
						for i := range snap.Series {
							s := &snap.Series[i]
							for j := range s.Buckets {
								s.Buckets[j]++
							}
							s.Total += uint64(len(s.Buckets))
						}
						b.StartTimer()
					}
					md := pmetric.NewMetrics()
					c.Append(snap, scrape, md.ResourceMetrics().AppendEmpty().ScopeMetrics().AppendEmpty().Metrics())
				}
			})
		}
	}
}
