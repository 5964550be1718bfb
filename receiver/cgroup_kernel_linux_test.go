//go:build linux

package tcprttreceiver

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/receiver/internal/metadatatest"
)

// TestResourcePerCgroup runs socket owners in cgroups of this machine's
// cgroup v2 hierarchy shaped as a kubelet with containerd would make them
// (systemd and cgroupfs drivers), as Docker does, and as systemd does for
// a service; it checks that each cgroup is one resource with exactly the
// attributes its path implies, that a server and its clients in other
// cgroups are separate resources, that a socket stays with the cgroup it
// was created in when its process moves, and that the resources outlive
// their cgroups until their series expire, after which the resolver
// holds nothing of them. Every attach flavour: the cached ones read the
// cgroup once per socket, raw_tp and the tracepoint on every segment.
func TestResourcePerCgroup(t *testing.T) {
	requireKernel(t)
	root, err := cgroup.FindMount()
	if err != nil {
		t.Fatalf("this test needs the cgroup v2 hierarchy: %v", err)
	}
	// The lifecycle part (removal, expiry) does not depend on the flavour:
	// it runs with the first one this kernel accepts, which keeps the test
	// short.
	lifecycleDone := false
	for _, mode := range loader.AutoOrder {
		t.Run(string(mode), func(t *testing.T) {
			requireFlavour(t, mode)
			testResourcePerCgroup(t, root, mode, !lifecycleDone)
			lifecycleDone = true
		})
	}
}

// idleTimeout of TestResourcePerCgroup: long enough for the checks after
// the cgroups' removal to see the series (under -race the children take
// seconds to stop), short enough to wait for the expiry.
const cgroupTestIdle = 6 * time.Second

