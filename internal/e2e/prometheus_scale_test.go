//go:build linux

package e2e

import (
	"math"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// defaultMaxBuckets is the receiver's default max_buckets.
const defaultMaxBuckets = 160

// TestPrometheusScale8 runs the Prometheus test at scale 8 with the
// default max_buckets: points wider than 160 buckets are downscaled by the
// receiver. A second receiver in the same collector, tcprtt/full, counts
// the same segments at scale 8 with max_buckets 8193 (never downscaled),
// into a sink of its own: its final points are the kernel's counts, which
// the bounded points must equal, merged. Prometheus gets the bounded
// points; the test logs the schema they arrived with and holds its
// quantiles against the receiver's own buckets.
func TestPrometheusScale8(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Prometheus and the otelcol-tcprtt binary; skipped with -short")
	}
	testenv.RequireBPF(t)

	promBin := prometheusBinary(t)
	colBin := collectorBinary(t)
	prom := startPrometheus(t, promBin)
	sink, full := newOTLPSink(t), newOTLPSink(t)
	cfg := writePrometheusConfig(t, prom.url+"/api/v1/otlp", sink.url, "    scale: 8\n", full.url, []string{promPeerFilter})
	col := startProcessEnv(t, append(os.Environ(), "HOST_NAME="+promHostName), colBin, "--config="+cfg)
	col.waitReady(t, readyTimeout)

	closed := runPrometheusTraffic(t)
	final := waitFinalPoints(t, sink, col, closed)
	fullFinal := waitFinalPoints(t, full, col, closed)
	require.NoError(t, sink.err(), "OTLP endpoint")
	require.NoError(t, full.err(), "OTLP endpoint of tcprtt/full")

	checkBoundedExports(t, sink.metrics(), full.metrics())
	for _, peer := range sortedKeys(final) {
		checkMergedFromKernel(t, peer, final[peer], fullFinal[peer])
	}

	series := waitPrometheusCounts(t, prom, final)
	checkPrometheusSeries(t, series, final)
	for _, s := range series {
		peer := s.Metric[promPeerLabel]
		h, err := parseHistogram(s.Histogram[1])
		require.NoError(t, err)
		buckets, err := h.buckets()
		require.NoError(t, err)
		schema, ok := schemaOf(t, buckets)
		if assert.True(t, ok, "%s: no positive bucket to read the schema from", peer) {
			t.Logf("peer %s (%s): Prometheus stored schema %d; the receiver's point has scale %d, %d buckets (unbounded: %d at scale %d)",
				peer, promPeers[peer], schema, final[peer].Scale(), final[peer].Positive().BucketCounts().Len(),
				fullFinal[peer].Positive().BucketCounts().Len(), fullFinal[peer].Scale())
			assert.Equal(t, final[peer].Scale(), schema, "%s: schema in Prometheus", peer)
		}
	}
	checkPrometheusQueries(t, prom, final, promPeers)
	// The quantile's bucket of a bounded point is the coarse bucket that
	// holds the quantile's bucket at scale 8: downscaling moved no sample.
	for _, peer := range sortedKeys(final) {
		k := fullFinal[peer].Scale() - final[peer].Scale()
		for _, q := range promQuantiles {
			coarse, fine := quantileBucket(final[peer], q), quantileBucket(fullFinal[peer], q)
			assert.Equal(t, fine.zero, coarse.zero, "%s p%g: zero bucket in one point only", peer, q*100)
			if !fine.zero {
				assert.Equal(t, fine.index>>k, coarse.index, "%s p%g: scale-8 bucket %d is not inside bucket %d at scale %d",
					peer, q*100, fine.index, coarse.index, final[peer].Scale())
			}
		}
	}

	col.stop(t)
	require.NoError(t, sink.err(), "OTLP endpoint")
	prom.stop(t)
}

