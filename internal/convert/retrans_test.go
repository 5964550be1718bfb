package convert

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

func retransConverter(t *testing.T, temp Temporality, noRTT bool) (*Converter, *bucket.Table) {
	t.Helper()
	table, err := bucket.NewTable(3, bucket.Microseconds)
	require.NoError(t, err)
	c, err := New(Options{Table: table, GroupBy: kmaps.GroupRemoteAddress, Temporality: temp, Start: attach,
		Retransmits: true, NoRTT: noRTT})
	require.NoError(t, err)
	return c, table
}

func metricNamed(ms pmetric.MetricSlice, name string) (pmetric.Metric, bool) {
	for i := range ms.Len() {
		if ms.At(i).Name() == name {
			return ms.At(i), true
		}
	}
	return pmetric.Metric{}, false
}

// TestRetransmitsBesideRTT: each series gets a tcp.retransmits point with
// the attributes of its tcp.rtt point; a series that only retransmitted
// gets the sum point and no empty histogram point.
func TestRetransmitsBesideRTT(t *testing.T) {
	c, table := retransConverter(t, Cumulative, false)
	g := kmaps.GroupRemoteAddress
	a := series(t, table, key(g, "10.0.0.1", "10.0.0.2", 1, 2), 0, 800, 1600)
	a.Retransmits = 3
	b := kmaps.Series{Key: key(g, "10.0.0.1", "10.0.0.3", 1, 2), Slot: 1, Retransmits: 5}
	ms := pmetric.NewMetricSlice()
	c.Append(&kmaps.Snapshot{Series: []kmaps.Series{a, b}}, scrape, ms)

	rtt, ok := metricNamed(ms, MetricName)
	require.True(t, ok)
	require.Equal(t, 1, rtt.ExponentialHistogram().DataPoints().Len(), "no histogram point for a series without samples")
	rtx, ok := metricNamed(ms, RetransMetricName)
	require.True(t, ok)
	assert.Equal(t, RetransMetricUnit, rtx.Unit())
	assert.True(t, rtx.Sum().IsMonotonic())
	assert.Equal(t, pmetric.AggregationTemporalityCumulative, rtx.Sum().AggregationTemporality())
	dps := rtx.Sum().DataPoints()
	require.Equal(t, 2, dps.Len())
	got := map[string]int64{}
	for i := range dps.Len() {
		peer, _ := dps.At(i).Attributes().Get(AttrPeerAddress)
		got[peer.Str()] = dps.At(i).IntValue()
		assert.Equal(t, attach, dps.At(i).StartTimestamp().AsTime())
	}
	assert.Equal(t, map[string]int64{"10.0.0.2": 3, "10.0.0.3": 5}, got)
	h := rtt.ExponentialHistogram().DataPoints().At(0)
	assert.Equal(t, h.Attributes().AsRaw(), dps.At(0).Attributes().AsRaw(), "same attributes as the tcp.rtt point")
}

// TestRetransmitDeltasAddUp: delta points carry the retransmits since the
// previous conversion, only for series whose count moved, and add up to
// the cumulative count.
func TestRetransmitDeltasAddUp(t *testing.T) {
	c, table := retransConverter(t, Delta, false)
	g := kmaps.GroupRemoteAddress
	s := series(t, table, key(g, "10.0.0.1", "10.0.0.2", 1, 2), 0, 800)
	var sum int64
	for i, n := range []uint64{2, 2, 7, 7, 9} {
		s.Retransmits = n
		ms := pmetric.NewMetricSlice()
		c.Append(&kmaps.Snapshot{Series: []kmaps.Series{s}}, scrape.Add(time.Duration(i)*time.Second), ms)
		rtx, ok := metricNamed(ms, RetransMetricName)
		if i > 0 && (n == 2 || n == 7) && i != 2 {
			assert.False(t, ok, "read %d: no change, no point", i)
			continue
		}
		require.True(t, ok, "read %d", i)
		dp := rtx.Sum().DataPoints().At(0)
		assert.Equal(t, pmetric.AggregationTemporalityDelta, rtx.Sum().AggregationTemporality())
		sum += dp.IntValue()
		assert.Equal(t, int64(n), sum, "read %d: deltas add up to the count", i)
	}
}

// TestRTTSwitchedOff: with tcp.rtt disabled only tcp.retransmits is
// appended.
func TestRTTSwitchedOff(t *testing.T) {
	c, table := retransConverter(t, Cumulative, true)
	s := series(t, table, key(kmaps.GroupRemoteAddress, "10.0.0.1", "10.0.0.2", 1, 2), 0, 800)
	ms := pmetric.NewMetricSlice()
	c.Append(&kmaps.Snapshot{Series: []kmaps.Series{s}}, scrape, ms)
	require.Equal(t, 1, ms.Len())
	assert.Equal(t, RetransMetricName, ms.At(0).Name())
	assert.Equal(t, int64(0), ms.At(0).Sum().DataPoints().At(0).IntValue(), "a series without retransmits reports 0")
}
