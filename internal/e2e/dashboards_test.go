//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// The dashboards and alerts of deploy/prometheus/ and deploy/grafana/,
// checked two ways: promtool's unit tests (TestPrometheusRulesUnit), and
// every expression run against the real Prometheus that TestImagePodman
// feeds from the image (checkShippedQueries).

const (
	rulesFile       = "deploy/prometheus/tcprtt.rules.yaml"
	promOTLPFile    = "deploy/prometheus/prometheus-otlp.yaml"
	dashboardFile   = "deploy/grafana/tcprtt.json"
	rulesTestsGlob  = "deploy/prometheus/tests/*.yaml"
	queriesDeadline = 45 * time.Second
)

// alertProbes are, per alert, the parts of its expression without the
// threshold: an alert whose condition is false returns nothing, but each
// of these must return data. Each must appear in the alert's expression.
var alertProbes = map[string][]string{
	"TCPRTTRegression": {
		`instance_peer:tcp_rtt_seconds:quantile5m{quantile="0.99"}`,
		`instance_peer:tcp_rtt_seconds:quantile5m_median1d{quantile="0.99"}`,
		`histogram_count(instance_peer:tcp_rtt_seconds:rate5m)`,
	},
	"TCPRTTPeerRetransmitting": {
		`instance_peer:tcp_retransmits:rate5m`,
		`histogram_count(instance_peer:tcp_rtt_seconds:rate5m)`,
	},
	"TCPRTTOverflowSeriesGrowing": {`sum by (job, instance) (rate(otelcol_tcprtt_samples_overflowed_total[10m]))`},
	"TCPRTTSampleErrors":          {`sum by (job, instance) (increase(otelcol_tcprtt_samples_errors_total[10m]))`},
	"TCPRTTRunsMissed": {
		`sum by (job, instance) (rate(otelcol_tcprtt_runs_missed_total[10m]))`,
		`sum by (job, instance) (rate(otelcol_tcprtt_samples_recorded_total[10m]))`,
	},
	// otelcol_exporter_send_failed_metric_points exists only once a point
	// failed: the queue part is the one with data in a healthy run.
	"TCPRTTExportFailing":   {`max by (job, instance) (otelcol_exporter_queue_size / otelcol_exporter_queue_capacity)`},
	"TCPRTTReceiverStalled": {`sum by (job, instance) (rate(otelcol_tcprtt_samples_recorded_total[10m]))`},
	"TCPRTTNodeDataAbsent":  {`count by (job, instance) (last_over_time(tcp_rtt_seconds{job="otelcol-tcprtt"}[5m]))`},
	"TCPRTTAbsent":          {`tcp_rtt_seconds{job="otelcol-tcprtt"}`},
}

