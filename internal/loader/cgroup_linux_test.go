//go:build linux

package loader

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// oldLayoutTypes returns the running kernel's types with sock_cgroup_data
// as it was before 5.15: a union of the packed net_prio/net_cls data and
// `u64 val`, which holds the cgroup pointer when its low bits are clear.
// The memory of the running kernel has the pointer at the same offset, so
// the program relocated against these types must read the same cgroup id
// through its ___old branch.
func oldLayoutTypes(t *testing.T) *btf.Spec {
	t.Helper()
	kt, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	kt = kt.Copy()
	var scd *btf.Struct
	if err := kt.TypeByName("sock_cgroup_data", &scd); err != nil {
		t.Fatal(err)
	}
	u8 := &btf.Int{Name: "u8", Size: 1}
	u16 := &btf.Int{Name: "u16", Size: 2}
	u32 := &btf.Int{Name: "u32", Size: 4}
	packed := &btf.Struct{Size: 8, Members: []btf.Member{
		{Name: "is_data", Type: u8, Offset: 0, BitfieldSize: 1},
		{Name: "no_refcnt", Type: u8, Offset: 1, BitfieldSize: 1},
		{Name: "unused", Type: u8, Offset: 2, BitfieldSize: 6},
		{Name: "padding", Type: u8, Offset: 8},
		{Name: "prioidx", Type: u16, Offset: 16},
		{Name: "classid", Type: u32, Offset: 32},
	}}
	scd.Size = 8
	scd.Members = []btf.Member{{Type: &btf.Union{Size: 8, Members: []btf.Member{
		{Type: packed},
		{Name: "val", Type: &btf.Int{Name: "u64", Size: 8}},
	}}}}
	return kt
}

// unknownLayoutTypes returns the running kernel's types with a
// sock_cgroup_data that has neither layout's field: the program must
// still load, and key sockets by cgroup 0.
func unknownLayoutTypes(t *testing.T) *btf.Spec {
	t.Helper()
	kt := oldLayoutTypes(t)
	var scd *btf.Struct
	if err := kt.TypeByName("sock_cgroup_data", &scd); err != nil {
		t.Fatal(err)
	}
	scd.Members = []btf.Member{{Name: "something_else", Type: &btf.Int{Name: "u64", Size: 8}}}
	return kt
}

// TestCgroupID checks, for both layouts of sock_cgroup_data and every
// flavour, that a series key carries the cgroup v2 id of the process that
// created the socket: the test process moves into a fresh cgroup, dials,
// and moves back.
func TestCgroupID(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
	root, err := cgroup.FindMount()
	if err != nil {
		t.Fatalf("this test needs the cgroup v2 hierarchy: %v", err)
	}
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	all := AutoOrder
	// With other types than the running kernel's only the flavours that
	// read with probe helpers load: tp_btf's direct loads are checked by
	// the verifier against the running kernel's own types.
	probed := []Mode{ModeRawTp, ModeTracepoint}
	layouts := []struct {
		name  string
		types *btf.Spec
		modes []Mode
		zero  bool // no cgroup field: id 0
	}{
		{"5.15+", nil, all, false},
		{"before 5.15", oldLayoutTypes(t), probed, false},
		{"neither", unknownLayoutTypes(t), probed, true},
	}
	for _, l := range layouts {
		types := l.types
		for _, mode := range l.modes {
			t.Run(fmt.Sprintf("%s/%s", l.name, mode), func(t *testing.T) {
				requireFlavour(t, mode)
				// Its own addresses only: other packages' kernel tests run at
				// the same time, and the program sees the whole host.
				own := []netip.Prefix{netip.MustParsePrefix("127.0.11.20/31")}
				tr, err := Open(Spec{Mode: mode, GroupBy: kmaps.GroupCgroup | kmaps.GroupLocalPort,
					Table: table, MaxSeries: 64, HelperReads: types != nil, KernelTypes: types,
					LocalPrefixes: own, RemotePrefixes: own})
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				dir, id, leave := enterNewCgroup(t, root)
				if l.zero {
					id = 0
				}
				c := tcptest.Dial(t, netip.MustParseAddr("127.0.11.21"), netip.MustParseAddr("127.0.11.20"))
				leave() // the sockets stay with the cgroup they were created in
				c.RoundTrips(t, 5)

				var snap kmaps.Snapshot
				var rows []uint64
				if err := tr.Read(&snap, &rows); err != nil {
					t.Fatal(err)
				}
				port := c.ClientAddr().Port()
				for _, s := range snap.Series {
					if s.Key.LocalPort == port {
						if s.Key.Cgroup != id {
							t.Fatalf("client socket in cgroup %d, want %d (%s)", s.Key.Cgroup, id, dir)
						}
						if s.Total < 5 {
							t.Fatalf("%d samples, want at least 5", s.Total)
						}
						t.Logf("client socket: cgroup %d (%s), %d samples", id, dir, s.Total)
						return
					}
				}
				t.Fatalf("no series for the client socket (port %d)", port)
			})
		}
	}
}

// enterNewCgroup creates a cgroup below root and moves this process into
// it, returning its directory, its id (its inode number) and the function
// that moves the process back.
func enterNewCgroup(t *testing.T, root string) (string, uint64, func()) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprintf("tcprtt-loader-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Rmdir(dir); err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	back, err := cgroup.ProcPath("self")
	if err != nil {
		t.Fatal(err)
	}
	writePid(t, dir)
	leave := func() { writePid(t, filepath.Join(root, back)) }
	t.Cleanup(leave) // also if the test fails before leaving
	return dir, st.Ino, leave
}

func writePid(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("move process into %s: %v", dir, err)
	}
}
