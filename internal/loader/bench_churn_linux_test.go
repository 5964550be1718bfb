//go:build linux

package loader

import (
	"net"
	"net/netip"
	"testing"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// BenchmarkConnectionChurn is what a short connection costs on this host
// (dial, accept, one byte each way, close both ends: ns/op) with the RTT
// programs only and with the retransmit and state-change programs too:
// the state-change program runs about ten times per connection. The
// sockets pass the filters (all of them do at the defaults).
func BenchmarkConnectionChurn(b *testing.B) {
	testenv.RequireBPF(b)
	testenv.MountTracefs(b)
	testenv.LockLossNets(b)
	table, err := bucket.NewTable(3, bucket.Microseconds)
	if err != nil {
		b.Fatal(err)
	}
	for _, retrans := range []bool{false, true} {
		name := "retransmits=off"
		if retrans {
			name = "retransmits=on"
		}
		b.Run(name, func(b *testing.B) {
			tr, err := Open(Spec{
				Mode: ModeAuto, GroupBy: kmaps.GroupRemoteAddress, Table: table, MaxSeries: 64,
				LocalPrefixes: testenv.LossNets, Retransmits: retrans,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			var runErr error
			testenv.InLossNetns(b, func() {
				ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(testenv.LossServer4, 0)))
				if err != nil {
					runErr = err
					return
				}
				defer ln.Close()
				buf := make([]byte, 1)
				b.ResetTimer()
				for range b.N {
					c, s, err := tcptest.Connect(ln, testenv.LossClient4)
					if err == nil {
						_, err = c.Write(buf)
					}
					if err == nil {
						_, err = s.Read(buf)
					}
					if err == nil {
						_, err = s.Write(buf)
					}
					if err == nil {
						_, err = c.Read(buf)
					}
					if c != nil {
						c.Close()
						s.Close()
					}
					if err != nil {
						runErr = err
						return
					}
				}
				b.StopTimer()
			})
			if runErr != nil {
				b.Fatal(runErr)
			}
		})
	}
}
