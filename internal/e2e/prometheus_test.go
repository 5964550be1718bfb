//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
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

// Prometheus as a real backend: otelcol-tcprtt exports tcp.rtt over
// OTLP/HTTP to Prometheus' OTLP receiver, which stores it as the native
// histogram tcp_rtt_seconds. The same export also goes to the in-process sink
// of e2e_test.go, so the test knows the receiver's own data points and can
// hold Prometheus' answers against them. The same run measures testenv's
// loss addresses under real loss, for tcp.retransmits
// (prometheus_retrans_test.go).
const (
	// PrometheusVersion is the Prometheus module version `make prometheus`
	// installs (Go module versions v0.3xx.y are Prometheus 3.xx.y).
	prometheusVersion = "v0.316.0"

	promMetric       = "tcp_rtt_seconds"      // tcp.rtt, unit s, after translation
	promPeerLabel    = "network_peer_address" // network.peer.address
	promNetTypeLabel = "network_type"         // network.type
	promReadyTimeout = time.Minute
	promStopTimeout  = 30 * time.Second
	// From closing the test connections to the final point in both the
	// sink and Prometheus.
	settleTimeout = 30 * time.Second
	trafficTime   = 5 * time.Second

	// Only the test's four loopback addresses are measured (filter), so
	// every series the collector exports is one the test made.
	promPeerFilter = "127.0.0.16/28"

	// The host identity the collector config sets (resource processor, as
	// in every shipped config), and the labels Prometheus makes of it:
	// service.name -> job, service.instance.id -> instance, host.name ->
	// host_name on target_info (not on the series: not promoted).
	promHostName  = "node-a" // HOST_NAME
	promJob       = "otelcol-tcprtt"
	promHostLabel = "host_name"
)

// Two connections on distinct loopback addresses: four peers, each side of
// each connection seen from the other. The slow pair's server answers after
// a delay, so its client side has millisecond RTTs, the other three
// microsecond ones.
var (
	fastServer = netip.MustParseAddr("127.0.0.21")
	fastClient = netip.MustParseAddr("127.0.0.20")
	slowServer = netip.MustParseAddr("127.0.0.23")
	slowClient = netip.MustParseAddr("127.0.0.22")

	promPeers = map[string]string{
		fastServer.String(): "fast pair, client side",
		fastClient.String(): "fast pair, server side",
		slowServer.String(): "slow pair, client side",
		slowClient.String(): "slow pair, server side",
	}
	promQuantiles = []float64{0.5, 0.99}

	// promDocJoinQuery is docs/prometheus.md's query that adds host_name
	// from target_info to a per-host result.
	promDocJoinQuery = `histogram_quantile(0.99, sum by (job, instance, network_peer_address) (rate(tcp_rtt_seconds[5m])))` +
		` * on (job, instance) group_left (host_name) target_info`

	// promDocQueries are the PromQL examples of docs/prometheus.md.
	promDocQueries = []string{
		`histogram_quantile(0.5, sum by (instance, network_peer_address) (rate(tcp_rtt_seconds[5m])))`,
		`histogram_quantile(0.99, sum by (instance, network_peer_address) (rate(tcp_rtt_seconds[5m])))`,
		promDocJoinQuery,
		`histogram_avg(rate(tcp_rtt_seconds[5m]))`,
		`histogram_count(rate(tcp_rtt_seconds[5m]))`,
		`histogram_fraction(0, 0.001, rate(tcp_rtt_seconds[5m]))`,
	}
)