func testResourcePerCgroup(t *testing.T, root string, mode loader.Mode, lifecycle bool) {
	const trips = 20
	pod1, pod2 := randomHex(t, 32), randomHex(t, 32)
	uid1 := pod1[:8] + "-" + pod1[8:12] + "-" + pod1[12:16] + "-" + pod1[16:20] + "-" + pod1[20:]
	uid2 := pod2[:8] + "-" + pod2[8:12] + "-" + pod2[12:16] + "-" + pod2[16:20] + "-" + pod2[20:]
	cid1, cid2, cid3 := randomHex(t, 64), randomHex(t, 64), randomHex(t, 64)
	service := "tcprtt-cgroup-test-" + randomHex(t, 8)
	paths := map[string]string{
		"containerd": "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" +
			strings.ReplaceAll(uid1, "-", "_") + ".slice/cri-containerd-" + cid1 + ".scope",
		"cgroupfs": "kubepods/besteffort/pod" + uid2 + "/" + cid2,
		"docker":   "system.slice/docker-" + cid3 + ".scope",
		"service":  "system.slice/" + service + ".service",
		"moved":    "system.slice/" + service + "-moved.service",
	}
	dirs := map[string]string{}
	ids := map[string]int64{}
	for name, p := range paths {
		dirs[name] = makeCgroup(t, root, p)
		ids[name] = inodeOf(t, dirs[name])
	}

	enableRunStats(t)
	s := startScraper(t, func(c *Config) {
		c.GroupBy = []string{"cgroup", "remote_address"}
		c.Filter.RemoteAddresses = []string{cgNet}
		// The test collects by hand; the interval only has to be valid.
		c.CollectionInterval, c.IdleTimeout = time.Second, cgroupTestIdle
		c.AttachMode = string(mode)
	})
	require.Equal(t, mode, s.tracer.Mode())
	require.NotNil(t, s.cgroups)
	assert.Equal(t, root, s.cgroups.Root())

	server := startChild(t, root, dirs["containerd"], "server", "go")
	addr := server.expect(t, "listening")
	clients := map[string]string{"cgroupfs": "127.0.11.2", "docker": "127.0.11.3", "service": "127.0.11.4"}
	env := func(local string) []string {
		return []string{childLocalEnv + "=" + local, childServerEnv + "=" + addr, childTrips + "=" + strconv.Itoa(trips)}
	}
	kids := []*child{server}
	segsIn := map[string]uint64{}
	done := func(name string, c *child) {
		n, err := strconv.ParseUint(c.expect(t, "done"), 10, 64)
		require.NoError(t, err)
		segsIn[name] = n
	}
	for _, name := range []string{"cgroupfs", "docker"} {
		c := startChild(t, root, dirs[name], "client", "go", env(clients[name])...)
		done(name, c)
		kids = append(kids, c)
	}
	// The service's socket is created there; its process then moves.
	moved := startChild(t, root, dirs["service"], "client", "move", env(clients["service"])...)
	moved.expect(t, "connected")
	kids = append(kids, moved)
	moveInto(t, dirs["moved"], moved.cmd.Process.Pid)
	moved.send(t, "go")
	done("service", moved)

	md, err := s.scrape(context.Background())
	require.NoError(t, err)
	byID := resourcesByID(t, md)
	want := map[string]map[string]any{
		"containerd": {convert.AttrContainerID: cid1, convert.AttrPodUID: uid1},
		"cgroupfs":   {convert.AttrContainerID: cid2, convert.AttrPodUID: uid2},
		"docker":     {convert.AttrContainerID: cid3},
		"service":    {},
	}
	check := func(md pmetric.Metrics) {
		t.Helper()
		byID := resourcesByID(t, md)
		require.Len(t, byID, len(want), "one resource per cgroup with sockets, none for the cgroup a process moved to")
		for name, attrs := range want {
			rm, ok := byID[ids[name]]
			require.True(t, ok, "no resource for the %s cgroup /%s (id %d)", name, paths[name], ids[name])
			full := map[string]any{convert.AttrCgroupID: ids[name], convert.AttrCgroupPath: "/" + paths[name]}
			for k, v := range attrs {
				full[k] = v
			}
			assert.Equal(t, full, rm.Resource().Attributes().AsRaw(), "%s resource", name)
		}
	}
	check(md)
	// Every run of the program is a sample of one of these resources or
	// filtered out (the host's other traffic).
	checkIdentity(t, readAccounting(t, s))

	// Each client socket's samples are exactly the segments it received
	// after the SYN-ACK (TCP_INFO's segs_in less one, read by the client
	// after its last round trip): the responses and the server's quick
	// ACKs. The server's accepted sockets, in the server's cgroup, have
	// one per request at least (pure ACKs and FINs may follow).
	for name, local := range clients {
		dps := resourcePoints(t, byID[ids[name]])
		require.Len(t, dps, 1, "%s: one peer", name)
		assert.Equal(t, map[string]any{"network.peer.address": cgServer.String(), "network.type": "ipv4"},
			dps[0].Attributes().AsRaw(), name)
		assert.Equal(t, segsIn[name]-1, dps[0].Count(), "%s client samples", name)
		assert.GreaterOrEqual(t, dps[0].Count(), uint64(trips), "%s client samples", name)
		t.Logf("%-10s /%s: %s -> %s, %d samples, segs_in %d", name, paths[name], local, cgServer, dps[0].Count(), segsIn[name])
	}
	serverDps := resourcePoints(t, byID[ids["containerd"]])
	require.Len(t, serverDps, len(clients), "server: one point per client address")
	for _, dp := range serverDps {
		peer, _ := dp.Attributes().Get("network.peer.address")
		assert.Contains(t, []string{"127.0.11.2", "127.0.11.3", "127.0.11.4"}, peer.Str())
		assert.GreaterOrEqual(t, dp.Count(), uint64(trips), "server samples from %s", peer.Str())
		assert.LessOrEqual(t, dp.Count(), uint64(trips+4), "server samples from %s", peer.Str())
		t.Logf("%-10s /%s: peer %s, %d samples", "server", paths["containerd"], peer.Str(), dp.Count())
	}

	if !lifecycle {
		return
	}
	// The cgroups go (their processes first); the resources keep their
	// last known paths while the series live.
	for _, c := range kids {
		c.stop()
	}
	for _, p := range []string{"containerd", "cgroupfs", "docker", "service", "moved"} {
		require.NoError(t, rmCgroup(dirs[p]), "remove %s", dirs[p])
		_, err := os.Stat(dirs[p])
		require.True(t, os.IsNotExist(err), "%s still there", dirs[p])
	}
	md, err = s.scrape(context.Background())
	require.NoError(t, err)
	check(md)
	for name := range want {
		require.True(t, s.cgroups.Has(uint64(ids[name])), "%s: forgotten while its series lives", name)
	}

	// Once the series expired (idle_timeout), the resolver forgets them.
	deadline := time.Now().Add(cgroupTestIdle + 30*time.Second)
	for {
		md, err = s.scrape(context.Background())
		require.NoError(t, err)
		if md.ResourceMetrics().Len() == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "series did not expire: %d resources", md.ResourceMetrics().Len())
		time.Sleep(500 * time.Millisecond)
	}
	for name := range ids {
		assert.False(t, s.cgroups.Has(uint64(ids[name])), "%s: removed cgroup still in the resolver", name)
	}
}

