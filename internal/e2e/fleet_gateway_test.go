//go:build linux

package e2e

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// Fleet-wide queries of docs/prometheus.md ("A fleet"): p99 of every
// host's samples over the last 5 minutes, and since the agents started.
const (
	fleetP99Query           = `histogram_quantile(0.99, sum(rate(tcp_rtt_seconds[5m])))`
	fleetP99CumulativeQuery = `histogram_quantile(0.99, sum(tcp_rtt_seconds))`
	perInstanceCountQuery   = `sum by (instance) (histogram_count(tcp_rtt_seconds))`
	fleetCountQuery         = `sum(histogram_count(tcp_rtt_seconds))`
)

// TestGateway runs two agents, one cumulative (the default) and one with
// temporality delta, through the shipped gateway to a Prometheus started
// without any delta feature flag: each instance's histogram_count equals its
// agent's own count, their sum the total, and the fleet-wide p99 lies in the
// bucket of the agents' merged points. The delta agent's data only gets in
// because the gateway's deltatocumulative processor makes it cumulative: the
// same export sent straight to Prometheus is refused.
func TestGateway(t *testing.T) {
	start := time.Now()
	f := startFleet(t,
		agentSpec{name: "node-a", server: netip.MustParseAddr("127.0.13.11"), client: netip.MustParseAddr("127.0.13.10")},
		agentSpec{name: "node-b", server: netip.MustParseAddr("127.0.13.21"), client: netip.MustParseAddr("127.0.13.20"), temporality: "delta"},
	)
	stopTraffic := startFleetTraffic(t, f)
	waitExports(t, f, f.exportCounts(), 4, "traffic")
	closed := stopTraffic()
	atClose := f.exportCounts()

	// Each agent's own count, per peer: the last point of the cumulative
	// agent, the sum of the delta agent's points.
	nodeA, nodeB := f.agents[0], f.agents[1]
	final := waitStablePoints(t, nodeA.sink, nodeA.col, closed, nodeA.peers())
	for peer, dp := range waitDeltaTotals(t, nodeB, atClose[1]) {
		final[peer] = dp
	}
	instanceOf := map[string]string{}
	for _, a := range f.agents {
		for peer := range a.peers() {
			instanceOf[peer] = a.name
		}
	}

	series := waitPrometheusCounts(t, f.prom, final)
	for _, s := range series {
		peer := s.Metric[promPeerLabel]
		assert.Equal(t, instanceOf[peer], s.Metric["instance"], "instance of peer %s", peer)
		assert.Equal(t, promJob, s.Metric["job"], "job of peer %s", peer)
		t.Logf("Prometheus series %s", fmtLabels(s.Metric))
	}

	perInstance := queryBy(t, f.prom, perInstanceCountQuery, "instance")
	var total uint64
	var all []pmetric.ExponentialHistogramDataPoint
	for _, a := range f.agents {
		var own uint64
		for peer := range a.peers() {
			own += final[peer].Count()
			all = append(all, final[peer])
		}
		total += own
		t.Logf("%s (%s): the agent's own count %d | PromQL %s = %g", a.name, temporalityName(a.agentSpec), own, perInstanceCountQuery, perInstance[a.name])
		assert.Equal(t, float64(own), perInstance[a.name], "histogram_count of instance %s", a.name)
	}
	assert.Len(t, perInstance, len(f.agents), "instances in Prometheus: %v", perInstance)
	fleetCount := queryBy(t, f.prom, fleetCountQuery, "")
	t.Logf("fleet: the agents' counts add up to %d | PromQL %s = %g", total, fleetCountQuery, fleetCount[""])
	assert.Equal(t, float64(total), fleetCount[""], "%s", fleetCountQuery)

	// The fleet-wide p99 of the cumulative histograms is the p99 of every
	// sample the agents counted: it must lie in that bucket (or at its edge).
	merged := mergePoints(t, all...)
	b := quantileBucket(merged, 0.99)
	lo, hi := neighbourhood(merged, b)
	got := queryBy(t, f.prom, fleetP99CumulativeQuery, "")[""]
	t.Logf("fleet p99: the agents' merged points (count %d) put it in bucket %s (index %s), interpolated %s | PromQL %s = %s",
		merged.Count(), b.interval(), b.name(), fmtSeconds(interpolate(merged, 0.99)), fleetP99CumulativeQuery, fmtSeconds(got))
	assert.True(t, got >= lo*(1-1e-12) && got <= hi*(1+1e-12),
		"%s = %g, not within one bucket of the merged points' bucket %s: want [%g, %g]", fleetP99CumulativeQuery, got, b.interval(), lo, hi)
	// Over the last 5 minutes: every sample but those of each series'
	// first point (rate starts from it), extrapolated; a finite answer.
	recent := queryBy(t, f.prom, fleetP99Query, "")[""]
	t.Logf("PromQL %s = %s", fleetP99Query, fmtSeconds(recent))
	assert.False(t, math.IsNaN(recent) || math.IsInf(recent, 0) || recent <= 0, "%s = %g", fleetP99Query, recent)

	t.Run("delta straight to Prometheus is refused", func(t *testing.T) {
		status, body := postOTLP(t, f.prom, lastPointsExport(t, nodeB))
		t.Logf("node-b's last delta export, POSTed to Prometheus itself: %d %s", status, strings.TrimSpace(body))
		// 500, not 400: the otlp_http exporter retries it, so an agent
		// sending delta to a Prometheus without the feature flag stalls.
		assert.Equal(t, http.StatusInternalServerError, status)
		assert.Contains(t, body, `invalid temporality and type combination for metric "tcp.rtt"`)
	})

	f.stopAgents(t)
	f.gateway.stop(t)
	f.prom.stop(t)
	t.Logf("TestGateway took %s", time.Since(start).Round(100*time.Millisecond))
}

