package tcprttreceiver

import (
	"errors"

	"github.com/tcprtt/tcprtt/internal/convert"
)

// MetricsConfig switches each metric of the receiver on or off, as
// collector receivers do (metrics: <name>: enabled:).
type MetricsConfig struct {
	// RTT is tcp.rtt, the exponential histogram of smoothed RTT.
	RTT MetricConfig `mapstructure:"tcp.rtt"`
	// Retransmits is tcp.retransmits, the sum of retransmitted segments.
	Retransmits MetricConfig `mapstructure:"tcp.retransmits"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// MetricConfig is one metric's switch.
type MetricConfig struct {
	Enabled bool `mapstructure:"enabled"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// defaultMetrics enables every metric.
func defaultMetrics() MetricsConfig {
	return MetricsConfig{RTT: MetricConfig{Enabled: true}, Retransmits: MetricConfig{Enabled: true}}
}

// validate refuses a configuration that would export nothing.
func (m MetricsConfig) validate() error {
	if !m.RTT.Enabled && !m.Retransmits.Enabled {
		return errors.New("metrics: both " + convert.MetricName + " and " + convert.RetransMetricName +
			" are disabled; enable at least one (metrics: <name>: enabled: true)")
	}
	return nil
}
