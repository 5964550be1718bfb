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

// TestPendingSeriesContinueTheirStream: a series absent from a snapshot
// but pending (retired, its final point to come) keeps its state: its
// final point reads later is a delta from its last point, or a cumulative
// point with the same start time. (A series absent for one read was
// forgotten: delta exported its whole total again, cumulative restarted
// with a new start time.)
func TestPendingSeriesContinueTheirStream(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Microseconds)
	require.NoError(t, err)
	key := kmaps.Key{Family: 4, RemotePort: 7}
	start := time.Unix(1000, 0)
	live := kmaps.Series{Key: key, Slot: 2, Generation: 4, Zero: 3, Sum: 0, Total: 3}
	final := live
	final.Retired, final.Zero, final.Total = true, 5, 5
	for _, temp := range []Temporality{Cumulative, Delta} {
		t.Run(string(temp), func(t *testing.T) {
			c, err := New(Options{Table: table, GroupBy: kmaps.GroupRemotePort, Temporality: temp, Start: start})
			require.NoError(t, err)
			point := func(snap *kmaps.Snapshot, at int) (pmetric.ExponentialHistogramDataPoint, bool) {
				ms := pmetric.NewMetricSlice()
				c.Append(snap, start.Add(time.Duration(at)*time.Second), ms)
				if ms.Len() == 0 || ms.At(0).ExponentialHistogram().DataPoints().Len() == 0 {
					return pmetric.NewExponentialHistogramDataPoint(), false
				}
				return ms.At(0).ExponentialHistogram().DataPoints().At(0), true
			}
			first, ok := point(&kmaps.Snapshot{Series: []kmaps.Series{live}}, 10)
			require.True(t, ok)
			_, ok = point(&kmaps.Snapshot{Pending: []kmaps.RowID{{Slot: 2, Generation: 4}}}, 20)
			assert.False(t, ok, "no point while it waits")
			last, ok := point(&kmaps.Snapshot{Series: []kmaps.Series{final}}, 30)
			require.True(t, ok)
			if temp == Delta {
				assert.Equal(t, uint64(2), last.Count(), "the late samples only")
				assert.Equal(t, uint64(2), last.ZeroCount())
			} else {
				assert.Equal(t, uint64(5), last.Count())
				assert.Equal(t, first.StartTimestamp(), last.StartTimestamp(), "the same stream")
			}
		})
	}
}
