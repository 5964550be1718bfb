// Package convert turns kernel-map snapshots into the tcp.rtt OTLP
// exponential histogram. The kernel only ever adds to its counts; delta
// temporality is computed here from consecutive cumulative snapshots, so
// no sample is lost between reads.
package convert

import (
	"fmt"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Metric identity.
const (
	MetricName        = "tcp.rtt"
	MetricDescription = "Smoothed round-trip time of established TCP connections, " +
		"sampled on each received segment."
)

// Semantic-convention attribute names.
const (
	AttrLocalAddress = "network.local.address"
	AttrPeerAddress  = "network.peer.address"
	AttrLocalPort    = "network.local.port"
	AttrPeerPort     = "network.peer.port"
	AttrNetworkType  = "network.type"
	// AttrOverflow marks the series of samples that found no room of their
	// own, as the OpenTelemetry SDKs mark cardinality overflow.
	AttrOverflow = "otel.metric.overflow"
)

// Temporality of the exported points.
type Temporality string

const (
	Cumulative Temporality = "cumulative"
	Delta      Temporality = "delta"
)

// Options configure a Converter.
type Options struct {
	Table       *bucket.Table
	GroupBy     kmaps.GroupBy
	Temporality Temporality
	// Start is when counting began (the program's attach time).
	Start time.Time
	// MaxBuckets bounds the positive buckets of a point, as the SDKs'
	// max_size does: a point whose populated range does not fit at the
	// table's scale is exported at the finest coarser scale at which it
	// fits. 0 means no bound (points stay at the table's scale).
	MaxBuckets int
	// Cgroups names the cgroup ids of the series keys when GroupBy has
	// kmaps.GroupCgroup (see AppendResources); nil reports ids alone.
	Cgroups CgroupResolver
	// NoRTT leaves the tcp.rtt metric out (metrics: tcp.rtt: enabled: false).
	NoRTT bool
	// Retransmits adds the tcp.retransmits metric (retrans.go).
	Retransmits bool
}

// state is what the converter remembers of a series between calls.
type state struct {
	key   kmaps.Key
	start pcommon.Timestamp // of its cumulative run
	attrs pcommon.Map       // built once per series
	seen  uint64            // conversion round, to forget series that vanished

	// Last exported counts (delta only): a series, to reuse its layout.
	prev kmaps.Series
	// Retransmits at the last tcp.retransmits delta point.
	prevRetrans uint64

	// scale of the last cumulative point: a cumulative series only ever
	// goes down in scale, as in the SDKs, so a backend sees one
	// consistent series. Unused in delta, where each point is on its own.
	scale int32
}

// Converter converts snapshots of one program instance. It is not safe for
// concurrent use; the scraper calls it from one goroutine.
type Converter struct {
	opts     Options
	divisor  float64
	series   map[kmaps.RowID]*state
	lastTime time.Time
	round    uint64
	delta    kmaps.Series // scratch
	merged   []uint64     // scratch of downscaled buckets (FromRaw copies)

	// Scratch of AppendResources.
	byCgroup []cgroupSeries
	group    []kmaps.Series
}

// New returns a Converter for opts.
func New(opts Options) (*Converter, error) {
	if opts.Table == nil {
		return nil, fmt.Errorf("convert: no bucket table")
	}
	if opts.Temporality != Cumulative && opts.Temporality != Delta {
		return nil, fmt.Errorf("convert: unknown temporality %q", opts.Temporality)
	}
	if opts.MaxBuckets != 0 && opts.MaxBuckets < bucket.MinMaxBuckets {
		return nil, fmt.Errorf("convert: max buckets %d is below %d (0 for no bound)", opts.MaxBuckets, bucket.MinMaxBuckets)
	}
	return &Converter{
		opts:     opts,
		divisor:  float64(opts.Table.Divisor),
		series:   map[kmaps.RowID]*state{},
		lastTime: opts.Start,
	}, nil
}

// Table is the bucket table the converter maps positions with.
func (c *Converter) Table() *bucket.Table { return c.opts.Table }

// Append appends the tcp.rtt metric for snap, observed at now, to ms,
// unless it would have no data point. The series must be summarized
// (kmaps.DecodeRow does it).
//
// A cumulative series starts when the program attached, or, for a series
// first seen later (a new peer after an idle one expired, say), at the
// previous conversion, before which it had no samples. In delta
// temporality a point covers the samples since the previous conversion,
// and series without new samples are left out.
//
// With Options.MaxBuckets, a point is at the table's scale or, if its
// populated range does not fit, at the finest coarser scale where it does;
// a cumulative series never goes back up in scale, a delta point is sized
// on its own.
func (c *Converter) Append(snap *kmaps.Snapshot, now time.Time, ms pmetric.MetricSlice) {
	c.round++
	c.appendMetrics(snap.Series, now, ms)
	c.endRound(snap, now)
}

// appendMetric appends the tcp.rtt metric of series to ms, within the
// round begun by the caller.
func (c *Converter) appendMetric(series []kmaps.Series, now time.Time, ms pmetric.MetricSlice) {
	m := ms.AppendEmpty()
	m.SetName(MetricName)
	m.SetDescription(MetricDescription)
	m.SetUnit(string(c.opts.Table.Unit))
	h := m.SetEmptyExponentialHistogram()
	dps := h.DataPoints()
	dps.EnsureCapacity(len(series))
	ts := pcommon.NewTimestampFromTime(now)
	last := pcommon.NewTimestampFromTime(c.lastTime)
	delta := c.opts.Temporality == Delta
	if delta {
		h.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	} else {
		h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	}

	for i := range series {
		s := &series[i]
		st := c.stateOf(s, last)
		if !delta {
			if s.Total == 0 {
				continue // a series that only retransmitted: no sample yet
			}
			c.appendPoint(dps, st, s, st.start, ts)
			continue
		}
		p := &st.prev
		// No new samples. A sum that moved alone still goes out: the sum
		// is read after the counts, so it may hold a sample whose count
		// comes at the next read, and the deltas must add up to the
		// cumulative sum at every read.
		if s.Total == p.Total && s.Sum == p.Sum {
			continue
		}
		s.Since(p, &c.delta)
		c.appendPoint(dps, st, &c.delta, last, ts)
		s.CopyCounts(p)
	}
	if dps.Len() == 0 {
		// No TCP traffic yet (or none new, in delta): a metric without
		// points says nothing, so there is none.
		ms.RemoveIf(func(x pmetric.Metric) bool {
			return x.Name() == MetricName && x.Type() == pmetric.MetricTypeExponentialHistogram &&
				x.ExponentialHistogram().DataPoints().Len() == 0
		})
	}
}

// endRound forgets the series not seen in the round that ends at now,
// but for those snap says are pending: their final point is still to
// come, and continues their stream.
func (c *Converter) endRound(snap *kmaps.Snapshot, now time.Time) {
	for _, id := range snap.Pending {
		if st, ok := c.series[id]; ok {
			st.seen = c.round
		}
	}
	for id, st := range c.series {
		if st.seen != c.round {
			delete(c.series, id)
		}
	}
	c.lastTime = now
}

// appendMetrics appends the enabled metrics of series to ms.
func (c *Converter) appendMetrics(series []kmaps.Series, now time.Time, ms pmetric.MetricSlice) {
	if !c.opts.NoRTT {
		c.appendMetric(series, now, ms)
	}
	if c.opts.Retransmits {
		c.appendRetransmits(series, now, ms)
	}
}

// stateOf returns the state of series s, new (starting at start) if the
// row's run or its key changed, and marks it seen in this round.
func (c *Converter) stateOf(s *kmaps.Series, start pcommon.Timestamp) *state {
	id := kmaps.RowID{Slot: s.Slot, Generation: s.Generation}
	st, ok := c.series[id]
	if !ok || st.key != s.Key {
		st = c.newState(s, start)
		c.series[id] = st
	}
	st.seen = c.round
	return st
}

func (c *Converter) newState(s *kmaps.Series, start pcommon.Timestamp) *state {
	st := &state{key: s.Key, start: start, attrs: pcommon.NewMap(), scale: int32(c.opts.Table.Scale)}
	c.setAttributes(st.attrs, s)
	return st
}

// appendPoint appends the data point of counts, a summarized series
// (cumulative) or the difference of two readings (delta).
func (c *Converter) appendPoint(dps pmetric.ExponentialHistogramDataPointSlice, st *state,
	counts *kmaps.Series, start, ts pcommon.Timestamp,
) {
	dp := dps.AppendEmpty()
	dp.SetStartTimestamp(start)
	dp.SetTimestamp(ts)
	st.attrs.CopyTo(dp.Attributes())
	scale, buckets, offset := c.bound(st, counts)
	dp.SetScale(scale)
	dp.SetZeroThreshold(0)
	dp.SetZeroCount(counts.Zero)
	dp.SetSum(float64(counts.Sum) / c.divisor)
	dp.SetCount(counts.Total)
	if len(buckets) > 0 {
		dp.Positive().SetOffset(offset)
		dp.Positive().BucketCounts().FromRaw(buckets)
	}
}

// bound returns the scale, positive buckets and offset of the point of
// counts: the kernel's buckets at the table's scale if they fit in
// MaxBuckets, else merged by the fewest steps that make them fit (and, in
// cumulative, at least as many as the series' previous point had). The
// merge is exact (bucket.Downscale); count, sum and zero count are
// untouched. The buckets may alias c.merged until the next call.
func (c *Converter) bound(st *state, counts *kmaps.Series) (int32, []uint64, int32) {
	t := c.opts.Table
	offset := t.MinIndex + int32(counts.Offset)
	steps := 0
	cumulative := c.opts.Temporality == Cumulative
	if cumulative {
		steps = t.Scale - int(st.scale)
	}
	if c.opts.MaxBuckets > 0 && len(counts.Buckets) > 0 {
		steps = max(steps, bucket.FitSteps(offset, offset+int32(len(counts.Buckets))-1, c.opts.MaxBuckets))
	}
	scale := int32(t.Scale - steps)
	if cumulative {
		st.scale = scale
	}
	if steps == 0 {
		return scale, counts.Buckets, offset
	}
	c.merged, offset = bucket.Downscale(c.merged, counts.Buckets, offset, steps)
	return scale, c.merged, offset
}

func (c *Converter) setAttributes(attrs pcommon.Map, s *kmaps.Series) {
	if s.Overflow {
		attrs.PutBool(AttrOverflow, true)
		return
	}
	g := c.opts.GroupBy
	if g == 0 {
		return
	}
	attrs.EnsureCapacity(5)
	if g.Has(kmaps.GroupLocalAddress) {
		attrs.PutStr(AttrLocalAddress, s.Key.LocalAddress().String())
	}
	if g.Has(kmaps.GroupLocalPort) {
		attrs.PutInt(AttrLocalPort, int64(s.Key.LocalPort))
	}
	if g.Has(kmaps.GroupRemoteAddress) {
		attrs.PutStr(AttrPeerAddress, s.Key.RemoteAddress().String())
	}
	if g.Has(kmaps.GroupRemotePort) {
		attrs.PutInt(AttrPeerPort, int64(s.Key.RemotePort))
	}
	attrs.PutStr(AttrNetworkType, s.Key.NetworkType())
}
