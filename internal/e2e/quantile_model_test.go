//go:build linux

package e2e

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// TestNeighbourhoodSparse: in a sparse point whose median rank lies
// exactly on the upper boundary of its bucket, histogram_quantile counts
// from the top and answers the lower bound of the next non-empty bucket,
// which is several indexes away (seen with a loss peer's 46 samples in
// TestPrometheusNativeHistogram: receiver bucket (9.89µs, 10.79µs],
// PromQL 25.66µs, as interpolate says). neighbourhood must hold it.
func TestNeighbourhoodSparse(t *testing.T) {
	dp := pmetric.NewExponentialHistogramDataPoint()
	dp.SetScale(3)
	dp.Positive().SetOffset(-133)
	counts := make([]uint64, 11) // indexes -133 .. -123
	counts[0], counts[10] = 23, 23
	dp.Positive().BucketCounts().FromRaw(counts)
	dp.SetCount(46)

	b := quantileBucket(dp, 0.5)
	assert.Equal(t, int32(-133), b.index, "median bucket")
	model := interpolate(dp, 0.5)
	assert.Equal(t, bucketBound(3, -123), model, "interpolate: the lower bound of the bucket counted from the top")
	lo, hi := neighbourhood(dp, b)
	assert.True(t, model >= lo && model <= hi, "model %g outside the neighbourhood [%g, %g] of bucket %s", model, lo, hi, b.interval())
	assert.Equal(t, bucketBound(3, -133), lo, "nothing below: the bucket's own lower bound")
	assert.Equal(t, bucketBound(3, -122), hi, "the upper bound of the next non-empty bucket")

	// Dense neighbours: the adjacent indexes, as before.
	dp.Positive().BucketCounts().FromRaw([]uint64{5, 10, 5})
	dp.SetCount(20)
	b = quantileBucket(dp, 0.5)
	lo, hi = neighbourhood(dp, b)
	assert.Equal(t, int32(-132), b.index)
	assert.Equal(t, bucketBound(3, -133), lo)
	assert.Equal(t, bucketBound(3, -130), hi)

	// The zero bucket: up to the upper bound of the lowest positive one.
	dp.SetZeroCount(30)
	dp.SetCount(50)
	b = quantileBucket(dp, 0.5)
	lo, hi = neighbourhood(dp, b)
	assert.True(t, b.zero, "median in the zero bucket")
	assert.Zero(t, lo)
	assert.Equal(t, bucketBound(3, -132), hi)
}