func temporalityName(a agentSpec) string {
	if a.temporality == "" {
		return "cumulative"
	}
	return a.temporality
}

// waitDeltaTotals waits until a delta agent's sink holds at least one
// export after the first `from` and has received nothing for three
// collection intervals (quiet collections send nothing: the traffic's
// last samples are in), and returns the sum of each peer's points.
func waitDeltaTotals(t *testing.T, a *agent, from int) map[string]pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	seen, since := -1, time.Now()
	for {
		exports := a.sink.metrics()
		if len(exports) != seen {
			seen, since = len(exports), time.Now()
		}
		if len(exports) > from && time.Since(since) >= 3*fleetInterval {
			break
		}
		if err := a.col.exited(); err != nil {
			t.Fatalf("agent %s exited: %v", a.name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s: exports still arriving %s after the end of traffic (%d exports since)", a.name, settleTimeout, len(exports)-from)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out := map[string]pmetric.ExponentialHistogramDataPoint{}
	for peer, points := range peerPoints(t, a.sink) {
		_, ours := a.peers()[peer]
		require.True(t, ours, "agent %s exported peer %s, outside its filter %s", a.name, peer, a.prefix())
		out[peer] = mergePoints(t, points...)
		t.Logf("%s peer %s: %d delta points adding up to count %d", a.name, peer, len(points), out[peer].Count())
	}
	require.Len(t, out, len(a.peers()), "peers of %s", a.name)
	return out
}

// lastPointsExport returns the agent's last export that holds tcp.rtt points.
func lastPointsExport(t *testing.T, a *agent) pmetric.Metrics {
	t.Helper()
	exports := a.sink.metrics()
	for i := len(exports) - 1; i >= 0; i-- {
		if len(testenv.RTTPoints(exports[i])) > 0 {
			return exports[i]
		}
	}
	t.Fatalf("agent %s exported no %s point", a.name, metricName)
	return pmetric.Metrics{}
}

// postOTLP sends md to Prometheus' OTLP endpoint as the exporter would and
// returns the status and body of the answer.
func postOTLP(t *testing.T, p *prometheus, md pmetric.Metrics) (int, string) {
	t.Helper()
	raw, err := pmetricotlp.NewExportRequestFromMetrics(md).MarshalProto()
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, p.url+"/api/v1/otlp/v1/metrics", bytes.NewReader(raw))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err, "POST %s", req.URL)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// mergePoints adds histogram points of one scale bucket by bucket: delta
// points of one series into its cumulative total, or several agents' points
// into the fleet's histogram.
func mergePoints(t *testing.T, points ...pmetric.ExponentialHistogramDataPoint) pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	require.NotEmpty(t, points)
	out := pmetric.NewExponentialHistogramDataPoint()
	out.SetScale(points[0].Scale())
	buckets := map[int32]uint64{}
	lo, hi := int32(1<<30), int32(-1<<30)
	for _, dp := range points {
		require.Equal(t, out.Scale(), dp.Scale(), "merging points of different scales")
		out.SetCount(out.Count() + dp.Count())
		out.SetSum(out.Sum() + dp.Sum())
		out.SetZeroCount(out.ZeroCount() + dp.ZeroCount())
		for i, c := range dp.Positive().BucketCounts().AsRaw() {
			idx := dp.Positive().Offset() + int32(i)
			buckets[idx] += c
			lo, hi = min(lo, idx), max(hi, idx)
		}
	}
	if hi >= lo {
		out.Positive().SetOffset(lo)
		counts := make([]uint64, hi-lo+1)
		for idx, c := range buckets {
			counts[idx-lo] = c
		}
		out.Positive().BucketCounts().FromRaw(counts)
	}
	out.SetTimestamp(pcommon.NewTimestampFromTime(time.Now()))
	return out
}
