package bucket

import (
	"fmt"
	"math"
	"math/big"
)

// Downscaling, as the OpenTelemetry SDKs bound an exponential histogram
// (max_size): lowering the scale by k merges each run of 2^k neighbouring
// buckets into one. At scale s, bucket i holds (2^(i/2^s), 2^((i+1)/2^s)];
// at scale s−k, bucket j holds (2^(j·2^k/2^s), 2^((j+1)·2^k/2^s)]. With
// j = i>>k (arithmetic shift, i.e. floor(i/2^k), also for negative i),
// j·2^k ≤ i and i+1 ≤ (j+1)·2^k, so bucket i lies wholly inside bucket j:
// the merged counts are the exact counts of the coarser buckets, with no
// sample moved across a boundary. Nothing here rounds or guesses.

// MaxPointBuckets is the widest positive range a data point can have: the
// number of buckets the raws 1..2^32−1 span at MaxScale (just under 32
// octaves of 2^8 buckets, cut by partial buckets at both ends).
// A bound of at least this many never downscales.
const MaxPointBuckets = 32<<MaxScale + 1

// MinMaxBuckets is the smallest usable bound. Index −1 holds values just
// up to 1 and index 0 values just above it at every scale (1 is base^0),
// so a point with samples on both sides of 1 needs two buckets whatever
// the scale. The Java SDK rejects a max_size below 2 for the same reason.
const MinMaxBuckets = 2

// FitSteps returns the smallest k ≥ 0 for which the buckets lo..hi
// (lo ≤ hi, indexes at some scale s) span at most maxBuckets buckets at
// scale s−k, i.e. (hi>>k) − (lo>>k) + 1 ≤ maxBuckets. It panics if
// maxBuckets < MinMaxBuckets or lo > hi, programming errors (the config is
// validated). The loop ends by k = 31 at the latest: every int32 shifted
// by 31 is −1 or 0.
func FitSteps(lo, hi int32, maxBuckets int) int {
	if maxBuckets < MinMaxBuckets {
		panic(fmt.Sprintf("bucket: FitSteps: maxBuckets %d < %d", maxBuckets, MinMaxBuckets))
	}
	if lo > hi {
		panic(fmt.Sprintf("bucket: FitSteps: empty range %d..%d", lo, hi))
	}
	k := 0
	for int64(hi>>k)-int64(lo>>k)+1 > int64(maxBuckets) {
		k++
	}
	return k
}

// Downscale merges counts, where counts[j] is the count of bucket
// offset+j at some scale s, into the buckets of scale s−k. It returns the
// merged counts, written over dst's storage (grown if needed), and their
// offset offset>>k. With k = 0 it returns counts itself. Non-empty first
// and last buckets stay non-empty, and the total is unchanged.
func Downscale(dst, counts []uint64, offset int32, k int) ([]uint64, int32) {
	if k < 0 {
		panic(fmt.Sprintf("bucket: Downscale: negative steps %d", k))
	}
	if k == 0 || len(counts) == 0 {
		return counts, offset
	}
	lo := offset >> k
	n := int((offset+int32(len(counts))-1)>>k-lo) + 1
	if cap(dst) < n {
		dst = make([]uint64, n)
	} else {
		dst = dst[:n]
		clear(dst)
	}
	// Buckets offset+j that share j's coarse bucket are consecutive, so
	// walk the fine buckets once, advancing the coarse one every 2^k.
	for j, c := range counts {
		dst[int((offset+int32(j))>>k-lo)] += c
	}
	return dst, lo
}

// CoarsestScale returns the scale a point holding every raw the table can
// map (1 to 2^32−1) would be downscaled to with maxBuckets: no point of
// this table's scale and unit ever goes below it. With maxBuckets ≥ 3 it
// is ≥ −4 for every table (Prometheus' coarsest native-histogram schema);
// with maxBuckets = 2 it can be −5.
func (t *Table) CoarsestScale(maxBuckets int) int {
	return t.Scale - FitSteps(t.MinIndex, t.MinIndex+int32(t.NumBuckets)-1, maxBuckets)
}

// MinDownscale is the coarsest scale ReferenceIndexAt accepts, the
// SDKs' minimum. No point of this receiver goes below −5 (CoarsestScale).
const MinDownscale = -10

// ReferenceIndexAt is ReferenceIndex extended to the negative scales a
// downscaled point can have: at scale −m (base 2^(2^m)) the index of
// v = raw/divisor is the largest i with v > 2^(i·2^m), decided with
// math/big (raw > divisor·2^e for e = i·2^m ≥ 0, raw·2^−e > divisor for
// e < 0). It does not use the shift it serves to check. Slow; for tests.
// It panics on raw 0, divisor 0 or a scale outside MinDownscale..MaxScale.
func ReferenceIndexAt(raw uint32, divisor uint64, scale int) int32 {
	if scale >= 0 {
		return ReferenceIndex(raw, divisor, scale)
	}
	if scale < MinDownscale {
		panic(fmt.Sprintf("bucket: ReferenceIndexAt: scale %d below %d", scale, MinDownscale))
	}
	if raw == 0 || divisor == 0 {
		panic("bucket: ReferenceIndexAt: raw and divisor must be > 0")
	}
	m := uint(-scale)
	above := func(i int64) bool {
		r, q := new(big.Int).SetUint64(uint64(raw)), new(big.Int).SetUint64(divisor)
		if e := i << m; e >= 0 {
			q.Lsh(q, uint(e))
		} else {
			r.Lsh(r, uint(-e))
		}
		return r.Cmp(q) > 0
	}
	// A float first guess, made exact by the loops (above is monotone in i).
	i := int64(math.Floor(math.Log2(float64(raw)/float64(divisor)) / math.Exp2(float64(m))))
	for !above(i) {
		i--
	}
	for above(i + 1) {
		i++
	}
	return int32(i)
}
