//go:build linux

package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

// downIntervals is how many collections each outage spans: several, so
// that several requests wait in a queue.
const downIntervals = 5

// TestBackendOutage stops Prometheus for several collection intervals while
// traffic goes on, then starts it again on the same port and data
// directory. The gateway's exporter (deploy/gateway/config.yaml's retry and
// queue settings) holds the requests meanwhile and sends them, in order,
// once Prometheus is back: its counts equal the agent's, and it stores a
// sample for every point the agent exported, those of the outage included.
func TestBackendOutage(t *testing.T) {
	start := time.Now()
	f := startFleet(t, agentSpec{name: "node-c", server: netip.MustParseAddr("127.0.13.31"), client: netip.MustParseAddr("127.0.13.30")})
	a := f.agents[0]
	stopTraffic := startFleetTraffic(t, f)
	waitStored(t, f, start, "before the outage")

	f.prom.stop(t)
	down := time.Now()
	before := f.exportCounts()
	waitExports(t, f, before, downIntervals, "while Prometheus is down")
	f.prom.restart(t)
	outage := time.Since(down)
	during := len(a.sink.metrics()) - before[0]
	t.Logf("Prometheus was down for %s; the agent exported %d times meanwhile, with traffic going on", outage.Round(10*time.Millisecond), during)

	waitExports(t, f, f.exportCounts(), 2, "after the outage")
	closed := stopTraffic()
	final := waitStablePoints(t, a.sink, a.col, closed, a.peers())
	series := waitPrometheusCounts(t, f.prom, final)
	for _, s := range series {
		peer := s.Metric[promPeerLabel]
		h, err := parseHistogram(s.Histogram[1])
		require.NoError(t, err)
		t.Logf("peer %s (%s): the agent's final count %d | Prometheus after the outage: count %s", peer, a.peers()[peer], final[peer].Count(), h.Count)
	}

	f.stopAgents(t)
	stored := waitSamplesStored(t, f)
	for peer, points := range peerPoints(t, a.sink) {
		var inOutage int
		for _, dp := range points {
			if ts := dp.Timestamp().AsTime(); ts.After(down) && ts.Before(down.Add(outage)) {
				inOutage++
			}
		}
		t.Logf("peer %s: %d points exported, %d of them while Prometheus was down; Prometheus stores %d samples", peer, len(points), inOutage, stored[peer])
		assert.Positive(t, inOutage, "points of peer %s taken during the outage", peer)
	}
	f.gateway.stop(t)
	f.prom.stop(t)
	t.Logf("TestBackendOutage took %s", time.Since(start).Round(100*time.Millisecond))
}

