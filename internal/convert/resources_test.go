package convert

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// fakeCgroups names ids from a fixed table and counts rounds.
type fakeCgroups struct {
	paths   map[uint64]string
	lookups []uint64
	rounds  int
}

func (f *fakeCgroups) Lookup(id uint64) cgroup.Info {
	f.lookups = append(f.lookups, id)
	p, ok := f.paths[id]
	if !ok {
		return cgroup.Info{ID: id}
	}
	return cgroup.Info{ID: id, Path: p, Workload: cgroup.Parse(p)}
}

func (f *fakeCgroups) EndRound() { f.rounds++ }

const (
	testCID = "3f1c2b7e9a8d4c6b5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
	testUID = "5d2f7a3c-8c4b-4a8e-9c51-0f2b7c9d1e23"
)

var testCgroups = map[uint64]string{
	101: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5d2f7a3c_8c4b_4a8e_9c51_0f2b7c9d1e23.slice/cri-containerd-" + testCID + ".scope",
	102: "/system.slice/docker-" + testCID + ".scope",
	103: "/system.slice/ssh.service",
}

func cgroupKey(g kmaps.GroupBy, id uint64, remote string) kmaps.Key {
	k := key(g, "127.0.0.1", remote, 0, 0)
	k.Cgroup = id
	return k
}

func resources(t *testing.T, c *Converter, snap *kmaps.Snapshot) pmetric.Metrics {
	t.Helper()
	md := pmetric.NewMetrics()
	c.AppendResources(snap, scrape, md.ResourceMetrics(), func(s pcommon.InstrumentationScope) {
		s.SetName("github.com/tcprtt/tcprtt/receiver")
	})
	return md
}

// points returns the data points of rm's tcp.rtt metric.
func resourcePoints(t *testing.T, rm pmetric.ResourceMetrics) pmetric.ExponentialHistogramDataPointSlice {
	t.Helper()
	require.Equal(t, 1, rm.ScopeMetrics().Len())
	sm := rm.ScopeMetrics().At(0)
	assert.Equal(t, "github.com/tcprtt/tcprtt/receiver", sm.Scope().Name())
	require.Equal(t, 1, sm.Metrics().Len())
	return sm.Metrics().At(0).ExponentialHistogram().DataPoints()
}

func TestResourcePerCgroup(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupCgroup | kmaps.GroupRemoteAddress
	cg := &fakeCgroups{paths: testCgroups}
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach, Cgroups: cg})
	require.NoError(t, err)
	overflow := series(t, table, kmaps.Key{}, 9, 8000)
	overflow.Overflow = true
	snap := &kmaps.Snapshot{Series: []kmaps.Series{
		series(t, table, cgroupKey(g, 103, "127.0.0.9"), 0, 80),
		series(t, table, cgroupKey(g, 101, "127.0.0.7"), 1, 80, 100),
		overflow,
		series(t, table, cgroupKey(g, 102, "127.0.0.8"), 2, 8000),
		series(t, table, cgroupKey(g, 101, "::1"), 3, 100),
		series(t, table, cgroupKey(g, 555, "127.0.0.9"), 4, 80), // a cgroup never found
	}}
	md := resources(t, c, snap)

	want := []struct {
		attrs  map[string]any
		points []map[string]any
		counts []uint64
	}{
		{map[string]any{}, []map[string]any{{AttrOverflow: true}}, []uint64{1}},
		{map[string]any{AttrCgroupID: int64(101), AttrCgroupPath: testCgroups[101], AttrContainerID: testCID, AttrPodUID: testUID},
			[]map[string]any{
				{AttrPeerAddress: "127.0.0.7", AttrNetworkType: "ipv4"},
				{AttrPeerAddress: "::1", AttrNetworkType: "ipv6"},
			}, []uint64{2, 1}},
		{map[string]any{AttrCgroupID: int64(102), AttrCgroupPath: testCgroups[102], AttrContainerID: testCID},
			[]map[string]any{{AttrPeerAddress: "127.0.0.8", AttrNetworkType: "ipv4"}}, []uint64{1}},
		{map[string]any{AttrCgroupID: int64(103), AttrCgroupPath: testCgroups[103]},
			[]map[string]any{{AttrPeerAddress: "127.0.0.9", AttrNetworkType: "ipv4"}}, []uint64{1}},
		{map[string]any{AttrCgroupID: int64(555)},
			[]map[string]any{{AttrPeerAddress: "127.0.0.9", AttrNetworkType: "ipv4"}}, []uint64{1}},
	}
	rms := md.ResourceMetrics()
	require.Equal(t, len(want), rms.Len(), "resources")
	for i, w := range want {
		rm := rms.At(i)
		assert.Equal(t, w.attrs, rm.Resource().Attributes().AsRaw(), "resource %d", i)
		dps := resourcePoints(t, rm)
		require.Equal(t, len(w.points), dps.Len(), "points of resource %d", i)
		for j := range w.points {
			assert.Equal(t, w.points[j], dps.At(j).Attributes().AsRaw(), "resource %d point %d", i, j)
			assert.Equal(t, w.counts[j], dps.At(j).Count(), "resource %d point %d", i, j)
		}
	}
	assert.ElementsMatch(t, []uint64{101, 102, 103, 555}, cg.lookups, "one lookup per cgroup")
	assert.Equal(t, 1, cg.rounds)
}

