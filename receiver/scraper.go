package tcprttreceiver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/zap"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/reader"
	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

// rttScraper owns one loaded program: Start loads and attaches it, each
// scrape reads its maps, Shutdown releases it.
type rttScraper struct {
	cfg      *Config
	settings receiver.Settings
	logger   *zap.Logger

	tracer    *loader.Tracer
	converter *convert.Converter
	cgroups   *cgroup.Resolver // with group_by cgroup
	telemetry *metadata.TelemetryBuilder

	// Reused across scrapes (scrapes never overlap).
	snap kmaps.Snapshot
	rows []uint64

	mu   sync.Mutex // guards last, read by telemetry callbacks
	last scrapeTotals
}

// scrapeTotals are the kernel's cumulative counters at the last scrape.
type scrapeTotals struct {
	recorded, overflowed, filtered uint64
	errors, missed                 uint64
	series                         int
	stats                          kmaps.Stats // the retransmit program's counters among them
}

func newRTTScraper(cfg *Config, set receiver.Settings) *rttScraper {
	return &rttScraper{cfg: cfg, settings: set, logger: set.Logger}
}

func (s *rttScraper) start(context.Context, component.Host) (err error) {
	spec, err := s.cfg.loaderSpec()
	if err != nil {
		return fmt.Errorf("tcprtt: invalid config: %w", err)
	}
	s.tracer, err = loader.Open(spec)
	if err != nil {
		return fmt.Errorf("tcprtt: %w", err)
	}
	defer func() {
		if err != nil {
			_ = s.shutdown(context.Background())
		}
	}()
	opts := convert.Options{
		Table:       spec.Table,
		GroupBy:     spec.GroupBy,
		Temporality: convert.Temporality(s.cfg.Temporality),
		Start:       s.tracer.AttachedAt(),
		MaxBuckets:  s.cfg.MaxBuckets,
		NoRTT:       !s.cfg.Metrics.RTT.Enabled,
		Retransmits: s.cfg.Metrics.Retransmits.Enabled,
	}
	fields := []zap.Field{zap.String("attach_mode", string(s.tracer.Mode()))}
	fields = append(fields, retransLogFields(s.tracer)...)
	if spec.GroupBy.Has(kmaps.GroupCgroup) {
		if err := s.startCgroups(); err != nil {
			return err
		}
		opts.Cgroups = s.cgroups
		fields = append(fields, zap.String("cgroup_root", s.cgroups.Root()), zap.Bool("cgroup_by_handle", s.cgroups.ByHandle()))
	}
	s.converter, err = convert.New(opts)
	if err != nil {
		return err
	}
	if refused := loader.DescribeAttempts(s.tracer.Attempts()); refused != "" {
		fields = append(fields, zap.String("refused", refused))
	}
	s.logger.Info("tcprtt program attached", fields...)
	return s.startTelemetry()
}

// startCgroups finds the cgroup v2 mount and starts naming cgroup ids,
// with a warning for each way in which names may be missing: a mount that
// is not the root cgroup, resolution by walk (a new cgroup's first points
// lack its labels), directories a walk cannot read (logged once, counted
// in otelcol_tcprtt_cgroup_walk_errors).
func (s *rttScraper) startCgroups() error {
	m, err := cgroup.LocateMount()
	if err != nil {
		return fmt.Errorf("tcprtt: group_by cgroup: %w", err)
	}
	if m.Fallback != nil {
		s.logger.Warn("tcprtt: cgroups outside the cgroup v2 mount get no path", zap.Error(m.Fallback))
	}
	s.cgroups = cgroup.NewResolver(m.Path)
	s.cgroups.OnProblem = func(err error) {
		s.logger.Warn("tcprtt: some cgroups get no path (counted in otelcol_tcprtt_cgroups_unresolved)", zap.Error(err))
	}
	if err := s.cgroups.HandleErr(); err != nil {
		s.logger.Warn("tcprtt: cannot open cgroups by id (needs CAP_DAC_READ_SEARCH); a background walk of the "+
			"hierarchy names them instead, so a new cgroup's first points lack its path, container.id and k8s.pod.uid",
			zap.Error(err))
	}
	_ = s.cgroups.Start() // a walk error went to OnProblem; the resolver works with what it found
	return nil
}

