//go:build linux

package tcprttreceiver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

var (
	clientV4 = netip.MustParseAddr("127.0.0.2")
	serverV4 = netip.MustParseAddr("127.0.0.3")
	otherV4  = netip.MustParseAddr("127.0.0.4")
	loopV6   = netip.IPv6Loopback()
)

var (
	probeMu   sync.Mutex
	probeSeen = map[loader.Mode]error{}
)

// probed returns loader.Probe(m), once per test binary.
func probed(m loader.Mode) error {
	probeMu.Lock()
	defer probeMu.Unlock()
	err, ok := probeSeen[m]
	if !ok {
		err = loader.Probe(m)
		probeSeen[m] = err
	}
	return err
}

// requireFlavour skips t, with the kernel's reason, if the running kernel
// refuses flavour m (tools/kernels checks the refusals of each kernel of
// the matrix against what it expects).
func requireFlavour(t *testing.T, m loader.Mode) {
	t.Helper()
	if err := probed(m); err != nil {
		t.Skipf("flavour %s refused by this kernel: %v", m, err)
	}
}

// requireKernel skips (or fails under TCPRTT_REQUIRE_BPF=1) without BPF
// and makes sure tracefs is mounted for the classic tracepoint flavour.
func requireKernel(t *testing.T) {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
}

// point finds the data point whose attributes include all of want.
func point(md pmetric.Metrics, want map[string]any) (pmetric.ExponentialHistogramDataPoint, bool) {
next:
	for _, dp := range testenv.RTTPoints(md) {
		for key, v := range want {
			if got, ok := dp.Attributes().Get(key); !ok || got.AsRaw() != v {
				continue next
			}
		}
		return dp, true
	}
	return pmetric.ExponentialHistogramDataPoint{}, false
}

func clientSeries(c *tcptest.Conn) map[string]any {
	return map[string]any{
		"network.local.address": c.ClientAddr().Addr().String(),
		"network.local.port":    int64(c.ClientAddr().Port()),
		"network.peer.address":  c.ServerAddr().Addr().String(),
		"network.peer.port":     int64(c.ServerAddr().Port()),
	}
}

// TestRecordedSRTTMatchesTCPInfo checks real numbers: after reading a
// socket's TCP_INFO, one more round trip records exactly one sample on the
// client socket, taken before that segment's ACK updates srtt, so it is
// the srtt TCP_INFO reported. The sample's exact value is recovered from
// the change of the exact sum, and its bucket from the change of counts.
func TestRecordedSRTTMatchesTCPInfo(t *testing.T) {
	requireKernel(t)
	for _, mode := range loader.AutoOrder {
		t.Run(string(mode), func(t *testing.T) {
			requireFlavour(t, mode)
			cfg := createDefaultConfig()
			cfg.GroupBy = []string{"local_address", "local_port", "remote_address", "remote_port"}
			cfg.AttachMode = string(mode)
			require.NoError(t, cfg.Validate())
			s := newRTTScraper(cfg, receivertest.NewNopSettings(metadata.Type))
			require.NoError(t, s.start(context.Background(), componenttest.NewNopHost()))
			defer func() { require.NoError(t, s.shutdown(context.Background())) }()
			require.Equal(t, mode, s.tracer.Mode())
			table, err := bucket.NewTable(cfg.Scale, bucket.Unit(cfg.Unit))
			require.NoError(t, err)

			for _, pair := range [][2]netip.Addr{{serverV4, clientV4}, {loopV6, loopV6}} {
				c := tcptest.Dial(t, pair[0], pair[1])
				c.RoundTrips(t, 20)
				before, err := s.scrape(context.Background())
				require.NoError(t, err)
				info := c.ClientInfo(t)
				c.RoundTrips(t, 1)
				after, err := s.scrape(context.Background())
				require.NoError(t, err)

				want := clientSeries(c)
				want["network.type"] = map[bool]string{true: "ipv4", false: "ipv6"}[pair[0].Is4()]
				dpBefore, ok := point(before, want)
				require.True(t, ok, "series %v missing before", want)
				dpAfter, ok := point(after, want)
				require.True(t, ok, "series %v missing after", want)

				require.Equal(t, uint64(1), dpAfter.Count()-dpBefore.Count(),
					"one round trip brings exactly one segment to the client")
				raw := uint32(math.Round((dpAfter.Sum() - dpBefore.Sum()) * float64(table.Divisor)))
				assert.Equal(t, info.Rtt, raw>>3,
					"recorded srtt %d/8 µs, TCP_INFO said %d µs", raw, info.Rtt)
				// The new sample is in the bucket the exact mapping gives.
				idx := table.Index(raw)
				assert.Equal(t, uint64(1), bucketCount(dpAfter, idx)-bucketCount(dpBefore, idx),
					"sample %d/8 µs expected in bucket %d", raw, idx)
				t.Logf("%s: TCP_INFO rtt %d µs, recorded srtt %d/8 µs in bucket %d (%.3g, %.3g] s",
					want["network.type"], info.Rtt, raw, idx, table.LowerBound(idx), table.UpperBound(idx))
			}
		})
	}
}

