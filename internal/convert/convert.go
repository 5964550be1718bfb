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
}

// seriesID identifies one cumulative run of counts: a recycled row starts
// a new run with a new generation.
type seriesID struct {
	key        kmaps.Key
	overflow   bool
	slot       uint32
	generation uint32
}

// state is what the converter remembers of a series between calls.
type state struct {
	start     pcommon.Timestamp // of its cumulative run
	zero, sum uint64            // last exported (delta only)
	buckets   []uint64
	seen      uint64 // conversion round, to forget series that vanished
}

// Converter converts snapshots of one program instance. It is not safe for
// concurrent use; the scraper calls it from one goroutine.
type Converter struct {
	opts     Options
	divisor  float64
	series   map[seriesID]*state
	lastTime time.Time
	round    uint64
	delta    []uint64 // scratch
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

// Append appends the tcp.rtt metric for snap, observed at now, to ms.
//
// A cumulative series starts when the program attached, or, for a series
// first seen later (a new peer after an idle one expired, say), at the
// previous conversion, before which it had no samples. In delta
// temporality series without new samples since the last call are left
// out.
func (c *Converter) Append(snap *kmaps.Snapshot, now time.Time, ms pmetric.MetricSlice) {
	m := ms.AppendEmpty()
	m.SetName(MetricName)
	m.SetDescription(MetricDescription)
	m.SetUnit(string(c.opts.Table.Unit))
	h := m.SetEmptyExponentialHistogram()
	dps := h.DataPoints()
	dps.EnsureCapacity(len(snap.Series))
	ts := pcommon.NewTimestampFromTime(now)
	last := pcommon.NewTimestampFromTime(c.lastTime)
	delta := c.opts.Temporality == Delta
	if delta {
		h.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	} else {
		h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	}

	c.round++
	for i := range snap.Series {
		s := &snap.Series[i]
		id := seriesID{key: s.Key, overflow: s.Overflow, slot: s.Slot, generation: s.Generation}
		st, ok := c.series[id]
		if !ok {
			st = &state{start: last}
			if delta {
				st.buckets = make([]uint64, len(s.Buckets))
			}
			c.series[id] = st
		}
		st.seen = c.round
		if !delta {
			c.appendPoint(dps, s, s.Zero, s.Sum, s.Buckets, st.start, ts)
			continue
		}
		c.delta = c.delta[:0]
		changed := s.Zero != st.zero
		for b, v := range s.Buckets {
			d := v - st.buckets[b]
			changed = changed || d != 0
			c.delta = append(c.delta, d)
		}
		if changed {
			c.appendPoint(dps, s, s.Zero-st.zero, s.Sum-st.sum, c.delta, last, ts)
		}
		st.zero, st.sum = s.Zero, s.Sum
		copy(st.buckets, s.Buckets)
	}
	for id, st := range c.series {
		if st.seen != c.round {
			delete(c.series, id)
		}
	}
	c.lastTime = now
}

func (c *Converter) appendPoint(dps pmetric.ExponentialHistogramDataPointSlice, s *kmaps.Series,
	zero, rawSum uint64, buckets []uint64, start, ts pcommon.Timestamp,
) {
	dp := dps.AppendEmpty()
	dp.SetStartTimestamp(start)
	dp.SetTimestamp(ts)
	c.setAttributes(dp.Attributes(), s)
	dp.SetScale(int32(c.opts.Table.Scale))
	dp.SetZeroThreshold(0)
	dp.SetZeroCount(zero)
	dp.SetSum(float64(rawSum) / c.divisor)

	count := zero
	first, last := -1, -1
	for i, v := range buckets {
		if v == 0 {
			continue
		}
		count += v
		if first < 0 {
			first = i
		}
		last = i
	}
	dp.SetCount(count)
	if first >= 0 {
		dp.Positive().SetOffset(c.opts.Table.MinIndex + int32(first))
		dp.Positive().BucketCounts().FromRaw(buckets[first : last+1])
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
