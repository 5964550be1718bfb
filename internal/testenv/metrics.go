package testenv

import "go.opentelemetry.io/collector/pdata/pmetric"

// RTTMetricName is the name of the receiver's metric.
const RTTMetricName = "tcp.rtt"

// Metrics returns every metric of md, across resources and scopes.
func Metrics(md pmetric.Metrics) []pmetric.Metric {
	var out []pmetric.Metric
	for _, rm := range md.ResourceMetrics().All() {
		for _, sm := range rm.ScopeMetrics().All() {
			for _, m := range sm.Metrics().All() {
				out = append(out, m)
			}
		}
	}
	return out
}

// RTTPoints returns the data points of every tcp.rtt exponential
// histogram of md.
func RTTPoints(md pmetric.Metrics) []pmetric.ExponentialHistogramDataPoint {
	var out []pmetric.ExponentialHistogramDataPoint
	for _, m := range Metrics(md) {
		if m.Name() != RTTMetricName || m.Type() != pmetric.MetricTypeExponentialHistogram {
			continue
		}
		for _, dp := range m.ExponentialHistogram().DataPoints().All() {
			out = append(out, dp)
		}
	}
	return out
}
