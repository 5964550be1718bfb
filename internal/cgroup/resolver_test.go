package cgroup

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// tree makes directories below a temporary root, as a cgroup hierarchy
// would have them; their inode numbers stand in for cgroup ids, as on
// cgroupfs (where the id is the inode number).
func tree(t *testing.T, paths ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range paths {
		mkdir(t, root, p)
	}
	return root
}

func mkdir(t *testing.T, root, p string) uint64 {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
		t.Fatal(err)
	}
	return idOf(t, root, p)
}

func idOf(t *testing.T, root, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(root, p))
	if err != nil {
		t.Fatal(err)
	}
	ino, ok := inode(fi)
	if !ok {
		t.Skip("no inode numbers on this platform")
	}
	return ino
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestResolver(root string) (*Resolver, *clock) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	r := NewResolver(root)
	r.now = c.now
	return r, c
}

var (
	k8sSystemd  = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope"
	k8sCgroupfs = "kubepods/burstable/pod" + uid + "/" + cid
	dockerScope = "system.slice/docker-" + cid + ".scope"
	service     = "system.slice/ssh.service"
)

func TestResolverLookup(t *testing.T) {
	root := tree(t, k8sSystemd, k8sCgroupfs, dockerScope, service)
	r, _ := newTestResolver(root)
	for _, tc := range []struct {
		path string
		want Workload
	}{
		{k8sSystemd, Workload{ContainerID: cid, PodUID: uid}},
		{k8sCgroupfs, Workload{ContainerID: cid, PodUID: uid}},
		{dockerScope, Workload{ContainerID: cid}},
		{service, Workload{}},
		{"kubepods.slice", Workload{}},
	} {
		id := idOf(t, root, tc.path)
		want := Info{ID: id, Path: "/" + tc.path, Workload: tc.want}
		if got := r.Lookup(id); got != want {
			t.Errorf("Lookup(%d) = %+v, want %+v", id, got, want)
		}
	}
	if got, want := r.Lookup(idOf(t, root, ".")), (Info{ID: idOf(t, root, "."), Path: "/"}); got != want {
		t.Errorf("root: %+v, want %+v", got, want)
	}
	if r.Scans() != 1 {
		t.Errorf("%d walks for ids of one walk, want 1", r.Scans())
	}
	if got := r.Lookup(0); got != (Info{}) || r.Scans() != 1 {
		t.Errorf("Lookup(0) = %+v after %d walks, want nothing and no walk", got, r.Scans())
	}
}

// A cgroup created after the last walk is found by the next one, which
// waits for MinRescan; an id that a walk did not find is reported alone
// and not walked for again.
func TestResolverNewAndUnknown(t *testing.T) {
	root := tree(t, service)
	r, clk := newTestResolver(root)
	r.Lookup(idOf(t, root, service))

	id := mkdir(t, root, dockerScope)
	if got := r.Lookup(id); got != (Info{ID: id}) || r.Scans() != 1 {
		t.Fatalf("within MinRescan: %+v after %d walks, want the id alone and 1 walk", got, r.Scans())
	}
	clk.advance(r.MinRescan)
	want := Info{ID: id, Path: "/" + dockerScope, Workload: Workload{ContainerID: cid}}
	if got := r.Lookup(id); got != want || r.Scans() != 2 {
		t.Fatalf("after MinRescan: %+v after %d walks, want %+v and 2 walks", got, r.Scans(), want)
	}

	const never = 1 << 62
	clk.advance(r.MinRescan)
	for range 3 {
		if got := r.Lookup(never); got != (Info{ID: never}) {
			t.Fatalf("unknown id: %+v", got)
		}
		clk.advance(r.MinRescan)
	}
	if r.Scans() != 3 {
		t.Errorf("%d walks, want 3: an id a walk did not find is not walked for again", r.Scans())
	}
}

// A removed cgroup keeps its last path while it is looked up (its sockets
// still count), and is forgotten at the end of the first round without a
// lookup: the map holds the live cgroups and no more.
func TestResolverGone(t *testing.T) {
	root := tree(t, service, k8sCgroupfs)
	r, clk := newTestResolver(root)
	gone := idOf(t, root, k8sCgroupfs)
	r.Lookup(gone)
	live := r.Len() // root, kubepods, burstable, pod…, the container, system.slice, ssh.service
	if live != 7 {
		t.Fatalf("%d ids after the first walk, want 7", live)
	}
	r.EndRound()

	// Made before the removal: ext4 and tmpfs reuse a freed inode number
	// at once (kernfs never reuses a cgroup id).
	fresh := mkdir(t, root, dockerScope) // a new cgroup, whose lookup walks again
	if err := os.Remove(filepath.Join(root, k8sCgroupfs)); err != nil {
		t.Fatal(err)
	}
	clk.advance(r.MinRescan)
	r.Lookup(fresh)
	if r.Scans() != 2 {
		t.Fatalf("%d walks, want 2", r.Scans())
	}
	want := Info{ID: gone, Path: "/" + k8sCgroupfs, Gone: true, Workload: Workload{ContainerID: cid, PodUID: uid}}
	for round := range 3 {
		if got := r.Lookup(gone); got != want {
			t.Fatalf("round %d: %+v, want %+v", round, got, want)
		}
		r.EndRound()
	}
	// +1 docker-….scope, the gone container still there.
	if r.Len() != live+1 {
		t.Errorf("%d ids while the gone one is in use, want %d", r.Len(), live+1)
	}
	r.EndRound() // a round without a lookup of it
	if r.Len() != live {
		t.Errorf("%d ids after the gone cgroup's last round, want %d", r.Len(), live)
	}
	clk.advance(r.MinRescan)
	if got := r.Lookup(gone); got != (Info{ID: gone}) {
		t.Errorf("forgotten id: %+v, want the id alone", got)
	}
}

// A walk at the end of a round older than Refresh finds removed cgroups
// even when no new id asks for one.
func TestResolverRefresh(t *testing.T) {
	root := tree(t, service, dockerScope)
	r, clk := newTestResolver(root)
	id := idOf(t, root, dockerScope)
	r.Lookup(id)
	r.EndRound()
	if err := os.Remove(filepath.Join(root, dockerScope)); err != nil {
		t.Fatal(err)
	}
	clk.advance(r.Refresh - time.Nanosecond)
	r.EndRound()
	if !r.Has(id) || r.Scans() != 1 {
		t.Fatalf("before Refresh: has %v after %d walks, want it kept, 1 walk", r.Has(id), r.Scans())
	}
	clk.advance(time.Nanosecond)
	r.Lookup(id) // still in use: kept, and marked gone by the walk below
	r.EndRound()
	if got := r.Lookup(id); !got.Gone || got.Path != "/"+dockerScope || r.Scans() != 2 {
		t.Fatalf("after Refresh: %+v after %d walks, want gone with its path, 2 walks", got, r.Scans())
	}
	r.EndRound()
	r.EndRound()
	if r.Has(id) {
		t.Error("a gone cgroup no longer looked up is still in the map")
	}
}
