package tcprttreceiver

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/zap"

	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
)

// retransLogFields describes the retransmit hook for the start-up log:
// its flavour, and the flavours the kernel refused before it.
func retransLogFields(t *loader.Tracer) []zap.Field {
	if t.RetransMode() == "" {
		return []zap.Field{zap.String("retransmit_hook", "off")}
	}
	fields := []zap.Field{zap.String("retransmit_hook", loader.RetransHook(t.RetransMode()))}
	if refused := loader.DescribeAttempts(t.RetransAttempts()); refused != "" {
		fields = append(fields, zap.String("retransmit_refused", refused))
	}
	return fields
}

// Outcomes of a retransmit program run (the outcome attribute).
var retransOutcomes = []struct {
	name string
	get  func(*kmaps.Stats) uint64
}{
	{"counted", func(s *kmaps.Stats) uint64 { return s.RetransCounted }},
	{"filtered", func(s *kmaps.Stats) uint64 { return s.RetransFiltered }},
	{"errors", func(s *kmaps.Stats) uint64 { return s.RetransErrors }},
	{"missed", func(s *kmaps.Stats) uint64 { return s.RetransMissed }},
}

// retransRunsCallback observes the retransmit program's runs by outcome,
// from the last scrape; nothing while the hook is off.
func (s *rttScraper) retransRunsCallback(_ context.Context, o metric.Int64Observer) error {
	if !s.cfg.Metrics.Retransmits.Enabled {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, out := range retransOutcomes {
		o.Observe(int64(out.get(&s.last.stats)), metric.WithAttributes(attribute.String("outcome", out.name)))
	}
	return nil
}