// TestRestarts restarts the gateway, then one agent, with traffic going on.
// The gateway restart loses nothing: the agents' exporters hold their
// requests until it is back, and Prometheus ends with their counts and a
// sample for every point they exported. The agent restart starts new
// cumulative series (a new start time, counts from zero), which Prometheus
// takes as a counter reset: resets() is 1 for that agent's series, and
// increase() over the test stays close to the samples the agent counted
// across both runs.
func TestRestarts(t *testing.T) {
	start := time.Now()
	f := startFleet(t,
		agentSpec{name: "node-d", server: netip.MustParseAddr("127.0.13.41"), client: netip.MustParseAddr("127.0.13.40")},
		agentSpec{name: "node-e", server: netip.MustParseAddr("127.0.13.51"), client: netip.MustParseAddr("127.0.13.50")},
	)
	stopTraffic := startFleetTraffic(t, f)
	waitStored(t, f, start, "before the gateway restart")

	f.gateway.stop(t)
	down := time.Now()
	waitExports(t, f, f.exportCounts(), downIntervals, "while the gateway is down")
	f.startGateway(t)
	up := time.Now()
	t.Logf("gateway down for %s", up.Sub(down).Round(10*time.Millisecond))
	waitStored(t, f, up, "after the gateway restart")

	// The agent restart: its last export before it stops is the old run's
	// final count (samples counted after it are lost with the process).
	restarted := f.agents[0]
	restarted.col.stop(t)
	oldRun := peerPoints(t, restarted.sink)
	f.startAgent(t, restarted)
	waitExports(t, f, f.exportCounts(), 3, "after the agent restart")
	closed := stopTraffic()

	final := map[string]pmetric.ExponentialHistogramDataPoint{}
	for _, a := range f.agents {
		for peer, dp := range waitStablePoints(t, a.sink, a.col, closed, a.peers()) {
			final[peer] = dp
		}
	}
	waitPrometheusCounts(t, f.prom, final)
	f.stopAgents(t)
	waitSamplesStored(t, f)

	resets := queryVector(t, f.prom, "resets("+promMetric+"["+promWindow+"])")
	increase := queryVector(t, f.prom, "histogram_count(increase("+promMetric+"["+promWindow+"]))")
	for _, a := range f.agents {
		for peer := range a.peers() {
			points := peerPoints(t, a.sink)[peer]
			first, last := points[0], points[len(points)-1]
			sent := last.Count()
			wantResets := 0.0
			if a == restarted {
				old := oldRun[peer]
				oldFinal := old[len(old)-1]
				assert.Greater(t, last.StartTimestamp(), oldFinal.StartTimestamp(), "start time of peer %s after the restart", peer)
				sent += oldFinal.Count()
				wantResets = 1
				t.Logf("peer %s (%s, restarted): old run start %s final count %d, new run start %s final count %d",
					peer, a.peers()[peer], oldFinal.StartTimestamp().AsTime().Format(time.StampMilli), oldFinal.Count(),
					last.StartTimestamp().AsTime().Format(time.StampMilli), last.Count())
			}
			// increase() counts from the first sample and extrapolates to
			// the edges of the range by half an interval at most, each side.
			ratio := increase[peer] / float64(sent)
			t.Logf("peer %s (%s): samples counted %d (first point %d), resets()=%g | PromQL histogram_count(increase(%s[%s])) = %.1f (%.3f of the samples counted)",
				peer, a.peers()[peer], sent, first.Count(), resets[peer], promMetric, promWindow, increase[peer], ratio)
			assert.Equal(t, wantResets, resets[peer], "resets() of peer %s", peer)
			assert.InDelta(t, 1, ratio, 0.15, "increase() of peer %s over the samples counted", peer)
		}
	}
	f.gateway.stop(t)
	f.prom.stop(t)
	t.Logf("TestRestarts took %s", time.Since(start).Round(100*time.Millisecond))
}

// waitStored waits until Prometheus holds, for every agent's every peer, a
// sample taken after since: the fleet delivers.
func waitStored(t *testing.T, f *fleet, since time.Time, why string) {
	t.Helper()
	want := 0
	for _, a := range f.agents {
		want += len(a.peers())
	}
	q := "timestamp(" + promMetric + ")"
	deadline := time.Now().Add(settleTimeout)
	for {
		got := queryVector(t, f.prom, q)
		fresh := 0
		for _, ts := range got {
			if ts > float64(since.UnixMilli())/1e3 {
				fresh++
			}
		}
		if fresh == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s = %v, want %d peers with samples after %s", why, q, got, want, since.Format(time.StampMilli))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitSamplesStored waits until Prometheus holds, for every peer of every
// agent, one sample per point the agent exported (count_over_time over the
// whole test): no collection was lost on the way, not even in resolution.
// Call it after stopAgents, when the sinks no longer grow.
func waitSamplesStored(t *testing.T, f *fleet) map[string]int {
	t.Helper()
	want := map[string]int{}
	for _, a := range f.agents {
		for peer, points := range peerPoints(t, a.sink) {
			want[peer] = len(points)
		}
	}
	q := "count_over_time(" + promMetric + "[" + promWindow + "])"
	deadline := time.Now().Add(settleTimeout)
	for {
		got := queryVector(t, f.prom, q)
		equal := len(got) == len(want)
		for peer, n := range want {
			equal = equal && got[peer] == float64(n)
		}
		if equal {
			t.Logf("every exported point is stored: %s = %v", q, want)
			return want
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus' samples per series (%s) %v, want the agents' exported points %v", q, got, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