// checkBoundedExports checks every point either receiver exported: the
// bounded ones never above 160 buckets nor below scale −4, each peer's
// scale never rising from one export to the next (cumulative); the
// unbounded ones all at scale 8.
func checkBoundedExports(t *testing.T, bounded, unbounded []pmetric.Metrics) {
	t.Helper()
	last := map[string]int32{}
	scales := map[string]map[int32]int{}
	widest := 0
	for _, md := range bounded {
		forEachPoint(md, func(dp pmetric.ExponentialHistogramDataPoint) {
			v, _ := dp.Attributes().Get(attrPeerAddr)
			peer := v.Str()
			n := dp.Positive().BucketCounts().Len()
			assert.LessOrEqual(t, n, defaultMaxBuckets, "%s: point of %d buckets at scale %d", peer, n, dp.Scale())
			assert.GreaterOrEqual(t, dp.Scale(), int32(-4), "%s: scale below Prometheus' schemas", peer)
			assert.LessOrEqual(t, dp.Scale(), int32(8), "%s: scale above the configured 8", peer)
			if prev, ok := last[peer]; ok {
				assert.LessOrEqual(t, dp.Scale(), prev, "%s: a cumulative series' scale rose", peer)
			}
			last[peer] = dp.Scale()
			if scales[peer] == nil {
				scales[peer] = map[int32]int{}
			}
			scales[peer][dp.Scale()]++
		})
	}
	for _, md := range unbounded {
		forEachPoint(md, func(dp pmetric.ExponentialHistogramDataPoint) {
			assert.Equal(t, int32(8), dp.Scale(), "an unbounded point")
			widest = max(widest, dp.Positive().BucketCounts().Len())
		})
	}
	for _, peer := range sortedKeys(scales) {
		t.Logf("peer %s: exported points by scale %v", peer, scales[peer])
	}
	t.Logf("widest unbounded point: %d buckets at scale 8", widest)
}

// checkMergedFromKernel checks that the bounded final point of a peer is
// the unbounded one (the kernel's counts at scale 8) merged by the scale
// difference k, bucket i into i>>k: same count, zero count and sum, the
// fewest steps that fit 160 buckets.
func checkMergedFromKernel(t *testing.T, peer string, dp, kernel pmetric.ExponentialHistogramDataPoint) {
	t.Helper()
	require.Equal(t, int32(8), kernel.Scale())
	assert.Equal(t, kernel.Count(), dp.Count(), "%s: count", peer)
	assert.Equal(t, kernel.ZeroCount(), dp.ZeroCount(), "%s: zero count", peer)
	assert.InEpsilon(t, kernel.Sum(), dp.Sum(), 1e-12, "%s: sum", peer)
	k := kernel.Scale() - dp.Scale()
	require.GreaterOrEqual(t, k, int32(0), "%s: bounded point finer than the kernel's", peer)
	want := map[int32]uint64{}
	lo, hi := int32(math.MaxInt32), int32(math.MinInt32)
	kb := kernel.Positive().BucketCounts().AsRaw()
	for j, c := range kb {
		i := (kernel.Positive().Offset() + int32(j)) >> k
		want[i] += c
		lo, hi = min(lo, i), max(hi, i)
	}
	got := dp.Positive().BucketCounts().AsRaw()
	if len(kb) == 0 {
		assert.Empty(t, got, "%s", peer)
		return
	}
	assert.Equal(t, lo, dp.Positive().Offset(), "%s: offset", peer)
	if assert.Len(t, got, int(hi-lo)+1, "%s: buckets", peer) {
		for j, c := range got {
			assert.Equal(t, want[lo+int32(j)], c, "%s: bucket %d at scale %d", peer, lo+int32(j), dp.Scale())
		}
	}
	// The fewest steps: one fewer would not fit.
	if k > 0 {
		first, last := kernel.Positive().Offset(), kernel.Positive().Offset()+int32(len(kb))-1
		assert.Greater(t, int(last>>(k-1)-first>>(k-1))+1, defaultMaxBuckets, "%s: %d steps are more than needed", peer, k)
	}
	t.Logf("peer %s: kernel's %d buckets at scale 8 → %d at scale %d, count %d", peer, len(kb), len(got), dp.Scale(), dp.Count())
}

// schemaOf reads the schema of a native histogram from its positive
// buckets: at schema n each bucket spans a factor 2^(2^-n), so
// n = −log2(log2(upper/lower)). ok is false without a positive bucket.
func schemaOf(t *testing.T, buckets []promBucket) (schema int32, ok bool) {
	t.Helper()
	for _, b := range buckets {
		if b.lower <= 0 {
			continue // the zero bucket
		}
		f := -math.Log2(math.Log2(b.upper / b.lower))
		n := int32(math.Round(f))
		require.InDelta(t, float64(n), f, 1e-6, "bucket (%g, %g] is not a power-of-two-of-two wide", b.lower, b.upper)
		if ok {
			require.Equal(t, schema, n, "buckets of two schemas")
		}
		schema, ok = n, true
	}
	return schema, ok
}