// TestNewCgroupLabelledOnFirstSight: a cgroup created after the
// receiver's last collection has its path, container.id and k8s.pod.uid
// on its first point, in the collection right after its first socket,
// however short the interval (ids resolve by handle, without a walk).
func TestNewCgroupLabelledOnFirstSight(t *testing.T) {
	requireKernel(t)
	root, err := cgroup.FindMount()
	require.NoError(t, err, "this test needs the cgroup v2 hierarchy")
	s := startScraper(t, func(c *Config) {
		c.GroupBy = []string{"cgroup"}
		c.Filter.RemoteAddresses = []string{cgNet}
		c.CollectionInterval = 100 * time.Millisecond
	})
	require.True(t, s.cgroups.ByHandle(), "root resolves cgroups by handle: %v", s.cgroups.HandleErr())
	serverPath := "system.slice/tcprtt-first-sight-" + randomHex(t, 8) + ".service"
	server := startChild(t, root, makeCgroup(t, root, serverPath), "server", "go")
	addr := server.expect(t, "listening")
	_, err = s.scrape(context.Background())
	require.NoError(t, err)

	pod, cid := randomHex(t, 32), randomHex(t, 64)
	uid := pod[:8] + "-" + pod[8:12] + "-" + pod[12:16] + "-" + pod[16:20] + "-" + pod[20:]
	path := "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" +
		strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope"
	dir := makeCgroup(t, root, path)
	client := startChild(t, root, dir, "client", "go",
		childLocalEnv+"=127.0.11.5", childServerEnv+"="+addr, childTrips+"=5")
	client.expect(t, "done")

	md, err := s.scrape(context.Background())
	require.NoError(t, err)
	rm, ok := resourcesByID(t, md)[inodeOf(t, dir)]
	require.True(t, ok, "no resource for the new cgroup")
	assert.Equal(t, map[string]any{
		convert.AttrCgroupID: inodeOf(t, dir), convert.AttrCgroupPath: "/" + path,
		convert.AttrContainerID: cid, convert.AttrPodUID: uid,
	}, rm.Resource().Attributes().AsRaw(), "the new cgroup's first resource")
	assert.Zero(t, s.cgroups.Stats().Unresolved, "cgroups without a path in the collection")
}

// resourcePoints returns the tcp.rtt points of one resource.
func resourcePoints(t *testing.T, rm pmetric.ResourceMetrics) []pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	var out []pmetric.ExponentialHistogramDataPoint
	for i := range rm.ScopeMetrics().Len() {
		ms := rm.ScopeMetrics().At(i).Metrics()
		for j := range ms.Len() {
			if ms.At(j).Name() != convert.MetricName {
				continue
			}
			dps := ms.At(j).ExponentialHistogram().DataPoints()
			for k := range dps.Len() {
				out = append(out, dps.At(k))
			}
		}
	}
	return out
}

// TestCgroupSelfTelemetry: a cgroup removed before the receiver could
// name it (its socket's series lives on) is counted in
// otelcol_tcprtt_cgroups_unresolved; a walk without errors reports 0 in
// otelcol_tcprtt_cgroup_walk_errors.
func TestCgroupSelfTelemetry(t *testing.T) {
	requireKernel(t)
	root, err := cgroup.FindMount()
	require.NoError(t, err, "this test needs the cgroup v2 hierarchy")
	tt := componenttest.NewTelemetry()
	t.Cleanup(func() { require.NoError(t, tt.Shutdown(context.Background())) })
	cfg := createDefaultConfig()
	cfg.GroupBy = []string{"cgroup"}
	cfg.Filter.RemoteAddresses = []string{cgNet}
	require.NoError(t, cfg.Validate())
	s := newRTTScraper(cfg, metadatatest.NewSettings(tt))
	require.NoError(t, s.start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, s.shutdown(context.Background())) })

	base := "system.slice/tcprtt-telemetry-" + randomHex(t, 8)
	server := startChild(t, root, makeCgroup(t, root, base+"-server.service"), "server", "go")
	addr := server.expect(t, "listening")
	goneDir := makeCgroup(t, root, base+"-gone.service")
	afterDir := makeCgroup(t, root, base+"-after.service") // removed after the client stopped
	client := startChild(t, root, goneDir, "client", "go",
		childLocalEnv+"=127.0.11.6", childServerEnv+"="+addr, childTrips+"=5")
	client.expect(t, "done")
	// The client leaves its cgroup, which is removed: its socket still
	// counts there, under an id no longer in the hierarchy.
	moveInto(t, afterDir, client.cmd.Process.Pid)
	require.NoError(t, rmCgroup(goneDir))

	md, err := s.scrape(context.Background())
	require.NoError(t, err)
	rm, ok := resourcesByID(t, md)[inodeOf(t, filepath.Join(root, base+"-server.service"))]
	require.True(t, ok, "no resource for the server's cgroup")
	_, ok = rm.Resource().Attributes().Get(convert.AttrCgroupPath)
	require.True(t, ok, "the server's cgroup has a path")
	ignore := metricdatatest.IgnoreTimestamp()
	metadatatest.AssertEqualTcprttCgroupsUnresolved(t, tt, []metricdata.DataPoint[int64]{{Value: 1}}, ignore)
	metadatatest.AssertEqualTcprttCgroupWalkErrors(t, tt, []metricdata.DataPoint[int64]{{Value: 0}}, ignore)
}
