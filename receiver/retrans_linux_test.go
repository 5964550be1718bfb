//go:build linux

package tcprttreceiver

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// retransPoint finds the tcp.retransmits point of the peer address.
func retransPoint(md pmetric.Metrics, peer string) (pmetric.NumberDataPoint, bool) {
	for _, m := range testenv.Metrics(md) {
		if m.Name() != convert.RetransMetricName {
			continue
		}
		dps := m.Sum().DataPoints()
		for i := range dps.Len() {
			if v, ok := dps.At(i).Attributes().Get("network.peer.address"); ok && v.Str() == peer {
				return dps.At(i), true
			}
		}
	}
	return pmetric.NumberDataPoint{}, false
}

// TestRetransmitOnlySeries: a socket whose every data segment is dropped
// receives nothing, so the RTT program never sees it; its series exists
// for its retransmissions alone: a tcp.retransmits point between the
// socket's tcpi_total_retrans before the scrape and after it (TCP_INFO
// reads it under the socket lock, which the retransmission and its event
// hold), and no empty tcp.rtt point.
func TestRetransmitOnlySeries(t *testing.T) {
	requireKernel(t)
	testenv.LockLossNets(t)
	server, client := testenv.LossServer4, testenv.LossClient4
	s := startScraper(t, func(c *Config) {
		c.Filter.RemoteAddresses = []string{server.String()}
	})
	testenv.DropEveryNth(t, 1) // every data segment
	var before, after uint32
	var md pmetric.Metrics
	var runErr error
	// f runs on InLossNetns's own thread: it returns its error rather
	// than fail the test from there.
	testenv.InLossNetns(t, func() { runErr = retransmitUnderTotalLoss(s, server, client, &before, &after, &md) })
	require.NoError(t, runErr)
	require.GreaterOrEqual(t, before, uint32(2), "the client retransmitted under total loss")
	dp, ok := retransPoint(md, server.String())
	require.True(t, ok, "a tcp.retransmits point for %s", server)
	got := dp.IntValue()
	t.Logf("tcpi_total_retrans %d before the scrape, %d after; exported %d", before, after, got)
	assert.Positive(t, got, "exported retransmissions")
	assert.LessOrEqual(t, got, int64(after), "exported retransmissions, never more than TCP_INFO after the scrape")
	assert.GreaterOrEqual(t, got, int64(before), "exported retransmissions, never fewer than TCP_INFO before the scrape")
	_, ok = point(md, map[string]any{"network.peer.address": server.String()})
	assert.False(t, ok, "no tcp.rtt point for a series without RTT samples")
}

// retransmitUnderTotalLoss sends data from client to server that is all
// dropped, waits for two retransmissions, and scrapes s between two reads
// of the client's tcpi_total_retrans.
func retransmitUnderTotalLoss(s *rttScraper, server, client netip.Addr, before, after *uint32, md *pmetric.Metrics) error {
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(server, 0)))
	if err != nil {
		return err
	}
	defer ln.Close()
	c, srv, err := tcptest.Connect(ln, client)
	if err != nil {
		return err
	}
	defer c.Close()
	defer srv.Close()
	if _, err := c.Write(make([]byte, 2000)); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); *before < 2 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ti, err := tcptest.TCPInfo(c)
		if err != nil {
			return err
		}
		*before = ti.Total_retrans
	}
	if *md, err = s.scrape(context.Background()); err != nil {
		return err
	}
	ti, err := tcptest.TCPInfo(c)
	if err != nil {
		return err
	}
	*after = ti.Total_retrans
	return nil
}
