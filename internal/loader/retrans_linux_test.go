//go:build linux

package loader

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestRetransmitsEqualTCPInfo: with real loss (every 7th data segment
// dropped on its way into the receiving socket), the retransmitted
// segments the program counts per series add up to the sockets' own
// tcpi_total_retrans, exactly, in every flavour of the hook this kernel
// takes, IPv4 and IPv6; the program's runs all end in one place.
func TestRetransmitsEqualTCPInfo(t *testing.T) {
	base := lossSpec(t)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable bpf_stats (run counts): %v", err)
	}
	defer stats.Close()
	for _, mode := range RetransOrder {
		t.Run(string(mode), func(t *testing.T) {
			spec := base
			spec.RetransMode = mode
			tr, err := Open(spec)
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
			for _, fam := range []struct{ server, client netip.Addr }{{testenv.LossServer4, testenv.LossClient4}, {testenv.LossServer6, testenv.LossClient6}} {
				wantC, wantS, fail := testenv.LossyTransfers(t, fam.server, fam.client, 4, 4<<20)
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
