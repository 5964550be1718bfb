package tcprttreceiver

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

// Shutdown without Start, repeated: each returns nil and none panics (the
// scraper controller alone panics on the second one).
func TestShutdownWithoutStartTwice(t *testing.T) {
	f := NewFactory()
	r, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type),
		f.CreateDefaultConfig(), consumertest.NewNop())
	require.NoError(t, err)
	for i := range 3 {
		require.NotPanics(t, func() { require.NoError(t, r.Shutdown(context.Background()), "Shutdown %d", i+1) },
			"Shutdown %d", i+1)
	}
}
