//go:build linux

package tcprttreceiver

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

// Start, a collection of real traffic, then Shutdown twice: the second
// returns nil instead of panicking in the scraper controller.
func TestStartShutdownShutdown(t *testing.T) {
	requireKernel(t)
	f := NewFactory()
	cfg := f.CreateDefaultConfig().(*Config)
	cfg.CollectionInterval, cfg.InitialDelay = 100*time.Millisecond, 0
	require.NoError(t, cfg.Validate())
	sink := new(consumertest.MetricsSink)
	r, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, sink)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	c := tcptest.Dial(t, serverV4, clientV4)
	c.RoundTrips(t, 10)
	require.Eventually(t, func() bool { return sink.DataPointCount() > 0 }, 10*time.Second, 10*time.Millisecond,
		"no data point from the started receiver")
	require.NoError(t, r.Shutdown(context.Background()))
	require.NotPanics(t, func() { require.NoError(t, r.Shutdown(context.Background())) })
}
