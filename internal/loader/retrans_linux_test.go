//go:build linux

package loader

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// The retransmit tests' addresses, in a network namespace of their own
// (the program sees every namespace: the filters keep other traffic out).
var (
	rtxServer4 = netip.MustParseAddr("127.77.0.1")
	rtxClient4 = netip.MustParseAddr("127.77.0.2")
	rtxServer6 = netip.MustParseAddr("fd77::1")
	rtxClient6 = netip.MustParseAddr("fd77::2")
	rtxNets    = []netip.Prefix{netip.MustParsePrefix("127.77.0.0/16"), netip.MustParsePrefix("fd77::/16")}
)

// lossyTransfersBySide sends size bytes on each of conns connections from
// client to server, with every 7th data segment dropped, and returns the
// sums of the client sockets' and of the server sockets'
// tcpi_total_retrans once all data is acknowledged, and the namespace's
// TCPRetransFail.
func lossyTransfersBySide(t *testing.T, server, client netip.Addr, conns, size int) (clientSide, serverSide, fail uint64) {
	t.Helper()
	dropEveryNth(t, 7)
	var errs []error
	inNetns(t, func() {
		defer func() {
			if r := recover(); r != nil {
				errs = append(errs, fmt.Errorf("%v", r))
			}
		}()
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(server, 0)))
		if err != nil {
			errs = append(errs, err)
			return
		}
		defer ln.Close()
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range conns {
			c, err := net.DialTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, 0)), ln.Addr().(*net.TCPAddr))
			if err != nil {
				errs = append(errs, err)
				return
			}
			s, err := ln.AcceptTCP()
			if err != nil {
				errs = append(errs, err)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				defer s.Close()
				err := transfer(c, s, size)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				for _, side := range []struct {
					conn *net.TCPConn
					sum  *uint64
				}{{c, &clientSide}, {s, &serverSide}} {
					ti, err := tcpInfo(side.conn)
					if err != nil {
						errs = append(errs, err)
						return
					}
					*side.sum += uint64(ti.Total_retrans)
				}
			}()
		}
		wg.Wait()
		if fail, err = retransFail(); err != nil {
			errs = append(errs, err)
		}
	})
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return clientSide, serverSide, fail
}

// transfer sends size bytes from c to s and one byte back, so that when
// it returns every byte sent either way is acknowledged (nothing left to
// retransmit while TCP_INFO is read).
func transfer(c, s *net.TCPConn, size int) error {
	errc := make(chan error, 1)
	go func() {
		if _, err := io.CopyN(io.Discard, s, int64(size)); err != nil {
			errc <- fmt.Errorf("receive: %w", err)
			return
		}
		_, err := s.Write([]byte{1})
		errc <- err
	}()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	if err := <-errc; err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read the last byte: %w", err)
	}
	// The last byte's ACK: a round trip the server waits for.
	_, err := c.Write(b[:])
	if err == nil {
		_, err = io.ReadFull(s, b[:])
	}
	return err
}

func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var ti *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) {
		ti, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return ti, serr
}

// TestRetransmitsEqualTCPInfo: with real loss (every 7th data segment
// dropped on its way into the receiving socket), the retransmitted
// segments the program counts per series add up to the sockets' own
// tcpi_total_retrans, exactly, in every flavour of the hook this kernel
// takes, IPv4 and IPv6; the program's runs all end in one place.
func TestRetransmitsEqualTCPInfo(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable bpf_stats (run counts): %v", err)
	}
	defer stats.Close()
	for _, mode := range RetransOrder {
		t.Run(string(mode), func(t *testing.T) {
			tr, err := Open(Spec{
				Mode: ModeAuto, GroupBy: kmaps.GroupRemoteAddress, Table: table, MaxSeries: 8,
				LocalPrefixes: rtxNets, Retransmits: true, RetransMode: mode,
			})
			if err != nil {
				if refusal, ok := retransRefusal(err); ok {
					t.Skipf("this kernel refuses %s: %v", RetransHook(mode), refusal)
				}
				t.Fatal(err)
			}
			defer tr.Close()
			if tr.RetransMode() != mode {
				t.Fatalf("retransmit hook attached as %q, want %q", tr.RetransMode(), mode)
			}
			for _, fam := range []struct{ server, client netip.Addr }{{rtxServer4, rtxClient4}, {rtxServer6, rtxClient6}} {
				wantC, wantS, fail := lossyTransfersBySide(t, fam.server, fam.client, 4, 4<<20)
				want := wantC + wantS
				var snap kmaps.Snapshot
				var rows []uint64
				if err := tr.Read(&snap, &rows); err != nil {
					t.Fatal(err)
				}
				var got uint64
				for _, s := range snap.Series {
					if s.Key.RemoteAddress() == fam.server || s.Key.RemoteAddress() == fam.client {
						got += s.Retransmits
					}
				}
				var gotC, gotS, other uint64
				for _, s := range snap.Series {
					if s.Overflow || (s.Key.RemoteAddress() != fam.server && s.Key.RemoteAddress() != fam.client) {
						other += s.Retransmits
					}
					if s.Key.RemoteAddress() == fam.server {
						gotC += s.Retransmits
					} else if s.Key.RemoteAddress() == fam.client {
						gotS += s.Retransmits
					}
				}
				t.Logf("%s: %d segments retransmitted (TCP_INFO %d, TCPRetransFail %d); clients %d/%d servers %d/%d, other series %d (%d series)",
					fam.server, got, want, fail, gotC, wantC, gotS, wantS, other, len(snap.Series))
				if want == 0 {
					t.Fatalf("%s: no retransmission under loss: the test made none", fam.server)
				}
				if fail != 0 {
					t.Errorf("%s: %d retransmissions failed locally (never sent, no event): the loss must be on the wire", fam.server, fail)
				}
				if got != want {
					t.Errorf("%s: program counted %d retransmitted segments, TCP_INFO says %d", fam.server, got, want)
				}
			}
			ps, err := tr.RetransProgram().Stats()
			if err != nil {
				t.Fatal(err)
			}
			var snap kmaps.Snapshot
			var rows []uint64
			if err := tr.Read(&snap, &rows); err != nil {
				t.Fatal(err)
			}
			st := snap.Stats
			if st.RetransErrors != 0 {
				t.Errorf("%d retransmit runs were errors", st.RetransErrors)
			}
			ended := st.RetransCounted + st.RetransFiltered + st.RetransErrors + st.RetransMissed
			// Runs of other sockets on this host may come between the two
			// reads: the later counters may only be ahead.
			if ended < ps.RunCount {
				t.Errorf("retransmit runs %d > counted %d + filtered %d + errors %d + missed %d",
					ps.RunCount, st.RetransCounted, st.RetransFiltered, st.RetransErrors, st.RetransMissed)
			}
			t.Logf("runs %d: counted %d, filtered %d, errors %d, missed %d; %d ns/run",
				ps.RunCount, st.RetransCounted, st.RetransFiltered, st.RetransErrors, st.RetransMissed,
				int64(ps.Runtime)/max(1, int64(ps.RunCount)))
		})
	}
}

// retransRefusal tells a kernel's refusal of a retransmit flavour (a
// *LoadError) from a failure of the test.
func retransRefusal(err error) (error, bool) {
	if ae, ok := err.(*RetransAttachError); ok && len(ae.Attempts) == 1 {
		if le, ok := ae.Attempts[0].Err.(*LoadError); ok {
			return le, true
		}
	}
	return nil, false
}