func TestPrometheusNativeHistogram(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Prometheus and the otelcol-tcprtt binary; skipped with -short")
	}
	testenv.RequireBPF(t)

	// The collector counts the loss addresses too (prometheus_retrans_test.go).
	lockLossNets(t)

	promBin := prometheusBinary(t)
	colBin := collectorBinary(t)
	prom := startPrometheus(t, promBin)
	sink := newOTLPSink(t)
	cfg := writePrometheusConfig(t, prom.url+"/api/v1/otlp", sink.url, "", "", append([]string{promPeerFilter}, lossFilter()...))
	col := startProcessEnv(t, append(os.Environ(), "HOST_NAME="+promHostName), colBin, "--config="+cfg)
	col.waitReady(t, readyTimeout)

	retrans := runLossTraffic(t, prom, lossFamilies, lossConns, lossSize)
	closed := runPrometheusTraffic(t)
	peers := mergePeers(promPeers, lossPeers)
	final := waitStablePoints(t, sink, col, closed, peers)
	require.NoError(t, sink.err(), "OTLP endpoint")

	// Prometheus gets the same exports; wait until it holds the final counts.
	series := waitPrometheusCounts(t, prom, final)

	checkPrometheusSeries(t, series, final)
	checkTargetInfo(t, prom)
	checkPrometheusQueries(t, prom, final, peers)
	checkPrometheusRetransmits(t, prom, sink, closed, peers, retrans)

	col.stop(t)
	require.NoError(t, sink.err(), "OTLP endpoint")
	prom.stop(t)
}

// runPrometheusTraffic makes the test's traffic: the slow pair in the
// background, the fast one here, for trafficTime. It returns when both
// pairs are closed.
func runPrometheusTraffic(t *testing.T) (closed time.Time) {
	t.Helper()
	slowRounds, slowErr := runSlowPair(t, trafficTime)
	fast := tcptest.Dial(t, fastServer, fastClient)
	fastRounds := 0
	for end := time.Now().Add(trafficTime); time.Now().Before(end); {
		fast.RoundTrips(t, 200)
		fastRounds += 200
		time.Sleep(20 * time.Millisecond)
	}
	fast.Close()
	require.NoError(t, <-slowErr, "slow pair")
	closed = time.Now()
	t.Logf("traffic done: %d round trips on the fast pair, %d on the slow pair", fastRounds, *slowRounds)
	return closed
}

// checkPrometheusQueries holds PromQL's histogram_count, histogram_sum and
// histogram_quantile of every peer against the receiver's final point, and
// checks that docs/prometheus.md's queries give one finite result per peer
// (about describes them, for the log).
func checkPrometheusQueries(t *testing.T, prom *prometheus, final map[string]pmetric.ExponentialHistogramDataPoint, about map[string]string) {
	t.Helper()
	counts := queryVector(t, prom, "histogram_count("+promMetric+")")
	sums := queryVector(t, prom, "histogram_sum("+promMetric+")")
	quantiles := map[float64]map[string]float64{}
	for _, q := range promQuantiles {
		quantiles[q] = queryVector(t, prom, fmt.Sprintf("histogram_quantile(%g, %s)", q, promMetric))
	}
	// The queries docs/prometheus.md shows: one finite result per peer.
	docResults := make([]map[string]float64, len(promDocQueries))
	for i, q := range promDocQueries {
		docResults[i] = queryVector(t, prom, q)
	}

	peers := sortedKeys(final)
	for _, peer := range peers {
		dp := final[peer]
		assert.Equal(t, float64(dp.Count()), counts[peer], "histogram_count for peer %s", peer)
		assert.InEpsilon(t, dp.Sum(), sums[peer], 1e-9, "histogram_sum for peer %s", peer)
		t.Logf("peer %s (%s): receiver count=%d sum=%gs mean=%s | PromQL histogram_count=%g histogram_sum=%gs",
			peer, about[peer], dp.Count(), dp.Sum(), fmtSeconds(dp.Sum()/float64(dp.Count())), counts[peer], sums[peer])
		for _, q := range promQuantiles {
			got, ok := quantiles[q][peer]
			if !assert.True(t, ok, "histogram_quantile(%g) has no result for peer %s", q, peer) {
				continue
			}
			b := quantileBucket(dp, q)
			lo, hi := neighbourhood(dp, b)
			model := interpolate(dp, q)
			t.Logf("  p%g: receiver bucket %s (index %s), Prometheus-style interpolation %s (%.6g) | PromQL histogram_quantile=%s (%.6g)",
				q*100, b.interval(), b.name(), fmtSeconds(model), model, fmtSeconds(got), got)
			assert.True(t, got >= lo*(1-1e-12) && got <= hi*(1+1e-12),
				"histogram_quantile(%g) for peer %s = %g, not within one bucket of the receiver's bucket %s: want [%g, %g]",
				q, peer, got, b.interval(), lo, hi)
		}
		for i, q := range promDocQueries {
			r, ok := docResults[i][peer]
			if assert.True(t, ok, "%s has no result for peer %s", q, peer) {
				assert.False(t, math.IsNaN(r) || math.IsInf(r, 0), "%s for peer %s = %g", q, peer, r)
				t.Logf("  %s = %g", q, r)
			}
		}
	}
}

