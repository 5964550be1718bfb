//go:build linux

package tcprttreceiver

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
	"github.com/tcprtt/tcprtt/receiver/internal/metadatatest"
)

// enableRunStats turns on the kernel's per-program run counting for the
// test (like kernel.bpf_stats_enabled=1, undone at the end). It must be on
// before the program attaches, or early runs go uncounted.
func enableRunStats(t *testing.T) {
	t.Helper()
	closer, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	require.NoError(t, err, "enable BPF run statistics")
	t.Cleanup(func() { closer.Close() })
}

// startScraper starts a scraper directly (not from the controller), so
// the test decides when to read.
func startScraper(t *testing.T, mutate func(*Config)) *rttScraper {
	t.Helper()
	cfg := createDefaultConfig()
	mutate(cfg)
	require.NoError(t, cfg.Validate())
	s := newRTTScraper(cfg, receivertest.NewNopSettings(metadata.Type))
	require.NoError(t, s.start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, s.shutdown(context.Background())) })
	return s
}

// accounting is one quiet-moment reading of the identity's two sides.
type accounting struct {
	runs, misses       uint64
	recorded, filtered uint64
	overflowed, errors uint64
	readMisses         uint64 // the misses as the receiver read them
	series             int
}

// readAccounting reads the program's run count and its maps until it
// finds a quiet moment (the run count unchanged across the map read), so
// the two sides describe the same set of runs. The program sees every TCP
// segment of the host, so other tests' traffic (packages run in
// parallel) can delay that moment; their bursts have gaps.
func readAccounting(t *testing.T, s *rttScraper) accounting {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		before, err := s.tracer.Program().Stats()
		require.NoError(t, err)
		var snap kmaps.Snapshot
		var rows []uint64
		require.NoError(t, s.tracer.Read(&snap, &rows))
		after, err := s.tracer.Program().Stats()
		require.NoError(t, err)
		if before.RunCount != after.RunCount {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		a := accounting{runs: after.RunCount, misses: after.RecursionMisses,
			filtered: snap.Stats.Filtered, errors: snap.Stats.Errors, readMisses: snap.Stats.Missed}
		for i := range snap.Series {
			n := snap.Series[i].Total
			a.recorded += n
			if snap.Series[i].Overflow {
				a.overflowed += n
			} else {
				a.series++
			}
		}
		return a
	}
	t.Fatal("no quiet moment to read the program's run count and maps together")
	return accounting{}
}

func checkIdentity(t *testing.T, a accounting) {
	t.Helper()
	t.Logf("runs %d + missed %d = recorded %d (overflow %d, %d series) + filtered %d + errors %d + missed %d",
		a.runs, a.misses, a.recorded, a.overflowed, a.series, a.filtered, a.errors, a.readMisses)
	assert.Positive(t, a.runs)
	assert.Equal(t, a.runs+a.misses, a.recorded+a.filtered+a.errors+a.readMisses,
		"every segment the hook saw is accounted for: a run (recorded, filtered or an error) or a missed run")
	assert.Equal(t, a.misses, a.readMisses, "the receiver reports the kernel's missed runs")
	assert.Zero(t, a.errors, "no sample failed to be read or placed")
}

