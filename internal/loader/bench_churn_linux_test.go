//go:build linux

package loader

import (
	"net"
	"net/netip"
	"testing"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// BenchmarkConnectionChurn is what a short connection costs on this host
// (dial, accept, one byte each way, close both ends: ns/op) with the RTT
// programs only and with the retransmit and state-change programs too:
// the state-change program runs about ten times per connection. The
// sockets pass the filters (all of them do at the defaults).
func BenchmarkConnectionChurn(b *testing.B) {
	base := lossSpec(b)
	base.MaxSeries = 64
	for _, retrans := range []bool{false, true} {
		name := "retransmits=off"
		if retrans {
			name = "retransmits=on"
		}
		b.Run(name, func(b *testing.B) {
			spec := base
			spec.Retransmits = retrans
			tr, err := Open(spec)
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
				b.ResetTimer()
				for range b.N {
					c, s, err := tcptest.Connect(ln, testenv.LossClient4)
					if err != nil {
						runErr = err
						return
					}
					err = tcptest.Exchange(c, s, 1)
					c.Close()
					s.Close()
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