// writePrometheusConfig writes the collector config of the test: one
// receiver, the resource processor of the shipped configs (the host's
// identity, from HOST_NAME), two OTLP/HTTP exporters (Prometheus and the
// sink). The exporter appends /v1/metrics to endpoint, so Prometheus' base
// is /api/v1/otlp. receiverKeys are added to the receiver's keys (each
// line indented by four spaces). With fullSinkEndpoint, a second receiver
// tcprtt/full with the same keys and max_buckets: 8193 (never downscaled)
// exports to that endpoint only, through a pipeline of its own. nets are
// the local and remote address filters.
func writePrometheusConfig(t *testing.T, promEndpoint, sinkEndpoint, receiverKeys, fullSinkEndpoint string, nets []string) string {
	t.Helper()
	receiver := fmt.Sprintf(`    collection_interval: 1s
    initial_delay: 0s
    group_by: [remote_address]
    filter:
      local_addresses: [%[1]s]
      remote_addresses: [%[1]s]
%[2]s`, strings.Join(nets, ", "), receiverKeys)
	var fullReceiver, fullExporter, fullPipeline string
	if fullSinkEndpoint != "" {
		fullReceiver = "  tcprtt/full:\n" + receiver + "    max_buckets: 8193\n"
		fullExporter = fmt.Sprintf(`  otlp_http/full:
    endpoint: %s
    sending_queue:
      enabled: false
    retry_on_failure:
      enabled: false
`, fullSinkEndpoint)
		fullPipeline = `    metrics/full:
      receivers: [tcprtt/full]
      processors: [resource]
      exporters: [otlp_http/full]
`
	}
	cfg := fmt.Sprintf(`# otelcol-tcprtt -> Prometheus end-to-end test config (generated)
receivers:
  tcprtt:
%[3]s%[4]s
processors:
  resource:
    attributes:
      - key: service.name
        value: otelcol-tcprtt
        action: upsert
      - key: service.instance.id
        value: ${env:HOST_NAME}
        action: upsert
      - key: host.name
        value: ${env:HOST_NAME}
        action: upsert

exporters:
  # POSTs to %[1]s/v1/metrics. No queue: every scrape is exported in
  # order, before the next one, to both exporters.
  otlp_http/prometheus:
    endpoint: %[1]s
    sending_queue:
      enabled: false
    retry_on_failure:
      enabled: false
  otlp_http/sink:
    endpoint: %[2]s
    sending_queue:
      enabled: false
    retry_on_failure:
      enabled: false
%[5]s
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [tcprtt]
      processors: [resource]
      exporters: [otlp_http/prometheus, otlp_http/sink]
%[6]s`, promEndpoint, sinkEndpoint, receiver, fullReceiver, fullExporter, fullPipeline)
	return writeFileIn(t, t.TempDir(), "otelcol-prometheus.yaml", []byte(cfg), 0o600)
}

// runSlowPair makes request/response round trips between slowClient and
// slowServer for d; the server waits before each answer (phases of 50
// answers after 500 µs, then 50 after 3 ms), so the client side's smoothed
// RTT moves between about 0.5 and 3 ms. The rounds count is valid once the
// error channel has delivered.
func runSlowPair(t *testing.T, d time.Duration) (*int, <-chan error) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(slowServer, 0)))
	require.NoError(t, err, "listen on %s (loopback 127.0.0.0/8 must be routable)", slowServer)
	dialer := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(slowClient, 0)), Timeout: 5 * time.Second}
	client, err := dialer.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err, "dial %s from %s", ln.Addr(), slowClient)
	server, err := ln.AcceptTCP()
	_ = ln.Close()
	require.NoError(t, err, "accept")
	t.Cleanup(func() { client.Close(); server.Close() })

	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		defer server.Close()
		buf := make([]byte, tcptest.MessageSize)
		for i := 0; ; i++ {
			if _, err := io.ReadFull(server, buf); err != nil {
				return
			}
			delay := 500 * time.Microsecond
			if (i/50)%2 == 1 {
				delay = 3 * time.Millisecond
			}
			time.Sleep(delay)
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()

	rounds := new(int)
	errc := make(chan error, 1)
	go func() {
		err := func() error {
			buf := make([]byte, tcptest.MessageSize)
			for end := time.Now().Add(d); time.Now().Before(end); *rounds++ {
				if _, err := client.Write(buf); err != nil {
					return fmt.Errorf("write request: %w", err)
				}
				if _, err := io.ReadFull(client, buf); err != nil {
					return fmt.Errorf("read response: %w", err)
				}
			}
			return nil
		}()
		client.Close()
		<-serverDone // no segment of this pair after errc delivers
		errc <- err
	}()
	return rounds, errc
}