// TestAccountingIdentity: after traffic, Σ histogram counts (overflow
// included) + filtered samples = the program's run count, exactly.
func TestAccountingIdentity(t *testing.T) {
	requireKernel(t)
	enableRunStats(t)
	cases := map[string]func(*Config){
		"default": func(*Config) {},
		"filters": func(c *Config) {
			c.Filter.RemoteAddresses = []string{"127.0.0.3", "::1/128"}
		},
		"all_filtered": func(c *Config) {
			c.Filter.RemoteAddresses = []string{"127.0.0.0/8", "::1/128"}
			c.Filter.RemotePorts = []int{1, 65535} // none of the test's ports
		},
		"filtered_by_address": func(c *Config) { c.Filter.LocalAddresses = []string{"127.0.0.2/32"} },
		"overflow": func(c *Config) {
			c.GroupBy = []string{"remote_address", "remote_port"}
			c.MaxSeries = 2
		},
		"cgroup": func(c *Config) { c.GroupBy = []string{"cgroup", "remote_address"} },
		// Cgroups count toward max_series like any other key.
		"cgroup_overflow": func(c *Config) {
			c.GroupBy = []string{"cgroup", "remote_address", "remote_port"}
			c.MaxSeries = 2
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			for _, mode := range loader.AutoOrder {
				t.Run(string(mode), func(t *testing.T) {
					requireFlavour(t, mode)
					s := startScraper(t, func(c *Config) { mutate(c); c.AttachMode = string(mode) })
					for _, pair := range [][2]netip.Addr{{serverV4, clientV4}, {otherV4, clientV4}, {loopV6, loopV6}} {
						c := tcptest.Dial(t, pair[0], pair[1])
						c.RoundTrips(t, 30)
					}
					a := readAccounting(t, s)
					checkIdentity(t, a)
					if name == "overflow" || name == "cgroup_overflow" {
						assert.Equal(t, 2, a.series, "max_series series")
						assert.Positive(t, a.overflowed, "the rest went to the overflow series")
					}
					switch name {
					case "filters":
						assert.Positive(t, a.filtered)
						assert.Positive(t, a.recorded)
					case "all_filtered":
						assert.Zero(t, a.recorded)
					default:
						assert.Positive(t, a.recorded)
					}
				})
			}
		})
	}
}

// TestDeltasAddUpToCumulative: under continuous traffic, the delta points
// of N scrapes add up, bucket by bucket, to the kernel's cumulative counts.
func TestDeltasAddUpToCumulative(t *testing.T) {
	requireKernel(t)
	server := netip.MustParseAddr("127.0.0.90") // no other test uses it
	s := startScraper(t, func(c *Config) {
		c.Temporality = "delta"
		c.GroupBy = []string{"remote_address"}
		c.Filter.RemoteAddresses = []string{server.String()} // only this test's client sockets
	})
	conns := []*tcptest.Conn{tcptest.Dial(t, server, clientV4), tcptest.Dial(t, server, otherV4)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					c.RoundTrips(t, 5)
				}
			}
		}()
	}

	sums := map[string]map[int32]uint64{}
	var counts uint64
	scrapes := 0
	add := func(md pmetric.Metrics) {
		dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
		for i := range dps.Len() {
			dp := dps.At(i)
			peer, _ := dp.Attributes().Get("network.peer.address")
			if sums[peer.Str()] == nil {
				sums[peer.Str()] = map[int32]uint64{}
			}
			for j, n := range dp.Positive().BucketCounts().All() {
				sums[peer.Str()][dp.Positive().Offset()+int32(j)] += n
			}
			sums[peer.Str()][zeroBucket] += dp.ZeroCount()
			counts += dp.Count()
		}
	}
	for range 20 {
		time.Sleep(20 * time.Millisecond)
		md, err := s.scrape(context.Background())
		require.NoError(t, err)
		add(md)
		scrapes++
	}
	close(stop)
	wg.Wait()
	time.Sleep(50 * time.Millisecond) // let the last ACKs land
	md, err := s.scrape(context.Background())
	require.NoError(t, err)
	add(md)

	var snap kmaps.Snapshot
	var rows []uint64
	require.NoError(t, s.tracer.Read(&snap, &rows))
	require.Len(t, snap.Series, 1, "one peer: the filtered server address")
	cum := snap.Series[0]
	peer := cum.Key.RemoteAddress().String()
	assert.Equal(t, server.String(), peer)
	assert.Equal(t, cum.Zero, sums[peer][zeroBucket])
	for i, n := range cum.Buckets {
		idx := s.converter.Table().MinIndex + int32(cum.Offset+i)
		assert.Equal(t, n, sums[peer][idx], "bucket %d", idx)
	}
	assert.Equal(t, cum.Total, counts)
	t.Logf("%d delta scrapes under traffic add up to the cumulative %d samples", scrapes+1, cum.Total)
}

// zeroBucket keys the zero count in the per-bucket sums.
const zeroBucket = int32(-1 << 30)