// In delta temporality a cgroup without new samples has no resource, and
// its series' state survives the rounds other cgroups' resources are
// built in.
func TestResourcePerCgroupDelta(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupCgroup
	cg := &fakeCgroups{paths: testCgroups}
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Delta, Start: attach, Cgroups: cg})
	require.NoError(t, err)
	a := func(raws ...uint32) kmaps.Series { return series(t, table, cgroupKey(g, 101, "::1"), 0, raws...) }
	b := func(raws ...uint32) kmaps.Series { return series(t, table, cgroupKey(g, 103, "::1"), 1, raws...) }

	count := func(md pmetric.Metrics) map[int64]uint64 {
		out := map[int64]uint64{}
		for i := range md.ResourceMetrics().Len() {
			rm := md.ResourceMetrics().At(i)
			id, _ := rm.Resource().Attributes().Get(AttrCgroupID)
			dps := resourcePoints(t, rm)
			require.Equal(t, 1, dps.Len())
			out[id.Int()] = dps.At(0).Count()
		}
		return out
	}
	assert.Equal(t, map[int64]uint64{101: 1, 103: 2},
		count(resources(t, c, &kmaps.Snapshot{Series: []kmaps.Series{a(80), b(80, 80)}})))
	assert.Equal(t, map[int64]uint64{103: 1},
		count(resources(t, c, &kmaps.Snapshot{Series: []kmaps.Series{a(80), b(80, 80, 80)}})), "no new samples, no resource")
	assert.Equal(t, map[int64]uint64{101: 2},
		count(resources(t, c, &kmaps.Snapshot{Series: []kmaps.Series{a(80, 80, 80), b(80, 80, 80)}})))
	assert.Empty(t, resources(t, c, &kmaps.Snapshot{}).ResourceMetrics().Len(), "nothing at all, no resource")
}

// Without cgroup in group_by, AppendResources is Append in one resource
// without attributes (the golden files of convert_test.go pin the rest).
func TestOneResourceWithoutCgroup(t *testing.T) {
	table, err := bucket.NewTable(3, bucket.Seconds)
	require.NoError(t, err)
	g := kmaps.GroupRemoteAddress
	cg := &fakeCgroups{paths: testCgroups}
	c, err := New(Options{Table: table, GroupBy: g, Temporality: Cumulative, Start: attach, Cgroups: cg})
	require.NoError(t, err)
	md := resources(t, c, &kmaps.Snapshot{Series: []kmaps.Series{
		series(t, table, key(g, "127.0.0.1", "127.0.0.7", 0, 0), 0, 80),
		series(t, table, key(g, "127.0.0.1", "127.0.0.8", 0, 0), 1, 80),
	}})
	require.Equal(t, 1, md.ResourceMetrics().Len())
	assert.Equal(t, 0, md.ResourceMetrics().At(0).Resource().Attributes().Len())
	assert.Equal(t, 2, resourcePoints(t, md.ResourceMetrics().At(0)).Len())
	assert.Empty(t, cg.lookups)

	empty := resources(t, c, &kmaps.Snapshot{})
	assert.Equal(t, 1, empty.ResourceMetrics().Len(), "one resource even without points, as before")
}