// waitFinalPoints waits until the sink holds, for every test peer, two
// consecutive points taken after closed with the same count (the cumulative
// counts stopped changing) and returns the newest point of each peer.
func waitFinalPoints(t *testing.T, sink *otlpSink, col *collector, closed time.Time) map[string]pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	return waitStablePoints(t, sink, col, closed, promPeers)
}

// waitStablePoints is waitFinalPoints for the peers of one collector: every
// point the sink holds must be of one of them.
func waitStablePoints(t *testing.T, sink *otlpSink, col *collector, closed time.Time, peers map[string]string) map[string]pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	after := pcommon.NewTimestampFromTime(closed.Add(100 * time.Millisecond))
	deadline := time.Now().Add(settleTimeout)
	for {
		// Points of each test peer taken after `after`, in export order.
		points := map[string][]pmetric.ExponentialHistogramDataPoint{}
		for _, md := range sink.metrics() {
			forEachPoint(md, func(dp pmetric.ExponentialHistogramDataPoint) {
				v, ok := dp.Attributes().Get(attrPeerAddr)
				if !ok {
					t.Errorf("%s point without %s: %v", metricName, attrPeerAddr, dp.Attributes().AsRaw())
					return
				}
				if _, ours := peers[v.Str()]; !ours {
					t.Errorf("%s point for %s, outside the collector's filter (peers %v)", metricName, v.Str(), sortedKeys(peers))
					return
				}
				if dp.Timestamp() > after {
					points[v.Str()] = append(points[v.Str()], dp)
				}
			})
		}
		require.False(t, t.Failed())
		final := map[string]pmetric.ExponentialHistogramDataPoint{}
		for peer := range peers {
			p := points[peer]
			if n := len(p); n >= 2 && p[n-1].Count() == p[n-2].Count() && p[n-1].Count() > 0 {
				final[peer] = p[n-1]
			}
		}
		if len(final) == len(peers) {
			return final
		}
		if err := col.exited(); err != nil {
			t.Fatalf("collector exited early: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stable final %s point for every peer within %s of the end of traffic; stable: %d of %d",
				metricName, settleTimeout, len(final), len(peers))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func forEachPoint(md pmetric.Metrics, fn func(pmetric.ExponentialHistogramDataPoint)) {
	for _, dp := range testenv.RTTPoints(md) {
		fn(dp)
	}
}

// --- Prometheus process --------------------------------------------------

type prometheus struct {
	url  string
	proc *collector // a process with its output; the type is generic enough
	// The command line, kept for restart: same port, same data directory.
	bin  string
	args []string
}

// prometheusBinary returns the Prometheus binary: TCPRTT_PROMETHEUS, or the
// one `make prometheus` installs in the cache directory. Missing, the test
// is skipped, or fails under TCPRTT_REQUIRE_BPF=1 (CI): building Prometheus
// takes about 9 minutes cold, too long to start from inside a test.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TCPRTT_PROMETHEUS"); p != "" {
		st, err := os.Stat(p)
		require.NoError(t, err, "TCPRTT_PROMETHEUS")
		require.False(t, st.IsDir(), "TCPRTT_PROMETHEUS=%s is a directory", p)
		return p
	}
	cache := os.Getenv("TCPRTT_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		require.NoError(t, err, "no cache directory: set TCPRTT_CACHE or TCPRTT_PROMETHEUS")
		cache = filepath.Join(dir, "tcprtt")
	}
	p := filepath.Join(cache, "prometheus-"+prometheusVersion, "prometheus")
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("Prometheus %s not found at %s: run `make prometheus` (about 9 minutes cold) or set TCPRTT_PROMETHEUS", prometheusVersion, p)
		if os.Getenv(testenv.RequireBPFEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// startPrometheus runs Prometheus on a free loopback port with its OTLP
// receiver, a minimal config (no scrape jobs) and a temporary TSDB, and no
// feature flags.
func startPrometheus(t *testing.T, bin string) *prometheus {
	t.Helper()
	return startPrometheusWith(t, bin, `# Minimal Prometheus config for the tcprtt end-to-end test (generated):
# no scrape jobs; tcp.rtt arrives through the OTLP receiver.
global:
  evaluation_interval: 1m
`)
}

// startPrometheusWith is startPrometheus with the given prometheus.yml and
// extra command-line flags.
func startPrometheusWith(t *testing.T, bin, config string, flags ...string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfg, []byte(config), 0o600))

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // the free port can be taken meanwhile
		addr := freeLoopbackAddr(t)
		args := []string{
			"--config.file=" + cfg,
			"--storage.tsdb.path=" + filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
			"--web.listen-address=" + addr,
			"--web.enable-otlp-receiver",
		}
		args = append(args, flags...)
		p := &prometheus{url: "http://" + addr, proc: startProcess(t, bin, args...), bin: bin, args: args}
		if lastErr = p.waitReady(promReadyTimeout); lastErr == nil {
			t.Logf("Prometheus %s ready at %s", prometheusVersion, p.url)
			return p
		}
		_ = p.proc.cmd.Process.Kill()
		<-p.proc.done
		t.Logf("Prometheus on %s: %v\n%s", addr, lastErr, p.proc.stderr.String())
	}
	t.Fatalf("Prometheus did not start: %v", lastErr)
	return nil
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func (p *prometheus) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if xerr := p.proc.exited(); xerr != nil {
			return fmt.Errorf("exited: %w", xerr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// restart starts Prometheus again after stop, on the same port and data
// directory: it replays its write-ahead log, so it holds what it had.
func (p *prometheus) restart(t *testing.T) {
	t.Helper()
	p.proc = startProcess(t, p.bin, p.args...)
	require.NoError(t, p.waitReady(promReadyTimeout), "Prometheus restart (%s):\n%s", p.url, p.proc.stderr.String())
}

func (p *prometheus) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.proc.cmd.Process.Signal(os.Interrupt))
	select {
	case <-p.proc.done:
	case <-time.After(promStopTimeout):
		t.Fatalf("Prometheus still running %s after SIGINT", promStopTimeout)
	}
	require.NoError(t, p.proc.werr, "Prometheus exit")
}

