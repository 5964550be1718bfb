package convert

import (
	"slices"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Resource attributes of a cgroup's resource. container.id and
// k8s.pod.uid are the semantic conventions' (what k8sattributes and
// other processors associate by). No convention describes a socket's
// cgroup: process.linux.cgroup is a process's, and its value is the
// whole /proc/<pid>/cgroup line; these resources are cgroups, not
// processes, so the project's own namespace names the path and the id.
const (
	AttrContainerID = "container.id"
	AttrPodUID      = "k8s.pod.uid"
	AttrCgroupPath  = "tcprtt.cgroup.path"
	AttrCgroupID    = "tcprtt.cgroup.id"
)

// CgroupResolver names cgroup ids (cgroup.Resolver): Lookup is called
// for every cgroup of a conversion, then EndRound once.
type CgroupResolver interface {
	Lookup(id uint64) cgroup.Info
	EndRound()
}

// AppendResources appends the tcp.rtt metric of snap, observed at now,
// to rms, as Append does: in one resource, whose scope scope fills; or,
// when the series are grouped by cgroup, in one resource per cgroup with
// that cgroup's attributes (AttrCgroupID, and AttrCgroupPath,
// AttrContainerID, AttrPodUID when known), in the order of the cgroup
// ids. Cgroups without data points get no resource; the overflow series
// (which has no cgroup) is in a resource without cgroup attributes.
func (c *Converter) AppendResources(snap *kmaps.Snapshot, now time.Time, rms pmetric.ResourceMetricsSlice,
	scope func(pcommon.InstrumentationScope),
) {
	if !c.opts.GroupBy.Has(kmaps.GroupCgroup) {
		sm := rms.AppendEmpty().ScopeMetrics().AppendEmpty()
		scope(sm.Scope())
		c.Append(snap, now, sm.Metrics())
		return
	}
	byCgroup := c.byCgroup[:0]
	for i := range snap.Series {
		byCgroup = append(byCgroup, cgroupSeries{id: snap.Series[i].Key.Cgroup, i: i})
	}
	slices.SortStableFunc(byCgroup, func(a, b cgroupSeries) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	c.byCgroup = byCgroup

	c.round++
	first := rms.Len()
	for start := 0; start < len(byCgroup); {
		id := byCgroup[start].id
		end := start
		c.group = c.group[:0]
		for ; end < len(byCgroup) && byCgroup[end].id == id; end++ {
			c.group = append(c.group, snap.Series[byCgroup[end].i])
		}
		rm := rms.AppendEmpty()
		c.setCgroupAttributes(rm.Resource().Attributes(), id)
		sm := rm.ScopeMetrics().AppendEmpty()
		scope(sm.Scope())
		c.appendMetrics(c.group, now, sm.Metrics())
		start = end
	}
	c.endRound(snap, now)
	if c.opts.Cgroups != nil {
		c.opts.Cgroups.EndRound()
	}
	i := 0
	rms.RemoveIf(func(rm pmetric.ResourceMetrics) bool {
		i++
		return i > first && rm.ScopeMetrics().At(0).Metrics().Len() == 0
	})
}

// cgroupSeries is the cgroup of snapshot series i.
type cgroupSeries struct {
	id uint64
	i  int
}

func (c *Converter) setCgroupAttributes(attrs pcommon.Map, id uint64) {
	if id == 0 {
		return // the overflow series, or a socket whose cgroup the kernel could not read
	}
	info := cgroup.Info{ID: id}
	if c.opts.Cgroups != nil {
		info = c.opts.Cgroups.Lookup(id)
	}
	attrs.EnsureCapacity(4)
	if info.ContainerID != "" {
		attrs.PutStr(AttrContainerID, info.ContainerID)
	}
	if info.PodUID != "" {
		attrs.PutStr(AttrPodUID, info.PodUID)
	}
	if info.Path != "" {
		attrs.PutStr(AttrCgroupPath, info.Path)
	}
	attrs.PutInt(AttrCgroupID, int64(id))
}