func bucketCount(dp pmetric.ExponentialHistogramDataPoint, index int32) uint64 {
	i := int(index - dp.Positive().Offset())
	if i < 0 || i >= dp.Positive().BucketCounts().Len() {
		return 0
	}
	return dp.Positive().BucketCounts().At(i)
}

// startFromFactory starts a receiver built by the factory, as a collector
// would, and returns the sink its metrics arrive in.
func startFromFactory(t *testing.T, mutate func(*Config)) *consumertest.MetricsSink {
	t.Helper()
	f := NewFactory()
	cfg := f.CreateDefaultConfig().(*Config)
	cfg.CollectionInterval = 100 * time.Millisecond
	cfg.InitialDelay = 0
	mutate(cfg)
	require.NoError(t, cfg.Validate())
	sink := new(consumertest.MetricsSink)
	r, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, sink)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, r.Shutdown(context.Background())) })
	return sink
}

// latest returns the last batch the sink received after at least one new
// batch has arrived since n batches.
func waitScrape(t *testing.T, sink *consumertest.MetricsSink) pmetric.Metrics {
	t.Helper()
	n := len(sink.AllMetrics())
	require.Eventually(t, func() bool { return len(sink.AllMetrics()) > n+1 }, 10*time.Second, 10*time.Millisecond)
	all := sink.AllMetrics()
	return all[len(all)-1]
}

// TestReceiverGroupsAndGrows runs the receiver from its factory with the
// default group_by (remote_address) and checks one series per peer, with
// attributes, and counts that grow with traffic.
func TestReceiverGroupsAndGrows(t *testing.T) {
	requireKernel(t)
	for _, mode := range loader.AutoOrder {
		t.Run(string(mode), func(t *testing.T) {
			requireFlavour(t, mode)
			sink := startFromFactory(t, func(c *Config) { c.AttachMode = string(mode) })
			v4 := tcptest.Dial(t, serverV4, clientV4)
			v6 := tcptest.Dial(t, loopV6, loopV6)
			v4.RoundTrips(t, 50)
			v6.RoundTrips(t, 50)
			md := waitScrape(t, sink)

			// Both ends of each connection are on this host: the client's
			// peer is the server and the server's peer the client.
			counts := map[string]uint64{}
			for _, peer := range []netip.Addr{serverV4, clientV4, loopV6} {
				typ := map[bool]string{true: "ipv4", false: "ipv6"}[peer.Is4()]
				dp, ok := point(md, map[string]any{"network.peer.address": peer.String(), "network.type": typ})
				require.True(t, ok, "no series for peer %s", peer)
				assert.Equal(t, 2, dp.Attributes().Len(), "attributes: %v", dp.Attributes().AsRaw())
				assert.GreaterOrEqual(t, dp.Count(), uint64(50), "peer %s", peer)
				assert.Equal(t, int32(3), dp.Scale())
				assert.Equal(t, dp.Count(), dp.ZeroCount()+sum(dp.Positive().BucketCounts()))
				counts[peer.String()] = dp.Count()
			}

			v4.RoundTrips(t, 30)
			md = waitScrape(t, sink)
			dp, ok := point(md, map[string]any{"network.peer.address": serverV4.String()})
			require.True(t, ok)
			assert.GreaterOrEqual(t, dp.Count(), counts[serverV4.String()]+30, "counts grow with traffic")
		})
	}
}