// TestPrometheusRulesUnit runs promtool's checks and unit tests of the
// rules (TCPRTT_PROMTOOL, set by make e2e; skipped without it).
func TestPrometheusRulesUnit(t *testing.T) {
	promtool := os.Getenv("TCPRTT_PROMTOOL")
	if promtool == "" {
		t.Skip("TCPRTT_PROMTOOL unset: `make e2e` installs promtool (make promtool) and runs this test")
	}
	root := repoRoot(t)
	tests, err := filepath.Glob(filepath.Join(root, rulesTestsGlob))
	require.NoError(t, err)
	require.NotEmpty(t, tests, "no promtool tests %s", rulesTestsGlob)
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(root, rulesFile)},
		append([]string{"test", "rules"}, tests...),
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		require.NoError(t, err, "promtool %s\n%s", strings.Join(args, " "), out)
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// shippedPrometheusConfig is a prometheus.yml with the otlp section of
// deploy/prometheus/prometheus-otlp.yaml, its rule file (absolute path) and
// the given rule evaluation interval.
func shippedPrometheusConfig(t *testing.T, root, evalInterval string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, promOTLPFile))
	require.NoError(t, err)
	var shipped map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &shipped), promOTLPFile)
	require.Contains(t, shipped, "otlp", promOTLPFile)
	files, ok := shipped["rule_files"].([]any)
	require.True(t, ok && len(files) == 1, "%s: rule_files", promOTLPFile)
	cfg := map[string]any{
		"global":     map[string]any{"evaluation_interval": evalInterval},
		"otlp":       shipped["otlp"],
		"rule_files": []string{filepath.Join(root, "deploy/prometheus", files[0].(string))},
	}
	out, err := yaml.Marshal(cfg)
	require.NoError(t, err)
	return string(out)
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type dashboard struct {
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// grafanaVars are the dashboard's variables as the test sets them: every
// node, and a rate window that holds several 1 s collections.
var grafanaVars = strings.NewReplacer(`$instance`, `.*`, `$__rate_interval`, `1m`)

// checkShippedQueries runs every recording rule's series, every alert's
// expression and its probes, and every dashboard query against Prometheus;
// each must evaluate without error, and all but firing conditions must
// return data. Rules are evaluated by Prometheus itself (rule_files), so
// the recorded series are waited for.
func checkShippedQueries(t *testing.T, prom *prometheus, root string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, rulesFile))
	require.NoError(t, err)
	var rules ruleFile
	require.NoError(t, yaml.Unmarshal(raw, &rules), rulesFile)

	type check struct{ what, query string }
	var mustReturn, mustEvaluate []check
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Record != "":
				mustReturn = append(mustReturn,
					check{"recording rule " + r.Record + " (its expression)", r.Expr},
					check{"recorded series " + r.Record, r.Record})
			case r.Alert != "":
				alerts[r.Alert] = true
				mustEvaluate = append(mustEvaluate, check{"alert " + r.Alert, r.Expr})
				probes := alertProbes[r.Alert]
				require.NotEmpty(t, probes, "alert %s has no probe expression in alertProbes", r.Alert)
				for _, p := range probes {
					require.Contains(t, compact(r.Expr), compact(p), "alert %s: probe is not part of its expression", r.Alert)
					mustReturn = append(mustReturn, check{"alert " + r.Alert + " without its threshold", p})
				}
			}
		}
	}
	for name := range alertProbes {
		assert.True(t, alerts[name], "alertProbes names %s, which %s does not have", name, rulesFile)
	}

	raw, err = os.ReadFile(filepath.Join(root, dashboardFile))
	require.NoError(t, err)
	var dash dashboard
	require.NoError(t, json.Unmarshal(raw, &dash), dashboardFile)
	panels := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			panels++
			mustReturn = append(mustReturn, check{fmt.Sprintf("panel %q", p.Title), grafanaVars.Replace(tg.Expr)})
		}
	}
	require.NotZero(t, panels, "no panel queries in %s", dashboardFile)
	checkLabelValues(t, prom, "instance", promMetric)

	// Recorded series appear after the rules' first evaluations on data.
	deadline := time.Now().Add(queriesDeadline)
	for _, c := range mustReturn {
		for {
			r, err := prom.query(t.Context(), c.query)
			require.NoError(t, err, "%s: %s", c.what, c.query)
			if len(r.Data.Result) > 0 {
				t.Logf("%s: %d series: %s", c.what, len(r.Data.Result), c.query)
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s returns nothing: %s", c.what, c.query)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	for _, c := range mustEvaluate {
		r, err := prom.query(t.Context(), c.query)
		if assert.NoError(t, err, "%s: %s", c.what, c.query) {
			t.Logf("%s: evaluates, %d series firing-condition true", c.what, len(r.Data.Result))
		}
	}
}

// retransmitPanel is the dashboard's panel of tcp_retransmits_total.
const retransmitPanel = "Retransmitted segments per peer"

// checkRetransmitPanel runs the retransmit panel's query: each peer of
// want (segments its sockets retransmitted, from TCP_INFO) has a series,
// positive where want is, 0 elsewhere (the nodes count the same sockets,
// so the rates add up over nodes but stay 0 where nothing was lost).
func checkRetransmitPanel(t *testing.T, prom *prometheus, root string, want map[string]uint64) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, dashboardFile))
	require.NoError(t, err)
	var dash dashboard
	require.NoError(t, json.Unmarshal(raw, &dash), dashboardFile)
	var exprs []string
	for _, p := range dash.Panels {
		if p.Title == retransmitPanel {
			for _, tg := range p.Targets {
				exprs = append(exprs, grafanaVars.Replace(tg.Expr))
			}
		}
	}
	require.Len(t, exprs, 1, "queries of the panel %q in %s", retransmitPanel, dashboardFile)
	got := queryVector(t, prom, exprs[0])
	for _, peer := range sortedKeys(want) {
		r, ok := got[peer]
		if !assert.True(t, ok, "panel %q: no series for %s: %s", retransmitPanel, peer, exprs[0]) {
			continue
		}
		t.Logf("panel %q: %s %g seg/s (its sockets retransmitted %d segments, TCP_INFO)", retransmitPanel, peer, r, want[peer])
		if want[peer] > 0 {
			assert.Positive(t, r, "panel %q for %s", retransmitPanel, peer)
		} else {
			assert.Zero(t, r, "panel %q for %s", retransmitPanel, peer)
		}
	}
}

// checkLabelValues checks a dashboard variable's label_values(metric,
// label) query: the series API must give values.
func checkLabelValues(t *testing.T, prom *prometheus, label, metric string) {
	t.Helper()
	resp, err := http.Get(prom.url + "/api/v1/label/" + label + "/values?" + url.Values{"match[]": {metric}}.Encode())
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string   `json:"status"`
		Data   []string `json:"data"`
	}
	require.NoError(t, json.Unmarshal(body, &r), "%s", body)
	require.Equal(t, "success", r.Status, "%s", body)
	assert.NotEmpty(t, r.Data, "label_values(%s, %s)", metric, label)
	t.Logf("label_values(%s, %s) = %v", metric, label, r.Data)
}

// compact drops white space, so a probe matches however the rule file
// wraps the expression.
func compact(s string) string {
	return strings.Join(strings.Fields(s), "")
}
