//go:build unix

package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// A removed cgroup keeps its last path through quiet intervals (no
// histogram printed for it) as long as the kernel holds its series, as
// the usage text says.
func TestRemovedCgroupKeepsPathThroughQuietIntervals(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "system.slice", "gone.service")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	id := st.Ino
	r := cgroup.NewWalkResolver(root)
	defer r.Close()
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	snap := &kmaps.Snapshot{Series: []kmaps.Series{{Key: kmaps.Key{Cgroup: id}}}}
	lookupCgroups(r, snap)
	name := cgroupName(r.Lookup(id)) // printed in the first interval
	r.EndRound()
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	for range 3 { // quiet intervals: the series lives, nothing printed
		lookupCgroups(r, snap)
		r.EndRound()
	}
	lookupCgroups(r, snap)
	if got := cgroupName(r.Lookup(id)); got != name || got != "/system.slice/gone.service" {
		t.Errorf("after quiet intervals: %q, want its last path %q", got, name)
	}
}
