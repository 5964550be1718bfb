//go:build linux

package tcprttreceiver

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

// TestQuietIntervalsSendNothing: collections without samples (all traffic
// filtered out here, as in a quiet delta interval) reach the pipeline as
// nothing at all — not as an empty batch or an empty resource and scope.
func TestQuietIntervalsSendNothing(t *testing.T) {
	requireKernel(t)
	for _, temporality := range []string{"cumulative", "delta"} {
		t.Run(temporality, func(t *testing.T) {
			cfg := createDefaultConfig()
			cfg.CollectionInterval = 100 * time.Millisecond // the minimum
			cfg.InitialDelay = 0
			cfg.Temporality = temporality
			cfg.Filter.RemotePorts = []int{1} // nothing on this host talks to port 1
			require.NoError(t, cfg.Validate())
			sink := new(consumertest.MetricsSink)
			r, err := NewFactory().CreateMetrics(context.Background(),
				receivertest.NewNopSettings(metadata.Type), cfg, sink)
			require.NoError(t, err)
			require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
			time.Sleep(10 * cfg.CollectionInterval)
			require.NoError(t, r.Shutdown(context.Background()))
			assert.Empty(t, sink.AllMetrics(), "quiet collections send no batches")

			// The scrape itself has no empty resource either.
			s := startScraper(t, func(c *Config) { *c = *cfg })
			md, err := s.scrape(context.Background())
			require.NoError(t, err)
			assert.Zero(t, md.ResourceMetrics().Len())
		})
	}
}
