//go:build linux

package e2e

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// tcp.retransmits through Prometheus, with real loss: the collector of
// TestPrometheusNativeHistogram also measures the loss addresses of
// testenv (their own network namespace, every 7th data segment dropped),
// and the test holds each loss peer's counter in Prometheus against the
// sum of its sockets' tcpi_total_retrans, then queries its rate per peer
// next to the RTT quantiles of the same peers.
const (
	retransMetricName = "tcp.retransmits"
	retransMetricUnit = "{segment}"
	// tcp.retransmits in Prometheus: the OTLP translation drops a unit in
	// curly braces (an annotation) and adds _total to a monotonic
	// cumulative sum.
	promRetransMetric = "tcp_retransmits_total"
	// The window of the rate and quantile queries: it holds the whole run
	// (the loss peers' first points, with 0 retransmissions, included).
	promRetransWindow = "1m"

	// Lossy transfers per family: every connection retransmits (hundreds
	// of segments per MiB on a namespace's loopback, TestRetransmitsEqualTCPInfo).
	lossConns = 2
	lossSize  = 1 << 20
)

// lossFamily is one address family's loss peers: the client side sends
// the data, so its sockets retransmit, towards server.
type lossFamily struct{ server, client netip.Addr }

var (
	lossFamilies = []lossFamily{
		{testenv.LossServer4, testenv.LossClient4},
		{testenv.LossServer6, testenv.LossClient6},
	}
	lossPeers = map[string]string{
		testenv.LossServer4.String(): "lossy IPv4 transfers, client side (sends the data)",
		testenv.LossClient4.String(): "lossy IPv4 transfers, server side",
		testenv.LossServer6.String(): "lossy IPv6 transfers, client side (sends the data)",
		testenv.LossClient6.String(): "lossy IPv6 transfers, server side",
	}

	// promRetransRateQuery and promRetransQuantileQuery are the README's
	// pair: retransmitted segments per second and the p99 RTT, per peer.
	promRetransRateQuery     = `sum by (network_peer_address) (rate(` + promRetransMetric + `[` + promRetransWindow + `]))`
	promRetransQuantileQuery = `histogram_quantile(0.99, sum by (network_peer_address) (rate(` + promMetric + `[` + promRetransWindow + `])))`
)

// lockLossNets is testenv.LockLossNets, with the time it waited for
// another test (of any package) that counts or loses on these addresses.
func lockLossNets(t *testing.T) {
	t.Helper()
	start := time.Now()
	testenv.LockLossNets(t)
	if waited := time.Since(start); waited > time.Second {
		t.Logf("waited %s for the loss addresses (another test held them)", waited.Round(time.Second))
	}
}

// lossFilter is the loss nets as filter entries of the receiver config.
func lossFilter() []string {
	var out []string
	for _, p := range testenv.LossNets {
		out = append(out, p.String())
	}
	return out
}