func sum(s pcommon.UInt64Slice) uint64 {
	var n uint64
	for _, v := range s.All() {
		n += v
	}
	return n
}

// TestReceiverFilters checks that address and port filters exclude what
// they should, IPv4 and IPv6 alike.
func TestReceiverFilters(t *testing.T) {
	requireKernel(t)
	v4 := tcptest.Dial(t, serverV4, clientV4)
	v4other := tcptest.Dial(t, otherV4, clientV4)
	v6 := tcptest.Dial(t, loopV6, loopV6)
	serverPort := int(v4.ServerAddr().Port())

	byRemoteAddr := startFromFactory(t, func(c *Config) {
		c.Filter.RemoteAddresses = []string{"127.0.0.3/32", "2001:db8::/32"}
	})
	byLocalPort := startFromFactory(t, func(c *Config) {
		c.GroupBy = []string{"remote_address", "local_port"}
		c.Filter.LocalPorts = []int{serverPort}
	})
	v6only := startFromFactory(t, func(c *Config) {
		c.Filter.RemoteAddresses = []string{"::1"}
	})
	for range 3 {
		v4.RoundTrips(t, 20)
		v4other.RoundTrips(t, 20)
		v6.RoundTrips(t, 20)
	}

	md := waitScrape(t, byRemoteAddr)
	peers := peersOf(md)
	assert.Equal(t, []string{serverV4.String()}, peers, "only the client sockets talking to 127.0.0.3")

	md = waitScrape(t, byLocalPort)
	peers = peersOf(md)
	assert.Equal(t, []string{clientV4.String()}, peers, "only the server socket on port %d", serverPort)
	dp, ok := point(md, map[string]any{"network.local.port": int64(serverPort)})
	require.True(t, ok)
	assert.Positive(t, dp.Count())

	md = waitScrape(t, v6only)
	assert.Equal(t, []string{loopV6.String()}, peersOf(md))
}

// TestReceiverIPv6PrefixIsIPv6Only: ::/0 matches the IPv6 sockets and no
// IPv4 one (IPv4 addresses are keyed v4-mapped in the program), and a
// prefix written v4-mapped is the IPv4 prefix, matching IPv4 sockets
// only. Real sockets of both families, measured by the kernel program.
func TestReceiverIPv6PrefixIsIPv6Only(t *testing.T) {
	requireKernel(t)
	v4 := tcptest.Dial(t, serverV4, clientV4)
	v6 := tcptest.Dial(t, loopV6, loopV6)
	allV6 := startFromFactory(t, func(c *Config) {
		c.Filter.RemoteAddresses = []string{"::/0"}
	})
	mappedV4 := startFromFactory(t, func(c *Config) {
		c.Filter.RemoteAddresses = []string{"::ffff:" + serverV4.String() + "/128"}
	})
	for range 3 {
		v4.RoundTrips(t, 20)
		v6.RoundTrips(t, 20)
	}

	// The whole host is measured: other IPv6 traffic may show up beside
	// ::1, but no IPv4 peer may.
	peers := peersOf(waitScrape(t, allV6))
	assert.Contains(t, peers, loopV6.String())
	for _, p := range peers {
		a := netip.MustParseAddr(p)
		assert.True(t, a.Is6() && !a.Is4In6(), "::/0 matched the IPv4 peer %s", p)
	}
	assert.Equal(t, []string{serverV4.String()}, peersOf(waitScrape(t, mappedV4)))
}

