//go:build linux

package cgroup

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cgroup2Base makes a fresh cgroup below this machine's cgroup v2 root for
// the test, removed (with everything the test made below it, deepest
// first) at the end. It skips without root or cgroup2, and fails instead
// under TCPRTT_REQUIRE_BPF=1 (CI), like the kernel tests.
func cgroup2Base(t *testing.T) (root, base string) {
	t.Helper()
	root, err := FindMount()
	if err == nil && os.Geteuid() != 0 {
		err = os.ErrPermission
	}
	if err != nil {
		if os.Getenv("TCPRTT_REQUIRE_BPF") == "1" {
			t.Fatalf("needs root and the cgroup v2 hierarchy: %v", err)
		}
		t.Skipf("needs root and the cgroup v2 hierarchy: %v", err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	base = filepath.Join(root, "tcprtt-cgroup-test-"+hex.EncodeToString(b))
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, base) })
	return root, base
}

// removeTree removes the cgroup dir and the cgroups below it, deepest
// first (cgroupfs refuses to remove a cgroup with children).
func removeTree(t *testing.T, dir string) {
	t.Helper()
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !os.IsNotExist(err) {
			t.Errorf("remove cgroup %s: %v", dirs[i], err)
		}
	}
}

// A new cgroup resolves in the Lookup that first sees its id, without a
// walk, its workload parsed; a cgroup removed after it was resolved keeps
// its path while it is looked up; one removed before its first lookup is
// gone, without a path.
func TestNewCgroupResolvesAtOnce(t *testing.T) {
	root, base := cgroup2Base(t)
	r := NewResolver(root)
	if err := r.HandleErr(); err != nil {
		t.Fatalf("root cannot open cgroups by handle: %v", err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rel := "/" + strings.TrimPrefix(base, root+"/")
	if got := r.Lookup(ino(t, base)); got.Path != rel {
		t.Fatalf("base: %+v, want path %s", got, rel)
	}

	path := filepath.Join(base, k8sCgroupfs)
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	id := ino(t, path)
	want := Info{ID: id, Path: rel + "/" + k8sCgroupfs, Workload: Workload{ContainerID: cid, PodUID: uid}}
	if got := r.Lookup(id); got != want {
		t.Fatalf("new cgroup: %+v, want %+v", got, want)
	}
	if r.Scans() != 0 {
		t.Errorf("%d walks, want none: ids resolve by handle", r.Scans())
	}
	if err := syscall.Rmdir(path); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r.EndRound()
		if got := r.Lookup(id); got != want {
			t.Fatalf("removed after it was resolved: %+v, want %+v (its last path)", got, want)
		}
	}

	short := filepath.Join(base, "short-lived")
	if err := os.Mkdir(short, 0o755); err != nil {
		t.Fatal(err)
	}
	shortID := ino(t, short)
	if err := syscall.Rmdir(short); err != nil {
		t.Fatal(err)
	}
	if got := r.Lookup(shortID); got != (Info{ID: shortID, Gone: true}) {
		t.Errorf("removed before its first lookup: %+v, want gone without a path", got)
	}
	if r.Stats() != (Stats{}) {
		t.Errorf("stats %+v before the round ends", r.Stats())
	}
	r.EndRound()
	if got := r.Stats().Unresolved; got != 1 {
		t.Errorf("%d unresolved in the round, want 1 (the removed one)", got)
	}
}

// Without the capability (NewWalkResolver), the background walk resolves
// a new cgroup shortly after its first lookup, which does not wait.
func TestNewCgroupResolvesByWalk(t *testing.T) {
	root, base := cgroup2Base(t)
	r := NewWalkResolver(root)
	r.MinRescan = 10 * time.Millisecond
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	path := filepath.Join(base, dockerScope)
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	id := ino(t, path)
	r.Lookup(id)
	deadline := time.Now().Add(30 * time.Second)
	for r.Lookup(id).ContainerID != cid {
		if time.Now().After(deadline) {
			t.Fatalf("not resolved by the background walk: %+v", r.Lookup(id))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestScrapeCost10kCgroups measures what a collection pays for cgroup
// names with 10,100 cgroups (100 × 100 below a temporary cgroup) when a
// new cgroup appears: one Lookup of the new id, lookups of 100 known ones
// and EndRound. By handle and by background walk alike it must not walk
// on the caller's path (a walk of this tree takes about half a second
// here, the cost every such collection paid before).
func TestScrapeCost10kCgroups(t *testing.T) {
	root, base := cgroup2Base(t)
	var known []uint64
	for i := range 100 {
		d := filepath.Join(base, "s"+strconvI(i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range 100 {
			c := filepath.Join(d, "c"+strconvI(j))
			if err := os.Mkdir(c, 0o755); err != nil {
				t.Fatal(err)
			}
			if j == 0 {
				known = append(known, ino(t, c))
			}
		}
	}
	begin := time.Now()
	if _, err := walk(root); err != nil {
		t.Fatal(err)
	}
	t.Logf("one walk of the hierarchy (10,100+ cgroups): %v", time.Since(begin))

	for _, mode := range []struct {
		name string
		new  func(string) *Resolver
	}{{"by handle", NewResolver}, {"by walk", NewWalkResolver}} {
		t.Run(mode.name, func(t *testing.T) {
			r := mode.new(root)
			r.MinRescan = 0
			if err := r.Start(); err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var worst time.Duration
			for k := range 5 {
				p := filepath.Join(base, "s"+strconvI(0), "new-"+mode.name[3:]+strconvI(k))
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
				id := ino(t, p)
				begin := time.Now()
				info := r.Lookup(id)
				for _, k := range known {
					r.Lookup(k)
				}
				r.EndRound()
				d := time.Since(begin)
				worst = max(worst, d)
				if r.ByHandle() && info.Path == "" {
					t.Errorf("by handle, new cgroup %d without a path: %+v", id, info)
				}
				time.Sleep(20 * time.Millisecond) // lets a background walk run between collections
			}
			t.Logf("%s: worst collection with a new cgroup among 10,100: %v (%d walks)", mode.name, worst, r.Scans())
			// A walk takes hundreds of ms; a collection that does not walk
			// takes well under one even on a loaded, race-enabled run.
			if worst > 100*time.Millisecond {
				t.Errorf("a collection took %v: is the walk back on the caller's path?", worst)
			}
		})
	}
}

func strconvI(i int) string { return string(rune('a'+i/26)) + string(rune('a'+i%26)) }
