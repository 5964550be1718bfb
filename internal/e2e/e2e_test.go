//go:build linux

// Package e2e runs the otelcol-tcprtt collector binary end to end: the tcprtt
// receiver measures real loopback TCP traffic and the otlp_http exporter sends
// tcp.rtt to an OTLP/HTTP endpoint served by the test.
//
// Needs root and kernel BTF (see testenv.RequireBPF). The binary is taken from
// TCPRTT_OTELCOL, or built with `make otelcol` at the repository root (minutes
// when the Go build cache is cold: pass a larger -timeout if needed).
package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

const (
	// The two ends of the test connection. Both sockets live on this host, so
	// both are measured: the client's peer is serverIP and the server's peer is
	// clientIP. No other test uses them: the program sees the whole host, and
	// packages run in parallel.
	serverIP = "127.0.0.81"
	clientIP = "127.0.0.80"

	metricName    = "tcp.rtt"
	metricUnit    = "s"
	wantScale     = 3
	attrPeerAddr  = "network.peer.address"
	attrNetType   = "network.type"
	readyLogLine  = "Everything is ready. Begin running and processing data."
	readyTimeout  = 2 * time.Minute  // collector start, BPF load and attach
	dataTimeout   = 30 * time.Second // from ready to both peers exported
	stopTimeout   = 30 * time.Second // SIGTERM to exit
	buildTimeout  = 15 * time.Minute // `make otelcol` on a cold cache
	burstRequests = 200              // request/response round trips per burst
	burstPause    = 100 * time.Millisecond
)

// Attributes that group_by [remote_address] must not produce.
var ungroupedAttrs = []string{"network.local.address", "network.local.port", "network.peer.port"}

func TestCollectorExportsTCPRTT(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the otelcol-tcprtt binary; skipped with -short")
	}
	testenv.RequireBPF(t)

	bin := collectorBinary(t)
	sink := newOTLPSink(t)
	cfg := writeConfig(t, sink.url)
	col := startCollector(t, bin, cfg)
	col.waitReady(t, readyTimeout)

	traffic := startTraffic(t, dataTimeout+5*time.Second)

	// First data point with count > 0 seen for each side, summarized.
	want := awaitPeers(t, col, sink, 0)
	t.Logf("client side (peer %s): %s", serverIP, want[serverIP])
	t.Logf("server side (peer %s): %s", clientIP, want[clientIP])

	rounds, err := traffic.stop()
	require.NoError(t, err, "traffic generator")
	require.Positive(t, rounds)
	t.Logf("%d exports received, %d request/response round trips made", len(sink.metrics()), rounds)

	col.stop(t)
	require.NoError(t, sink.err(), "OTLP endpoint")
}

