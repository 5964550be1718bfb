//go:build linux

package loader

import (
	"testing"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// lossSpec readies tb for traffic on the loss addresses (BPF, tracefs for
// the tracepoint flavours, testenv.LockLossNets) and returns the Spec the
// retransmit tests and benchmarks open: a series per remote address of
// testenv.LossNets, retransmits on, every hook's flavour probed.
func lossSpec(tb testing.TB) Spec {
	tb.Helper()
	testenv.RequireBPF(tb)
	testenv.MountTracefs(tb)
	testenv.LockLossNets(tb)
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		tb.Fatal(err)
	}
	return Spec{
		Mode: ModeAuto, GroupBy: kmaps.GroupRemoteAddress, Table: table, MaxSeries: 8,
		LocalPrefixes: testenv.LossNets, Retransmits: true,
	}
}