// TestIdleSeriesExpire: a series idle for idle_timeout leaves the kernel
// maps, frees its room for another series, and if it returns it starts a
// new cumulative run with a new start time.
func TestIdleSeriesExpire(t *testing.T) {
	requireKernel(t)
	s := startScraper(t, func(c *Config) {
		c.GroupBy = []string{"remote_address"}
		c.Filter.RemoteAddresses = []string{"127.0.0.6", "127.0.0.7"}
		c.MaxSeries = 1
		// The test collects by hand; the interval only has to be valid.
		c.CollectionInterval, c.IdleTimeout = 200*time.Millisecond, 200*time.Millisecond
	})
	first := tcptest.Dial(t, netip.MustParseAddr("127.0.0.6"), clientV4)
	second := tcptest.Dial(t, netip.MustParseAddr("127.0.0.7"), clientV4)
	peer := func(md pmetric.Metrics, addr string) (pmetric.ExponentialHistogramDataPoint, bool) {
		return point(md, map[string]any{"network.peer.address": addr})
	}
	overflow := func(md pmetric.Metrics) (pmetric.ExponentialHistogramDataPoint, bool) {
		return point(md, map[string]any{"otel.metric.overflow": true})
	}
	scrape := func() pmetric.Metrics {
		md, err := s.scrape(context.Background())
		require.NoError(t, err)
		return md
	}

	first.RoundTrips(t, 10)
	md := scrape()
	dp, ok := peer(md, "127.0.0.6")
	require.True(t, ok)
	firstStart := dp.StartTimestamp()
	firstCount := dp.Count()

	// With the only slot taken, the second peer overflows.
	second.RoundTrips(t, 10)
	md = scrape()
	_, ok = peer(md, "127.0.0.7")
	assert.False(t, ok, "no room for a second series")
	o, ok := overflow(md)
	require.True(t, ok)
	overflowed := o.Count()

	// Idle past the timeout: the next reads retire and free the slot.
	time.Sleep(300 * time.Millisecond)
	scrape()
	md = scrape()
	_, ok = peer(md, "127.0.0.6")
	assert.False(t, ok, "the idle series is gone")

	// The second peer's socket, counted in the overflow series so far,
	// now gets the freed slot.
	second.RoundTrips(t, 10)
	md = scrape()
	dp, ok = peer(md, "127.0.0.7")
	require.True(t, ok, "the freed room went to the overflowed socket")
	assert.Positive(t, dp.Count())
	o, _ = overflow(md)
	assert.Equal(t, overflowed, o.Count(), "no more overflow once a row was free")

	// The first peer's socket returning starts a new run, once the second
	// idles and frees the only row: a later start time, counts from zero.
	time.Sleep(300 * time.Millisecond)
	scrape()
	scrape()
	first.RoundTrips(t, 3)
	md = scrape()
	dp, ok = peer(md, "127.0.0.6")
	require.True(t, ok)
	assert.Greater(t, dp.StartTimestamp(), firstStart, "new cumulative run, new start time")
	assert.Less(t, dp.Count(), firstCount, "counts start over")
	o, _ = overflow(md)
	assert.Equal(t, overflowed, o.Count(), "the overflow series is one cumulative run throughout")
}

// TestStartShutdownCycles: 100 Start/Shutdown cycles in one process leave
// file descriptors and loaded programs at their baseline (goroutines are
// checked by goleak for the whole package).
func TestStartShutdownCycles(t *testing.T) {
	requireKernel(t)
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		return len(entries)
	}
	f := NewFactory()
	cycle := func() {
		cfg := f.CreateDefaultConfig().(*Config)
		r, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
		require.NoError(t, err)
		require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
		require.NoError(t, r.Shutdown(context.Background()))
	}
	cycle() // warm up lazily created state (parsed ELF, BTF cache)
	runtime.GC()
	fdBefore, objBefore := fds(), bpfObjects(t)

	for range 100 {
		cycle()
	}
	runtime.GC()
	assert.Equal(t, fdBefore, fds(), "open file descriptors")
	assert.Equal(t, objBefore, bpfObjects(t), "BPF objects held by this process")
	t.Logf("after 100 cycles: %d fds (baseline %d); %s (baseline %s)", fds(), fdBefore, bpfObjects(t), objBefore)
}