// awaitPeers waits until exports received after the first skip ones hold a
// tcp.rtt point with count > 0 for both test peers, and returns their
// summaries.
func awaitPeers(t *testing.T, c *collector, sink *otlpSink, skip int) map[string]string {
	t.Helper()
	want := map[string]string{serverIP: "", clientIP: ""}
	deadline := time.Now().Add(dataTimeout)
	checked := skip
	for {
		batches := sink.metrics()
		for _, md := range batches[checked:] {
			for addr, summary := range checkExport(t, md) {
				if prev, ok := want[addr]; ok && prev == "" {
					want[addr] = summary
				}
			}
		}
		checked = len(batches)
		if t.Failed() || (want[serverIP] != "" && want[clientIP] != "") {
			require.False(t, t.Failed(), "bad %s content (see above)", metricName)
			return want
		}
		if err := c.exited(); err != nil {
			t.Fatalf("collector exited early: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s data point with count > 0 for %s=%s and %s within %s; seen: %v; %d exports received",
				metricName, attrPeerAddr, serverIP, clientIP, dataTimeout, want, len(batches)-skip)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkExport validates every tcp.rtt metric of md and returns, by peer
// address, a summary of its test data points with count > 0. Content errors
// are reported with t.Errorf.
func checkExport(t *testing.T, md pmetric.Metrics) map[string]string {
	t.Helper()
	peers := map[string]string{}
	for _, m := range testenv.Metrics(md) {
		if m.Name() != metricName {
			continue
		}
		if !assert.Equal(t, pmetric.MetricTypeExponentialHistogram, m.Type(), "%s type", metricName) {
			continue
		}
		assert.Equal(t, metricUnit, m.Unit(), "%s unit", metricName)
		temporality := m.ExponentialHistogram().AggregationTemporality()
		for _, dp := range m.ExponentialHistogram().DataPoints().All() {
			if addr, ok := checkPoint(t, dp); ok {
				peers[addr] = fmt.Sprintf("%s count=%d sum=%gs zero=%d offset=%d buckets=%v attrs=%v",
					temporality, dp.Count(), dp.Sum(), dp.ZeroCount(), dp.Positive().Offset(),
					dp.Positive().BucketCounts().AsRaw(), dp.Attributes().AsRaw())
			}
		}
	}
	return peers
}

// checkPoint validates one data point; it returns the point's peer address
// and whether the point is a loopback test point with count > 0.
func checkPoint(t *testing.T, dp pmetric.ExponentialHistogramDataPoint) (string, bool) {
	t.Helper()
	attrs := dp.Attributes().AsRaw()
	desc := fmt.Sprintf("%s point %v", metricName, attrs)

	assert.EqualValues(t, wantScale, dp.Scale(), "%s: scale", desc)
	assert.Zero(t, dp.Negative().BucketCounts().Len(), "%s: negative buckets of an RTT", desc)
	total := dp.ZeroCount()
	for _, c := range dp.Positive().BucketCounts().AsRaw() {
		total += c
	}
	assert.Equal(t, dp.Count(), total, "%s: count != zero_count + sum of bucket counts", desc)
	if dp.HasSum() {
		assert.GreaterOrEqual(t, dp.Sum(), 0.0, "%s: sum", desc)
	}
	if dp.HasMin() && dp.HasMax() {
		assert.LessOrEqual(t, dp.Min(), dp.Max(), "%s: min <= max", desc)
	}

	v, ok := dp.Attributes().Get(attrPeerAddr)
	if !ok || v.Type() != pcommon.ValueTypeStr {
		return "", false
	}
	addr := v.Str()
	if addr != serverIP && addr != clientIP {
		return addr, false // other traffic on this host
	}
	for _, name := range ungroupedAttrs {
		_, has := dp.Attributes().Get(name)
		assert.False(t, has, "%s: %s present although group_by is [remote_address]", desc, name)
	}
	if nt, has := dp.Attributes().Get(attrNetType); has {
		assert.Equal(t, "ipv4", nt.AsString(), "%s: %s", desc, attrNetType)
	}
	if dp.Count() == 0 {
		return addr, false
	}
	// Loopback round trips take microseconds, at most a delayed ACK: far below 1 s.
	if dp.HasSum() {
		mean := dp.Sum() / float64(dp.Count())
		assert.Less(t, mean, 1.0, "%s: mean RTT in seconds", desc)
	}
	if n := dp.Positive().BucketCounts().Len(); n > 0 {
		// Upper bound of the highest bucket: base^(offset+n), base = 2^(2^-scale).
		upper := math.Exp2(float64(dp.Positive().Offset()+int32(n)) / math.Exp2(float64(dp.Scale())))
		assert.Less(t, upper, 2.0, "%s: highest bucket's upper bound in seconds", desc)
	}
	return addr, true
}

// collectorBinary returns the path of the otelcol-tcprtt binary: from
// TCPRTT_OTELCOL, or built with `make otelcol` at the repository root.
func collectorBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TCPRTT_OTELCOL"); p != "" {
		st, err := os.Stat(p)
		require.NoError(t, err, "TCPRTT_OTELCOL")
		require.False(t, st.IsDir(), "TCPRTT_OTELCOL=%s is a directory", p)
		return p
	}
	root := repoRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "make", "-C", root, "otelcol")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "make otelcol (set TCPRTT_OTELCOL to use a prebuilt binary):\n%s", out)
	t.Logf("make otelcol took %s", time.Since(start).Round(time.Second))
	bin := filepath.Join(root, "build", "otelcol-tcprtt", "otelcol-tcprtt")
	_, err = os.Stat(bin)
	require.NoError(t, err, "make otelcol did not produce the binary")
	return bin
}

// repoRoot walks up from the test's directory to the go.mod of the module.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "go.mod not found above the test directory")
		dir = parent
	}
}

func writeConfig(t *testing.T, endpoint string) string {
	t.Helper()
	cfg := fmt.Sprintf(`# otelcol-tcprtt end-to-end test config (generated)
receivers:
  tcprtt:
    collection_interval: 1s
    initial_delay: 0s
    group_by: [remote_address]

exporters:
  otlp_http:
    endpoint: %s
    tls:
      insecure: true
    retry_on_failure:
      enabled: false

service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [tcprtt]
      exporters: [otlp_http]
`, endpoint)
	return writeFileIn(t, t.TempDir(), "otelcol-e2e.yaml", []byte(cfg), 0o600)
}

// otlpSink is an OTLP/HTTP metrics endpoint that keeps every export.
type otlpSink struct {
	url string

	mu       sync.Mutex
	received []pmetric.Metrics
	errs     []error
}

