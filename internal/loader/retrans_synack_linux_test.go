//go:build linux

package loader

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestRetransmitsSynAckCounted: a passive socket starts with the SYN-ACKs
// its request retransmitted (tcp_create_openreq_child copies the request's
// num_retrans into total_retrans), which fire tcp_retransmit_synack, never
// tcp_retransmit_skb. They are counted all the same, from the socket's
// entry made when it is established and settled when it closes. The
// listener defers accepting a bare ACK (TCP_DEFER_ACCEPT, 1 s), so its
// request times out once and sends its SYN-ACK again: no loss needed.
func TestRetransmitsSynAckCounted(t *testing.T) {
	base := lossSpec(t)
	server, client := testenv.LossServer4, testenv.LossClient4
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
			var serverTotal, clientTotal uint32
			var runErr error
			testenv.InLossNetns(t, func() { serverTotal, clientTotal, runErr = deferredAccept(server, client) })
			if runErr != nil {
				t.Fatal(runErr)
			}
			if serverTotal == 0 {
				t.Fatal("the passive socket's tcpi_total_retrans is 0: its request sent no second SYN-ACK")
			}
			var snap kmaps.Snapshot
			var rows []uint64
			if err := tr.Read(&snap, &rows); err != nil {
				t.Fatal(err)
			}
			var toClient, toServer uint64 // the server's sockets, the client's
			for _, s := range snap.Series {
				switch s.Key.RemoteAddress() {
				case client:
					toClient += s.Retransmits
				case server:
					toServer += s.Retransmits
				}
			}
			t.Logf("%s: TCP_INFO server %d, client %d; counted %d, %d", tr.RetransMode(), serverTotal, clientTotal, toClient, toServer)
			if toClient != uint64(serverTotal) || toServer != uint64(clientTotal) {
				t.Errorf("counted %d (server side) and %d (client side), TCP_INFO says %d and %d",
					toClient, toServer, serverTotal, clientTotal)
			}
		})
	}
}

// deferredAccept connects client to a plain TCP listener on server that
// defers accepting for 1 s, makes one round trip, and returns both
// sockets' tcpi_total_retrans read just before they close.
func deferredAccept(server, client netip.Addr) (serverTotal, clientTotal uint32, err error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false) // TCP_DEFER_ACCEPT on the TCP socket itself
	lc.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1)
		}); err != nil {
			return err
		}
		return serr
	}
	l, err := lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(server, 0).String())
	if err != nil {
		return 0, 0, fmt.Errorf("listen with TCP_DEFER_ACCEPT: %w", err)
	}
	ln := l.(*net.TCPListener)
	defer ln.Close()
	// The client's connect returns at the SYN-ACK; the listener drops its
	// bare ACK, resends the SYN-ACK after 1 s, and takes the ACK that
	// answers it.
	c, s, err := tcptest.Connect(ln, client)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	defer s.Close()
	if err := tcptest.Exchange(c, s, 1); err != nil {
		return 0, 0, err
	}
	si, serr := tcptest.TCPInfo(s)
	ci, cerr := tcptest.TCPInfo(c)
	if err := errors.Join(serr, cerr); err != nil {
		return 0, 0, err
	}
	return si.Total_retrans, ci.Total_retrans, nil
}
