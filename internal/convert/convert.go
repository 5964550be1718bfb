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
	// Cgroups names the cgroup ids of the series keys when GroupBy has
	// kmaps.GroupCgroup (see AppendResources); nil reports ids alone.
	Cgroups CgroupResolver
}

// seriesID identifies one cumulative run of counts: the row (slot) and
// its generation; a recycled row starts a new run with a new generation.
type seriesID struct {
	slot, generation uint32
}

// state is what the converter remembers of a series between calls.
type state struct {
	key   kmaps.Key
	start pcommon.Timestamp // of its cumulative run
	attrs pcommon.Map       // built once per series
	seen  uint64            // conversion round, to forget series that vanished

	// Last exported counts (delta only): a series, to reuse its layout.
	prev kmaps.Series
}

// Converter converts snapshots of one program instance. It is not safe for
// concurrent use; the scraper calls it from one goroutine.
type Converter struct {
	opts     Options
	divisor  float64
	series   map[seriesID]*state
	lastTime time.Time
	round    uint64
	delta    kmaps.Series // scratch

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
	return &Converter{
		opts:     opts,
		divisor:  float64(opts.Table.Divisor),
		series:   map[seriesID]*state{},
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
func (c *Converter) Append(snap *kmaps.Snapshot, now time.Time, ms pmetric.MetricSlice) {
	c.round++
	c.appendMetric(snap.Series, now, ms)
	c.endRound(now)
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
		id := seriesID{slot: s.Slot, generation: s.Generation}
		st, ok := c.series[id]
		if !ok || st.key != s.Key {
			st = c.newState(s, last)
			c.series[id] = st
		}
		st.seen = c.round
		if !delta {
			c.appendPoint(dps, st, s, st.start, ts)
			continue
		}
		p := &st.prev
		if s.Total == p.Total {
			continue // no new samples
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

// endRound forgets the series not seen in the round that ends at now.
func (c *Converter) endRound(now time.Time) {
	for id, st := range c.series {
		if st.seen != c.round {
			delete(c.series, id)
		}
	}
	c.lastTime = now
}

func (c *Converter) newState(s *kmaps.Series, start pcommon.Timestamp) *state {
	st := &state{key: s.Key, start: start, attrs: pcommon.NewMap()}
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
	dp.SetScale(int32(c.opts.Table.Scale))
	dp.SetZeroThreshold(0)
	dp.SetZeroCount(counts.Zero)
	dp.SetSum(float64(counts.Sum) / c.divisor)
	dp.SetCount(counts.Total)
	if len(counts.Buckets) > 0 {
		dp.Positive().SetOffset(c.opts.Table.MinIndex + int32(counts.Offset))
		dp.Positive().BucketCounts().FromRaw(counts.Buckets)
	}
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
