package convert

import (
	"flag"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/golden"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/pdatatest/pmetrictest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	attach = time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	scrape = attach.Add(10 * time.Second)
)

// key builds a series key the way the program does: grouped fields only,
// IPv4 v4-mapped.
func key(g kmaps.GroupBy, local, remote string, lport, rport uint16) kmaps.Key {
	var k kmaps.Key
	l, r := netip.MustParseAddr(local), netip.MustParseAddr(remote)
	k.Family = 6
	if r.Is4() {
		k.Family = 4
	}
	if g.Has(kmaps.GroupLocalAddress) {
		k.LocalAddr = l.As16()
	}
	if g.Has(kmaps.GroupRemoteAddress) {
		k.RemoteAddr = r.As16()
	}
	if g.Has(kmaps.GroupLocalPort) {
		k.LocalPort = lport
	}
	if g.Has(kmaps.GroupRemotePort) {
		k.RemotePort = rport
	}
	if g == 0 {
		k.Family = 0
	}
	return k
}

// series builds a row holding the given raw srtt samples (1/8 µs),
// bucketed with the table, as the kernel would have counted them.
func series(t *testing.T, table *bucket.Table, k kmaps.Key, slot uint32, raws ...uint32) kmaps.Series {
	t.Helper()
	s := kmaps.Series{Key: k, Slot: slot, Buckets: make([]uint64, table.NumBuckets)}
	for _, raw := range raws {
		s.Sum += uint64(raw)
		if raw == 0 {
			s.Zero++
			continue
		}
		s.Buckets[table.Position(raw)]++
	}
	s.Summarize()
	return s
}

func convert(t *testing.T, c *Converter, snap *kmaps.Snapshot, now time.Time) pmetric.Metrics {
	t.Helper()
	md := pmetric.NewMetrics()
	sm := md.ResourceMetrics().AppendEmpty().ScopeMetrics().AppendEmpty()
	sm.Scope().SetName("github.com/tcprtt/tcprtt/receiver")
	c.Append(snap, now, sm.Metrics())
	return md
}

func checkGolden(t *testing.T, name string, md pmetric.Metrics) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		clone := pmetric.NewMetrics()
		md.CopyTo(clone) // the writer sorts in place
		require.NoError(t, golden.WriteMetrics(t, path, clone, golden.SkipMetricTimestampNormalization()))
	}
	want, err := golden.ReadMetrics(path)
	require.NoError(t, err)
	// The kernel hands series over in hash order.
	require.NoError(t, pmetrictest.CompareMetrics(want, md, pmetrictest.IgnoreMetricDataPointsOrder()))
}

func TestCumulativeByPeer(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach})
	require.NoError(t, err)
	overflow := series(t, table, kmaps.Key{}, 100, 8000, 8000)
	overflow.Overflow = true
	overflow.Key = kmaps.Key{}
	snap := &kmaps.Snapshot{Series: []kmaps.Series{
		// 10 µs, 12.5 µs, 1 ms twice, 0 (no RTT sample yet).
		series(t, table, key(g, "127.0.0.2", "127.0.0.3", 0, 0), 0, 80, 100, 8000, 8000, 0),
		series(t, table, key(g, "::1", "2001:db8::1", 0, 0), 1, 8_000_000),
		overflow,
	}}
	md := convert(t, c, snap, scrape)
	checkGolden(t, "cumulative_by_peer.yaml", md)

	// Independent checks of what the golden file pins.
	dp := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints().At(0)
	assert.Equal(t, uint64(5), dp.Count())
	assert.Equal(t, uint64(1), dp.ZeroCount())
	assert.InDelta(t, (80+100+8000+8000)/8e6, dp.Sum(), 1e-15)
	assert.Equal(t, table.Index(80), dp.Positive().Offset(), "offset is the lowest non-empty bucket")
	assert.Equal(t, int(table.Index(8000)-table.Index(80))+1, dp.Positive().BucketCounts().Len())
}

func TestCumulativeHostMicroseconds(t *testing.T) {
	table, err := bucket.NewTable(0, bucket.Microseconds)
	require.NoError(t, err)
	c, err := New(Options{Table: table, GroupBy: 0, Temporality: Cumulative, Start: attach})
	require.NoError(t, err)
	// 1 µs (8) is in (0.5, 1]; 2 µs (16) in (1, 2]; 2.125 µs (17) in (2, 4].
	snap := &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, key(0, "::1", "::1", 0, 0), 0, 8, 16, 17, 17)}}
	md := convert(t, c, snap, scrape)
	checkGolden(t, "cumulative_host_us.yaml", md)
	dp := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints().At(0)
	assert.Equal(t, 0, dp.Attributes().Len(), "one histogram for the host has no attributes")
	assert.Equal(t, int32(-1), dp.Positive().Offset())
	assert.Equal(t, []uint64{1, 1, 2}, dp.Positive().BucketCounts().AsRaw())
}