// peersOf lists the peer addresses of the points with samples.
func peersOf(md pmetric.Metrics) []string {
	var peers []string
	for _, dp := range testenv.RTTPoints(md) {
		if v, ok := dp.Attributes().Get("network.peer.address"); ok && dp.Count() > 0 {
			peers = append(peers, v.Str())
		}
	}
	return peers
}

// TestAutoFallsBack: auto attaches the first flavour of AutoOrder that
// this kernel accepts and reports each one refused before it with its
// reason; forcing a refused flavour fails with one clear error and leaves
// no program loaded.
func TestAutoFallsBack(t *testing.T) {
	requireKernel(t)
	spec, err := createDefaultConfig().loaderSpec()
	require.NoError(t, err)
	var refused []loader.Mode
	for _, m := range loader.AutoModes() {
		if probed(m) == nil {
			break
		}
		refused = append(refused, m)
	}
	if len(refused) == 0 {
		t.Skipf("this kernel accepts %s, the first flavour; the fallback is not exercised here", loader.AutoModes()[0])
	}
	before := bpfObjects(t)

	tr, err := loader.Open(spec)
	require.NoError(t, err)
	require.NoError(t, tr.Close())
	require.Len(t, tr.Attempts(), len(refused), "attempts %v", tr.Attempts())
	for i, a := range tr.Attempts() {
		assert.Equal(t, refused[i], a.Mode)
		var le *loader.LoadError
		assert.True(t, errors.As(a.Err, &le), "%s: %v is not an explained refusal", a.Mode, a.Err)
	}
	t.Logf("auto attached %s after: %v", tr.Mode(), loader.DescribeAttempts(tr.Attempts()))

	spec.Mode = refused[0]
	_, err = loader.Open(spec)
	var attachErr *loader.AttachError
	require.True(t, errors.As(err, &attachErr), "error %v", err)
	assert.Contains(t, err.Error(), string(refused[0])+": ")
	assert.Contains(t, err.Error(), "CAP_BPF and CAP_PERFMON")
	assert.Equal(t, before, bpfObjects(t), "the failed attempt left no program, map or link behind")
}

// bpfObjects describes the BPF programs, maps and links this process holds.
func bpfObjects(t *testing.T) string {
	t.Helper()
	p, m, l, err := testenv.BPFObjects()
	require.NoError(t, err)
	return fmt.Sprintf("%d programs, %d maps, %d links", p, m, l)
}

// TestV4MappedCountsAsIPv4: the server side of an IPv4 connection accepted
// by a dual-stack IPv6 listener is an IPv6 socket with v4-mapped addresses;
// it is counted, and shown, as IPv4.
func TestV4MappedCountsAsIPv4(t *testing.T) {
	requireKernel(t)
	ln, err := net.Listen("tcp", "[::]:0") // dual-stack
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	sink := startFromFactory(t, func(c *Config) {
		c.GroupBy = []string{"local_address", "local_port", "remote_address"}
		c.Filter.LocalPorts = []int{port}
	})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	client, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { server.Close() })
	require.Contains(t, server.LocalAddr().String(), "127.0.0.1", "Go shows the unmapped address")
	var b [1]byte
	for range 20 {
		_, err := client.Write(b[:])
		require.NoError(t, err)
		_, err = server.Read(b[:])
		require.NoError(t, err)
		_, err = server.Write(b[:])
		require.NoError(t, err)
		_, err = client.Read(b[:])
		require.NoError(t, err)
	}
	md := waitScrape(t, sink)
	dps := testenv.RTTPoints(md)
	require.Len(t, dps, 1, "the v4-mapped server socket only")
	assert.Equal(t, map[string]any{
		"network.local.address": "127.0.0.1",
		"network.local.port":    int64(port),
		"network.peer.address":  "127.0.0.2",
		"network.type":          "ipv4",
	}, dps[0].Attributes().AsRaw())
	assert.GreaterOrEqual(t, dps[0].Count(), uint64(20))
}
