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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// heatmapQuery is the dashboard heatmap's query for one node, with a rate
// window short enough for a test run of a minute.
const heatmapQuery = `sum(rate(tcp_rtt_seconds{instance="node-a"}[5s]))`

// writeHeatmap draws the dashboard's RTT heatmap from Prometheus' data of
// the test run into png with gnuplot: the README's picture
// (docs/heatmap.png) is made this way, with TCPRTT_HEATMAP_PNG=path set
// for `make e2e`. Without that variable nothing is drawn (no check
// depends on it).
func writeHeatmap(t *testing.T, prom *prometheus, start, end time.Time) {
	t.Helper()
	png := os.Getenv("TCPRTT_HEATMAP_PNG")
	if png == "" {
		return
	}
	gnuplot := requireTool(t, "gnuplot")
	q := url.Values{"query": {heatmapQuery}, "start": {strconv.FormatInt(start.Unix(), 10)},
		"end": {strconv.FormatInt(end.Unix(), 10)}, "step": {"1"}}
	resp, err := http.Get(prom.url + "/api/v1/query_range?" + q.Encode())
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Histograms [][2]json.RawMessage `json:"histograms"`
			} `json:"result"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(body, &r), "%s", body)
	require.Equal(t, "success", r.Status, "%s", body)
	require.Len(t, r.Data.Result, 1, "%s", heatmapQuery)

	var data strings.Builder
	t0 := -1.0
	for _, pt := range r.Data.Result[0].Histograms {
		ts, err := strconv.ParseFloat(string(pt[0]), 64)
		require.NoError(t, err)
		if t0 < 0 {
			t0 = ts
		}
		h, err := parseHistogram(pt[1])
		require.NoError(t, err)
		buckets, err := h.buckets()
		require.NoError(t, err)
		for _, b := range buckets {
			if b.count > 0 && b.lower > 0 {
				fmt.Fprintf(&data, "%g %g %g %g\n", ts-t0, b.lower, b.upper, b.count)
			}
		}
	}
	dir := t.TempDir()
	dat := writeFileIn(t, dir, "heatmap.dat", []byte(data.String()), 0o644)
	script := fmt.Sprintf(`set terminal pngcairo size 900,420 font "sans,10"
set output %q
set title "tcp_rtt_seconds, node-a: %s (one box per native-histogram bucket and second)" noenhanced
set xlabel "seconds"
set ylabel "RTT"
set logscale y
set format y "%%.0s %%cs"
set logscale cb
set cblabel "samples/s"
set palette defined (0 "#fff5eb", 1 "#fd8d3c", 2 "#7f2704")
unset key
plot %q using 1:(sqrt($2*$3)):($1-0.5):($1+0.5):2:3:4 with boxxyerror fc palette fs solid noborder
`, png, strings.ReplaceAll(heatmapQuery, `"`, `\"`), dat)
	gp := writeFileIn(t, dir, "heatmap.gp", []byte(script), 0o644)
	out, err := exec.Command(gnuplot, gp).CombinedOutput()
	require.NoError(t, err, "gnuplot %s\n%s", gp, out)
	abs, _ := filepath.Abs(png)
	t.Logf("heatmap of %d histograms written to %s", len(r.Data.Result[0].Histograms), abs)
}
