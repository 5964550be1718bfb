//go:build linux

package loader

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestRetransmitsBeforeStartNotCounted: sockets that retransmitted before
// the program was loaded count only what they retransmit after it
// (bpf/retrans.h, a first sight): the series' count is the growth of
// their tcpi_total_retrans from the load on, exactly, not their total.
func TestRetransmitsBeforeStartNotCounted(t *testing.T) {
	spec := lossSpec(t)
	testenv.DropEveryNth(t, 7)
	server, client := testenv.LossServer4, testenv.LossClient4
	var errs []error
	var before, after uint64
	var got uint64
	testenv.InLossNetns(t, func() {
		fail := func(err error) { errs = append(errs, err) }
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(server, 0)))
		if err != nil {
			fail(err)
			return
		}
		defer ln.Close()
		const conns = 3
		var cs, ss []*net.TCPConn
		defer func() {
			for _, c := range append(cs, ss...) {
				c.Close()
			}
		}()
		for range conns {
			c, s, err := tcptest.Connect(ln, client)
			if err != nil {
				fail(err)
				return
			}
			cs, ss = append(cs, c), append(ss, s)
		}
		// totals sums every socket's tcpi_total_retrans, both sides.
		totals := func() (sum uint64) {
			for _, c := range append(cs, ss...) {
				ti, err := tcptest.TCPInfo(c)
				if err != nil {
					fail(err)
					return 0
				}
				sum += uint64(ti.Total_retrans)
			}
			return sum
		}
		transfers := func() {
			for i := range cs {
				if err := testenv.Transfer(cs[i], ss[i], 2<<20); err != nil {
					fail(fmt.Errorf("connection %d: %w", i, err))
				}
			}
		}
		transfers() // retransmits before the program is loaded
		before = totals()
		tr, err := Open(spec)
		if err != nil {
			fail(err)
			return
		}
		defer tr.Close()
		transfers()
		after = totals()
		var snap kmaps.Snapshot
		var rows []uint64
		if err := tr.Read(&snap, &rows); err != nil {
			fail(err)
			return
		}
		for _, s := range snap.Series {
			if a := s.Key.RemoteAddress(); a == server || a == client {
				got += s.Retransmits
			}
		}
		t.Logf("retransmit hook %s: TCP_INFO total %d before the load, %d after the second transfers; counted %d",
			tr.RetransMode(), before, after, got)
	})
	for _, err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	if before == 0 {
		t.Fatal("no retransmission before the load: the test made none")
	}
	// Never the sockets' earlier retransmissions, all the later ones.
	if want := after - before; got != want {
		t.Errorf("counted %d retransmitted segments, want the %d retransmitted after the load (TCP_INFO %d before, %d after)",
			got, want, before, after)
	}
}
