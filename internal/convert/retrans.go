package convert

import (
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// The retransmit metric: named after tcp.rtt's root, as the open
// semantic-convention proposal for TCP metrics names its counter of
// retransmitted segments (system.network.tcp.retransmits,
// open-telemetry/semantic-conventions#3682), with a curly-brace unit of
// what it counts.
const (
	RetransMetricName        = "tcp.retransmits"
	RetransMetricUnit        = "{segment}"
	RetransMetricDescription = "TCP segments retransmitted by the series' sockets " +
		"(as the kernel counts them in tcpi_total_retrans), counted at each retransmission that leaves TCP."
)

// appendRetransmits appends the tcp.retransmits sum of series to ms: a
// monotonic sum with the attributes (and, through the caller, the
// resource) of the tcp.rtt series of the same row. Cumulative points
// cover every series, those without retransmissions too (so that a rate
// per peer is 0, not absent); delta points only the series whose count
// moved since the previous conversion.
func (c *Converter) appendRetransmits(series []kmaps.Series, now time.Time, ms pmetric.MetricSlice) {
	m := ms.AppendEmpty()
	m.SetName(RetransMetricName)
	m.SetDescription(RetransMetricDescription)
	m.SetUnit(RetransMetricUnit)
	sum := m.SetEmptySum()
	sum.SetIsMonotonic(true)
	delta := c.opts.Temporality == Delta
	if delta {
		sum.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	} else {
		sum.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	}
	dps := sum.DataPoints()
	dps.EnsureCapacity(len(series))
	ts := pcommon.NewTimestampFromTime(now)
	last := pcommon.NewTimestampFromTime(c.lastTime)
	for i := range series {
		s := &series[i]
		st := c.stateOf(s, last)
		start, v := st.start, s.Retransmits
		if delta {
			if s.Retransmits == st.prevRetrans {
				continue
			}
			start, v = last, s.Retransmits-st.prevRetrans
			st.prevRetrans = s.Retransmits
		}
		dp := dps.AppendEmpty()
		dp.SetStartTimestamp(start)
		dp.SetTimestamp(ts)
		dp.SetIntValue(int64(v))
		st.attrs.CopyTo(dp.Attributes())
	}
	if dps.Len() == 0 {
		ms.RemoveIf(func(x pmetric.Metric) bool {
			return x.Name() == RetransMetricName && x.Type() == pmetric.MetricTypeSum && x.Sum().DataPoints().Len() == 0
		})
	}
}
