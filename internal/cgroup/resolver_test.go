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

func newTestResolver(t *testing.T, root string) *Resolver {
	t.Helper()
	r := NewWalkResolver(root)
	t.Cleanup(r.Close)
	return r
}

var (
	k8sSystemd  = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope"
	k8sCgroupfs = "kubepods/burstable/pod" + uid + "/" + cid
	dockerScope = "system.slice/docker-" + cid + ".scope"
	service     = "system.slice/ssh.service"
)

func TestResolverLookup(t *testing.T) {
	root := tree(t, k8sSystemd, k8sCgroupfs, dockerScope, service)
	r := newTestResolver(t, root)
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
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

// woken reports whether a walk was asked for since the last call.
func woken(r *Resolver) bool {
	select {
	case <-r.wake:
		return true
	default:
		return false
	}
}

// In walk mode a lookup never walks: a cgroup created after the last walk
// is pending (no path, not gone) and asks for a walk, which finds it; an
// id that a walk begun after its first lookup did not find is gone, and
// asks for no further walk.
func TestResolverNewAndUnknown(t *testing.T) {
	root := tree(t, service)
	r := newTestResolver(t, root)
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	r.Lookup(idOf(t, root, service))
	if woken(r) {
		t.Fatal("a known id asked for a walk")
	}

	id := mkdir(t, root, dockerScope)
	if got := r.Lookup(id); got != (Info{ID: id}) || r.Scans() != 1 || !woken(r) {
		t.Fatalf("new id: %+v after %d walks, want the id alone, no walk in Lookup, and a walk asked for", got, r.Scans())
	}
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	want := Info{ID: id, Path: "/" + dockerScope, Workload: Workload{ContainerID: cid}}
	if got := r.Lookup(id); got != want {
		t.Fatalf("after the walk: %+v, want %+v", got, want)
	}

	const never = 1 << 62
	if got := r.Lookup(never); got != (Info{ID: never}) || !woken(r) {
		t.Fatalf("unknown id before a walk: %+v", got)
	}
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := r.Lookup(never); got != (Info{ID: never, Gone: true}) {
			t.Fatalf("unknown id after a walk: %+v, want it gone", got)
		}
		r.EndRound()
	}
	if woken(r) {
		t.Error("an id a walk did not find asked for another walk")
	}
}

// A removed cgroup keeps its last path while it is looked up (its sockets
// still count), and is forgotten at the end of the first round without a
// lookup: the map holds the live cgroups and no more.
func TestResolverGone(t *testing.T) {
	root := tree(t, service, k8sCgroupfs)
	r := newTestResolver(t, root)
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	gone := idOf(t, root, k8sCgroupfs)
	r.Lookup(gone)
	live := r.Len() // root, kubepods, burstable, pod…, the container, system.slice, ssh.service
	if live != 7 {
		t.Fatalf("%d ids after the first walk, want 7", live)
	}
	r.EndRound()

	// Made before the removal: ext4 and tmpfs reuse a freed inode number
	// at once (kernfs never reuses a cgroup id).
	mkdir(t, root, dockerScope)
	if err := os.Remove(filepath.Join(root, k8sCgroupfs)); err != nil {
		t.Fatal(err)
	}
	if err := r.Scan(); err != nil {
		t.Fatal(err)
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
	if got := r.Lookup(gone); got != (Info{ID: gone}) {
		t.Errorf("forgotten id: %+v, want the id alone", got)
	}
}

// Unresolved counts, per round, the ids looked up without a path.
func TestResolverStats(t *testing.T) {
	root := tree(t, service)
	r := newTestResolver(t, root)
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	known := idOf(t, root, service)
	for range 2 {
		r.Lookup(known)
		r.Lookup(1 << 60)
		r.Lookup(1 << 61)
		r.Lookup(1 << 61) // twice in a round: counted once
	}
	r.EndRound()
	if got := r.Stats(); got != (Stats{Unresolved: 2}) {
		t.Errorf("stats %+v, want 2 unresolved", got)
	}
	r.Lookup(known)
	r.EndRound()
	if got := r.Stats(); got != (Stats{}) {
		t.Errorf("stats %+v, want none unresolved", got)
	}
}

// The background walk of Start resolves a new id without any Lookup
// waiting for it; Close stops it (twice is fine).
func TestResolverBackgroundWalk(t *testing.T) {
	root := tree(t, service)
	r := NewWalkResolver(root)
	r.MinRescan = time.Millisecond
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Scans() != 1 {
		t.Fatalf("%d walks after Start, want 1", r.Scans())
	}
	id := mkdir(t, root, dockerScope)
	if got := r.Lookup(id); got.Path != "" {
		t.Fatalf("walk mode resolved a new id inside Lookup: %+v", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Lookup(id).Path != "/"+dockerScope {
		if time.Now().After(deadline) {
			t.Fatalf("the background walk did not resolve %d: %+v after %d walks", id, r.Lookup(id), r.Scans())
		}
		time.Sleep(time.Millisecond)
	}
	r.Close()
	r.Close()
}