func newOTLPSink(t *testing.T) *otlpSink {
	t.Helper()
	s := &otlpSink{}
	srv := httptest.NewServer(http.HandlerFunc(s.serveHTTP)) // 127.0.0.1:0
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *otlpSink) serveHTTP(w http.ResponseWriter, r *http.Request) {
	md, status, err := decodeExport(r)
	if err != nil {
		s.mu.Lock()
		s.errs = append(s.errs, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, err))
		s.mu.Unlock()
		http.Error(w, err.Error(), status)
		return
	}
	s.mu.Lock()
	s.received = append(s.received, md)
	s.mu.Unlock()

	resp, err := pmetricotlp.NewExportResponse().MarshalProto()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(resp)
}

func decodeExport(r *http.Request) (pmetric.Metrics, int, error) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/metrics" {
		return pmetric.Metrics{}, http.StatusNotFound, errors.New("unexpected request")
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		return pmetric.Metrics{}, http.StatusUnsupportedMediaType, fmt.Errorf("content type %q", ct)
	}
	var body io.Reader = r.Body
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return pmetric.Metrics{}, http.StatusBadRequest, fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		body = zr
	default:
		return pmetric.Metrics{}, http.StatusUnsupportedMediaType, fmt.Errorf("content encoding %q", enc)
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		return pmetric.Metrics{}, http.StatusBadRequest, fmt.Errorf("read body: %w", err)
	}
	req := pmetricotlp.NewExportRequest()
	if err := req.UnmarshalProto(raw); err != nil {
		return pmetric.Metrics{}, http.StatusBadRequest, fmt.Errorf("decode ExportMetricsServiceRequest: %w", err)
	}
	return req.Metrics(), http.StatusOK, nil
}

func (s *otlpSink) metrics() []pmetric.Metrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received[:len(s.received):len(s.received)]
}

func (s *otlpSink) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// collector is a running otelcol-tcprtt process.
type collector struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	werr   error // cmd.Wait's result, set before done is closed
}

func startCollector(t *testing.T, bin, cfg string) *collector {
	t.Helper()
	return startProcess(t, bin, "--config", cfg)
}

func (c *collector) exited() error {
	select {
	case <-c.done:
		if c.werr != nil {
			return c.werr
		}
		return errors.New("exit status 0")
	default:
		return nil
	}
}

func (c *collector) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(c.stderr.String(), readyLogLine) {
		if err := c.exited(); err != nil {
			t.Fatalf("collector exited during startup: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("collector not ready within %s (no %q in its log)", timeout, readyLogLine)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and requires a clean exit with status 0.
func (c *collector) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-c.done:
	case <-time.After(stopTimeout):
		t.Fatalf("collector still running %s after SIGTERM", stopTimeout)
	}
	require.NoError(t, c.werr, "collector exit after SIGTERM")
	require.Equal(t, 0, c.cmd.ProcessState.ExitCode())
	assertNoErrorLogs(t, c.stderr.String())
}

// assertNoErrorLogs fails on collector log lines at error level or above.
func assertNoErrorLogs(t *testing.T, log string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) > 1 {
			switch fields[1] {
			case "error", "dpanic", "panic", "fatal":
				t.Errorf("collector logged: %s", sc.Text())
			}
		}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// traffic makes request/response round trips from clientIP to serverIP in
// bursts on fresh connections until stopped or until its time budget ends.
type traffic struct {
	ln     net.Listener
	cancel context.CancelFunc
	done   chan struct{}
	rounds int
	err    error
}

func startTraffic(t *testing.T, budget time.Duration) *traffic {
	t.Helper()
	ln, err := net.Listen("tcp4", net.JoinHostPort(serverIP, "0"))
	require.NoError(t, err, "listen on %s (loopback 127.0.0.0/8 must be routable)", serverIP)
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	tr := &traffic{ln: ln, cancel: cancel, done: make(chan struct{})}
	go serveEcho(ln)
	go func() {
		defer close(tr.done)
		tr.rounds, tr.err = tr.run(ctx)
	}()
	t.Cleanup(func() { _, _ = tr.stop() })
	return tr
}

func (tr *traffic) run(ctx context.Context) (int, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	rounds := 0
	for ctx.Err() == nil {
		n, err := burst(ctx, &d, tr.ln.Addr().String())
		rounds += n
		if err != nil && ctx.Err() == nil {
			return rounds, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(burstPause):
		}
	}
	return rounds, nil
}

// burst makes burstRequests round trips of 64-byte messages on one new connection.
func burst(ctx context.Context, d *net.Dialer, addr string) (int, error) {
	conn, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	buf := bytes.Repeat([]byte{'x'}, 64)
	for i := range burstRequests {
		if err := tcptest.RoundTrip(conn, buf); err != nil {
			return i, err
		}
	}
	return burstRequests, nil
}

// serveEcho answers every 64-byte request with 64 bytes until ln is closed.
func serveEcho(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			tcptest.Echo(conn, 64)
		}()
	}
}

// stop ends the traffic and returns the round trips made and the first error.
func (tr *traffic) stop() (int, error) {
	tr.cancel()
	<-tr.done
	_ = tr.ln.Close()
	return tr.rounds, tr.err
}