// TestTwoReceivers: two receivers in one process with different group_by
// and filters each count their own view.
func TestTwoReceivers(t *testing.T) {
	requireKernel(t)
	// Addresses no other test uses: the program sees the whole host.
	server, client := netip.MustParseAddr("127.0.0.61"), netip.MustParseAddr("127.0.0.60")
	byPeer := startScraper(t, func(c *Config) {
		c.Filter.RemoteAddresses = []string{server.String()}
	})
	byPort := startScraper(t, func(c *Config) {
		c.GroupBy = []string{"local_port"}
		c.Filter.LocalAddresses = []string{server.String()}
	})
	srv := tcptest.Listen(t, server)
	for range 3 {
		srv.Dial(t, client).RoundTrips(t, 10)
	}
	md, err := byPeer.scrape(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{server.String()}, peersOf(md))
	dp, _ := point(md, map[string]any{"network.peer.address": server.String()})
	assert.GreaterOrEqual(t, dp.Count(), uint64(30))

	md, err = byPort.scrape(context.Background())
	require.NoError(t, err)
	dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
	require.Equal(t, 1, dps.Len(), "all server sockets share the listening port")
	port, _ := dps.At(0).Attributes().Get("network.local.port")
	assert.Equal(t, int64(srv.Addr().Port()), port.Int())
	assert.Equal(t, fmt.Sprint(dps.At(0).Attributes().AsRaw()),
		fmt.Sprint(map[string]any{"network.local.port": port.Int(), "network.type": "ipv4"}))
}

// TestPeerStorm: 2000 distinct peers with max_series 100 export at most
// 101 series (the overflow one included), keep the accounting identity
// exact, keep kernel map memory at what the configuration bounds, and
// leave the receiver's heap flat after the storm.
func TestPeerStorm(t *testing.T) {
	requireKernel(t)
	enableRunStats(t)
	const peers, maxSeries = 2000, 100
	server := netip.MustParseAddr("127.0.0.9")
	s := startScraper(t, func(c *Config) {
		c.MaxSeries = maxSeries
		c.Filter.RemoteAddresses = []string{"127.0.0.9", "127.1.0.0/16", "127.2.0.0/16"}
	})
	srv := tcptest.Listen(t, server)
	memBefore, err := s.tracer.KernelMemory()
	require.NoError(t, err)

	storm := func(second byte) {
		for i := range peers {
			client := netip.AddrFrom4([4]byte{127, second, byte(i / 250), byte(i%250 + 1)})
			srv.Visit(t, client, 2)
		}
	}
	heapAfterScrape := func() uint64 {
		md, err := s.scrape(context.Background())
		require.NoError(t, err)
		dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
		assert.LessOrEqual(t, dps.Len(), maxSeries+1, "series exported")
		_, ok := point(md, map[string]any{"otel.metric.overflow": true})
		assert.True(t, ok, "the overflow series carries otel.metric.overflow=true")
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}

	storm(1)
	a := readAccounting(t, s)
	checkIdentity(t, a)
	assert.Equal(t, maxSeries, a.series)
	assert.Positive(t, a.overflowed)
	heap1 := heapAfterScrape()

	storm(2)
	a = readAccounting(t, s)
	checkIdentity(t, a)
	heap2 := heapAfterScrape()

	memAfter, err := s.tracer.KernelMemory()
	require.NoError(t, err)
	layout := s.tracer.Layout()
	// The counts array dominates; the index, free queue and filters add a
	// few hundred bytes per series at most; the retransmit program's map
	// of sockets is fixed (88 bytes per entry on 6.18; 128 allowed).
	bound := layout.Entries()*8 + uint64(maxSeries)*512 + 1<<20 + kmaps.RetransSockets*128
	assert.Equal(t, memBefore, memAfter, "kernel map memory does not grow with peers")
	assert.LessOrEqual(t, memAfter, bound, "kernel map memory within the configured bound")
	assert.LessOrEqual(t, heap2, heap1+2<<20, "receiver heap flat after a second storm")
	t.Logf("%d+%d peers, max_series %d: %d series + overflow %d samples; kernel maps %d KiB (bound %d KiB); heap %d KiB -> %d KiB",
		peers, peers, maxSeries, a.series, a.overflowed, memAfter>>10, bound>>10, heap1>>10, heap2>>10)
}

