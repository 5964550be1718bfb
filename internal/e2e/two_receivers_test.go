//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestTwoReceiversInOneCollector runs two tcprtt receivers with different
// group_by and filters in one collector: each loads its own program and
// exports exactly its own view of the same traffic.
func TestTwoReceiversInOneCollector(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the otelcol-tcprtt binary; skipped with -short")
	}
	testenv.RequireBPF(t)
	server, client := netip.MustParseAddr("127.0.0.51"), netip.MustParseAddr("127.0.0.50")

	sink := newOTLPSink(t)
	cfg := fmt.Sprintf(`receivers:
  tcprtt/by_peer:                  # the client sockets, by peer
    collection_interval: 500ms
    initial_delay: 0s
    filter:
      remote_addresses: [%[1]s]
  tcprtt/by_port:                  # the server sockets, by local port
    collection_interval: 500ms
    initial_delay: 0s
    group_by: [local_port]
    filter:
      local_addresses: [%[1]s]
exporters:
  otlp_http:
    endpoint: %[2]s
    retry_on_failure:
      enabled: false
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [tcprtt/by_peer, tcprtt/by_port]
      exporters: [otlp_http]
`, server, sink.url)
	path := writeFileIn(t, t.TempDir(), "two-receivers.yaml", []byte(cfg), 0o600)

	col := startCollector(t, collectorBinary(t), path)
	col.waitReady(t, readyTimeout)
	srv := tcptest.Listen(t, server)
	conn := srv.Dial(t, client)
	port := int64(srv.Addr().Port())

	// Attribute sets each receiver may export, and whether each was seen
	// with samples.
	byPeer := fmt.Sprint(map[string]any{"network.peer.address": server.String(), "network.type": "ipv4"})
	byPort := fmt.Sprint(map[string]any{"network.local.port": port, "network.type": "ipv4"})
	seen := map[string]uint64{}
	deadline := time.Now().Add(dataTimeout)
	for seen[byPeer] == 0 || seen[byPort] == 0 {
		conn.RoundTrips(t, 50)
		for _, md := range sink.metrics() {
			forEachPoint(md, func(dp pmetric.ExponentialHistogramDataPoint) {
				attrs := fmt.Sprint(dp.Attributes().AsRaw())
				if attrs != byPeer && attrs != byPort {
					t.Fatalf("unexpected series %s: neither receiver's view", attrs)
				}
				seen[attrs] = max(seen[attrs], dp.Count())
			})
		}
		if err := col.exited(); err != nil {
			t.Fatalf("collector exited early: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("within %s, saw %v; want samples for %s and %s", dataTimeout, seen, byPeer, byPort)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("by_peer %s: %d samples; by_port %s: %d samples", byPeer, seen[byPeer], byPort, seen[byPort])
	col.stop(t)
	require.NoError(t, sink.err(), "OTLP endpoint")
}