// mergePeers returns the union of peer descriptions.
func mergePeers(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// runLossTraffic makes the loss for fams and returns, per peer address,
// the sum of tcpi_total_retrans of the sockets whose peer it is (the
// client sockets' under the server address, and the other way round).
// The caller holds testenv.LockLossNets. First one clean exchange per
// family makes every loss peer's series, and the test waits until
// Prometheus holds its counter at 0: a counter whose first sample already
// holds all of its increase has no rate, so this is what makes the rate
// of a peer that retransmitted positive however short its transfers are.
func runLossTraffic(t *testing.T, prom *prometheus, fams []lossFamily, conns, size int) map[string]uint64 {
	t.Helper()
	start := time.Now()
	peers := map[string]bool{}
	for _, f := range fams {
		var err error
		testenv.InLossNetns(t, func() { err = cleanExchange(f.server, f.client) })
		require.NoError(t, err, "clean exchange %s -> %s", f.client, f.server)
		peers[f.server.String()], peers[f.client.String()] = true, true
	}
	waitRetransZero(t, prom, peers)
	t.Logf("loss peers %v at 0 in Prometheus after %s", sortedKeys(peers), time.Since(start).Round(time.Millisecond))

	want := map[string]uint64{}
	for _, f := range fams {
		start := time.Now()
		clientSide, serverSide, fail := testenv.LossyTransfers(t, f.server, f.client, conns, size)
		t.Logf("lossy transfers %s -> %s (%d × %d bytes, %s): tcpi_total_retrans clients %d, servers %d; TCPRetransFail %d",
			f.client, f.server, conns, size, time.Since(start).Round(time.Millisecond), clientSide, serverSide, fail)
		require.NotZero(t, clientSide, "no retransmission %s -> %s under loss: the test made none", f.client, f.server)
		want[f.server.String()] += clientSide
		want[f.client.String()] += serverSide
	}
	return want
}

// cleanExchange makes one request and response from client to server on
// the calling thread's network namespace, without t (it runs on a thread
// of its own).
func cleanExchange(server, client netip.Addr) error {
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(server, 0)))
	if err != nil {
		return err
	}
	defer ln.Close()
	c, s, err := tcptest.Connect(ln, client)
	if err != nil {
		return err
	}
	defer c.Close()
	defer s.Close()
	return tcptest.Exchange(c, s, 64)
}

