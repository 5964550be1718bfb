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

	// increase() extrapolates to the end of the range by half the average
	// interval once the last sample is more than 1.1 intervals old: query
	// after that, so that its figure can be computed exactly.
	var lastSample time.Time
	maxAvg := 0.0
	for _, a := range f.agents {
		for _, points := range peerPoints(t, a.sink) {
			first, last := points[0].Timestamp().AsTime(), points[len(points)-1].Timestamp().AsTime()
			lastSample = maxTime(lastSample, last)
			maxAvg = max(maxAvg, last.Sub(first).Seconds()/float64(len(points)-1))
		}
	}
	time.Sleep(time.Until(lastSample.Add(time.Duration((1.1*maxAvg + 0.5) * float64(time.Second)))))

	resets := queryVector(t, f.prom, "resets("+promMetric+"["+promWindow+"])")
	increaseQuery := "histogram_count(increase(" + promMetric + "[" + promWindow + "]))"
	increase := queryVector(t, f.prom, increaseQuery)
	countedBy := map[string]uint64{}
	for _, a := range f.agents {
		for peer, points := range peerPoints(t, a.sink) {
			first, last := points[0], points[len(points)-1]
			var inDowntime int
			for _, dp := range points {
				if ts := dp.Timestamp().AsTime(); ts.After(down) && ts.Before(up) {
					inDowntime++
				}
			}
			assert.Positive(t, inDowntime, "points of peer %s taken while the gateway was down", peer)
			counted := last.Count() // the samples the agent counted, over its runs
			wantResets := 0.0
			if a == restarted {
				old := oldRun[peer]
				oldFinal := old[len(old)-1]
				assert.Greater(t, last.StartTimestamp(), oldFinal.StartTimestamp(), "start time of peer %s after the restart", peer)
				counted += oldFinal.Count()
				wantResets = 1
				t.Logf("peer %s (%s, restarted): old run start %s, final count %d; new run start %s, final count %d",
					peer, a.peers()[peer], oldFinal.StartTimestamp().AsTime().Format(time.StampMilli), oldFinal.Count(),
					last.StartTimestamp().AsTime().Format(time.StampMilli), last.Count())
			}
			countedBy[peer] = counted
			want := expectedIncrease(points, counted)
			t.Logf("peer %s (%s): %d points, %d while the gateway was down; samples counted %d (first point %d), resets()=%g | PromQL %s = %.1f, %.3f of the samples counted (Prometheus' extrapolation of them: %.1f)",
				peer, a.peers()[peer], len(points), inDowntime, counted, first.Count(), resets[peer], increaseQuery, increase[peer], increase[peer]/float64(counted), want)
			assert.Equal(t, wantResets, resets[peer], "resets() of peer %s", peer)
			assert.InEpsilon(t, want, increase[peer], 1e-6, "%s for peer %s", increaseQuery, peer)
		}
		// Each round trip is at least one segment received on each side:
		// the round trips the agent did not count are what a restart loses.
		client := a.server.String() // the peer of the client socket
		t.Logf("%s: %d round trips made, %d samples counted on the client side: %d not counted",
			a.name, f.rounds[a.name], countedBy[client], int64(f.rounds[a.name])-int64(countedBy[client]))
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

// expectedIncrease is what increase() over a range that starts long before
// a series and ends more than 1.1 intervals after its last sample makes of
// the series' points, counted samples in all (its runs added up across
// resets): it counts from the first sample, so without the first point's
// samples, and extrapolates that over the sampled interval S (between the
// first and the last sample) by half the average interval at the end, and
// at the start by half the average interval or, if shorter, the time to
// where the count would have been zero.
func expectedIncrease(points []pmetric.ExponentialHistogramDataPoint, counted uint64) float64 {
	ms := func(dp pmetric.ExponentialHistogramDataPoint) float64 {
		return float64(dp.Timestamp().AsTime().UnixMilli()) / 1e3 // Prometheus' timestamps
	}
	first, last := points[0], points[len(points)-1]
	sampled := ms(last) - ms(first)
	avg := sampled / float64(len(points)-1)
	increase := float64(counted - first.Count())
	toStart := min(avg/2, sampled*float64(first.Count())/increase)
	return increase * (sampled + toStart + avg/2) / sampled
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