func (s *rttScraper) startTelemetry() error {
	tb, err := metadata.NewTelemetryBuilder(s.settings.TelemetrySettings)
	if err != nil {
		return fmt.Errorf("tcprtt: self-telemetry: %w", err)
	}
	s.telemetry = tb
	mode := attribute.String("attach_mode", string(s.tracer.Mode()))
	counter := func(get func(scrapeTotals) uint64) metric.Int64Callback {
		return func(_ context.Context, o metric.Int64Observer) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			o.Observe(int64(get(s.last)))
			return nil
		}
	}
	return errors.Join(
		tb.RegisterTcprttAttachModeCallback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(1, metric.WithAttributes(mode))
			return nil
		}),
		tb.RegisterTcprttSamplesRecordedCallback(counter(func(t scrapeTotals) uint64 { return t.recorded })),
		tb.RegisterTcprttSamplesOverflowedCallback(counter(func(t scrapeTotals) uint64 { return t.overflowed })),
		tb.RegisterTcprttSamplesFilteredCallback(counter(func(t scrapeTotals) uint64 { return t.filtered })),
		tb.RegisterTcprttSamplesErrorsCallback(counter(func(t scrapeTotals) uint64 { return t.errors })),
		tb.RegisterTcprttRunsMissedCallback(counter(func(t scrapeTotals) uint64 { return t.missed })),
		tb.RegisterTcprttSeriesCallback(counter(func(t scrapeTotals) uint64 { return uint64(t.series) })),
		s.registerCgroupTelemetry(tb),
		tb.RegisterTcprttRetransmitRunsCallback(s.retransRunsCallback),
	)
}

func (s *rttScraper) registerCgroupTelemetry(tb *metadata.TelemetryBuilder) error {
	if s.cgroups == nil {
		return nil
	}
	r := s.cgroups
	return errors.Join(
		tb.RegisterTcprttCgroupsUnresolvedCallback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(r.Stats().Unresolved))
			return nil
		}),
		tb.RegisterTcprttCgroupWalkErrorsCallback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(r.Stats().WalkErrors))
			return nil
		}),
	)
}

func (s *rttScraper) scrape(ctx context.Context) (pmetric.Metrics, error) {
	begin := time.Now()
	if err := s.tracer.ReadContext(ctx, &s.snap, &s.rows); err != nil {
		var lifecycle *reader.LifecycleError
		if !errors.As(err, &lifecycle) {
			return pmetric.NewMetrics(), fmt.Errorf("tcprtt: %w", err)
		}
		// The snapshot is complete: export it; the step is retried.
		s.settings.Logger.Warn("tcprtt: a step of the series lifecycle failed; it is retried at the next collection", zap.Error(err))
	}
	now := time.Now()
	md := pmetric.NewMetrics()
	s.converter.AppendResources(&s.snap, now, md.ResourceMetrics(), func(scope pcommon.InstrumentationScope) {
		scope.SetName(metadata.ScopeName)
		scope.SetVersion(s.settings.BuildInfo.Version)
	})
	// Nothing to say (no traffic, or none new in delta): no empty
	// resource or scope either. dropEmpty keeps the batch itself from
	// reaching the pipeline.
	md.ResourceMetrics().RemoveIf(func(rm pmetric.ResourceMetrics) bool {
		for _, sm := range rm.ScopeMetrics().All() {
			if sm.Metrics().Len() > 0 {
				return false
			}
		}
		return true
	})

	// Expired series' final counts are in Stats.Expired, so the totals
	// stay monotonic when series come and go.
	totals := scrapeTotals{
		filtered: s.snap.Stats.Filtered, recorded: s.snap.Stats.Expired,
		errors: s.snap.Stats.Errors, missed: s.snap.Stats.Missed, stats: s.snap.Stats,
	}
	for i := range s.snap.Series {
		series := &s.snap.Series[i]
		switch {
		case series.Retired:
		case series.Overflow:
			totals.recorded += series.Total
			totals.overflowed += series.Total
		default:
			totals.recorded += series.Total
			totals.series++
		}
	}
	s.mu.Lock()
	s.last = totals
	s.mu.Unlock()
	s.telemetry.TcprttScrapeDuration.Record(ctx, time.Since(begin).Seconds())
	return md, nil
}

func (s *rttScraper) shutdown(context.Context) error {
	if s.telemetry != nil {
		s.telemetry.Shutdown()
		s.telemetry = nil
	}
	if s.cgroups != nil {
		s.cgroups.Close()
	}
	if s.tracer != nil {
		err := s.tracer.Close()
		s.tracer = nil
		return err
	}
	return nil
}
