package tcprttreceiver

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/confmap"
)

// TestMetricsSwitches: both metrics are on by default; each is switched
// off as collector receivers do; switching both off is refused; the
// retransmit program is loaded only while its metric is on.
func TestMetricsSwitches(t *testing.T) {
	cfg := createDefaultConfig()
	assert.True(t, cfg.Metrics.RTT.Enabled)
	assert.True(t, cfg.Metrics.Retransmits.Enabled)
	spec, err := cfg.loaderSpec()
	require.NoError(t, err)
	assert.True(t, spec.Retransmits)

	for _, tc := range []struct {
		name                 string
		conf                 map[string]any
		rtt, retransmits, ok bool
	}{
		{"retransmits off", map[string]any{"metrics": map[string]any{"tcp.retransmits": map[string]any{"enabled": false}}}, true, false, true},
		{"rtt off", map[string]any{"metrics": map[string]any{"tcp.rtt": map[string]any{"enabled": false}}}, false, true, true},
		{"both off", map[string]any{"metrics": map[string]any{
			"tcp.rtt": map[string]any{"enabled": false}, "tcp.retransmits": map[string]any{"enabled": false},
		}}, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := createDefaultConfig()
			require.NoError(t, cfg.Unmarshal(confmap.NewFromStringMap(tc.conf)))
			assert.Equal(t, tc.rtt, cfg.Metrics.RTT.Enabled)
			assert.Equal(t, tc.retransmits, cfg.Metrics.Retransmits.Enabled)
			err := cfg.Validate()
			if !tc.ok {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "metrics: both tcp.rtt and tcp.retransmits are disabled")
				return
			}
			require.NoError(t, err)
			spec, err := cfg.loaderSpec()
			require.NoError(t, err)
			assert.Equal(t, tc.retransmits, spec.Retransmits)
		})
	}
}

// TestMetricsUnknownName: a misspelt metric name is an error, not ignored.
func TestMetricsUnknownName(t *testing.T) {
	cfg := createDefaultConfig()
	err := cfg.Unmarshal(confmap.NewFromStringMap(map[string]any{
		"metrics": map[string]any{"tcp.retransmit": map[string]any{"enabled": false}},
	}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "tcp.retransmit")
}