// TestSelfTelemetry: the receiver's own metrics report the kernel's
// counters as the identity needs them (recorded, overflowed, filtered),
// the number of series and the attach flavour.
func TestSelfTelemetry(t *testing.T) {
	requireKernel(t)
	tt := componenttest.NewTelemetry()
	t.Cleanup(func() { require.NoError(t, tt.Shutdown(context.Background())) })
	cfg := createDefaultConfig()
	cfg.MaxSeries = 1
	cfg.Filter.RemoteAddresses = []string{"127.0.0.3", "127.0.0.4"} // not ::1
	require.NoError(t, cfg.Validate())
	s := newRTTScraper(cfg, metadatatest.NewSettings(tt))
	require.NoError(t, s.start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, s.shutdown(context.Background())) })

	tcptest.Dial(t, serverV4, clientV4).RoundTrips(t, 20)
	tcptest.Dial(t, otherV4, clientV4).RoundTrips(t, 20)
	tcptest.Dial(t, loopV6, loopV6).RoundTrips(t, 20)
	md, err := s.scrape(context.Background())
	require.NoError(t, err)
	var snap kmaps.Snapshot
	var rows []uint64
	require.NoError(t, s.tracer.Read(&snap, &rows))

	var recorded, overflowed uint64
	dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).ExponentialHistogram().DataPoints()
	for i := range dps.Len() {
		recorded += dps.At(i).Count()
		if _, ok := dps.At(i).Attributes().Get("otel.metric.overflow"); ok {
			overflowed += dps.At(i).Count()
		}
	}
	require.Positive(t, overflowed, "max_series 1 with two peers overflows")
	ignore := []metricdatatest.Option{metricdatatest.IgnoreTimestamp()}
	metadatatest.AssertEqualTcprttSamplesRecorded(t, tt,
		[]metricdata.DataPoint[int64]{{Value: int64(recorded)}}, ignore...)
	metadatatest.AssertEqualTcprttSamplesOverflowed(t, tt,
		[]metricdata.DataPoint[int64]{{Value: int64(overflowed)}}, ignore...)
	metadatatest.AssertEqualTcprttSeries(t, tt, []metricdata.DataPoint[int64]{{Value: 1}}, ignore...)
	metadatatest.AssertEqualTcprttAttachMode(t, tt, []metricdata.DataPoint[int64]{{
		Value: 1, Attributes: attribute.NewSet(attribute.String("attach_mode", string(s.tracer.Mode()))),
	}}, ignore...)
	// The filtered count at the scrape is at most what the kernel has now.
	m, err := tt.GetMetric("otelcol_tcprtt_samples_filtered")
	require.NoError(t, err)
	filtered := m.Data.(metricdata.Sum[int64]).DataPoints[0].Value
	assert.Positive(t, filtered, "the ::1 sockets are filtered out")
	assert.LessOrEqual(t, uint64(filtered), snap.Stats.Filtered)
	metadatatest.AssertEqualTcprttSamplesErrors(t, tt, []metricdata.DataPoint[int64]{{Value: 0}}, ignore...)
	m, err = tt.GetMetric("otelcol_tcprtt_runs_missed")
	require.NoError(t, err)
	missed := m.Data.(metricdata.Sum[int64]).DataPoints[0].Value
	stats, err := s.tracer.Program().Stats()
	require.NoError(t, err)
	assert.LessOrEqual(t, uint64(missed), stats.RecursionMisses, "missed runs as the kernel counts them")
	_, err = tt.GetMetric("otelcol_tcprtt_scrape_duration")
	assert.NoError(t, err)
}