func TestAllAttributes(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Milliseconds)
	require.NoError(t, err)
	g := kmaps.GroupLocalAddress | kmaps.GroupRemoteAddress | kmaps.GroupLocalPort | kmaps.GroupRemotePort
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach})
	require.NoError(t, err)
	k := key(g, "10.0.0.1", "10.0.0.2", 43210, 443)
	snap := &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, k, 7, 4000)}}
	md := convert(t, c, snap, scrape)
	checkGolden(t, "all_attributes_ms.yaml", md)
}

// TestDelta: deltas are computed from consecutive cumulative snapshots,
// series without new samples are left out, and the deltas add up to the
// cumulative counts bucket by bucket.
func TestDelta(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Delta, Start: attach})
	require.NoError(t, err)
	a := key(g, "127.0.0.2", "127.0.0.3", 0, 0)
	b := key(g, "127.0.0.3", "127.0.0.2", 0, 0)

	first := &kmaps.Snapshot{Series: []kmaps.Series{
		series(t, table, a, 0, 80, 100),
		series(t, table, b, 1, 8000),
	}}
	md1 := convert(t, c, first, scrape)
	checkGolden(t, "delta_1.yaml", md1)

	second := &kmaps.Snapshot{Series: []kmaps.Series{
		series(t, table, a, 0, 80, 100, 120, 8000),
		series(t, table, b, 1, 8000), // unchanged: left out
	}}
	md2 := convert(t, c, second, scrape.Add(10*time.Second))
	checkGolden(t, "delta_2.yaml", md2)

	dps := md2.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
	require.Equal(t, 1, dps.Len())
	assert.Equal(t, uint64(2), dps.At(0).Count())
	assert.Equal(t, scrape, dps.At(0).StartTimestamp().AsTime().UTC(), "a delta starts at the previous scrape")

	// Sum of deltas == cumulative, bucket by bucket.
	total := map[int32]uint64{}
	for _, md := range []pmetric.Metrics{md1, md2} {
		dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
		for i := range dps.Len() {
			dp := dps.At(i)
			if v, _ := dp.Attributes().Get(AttrPeerAddress); v.Str() != "127.0.0.3" {
				continue
			}
			for j, n := range dp.Positive().BucketCounts().All() {
				total[dp.Positive().Offset()+int32(j)] += n
			}
		}
	}
	cum := second.Series[0]
	for i, n := range cum.Buckets {
		idx := table.MinIndex + int32(cum.Offset+i)
		assert.Equal(t, n, total[idx], "bucket %d", idx)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	_, err = New(Options{Temporality: Cumulative})
	assert.Error(t, err)
	_, err = New(Options{Table: table, Temporality: "sometimes"})
	assert.ErrorContains(t, err, "sometimes")
}

// syntheticSnapshot is 10k series, one per remote address, each with
// buckets first..first+width-1 holding 1, 2, ….
func syntheticSnapshot(table *bucket.Table, first, width int) *kmaps.Snapshot {
	snap := &kmaps.Snapshot{}
	for i := range 10000 {
		s := kmaps.Series{Slot: uint32(i), Buckets: make([]uint64, table.NumBuckets)}
		s.Key.Family = 4
		s.Key.RemoteAddr = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).As16()
		for j := range width {
			s.Buckets[first+j] = uint64(j + 1)
		}
		s.Sum = 123456
		s.Summarize()
		snap.Series = append(snap.Series, s)
	}
	return snap
}

// BenchmarkAppend converts 10k series of 30 buckets, without the kernel.
func BenchmarkAppend(b *testing.B) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(b, err)
	g := kmaps.GroupRemoteAddress
	snap := syntheticSnapshot(table, 100, 30)
	for _, temp := range []Temporality{Cumulative, Delta} {
		b.Run(string(temp), func(b *testing.B) {
			c, err := New(Options{Table: table, GroupBy: g, Temporality: temp, Start: attach})
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				if temp == Delta {
					for i := range snap.Series {
						snap.Series[i].Buckets[0]++
						snap.Series[i].Total++
					}
				}
				md := pmetric.NewMetrics()
				c.Append(snap, scrape, md.ResourceMetrics().AppendEmpty().ScopeMetrics().AppendEmpty().Metrics())
			}
		})
	}
}

func TestNoPointsNoMetric(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	for _, temp := range []Temporality{Cumulative, Delta} {
		c, err := New(Options{Table: table, GroupBy: kmaps.GroupRemoteAddress, Temporality: temp, Start: attach})
		require.NoError(t, err)
		md := convert(t, c, &kmaps.Snapshot{}, scrape)
		assert.Equal(t, 0, md.MetricCount(), "%s: no series, no metric", temp)
	}
	// Delta with nothing new since the last conversion: no metric either.
	c, err := New(Options{Table: table, GroupBy: kmaps.GroupRemoteAddress, Temporality: Delta, Start: attach})
	require.NoError(t, err)
	snap := &kmaps.Snapshot{Series: []kmaps.Series{series(t, table, key(kmaps.GroupRemoteAddress, "::1", "::1", 0, 0), 0, 80)}}
	assert.Equal(t, 1, convert(t, c, snap, scrape).MetricCount())
	assert.Equal(t, 0, convert(t, c, snap, scrape.Add(time.Second)).MetricCount())
}
