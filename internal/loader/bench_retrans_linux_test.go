//go:build linux

package loader

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// BenchmarkRetransmitProgram reports what one run of the retransmit
// program costs (bpf_stats run time / run count) under real loss: each op
// is a 1 MiB transfer on one connection with every 7th data segment
// dropped. The RTT programs are loaded too, as in the receiver; the
// retransmit program's own statistics are reported, and those of the
// state-change program beside it (settle-*: it runs at every TCP state
// change on the host, a few per connection, and does work for the
// filtered-in sockets' establishment and later changes).
func BenchmarkRetransmitProgram(b *testing.B) {
	spec := lossSpec(b)
	spec.MaxSeries = 64
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf_stats: %v", err)
	}
	defer stats.Close()
	tr, err := Open(spec)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	start, err := tr.RetransProgram().Stats()
	if err != nil {
		b.Fatal(err)
	}
	settleStart, err := tr.SettleProgram().Stats()
	if err != nil {
		b.Fatal(err)
	}
	testenv.DropEveryNth(b, 7)
	var err2 error
	b.ResetTimer()
	testenv.InLossNetns(b, func() {
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(testenv.LossServer4, 0)))
		if err != nil {
			err2 = err
			return
		}
		defer ln.Close()
		for range b.N {
			c, s, err := tcptest.Connect(ln, testenv.LossClient4)
			if err != nil {
				err2 = err
				return
			}
			err = testenv.Transfer(c, s, 1<<20)
			s.Close()
			c.Close()
			if err != nil {
				err2 = err
				return
			}
		}
	})
	b.StopTimer()
	if err2 != nil {
		b.Fatal(err2)
	}
	end, err := tr.RetransProgram().Stats()
	if err != nil {
		b.Fatal(err)
	}
	settleEnd, err := tr.SettleProgram().Stats()
	if err != nil {
		b.Fatal(err)
	}
	runs := end.RunCount - start.RunCount
	if runs == 0 {
		b.Fatal("the retransmit program did not run under loss")
	}
	b.ReportMetric(float64((end.Runtime-start.Runtime).Nanoseconds())/float64(runs), "ns/run")
	b.ReportMetric(float64(runs)/float64(b.N), "runs/op")
	if settleRuns := settleEnd.RunCount - settleStart.RunCount; settleRuns > 0 {
		b.ReportMetric(float64((settleEnd.Runtime-settleStart.Runtime).Nanoseconds())/float64(settleRuns), "settle-ns/run")
		b.ReportMetric(float64(settleRuns)/float64(b.N), "settle-runs/op")
	} else {
		b.Fatal("the state-change program did not run for the benchmark's connections")
	}
	b.ReportMetric(0, "ns/op") // a transfer's time says nothing about the program
}
