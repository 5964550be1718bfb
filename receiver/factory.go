// Package tcprttreceiver is an OpenTelemetry Collector receiver that
// measures the smoothed round-trip time of established TCP connections
// in the Linux kernel with eBPF and reports it as the exponential
// histogram tcp.rtt.
package tcprttreceiver

import (
	"context"
	"fmt"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/scraper"
	"go.opentelemetry.io/collector/scraper/scraperhelper"

	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

// NewFactory returns the factory of the tcprtt receiver.
func NewFactory() receiver.Factory {
	return receiver.NewFactory(
		metadata.Type,
		func() component.Config { return createDefaultConfig() },
		receiver.WithMetrics(createMetrics, metadata.MetricsStability),
	)
}

func createMetrics(
	_ context.Context,
	set receiver.Settings,
	cfg component.Config,
	next consumer.Metrics,
) (receiver.Metrics, error) {
	c, ok := cfg.(*Config)
	if !ok {
		return nil, fmt.Errorf("tcprtt: config of type %T, want *Config", cfg)
	}
	s := newRTTScraper(c, set)
	sc, err := scraper.NewMetrics(s.scrape, scraper.WithStart(s.start), scraper.WithShutdown(s.shutdown))
	if err != nil {
		return nil, err
	}
	r, err := scraperhelper.NewMetricsController(&c.ControllerConfig, set, dropEmpty(next),
		scraperhelper.AddMetricsScraper(metadata.Type, sc))
	if err != nil {
		return nil, err
	}
	return &shutdownOnce{Metrics: r}, nil
}

// shutdownOnce makes Shutdown idempotent, as the component contract asks:
// the scraper controller closes a channel in its Shutdown and panics
// ("close of closed channel") when called twice.
type shutdownOnce struct {
	receiver.Metrics
	mu   sync.Mutex
	done bool
}

func (s *shutdownOnce) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil
	}
	s.done = true
	return s.Metrics.Shutdown(ctx)
}

// dropEmpty passes on only batches with data: the scraper controller calls
// the next consumer after every collection, and a quiet interval (common
// in delta) would otherwise send an empty request to every exporter.
func dropEmpty(next consumer.Metrics) consumer.Metrics {
	return emptyDropper{next}
}

type emptyDropper struct{ consumer.Metrics }

func (d emptyDropper) ConsumeMetrics(ctx context.Context, md pmetric.Metrics) error {
	if md.ResourceMetrics().Len() == 0 {
		return nil
	}
	return d.Metrics.ConsumeMetrics(ctx, md)
}