// waitRetransZero waits until Prometheus has a tcp.retransmits sample of
// 0 for each of peers (summed over nodes, cgroups and other attributes).
func waitRetransZero(t *testing.T, prom *prometheus, peers map[string]bool) {
	t.Helper()
	q := `sum by (network_peer_address) (` + promRetransMetric + `)`
	deadline := time.Now().Add(settleTimeout)
	for {
		got := queryVector(t, prom, q)
		missing := 0
		for peer := range peers {
			v, ok := got[peer]
			if !ok {
				missing++
				continue
			}
			require.Zero(t, v, "%s for %s before any loss", q, peer)
		}
		if missing == 0 {
			return
		}
		if err := prom.proc.exited(); err != nil {
			t.Fatalf("Prometheus exited: %v\n%s", err, prom.proc.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no sample for %d of the loss peers %v within %s of their first traffic: %v",
				q, missing, sortedKeys(peers), settleTimeout, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// retransPoints returns the tcp.retransmits points of every export the
// sink holds, per peer, in export order, and checks the metric's shape:
// a monotonic cumulative sum of ints in {segment}, only for peers.
func retransPoints(t *testing.T, sink *otlpSink, peers map[string]string) map[string][]pmetric.NumberDataPoint {
	t.Helper()
	out := map[string][]pmetric.NumberDataPoint{}
	for _, md := range sink.metrics() {
		for _, m := range testenv.Metrics(md) {
			if m.Name() != retransMetricName {
				continue
			}
			require.Equal(t, pmetric.MetricTypeSum, m.Type(), "%s type", retransMetricName)
			require.Equal(t, retransMetricUnit, m.Unit(), "%s unit", retransMetricName)
			require.True(t, m.Sum().IsMonotonic(), "%s is monotonic", retransMetricName)
			require.Equal(t, pmetric.AggregationTemporalityCumulative, m.Sum().AggregationTemporality(), "%s temporality", retransMetricName)
			for _, dp := range m.Sum().DataPoints().All() {
				require.Equal(t, pmetric.NumberDataPointValueTypeInt, dp.ValueType(), "%s value type", retransMetricName)
				v, ok := dp.Attributes().Get(attrPeerAddr)
				require.True(t, ok, "%s point without %s: %v", retransMetricName, attrPeerAddr, dp.Attributes().AsRaw())
				_, ours := peers[v.Str()]
				require.True(t, ours, "%s point for %s, outside the collector's filter", retransMetricName, v.Str())
				out[v.Str()] = append(out[v.Str()], dp)
			}
		}
	}
	return out
}

// finalRetransmits returns each peer's last tcp.retransmits value taken
// after closed; the last two such points must agree (the count stopped).
// The caller has waited for stable tcp.rtt points of the same exports.
func finalRetransmits(t *testing.T, sink *otlpSink, closed time.Time, peers map[string]string) map[string]uint64 {
	t.Helper()
	after := pcommon.NewTimestampFromTime(closed.Add(100 * time.Millisecond))
	out := map[string]uint64{}
	for peer, points := range retransPoints(t, sink, peers) {
		var late []int64
		for _, dp := range points {
			if dp.Timestamp() > after {
				late = append(late, dp.IntValue())
			}
		}
		n := len(late)
		require.GreaterOrEqual(t, n, 2, "%s points of %s after the traffic", retransMetricName, peer)
		require.Equal(t, late[n-2], late[n-1], "%s of %s still moving after the traffic: %v", retransMetricName, peer, late)
		out[peer] = uint64(late[n-1])
	}
	return out
}

// checkPrometheusRetransmits checks tcp.retransmits end to end: the
// receiver's final value per loss peer equals the TCP_INFO sum (want),
// Prometheus holds it as the one series of tcp_retransmits_total per peer
// with the same value, the rate per peer is there next to the p99 RTT of
// the same peer (positive where the peer's sockets retransmitted), and a
// Prometheus that keeps metric types says counter.
func checkPrometheusRetransmits(t *testing.T, prom *prometheus, sink *otlpSink, closed time.Time, peers map[string]string, want map[string]uint64) {
	t.Helper()
	final := finalRetransmits(t, sink, closed, peers)
	for _, peer := range sortedKeys(peers) {
		if _, ok := want[peer]; !ok {
			t.Logf("peer %s (%s): %s %d (no TCP_INFO: not a loss peer)", peer, peers[peer], retransMetricName, final[peer])
		}
	}
	for _, peer := range sortedKeys(want) {
		got, ok := final[peer]
		if assert.True(t, ok, "no %s point for loss peer %s", retransMetricName, peer) {
			assert.Equal(t, want[peer], got, "%s of %s (%s): receiver vs TCP_INFO tcpi_total_retrans", retransMetricName, peer, peers[peer])
		}
	}

	series := waitPrometheusRetransmits(t, prom, final)
	for _, s := range series {
		peer := s.Metric[promPeerLabel]
		assert.Equal(t, promRetransMetric, s.Metric["__name__"], "metric name of %s", peer)
		assert.Equal(t, promJob, s.Metric["job"], "job of %s", peer)
		assert.Equal(t, promHostName, s.Metric["instance"], "instance of %s", peer)
		assert.Equal(t, netType(peer), s.Metric[promNetTypeLabel], "%s of %s", promNetTypeLabel, peer)
	}
	names := queryBy(t, prom, `count by (__name__) ({__name__=~"tcp_retrans.*"})`, "__name__")
	assert.Equal(t, []string{promRetransMetric}, sortedKeys(names), "metric names tcp.retransmits became in Prometheus")
	values := queryVector(t, prom, promRetransMetric)
	rates := queryVector(t, prom, promRetransRateQuery)
	p99 := queryVector(t, prom, promRetransQuantileQuery)
	for _, peer := range sortedKeys(want) {
		t.Logf("peer %s (%s): TCP_INFO %d, receiver %d, Prometheus %s %g; %s = %g/s next to p99 RTT %s",
			peer, peers[peer], want[peer], final[peer], promRetransMetric, values[peer], "rate", rates[peer], fmtSeconds(p99[peer]))
		assert.Equal(t, float64(final[peer]), values[peer], "%s{%s=%q} vs the receiver's final value", promRetransMetric, promPeerLabel, peer)
		r, ok := rates[peer]
		if assert.True(t, ok, "%s has no result for %s", promRetransRateQuery, peer) {
			if want[peer] > 0 {
				assert.Positive(t, r, "%s for %s, whose sockets retransmitted %d segments", promRetransRateQuery, peer, want[peer])
			} else {
				assert.Zero(t, r, "%s for %s, whose sockets retransmitted nothing", promRetransRateQuery, peer)
			}
		}
		q, ok := p99[peer]
		if assert.True(t, ok, "%s has no result for %s", promRetransQuantileQuery, peer) {
			assert.False(t, math.IsNaN(q) || math.IsInf(q, 0) || q <= 0, "%s for %s = %g", promRetransQuantileQuery, peer, q)
		}
	}
	checkRetransCounterType(t, sink)
}

// waitPrometheusRetransmits waits until Prometheus' latest
// tcp_retransmits_total of every peer of final has the receiver's final
// value and returns the series (one per peer).
func waitPrometheusRetransmits(t *testing.T, prom *prometheus, final map[string]uint64) []promSample {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		r, err := prom.query(t.Context(), promRetransMetric)
		require.NoError(t, err, "PromQL %s", promRetransMetric)
		seen := map[string]float64{}
		for _, s := range r.Data.Result {
			peer := s.Metric[promPeerLabel]
			require.NotContains(t, seen, peer, "two %s series for %s", promRetransMetric, peer)
			require.NotNil(t, s.Value, "%s of %s is not a float sample", promRetransMetric, peer)
			v, err := parseQuoted(s.Value[1])
			require.NoError(t, err)
			seen[peer] = v
		}
		done := len(seen) == len(final)
		for peer, v := range final {
			if seen[peer] != float64(v) {
				done = false
			}
		}
		if done {
			return r.Data.Result
		}
		if err := prom.proc.exited(); err != nil {
			t.Fatalf("Prometheus exited: %v\n%s", err, prom.proc.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus does not hold the receiver's final %s within %s: %v, want %v", promRetransMetric, settleTimeout, seen, final)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkRetransCounterType sends the collector's last export (as the sink
// received it) to a second Prometheus, one with type-and-unit-labels:
// Prometheus keeps no metric type of OTLP data otherwise (its metadata
// API serves scraped targets only), and with it every series carries the
// type it was stored as in __type__.
func checkRetransCounterType(t *testing.T, sink *otlpSink) {
	t.Helper()
	exports := sink.metrics()
	last := -1
	for i := len(exports) - 1; i >= 0 && last < 0; i-- {
		for _, m := range testenv.Metrics(exports[i]) {
			if m.Name() == retransMetricName {
				last = i
			}
		}
	}
	require.GreaterOrEqual(t, last, 0, "no export with %s", retransMetricName)

	typed := startPrometheusWith(t, prometheusBinary(t), "global:\n  evaluation_interval: 1m\n", "--enable-feature=type-and-unit-labels")
	status, body := postOTLP(t, typed, exports[last])
	require.Equal(t, 200, status, "OTLP export to Prometheus with type-and-unit-labels: %s", body)
	for metric, wantType := range map[string]string{promRetransMetric: "counter", promMetric: "histogram"} {
		r, err := typed.query(t.Context(), metric)
		require.NoError(t, err, "PromQL %s", metric)
		require.NotEmpty(t, r.Data.Result, "%s in Prometheus with type-and-unit-labels", metric)
		types := map[string]bool{}
		for _, s := range r.Data.Result {
			types[s.Metric["__type__"]+" unit "+fmt.Sprintf("%q", s.Metric["__unit__"])] = true
			assert.Equal(t, wantType, s.Metric["__type__"], "__type__ of %s", fmtLabels(s.Metric))
		}
		t.Logf("%s: __type__ and __unit__ %s (%d series)", metric, strings.Join(sortedKeys(types), ", "), len(r.Data.Result))
	}
	typed.stop(t)
}

// netType is the network.type of an address (as Prometheus' label).
func netType(addr string) string {
	if netip.MustParseAddr(addr).Is4() {
		return "ipv4"
	}
	return "ipv6"
}
