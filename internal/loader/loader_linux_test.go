//go:build linux

package loader

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestSocketReads checks, for every flavour this kernel attaches (the
// others skip with the kernel's reason) and for
// both ways of reading the socket (direct loads through bpf_rdonly_cast,
// and the BPF helpers older kernels need), that the program files each
// sample under the socket's exact 4-tuple and records the srtt the socket's
// own TCP_INFO reports (read just before one more round trip). The
// samples are counted in the socket's cache entry where the kernel allows
// it, and row_counts also checks counting in the rows only (as on arm64
// before 5.12).
func TestSocketReads(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
	table := testTable(t)
	all := kmaps.GroupLocalAddress | kmaps.GroupRemoteAddress | kmaps.GroupLocalPort | kmaps.GroupRemotePort
	for _, mode := range AutoOrder {
		for _, v := range []struct {
			name             string
			helpers, rowOnly bool
		}{{"helper_reads=false", false, false}, {"helper_reads=true", true, false}, {"row_counts", false, true}} {
			t.Run(fmt.Sprintf("%s/%s", mode, v.name), func(t *testing.T) {
				requireFlavour(t, mode)
				// Only its own addresses, and room for more: go test runs
				// other packages' kernel tests (hundreds of loopback peers)
				// at the same time, and the program sees the whole host.
				own := []netip.Prefix{netip.MustParsePrefix("127.0.0.2/31"), netip.MustParsePrefix("::1/128")}
				tr, err := Open(Spec{Mode: mode, GroupBy: all, Table: table, MaxSeries: 1024, HelperReads: v.helpers, RowCountsOnly: v.rowOnly,
					LocalPrefixes: own, RemotePrefixes: own})
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				pairs := [][2]netip.Addr{
					{netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.2")},
					{netip.IPv6Loopback(), netip.IPv6Loopback()},
				}
				for _, pair := range pairs {
					c := tcptest.Dial(t, pair[0], pair[1])
					c.RoundTrips(t, 10)
					before := clientSeries(t, tr, c)
					info := c.ClientInfo(t)
					c.RoundTrips(t, 1)
					after := clientSeries(t, tr, c)
					if n := after.Total - before.Total; n != 1 {
						t.Fatalf("%d samples for one round trip, want 1", n)
					}
					raw := after.Sum - before.Sum
					if uint32(raw>>3) != info.Rtt {
						t.Errorf("recorded srtt %d/8 µs, TCP_INFO %d µs", raw, info.Rtt)
					}
					pos := int(table.Position(uint32(raw)))
					if after.Bucket(pos)-before.Bucket(pos) != 1 {
						t.Errorf("sample %d not in its bucket at position %d", raw, pos)
					}
				}
			})
		}
	}
}

// clientSeries reads the series of c's client socket.
func clientSeries(t *testing.T, tr *Tracer, c *tcptest.Conn) kmaps.Series {
	t.Helper()
	var snap kmaps.Snapshot
	var rows []uint64
	if err := tr.Read(&snap, &rows); err != nil {
		t.Fatal(err)
	}
	local, remote := c.ClientAddr(), c.ServerAddr()
	family := uint8(6)
	if local.Addr().Is4() {
		family = 4
	}
	for _, s := range snap.Series {
		k := s.Key
		if k.LocalAddress() == local.Addr() && k.LocalPort == local.Port() &&
			k.RemoteAddress() == remote.Addr() && k.RemotePort == remote.Port() && k.Family == family {
			s.Buckets = append([]uint64(nil), s.Buckets...) // rows is reused
			return s
		}
	}
	t.Fatalf("no series for %s -> %s among %d", local, remote, len(snap.Series))
	return kmaps.Series{}
}

func testTable(t *testing.T) *bucket.Table {
	t.Helper()
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	return table
}