// --- Prometheus HTTP API ---------------------------------------------------

type promResponse struct {
	Status    string   `json:"status"`
	ErrorType string   `json:"errorType"`
	Error     string   `json:"error"`
	Warnings  []string `json:"warnings"`
	Infos     []string `json:"infos"`
	Data      struct {
		ResultType string       `json:"resultType"`
		Result     []promSample `json:"result"`
	} `json:"data"`
}

type promSample struct {
	Metric    map[string]string   `json:"metric"`
	Value     *[2]json.RawMessage `json:"value"`     // [time, "float"]
	Histogram *[2]json.RawMessage `json:"histogram"` // [time, promHistogram]
}

type promHistogram struct {
	Count   string              `json:"count"`
	Sum     string              `json:"sum"`
	Buckets [][]json.RawMessage `json:"buckets"` // [boundary rule, "lower", "upper", "count"]
}

// promBucket is one bucket of a native histogram as the API returns it.
type promBucket struct {
	lower, upper, count float64
}

// query runs an instant PromQL query at the current time.
func (p *prometheus) query(ctx context.Context, q string) (*promResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/api/v1/query?"+url.Values{"query": {q}}.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r promResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", resp.Status, body, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", resp.Status, r.ErrorType, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %q, want vector", r.Data.ResultType)
	}
	return &r, nil
}

