//go:build linux

// Package tcptest generates real TCP request/response traffic between
// chosen local addresses for the kernel tests, and reads a socket's own
// TCP_INFO to compare with what the program recorded.
package tcptest

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// MessageSize is the size of each request and response.
const MessageSize = 32

// Conn is one established connection whose server side echoes every
// request back.
type Conn struct {
	Client *net.TCPConn
	Server *net.TCPConn
	buf    [MessageSize]byte
}

// Server accepts connections on one address and echoes every request.
type Server struct {
	ln *net.TCPListener
}

// Listen starts a Server on addr (port 0). It is closed when the test ends.
func Listen(t testing.TB, addr netip.Addr) *Server {
	t.Helper()
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return &Server{ln: ln}
}

// Addr is the server's address and port.
func (s *Server) Addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

// Dial connects to s from client (port 0) and starts the echo side. Both
// ends are closed when the test ends.
func (s *Server) Dial(t testing.TB, client netip.Addr) *Conn {
	t.Helper()
	c := s.dial(t, client)
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) dial(t testing.TB, client netip.Addr) *Conn {
	t.Helper()
	cc, sc, err := Connect(s.ln, client)
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{Client: cc, Server: sc}
	_ = c.Client.SetNoDelay(true)
	_ = c.Server.SetNoDelay(true)
	go Echo(sc, MessageSize)
	return c
}

// Connect dials ln from client (port 0) and accepts the connection,
// returning its client and server ends. It takes no testing.TB, for code
// that runs on a thread of its own (in a network namespace of its own).
func Connect(ln *net.TCPListener, client netip.Addr) (c, s *net.TCPConn, err error) {
	c, err = net.DialTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, 0)), ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s from %s: %w", ln.Addr(), client, err)
	}
	if s, err = ln.AcceptTCP(); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("accept: %w", err)
	}
	return c, s, nil
}

// Visit connects to s from client, makes n round trips and closes the
// connection, keeping nothing alive (for storms of short connections).
func (s *Server) Visit(t testing.TB, client netip.Addr, n int) {
	t.Helper()
	c := s.dial(t, client)
	c.RoundTrips(t, n)
	c.Close()
}

// Dial listens on server (port 0) and connects to it from client.
func Dial(t testing.TB, server, client netip.Addr) *Conn {
	t.Helper()
	return Listen(t, server).Dial(t, client)
}

// Close closes both ends.
func (c *Conn) Close() {
	c.Client.Close()
	c.Server.Close()
}

// RoundTrips sends n requests and waits for each response.
func (c *Conn) RoundTrips(t testing.TB, n int) {
	t.Helper()
	for range n {
		if err := RoundTrip(c.Client, c.buf[:]); err != nil {
			t.Fatal(err)
		}
	}
}

// ClientAddr and ServerAddr are the connection's two ends.
func (c *Conn) ClientAddr() netip.AddrPort { return c.Client.LocalAddr().(*net.TCPAddr).AddrPort() }
func (c *Conn) ServerAddr() netip.AddrPort { return c.Client.RemoteAddr().(*net.TCPAddr).AddrPort() }

// ClientInfo returns the client socket's TCP_INFO.
func (c *Conn) ClientInfo(t testing.TB) *unix.TCPInfo {
	t.Helper()
	return info(t, c.Client)
}

func info(t testing.TB, conn *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	ti, err := TCPInfo(conn)
	if err != nil {
		t.Fatal(err)
	}
	return ti
}

// TCPInfo reads conn's TCP_INFO, without a testing.TB (see Connect).
func TCPInfo(conn *net.TCPConn) (*unix.TCPInfo, error) {
	raw, err := conn.SyscallConn()
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
	if serr != nil {
		return nil, fmt.Errorf("TCP_INFO: %w", serr)
	}
	return ti, nil
}

// Echo answers every size-byte request on c with itself, until c fails
// (the peer closed it, say). It needs no testing.TB, so background
// traffic generators and the benchmark use it too.
func Echo(c io.ReadWriter, size int) {
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// Exchange sends size bytes from c to s and size bytes back, reading each
// whole on the other end, without a testing.TB (see Connect).
func Exchange(c, s *net.TCPConn, size int) error {
	buf := make([]byte, size)
	for _, dir := range [][2]*net.TCPConn{{c, s}, {s, c}} {
		if _, err := dir[0].Write(buf); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if _, err := io.ReadFull(dir[1], buf); err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
	return nil
}

// RoundTrip sends buf on c and reads the answer of the same size into it.
func RoundTrip(c io.ReadWriter, buf []byte) error {
	if _, err := c.Write(buf); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	return nil
}