// queryVector runs a query whose result is one float per peer.
func queryVector(t *testing.T, p *prometheus, q string) map[string]float64 {
	t.Helper()
	return queryBy(t, p, q, promPeerLabel)
}

// queryBy runs a query whose result is one float per value of label ("" for
// a result without it: an aggregate over every series, say).
func queryBy(t *testing.T, p *prometheus, q, label string) map[string]float64 {
	t.Helper()
	r, err := p.query(t.Context(), q)
	require.NoError(t, err, "PromQL %s", q)
	if len(r.Warnings)+len(r.Infos) > 0 {
		t.Logf("PromQL %s: warnings %v, infos %v", q, r.Warnings, r.Infos)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		key := s.Metric[label]
		require.NotNil(t, s.Value, "PromQL %s: sample %v has no float value", q, s.Metric)
		v, err := parseQuoted(s.Value[1])
		require.NoError(t, err, "PromQL %s: value of %v", q, s.Metric)
		_, dup := out[key]
		require.False(t, dup, "PromQL %s: two results for %s=%q", q, label, key)
		out[key] = v
	}
	return out
}

// waitPrometheusCounts waits until Prometheus' latest tcp_rtt_seconds sample
// of every peer has the count of the receiver's final point, and returns
// the series of that query.
func waitPrometheusCounts(t *testing.T, p *prometheus, final map[string]pmetric.ExponentialHistogramDataPoint) []promSample {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		r, err := p.query(t.Context(), promMetric)
		require.NoError(t, err, "PromQL %s", promMetric)
		done := len(r.Data.Result) > 0
		seen := map[string]string{}
		for _, s := range r.Data.Result {
			peer := s.Metric[promPeerLabel]
			if s.Histogram == nil {
				done = false
				continue
			}
			h, err := parseHistogram(s.Histogram[1])
			require.NoError(t, err, "histogram of %v", s.Metric)
			seen[peer] = h.Count
			if dp, ok := final[peer]; !ok || h.Count != strconv.FormatUint(dp.Count(), 10) {
				done = false
			}
		}
		if done && len(seen) == len(final) {
			return r.Data.Result
		}
		if err := p.proc.exited(); err != nil {
			t.Fatalf("Prometheus exited: %v\n%s", err, p.proc.stderr.String())
		}
		if time.Now().After(deadline) {
			want := map[string]uint64{}
			for peer, dp := range final {
				want[peer] = dp.Count()
			}
			t.Fatalf("Prometheus does not hold the receiver's final counts within %s: %s counts %v, want %v\nPrometheus log:\n%s",
				settleTimeout, promMetric, seen, want, p.proc.stderr.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkPrometheusSeries checks that tcp_rtt_seconds has exactly one native
// histogram series per peer, with the translated labels, and that its
// buckets are the receiver's buckets.
func checkPrometheusSeries(t *testing.T, series []promSample, final map[string]pmetric.ExponentialHistogramDataPoint) {
	t.Helper()
	byPeer := map[string]int{}
	for _, s := range series {
		peer := s.Metric[promPeerLabel]
		byPeer[peer]++
		t.Logf("Prometheus series %s", fmtLabels(s.Metric))
		assert.Equal(t, promMetric, s.Metric["__name__"], "metric name")
		assert.Equal(t, netType(peer), s.Metric[promNetTypeLabel], "%s of %s", promNetTypeLabel, peer)
		assert.Equal(t, promJob, s.Metric["job"], "job (service.name) of %s", peer)
		assert.Equal(t, promHostName, s.Metric["instance"], "instance (service.instance.id) of %s", peer)
		assert.NotContains(t, s.Metric, promHostLabel, "host.name is not promoted to a label by default")
		for _, l := range []string{"network_local_address", "network_local_port", "network_peer_port"} {
			assert.NotContains(t, s.Metric, l, "label of %s although group_by is [remote_address]", peer)
		}
		dp, ok := final[peer]
		if !assert.True(t, ok, "series for %s=%q, which the receiver did not export", promPeerLabel, peer) {
			continue
		}
		h, err := parseHistogram(s.Histogram[1])
		require.NoError(t, err)
		got, err := h.buckets()
		require.NoError(t, err)
		want := pointBuckets(dp)
		if assert.Len(t, got, len(want), "non-empty buckets of %s (Prometheus %v, receiver %v)", peer, got, want) {
			for i := range want {
				assert.InEpsilon(t, want[i].upper, got[i].upper, 1e-12, "%s bucket %d upper bound", peer, i)
				if want[i].lower == 0 {
					assert.Zero(t, got[i].lower, "%s bucket %d lower bound", peer, i)
				} else {
					assert.InEpsilon(t, want[i].lower, got[i].lower, 1e-12, "%s bucket %d lower bound", peer, i)
				}
				assert.Equal(t, float64(want[i].count), got[i].count, "%s bucket %s count", peer, want[i].interval())
			}
		}
	}
	for peer := range final {
		assert.Equal(t, 1, byPeer[peer], "%s series with %s=%q", promMetric, promPeerLabel, peer)
	}
	assert.Len(t, byPeer, len(final), "%s series by %s: %v", promMetric, promPeerLabel, byPeer)
}

// checkTargetInfo checks that the host's identity arrived: target_info of
// the collector's job and instance carries host_name (the resource's
// host.name), and docs/prometheus.md's join adds it to a per-host result.
func checkTargetInfo(t *testing.T, p *prometheus) {
	t.Helper()
	r, err := p.query(t.Context(), `target_info{job="`+promJob+`"}`)
	require.NoError(t, err, "PromQL target_info")
	require.Len(t, r.Data.Result, 1, "target_info series of job %s: %v", promJob, r.Data.Result)
	info := r.Data.Result[0].Metric
	t.Logf("Prometheus series %s", fmtLabels(info))
	assert.Equal(t, promHostName, info["instance"], "target_info instance")
	assert.Equal(t, promHostName, info[promHostLabel], "target_info %s (host.name)", promHostLabel)

	r, err = p.query(t.Context(), promDocJoinQuery)
	require.NoError(t, err, "PromQL %s", promDocJoinQuery)
	require.NotEmpty(t, r.Data.Result, "PromQL %s", promDocJoinQuery)
	for _, s := range r.Data.Result {
		assert.Equal(t, promHostName, s.Metric[promHostLabel], "%s: %s of %v", promDocJoinQuery, promHostLabel, s.Metric)
	}
	t.Logf("e.g. %s", fmtLabels(r.Data.Result[0].Metric))
}

func parseHistogram(raw json.RawMessage) (*promHistogram, error) {
	var h promHistogram
	err := json.Unmarshal(raw, &h)
	return &h, err
}

// buckets returns the non-empty buckets, lowest first.
func (h *promHistogram) buckets() ([]promBucket, error) {
	var out []promBucket
	for _, b := range h.Buckets {
		if len(b) != 4 {
			return nil, fmt.Errorf("bucket %s: want [rule, lower, upper, count]", b)
		}
		var pb promBucket
		var err error
		for i, dst := range []*float64{&pb.lower, &pb.upper, &pb.count} {
			if *dst, err = parseQuoted(b[i+1]); err != nil {
				return nil, err
			}
		}
		if pb.count != 0 {
			out = append(out, pb)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].upper < out[j].upper })
	return out, nil
}

func parseQuoted(raw json.RawMessage) (float64, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, err
	}
	return strconv.ParseFloat(s, 64)
}

// --- The receiver's own quantiles --------------------------------------------

// histBucket is one bucket of an exponential-histogram data point: the zero
// bucket [0, 0] (zero threshold 0) or positive bucket index (lower, upper].
type histBucket struct {
	zero         bool
	index        int32
	lower, upper float64
	count        uint64
}

func (b histBucket) name() string {
	if b.zero {
		return "zero"
	}
	return strconv.Itoa(int(b.index))
}

func (b histBucket) interval() string {
	if b.zero {
		return "[0, 0]"
	}
	return fmt.Sprintf("(%s, %s]", fmtSeconds(b.lower), fmtSeconds(b.upper))
}

// bucketBound is base^index, base = 2^(2^-scale): the lower bound of bucket
// index and the upper bound of bucket index-1.
func bucketBound(scale, index int32) float64 {
	return math.Exp2(float64(index) / math.Exp2(float64(scale)))
}

// pointBuckets lists the non-empty buckets of dp, lowest first.
func pointBuckets(dp pmetric.ExponentialHistogramDataPoint) []histBucket {
	var out []histBucket
	if dp.ZeroCount() > 0 {
		out = append(out, histBucket{zero: true, count: dp.ZeroCount()})
	}
	off := dp.Positive().Offset()
	for i, c := range dp.Positive().BucketCounts().AsRaw() {
		if c == 0 {
			continue
		}
		idx := off + int32(i)
		out = append(out, histBucket{index: idx, lower: bucketBound(dp.Scale(), idx), upper: bucketBound(dp.Scale(), idx+1), count: c})
	}
	return out
}

// quantileBucket returns the bucket holding the q-quantile of dp: the first
// bucket, lowest first, whose cumulative count reaches the rank q*count
// (histogram_quantile's rank). dp.Count() must be > 0.
func quantileBucket(dp pmetric.ExponentialHistogramDataPoint, q float64) histBucket {
	rank := q * float64(dp.Count())
	var cum uint64
	bs := pointBuckets(dp)
	for _, b := range bs {
		cum += b.count
		if float64(cum) >= rank {
			return b
		}
	}
	return bs[len(bs)-1]
}

// neighbourhood is the range histogram_quantile may answer for the bucket b
// of dp: from the lower bound of the non-empty bucket below b to the upper
// bound of the non-empty bucket above (Prometheus interpolates within the
// bucket it finds, and for q >= 0.5 it counts the rank from the top, which
// picks the next non-empty bucket when the rank lies exactly on b's upper
// boundary: in a sparse point, such as one of 46 samples, that bucket can
// be several indexes away). Below the zero bucket is nothing.
func neighbourhood(dp pmetric.ExponentialHistogramDataPoint, b histBucket) (lo, hi float64) {
	bs := pointBuckets(dp)
	lo, hi = b.lower, b.upper
	for i, x := range bs {
		if x.zero != b.zero || x.index != b.index {
			continue
		}
		if i > 0 {
			lo = bs[i-1].lower
		}
		if i+1 < len(bs) {
			hi = bs[i+1].upper
		}
	}
	return lo, hi
}

// interpolate estimates the q-quantile of dp the way Prometheus 3 does for
// native histograms (for logging next to the PromQL answer): find the
// bucket, counting from the bottom for q < 0.5 and from the top otherwise,
// then interpolate exponentially within it (linearly in the zero bucket).
func interpolate(dp pmetric.ExponentialHistogramDataPoint, q float64) float64 {
	bs := pointBuckets(dp)
	total := float64(dp.Count())
	var b histBucket
	var fraction float64
	if q < 0.5 {
		rank, cum := q*total, 0.0
		for _, b = range bs {
			cum += float64(b.count)
			if cum >= rank {
				break
			}
		}
		fraction = (rank - (cum - float64(b.count))) / float64(b.count)
	} else {
		rank, cum := (1-q)*total, 0.0
		for i := len(bs) - 1; i >= 0; i-- {
			b = bs[i]
			cum += float64(b.count)
			if cum >= rank {
				break
			}
		}
		fraction = (cum - rank) / float64(b.count)
	}
	if b.zero {
		return 0
	}
	return math.Exp2(math.Log2(b.lower) + (math.Log2(b.upper)-math.Log2(b.lower))*fraction)
}

// --- Formatting --------------------------------------------------------------

func fmtSeconds(s float64) string {
	switch {
	case math.IsNaN(s) || math.IsInf(s, 0) || s == 0:
		return fmt.Sprintf("%gs", s)
	case s < 1e-3:
		return fmt.Sprintf("%.2fµs", s*1e6)
	case s < 1:
		return fmt.Sprintf("%.3fms", s*1e3)
	default:
		return fmt.Sprintf("%.3fs", s)
	}
}

func fmtLabels(m map[string]string) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		if k != "__name__" {
			parts = append(parts, fmt.Sprintf("%s=%q", k, m[k]))
		}
	}
	return m["__name__"] + "{" + strings.Join(parts, ", ") + "}"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
