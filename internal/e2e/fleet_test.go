//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.yaml.in/yaml/v3"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// A fleet end to end (TestGateway, TestBackendOutage, TestRestarts): agents
// (otelcol-tcprtt with the tcprtt receiver, each with its own host identity
// and its own loopback pair) export OTLP/HTTP to a gateway collector running
// the shipped deploy/gateway/config.yaml (otlp receiver → delta_to_cumulative →
// batch → otlp_http), which writes to a real Prometheus. Every agent also
// exports to its own in-process sink, so the test knows each agent's own
// points. The agents' exporter to the gateway takes its retry and queue
// settings from deploy/systemd/config.yaml: the tests run what is shipped.

const (
	fleetInterval = time.Second // collection interval of the agents
	// gatewayConfig and agentExporterConfig are the shipped configs whose
	// settings the fleet runs.
	gatewayConfig       = "deploy/gateway/config.yaml"
	agentExporterConfig = "deploy/systemd/config.yaml"
	// promWindow covers every test's whole run in range queries.
	promWindow = "10m"
)

// agentSpec is one agent: its host name (service.instance.id and host.name,
// so Prometheus' instance label) and the two ends of its own connection.
// server and client must share a /31, which is the agent's filter on both
// the local and the remote address: it counts exactly the two sockets of its
// connection and never another agent's.
type agentSpec struct {
	name           string
	server, client netip.Addr
	temporality    string // "cumulative" (the default) or "delta"
}

func (a agentSpec) prefix() netip.Prefix { return netip.PrefixFrom(a.server, 31).Masked() }

// peers are the network.peer.address values the agent exports.
func (a agentSpec) peers() map[string]string {
	return map[string]string{
		a.server.String(): a.name + ", client side",
		a.client.String(): a.name + ", server side",
	}
}

// agent is a running agent collector and the sink that receives its exports.
type agent struct {
	agentSpec
	sink *otlpSink
	cfg  string
	col  *collector
}

// fleet is Prometheus, the gateway and the agents.
type fleet struct {
	bin     string
	prom    *prometheus
	gateway *collector
	gwAddr  string // host:port of the gateway's OTLP/HTTP receiver
	gwCfg   string
	gwEnv   []string
	agents  []*agent
	rounds  map[string]int // round trips of each agent's traffic, once stopped
}

// startFleet starts Prometheus (no feature flags), the gateway and one agent
// per spec, and waits until each is ready.
func startFleet(t *testing.T, specs ...agentSpec) *fleet {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Prometheus and several otelcol-tcprtt processes; skipped with -short")
	}
	testenv.RequireBPF(t)
	promBin := prometheusBinary(t)
	f := &fleet{bin: collectorBinary(t), rounds: map[string]int{}}
	f.prom = startPrometheus(t, promBin)

	f.gwAddr = freeLoopbackAddr(t)
	f.gwCfg = writeGatewayConfig(t, repoRoot(t), f.gwAddr)
	f.gwEnv = append(os.Environ(), "PROMETHEUS_OTLP_ENDPOINT="+f.prom.url+"/api/v1/otlp")
	f.startGateway(t)

	exporter := shippedExporterSettings(t, filepath.Join(repoRoot(t), agentExporterConfig), "otlp_http")
	for _, s := range specs {
		a := &agent{agentSpec: s, sink: newOTLPSink(t)}
		a.cfg = writeAgentConfig(t, s, "http://"+f.gwAddr, a.sink.url, exporter)
		f.agents = append(f.agents, a)
		f.startAgent(t, a)
	}
	return f
}

func (f *fleet) startGateway(t *testing.T) {
	t.Helper()
	f.gateway = startProcessEnv(t, f.gwEnv, f.bin, "--config="+f.gwCfg)
	f.gateway.waitReady(t, readyTimeout)
}

func (f *fleet) startAgent(t *testing.T, a *agent) {
	t.Helper()
	a.col = startCollector(t, f.bin, a.cfg)
	a.col.waitReady(t, readyTimeout)
}

// stopAgents stops every agent (SIGTERM, clean exit): their queues drain to
// the gateway, and their sinks hold everything they exported.
func (f *fleet) stopAgents(t *testing.T) {
	t.Helper()
	for _, a := range f.agents {
		a.col.stop(t)
		require.NoError(t, a.sink.err(), "OTLP sink of %s", a.name)
	}
}

// writeGatewayConfig writes the shipped gateway config with two changes for
// the test: the OTLP receiver serves HTTP only, on addr, and the collector's
// own telemetry is off (several collectors run on this host).
func writeGatewayConfig(t *testing.T, root, addr string) string {
	t.Helper()
	cfg := loadYAML(t, filepath.Join(root, gatewayConfig))
	receivers := cfg["receivers"].(map[string]any)
	require.Contains(t, receivers, "otlp", "%s has no otlp receiver", gatewayConfig)
	receivers["otlp"] = map[string]any{"protocols": map[string]any{"http": map[string]any{"endpoint": addr}}}
	service := cfg["service"].(map[string]any)
	service["telemetry"] = map[string]any{"metrics": map[string]any{"level": "none"}}
	out, err := yaml.Marshal(cfg)
	require.NoError(t, err)
	return writeFileIn(t, t.TempDir(), "gateway.yaml", out, 0o600)
}

// shippedExporterSettings returns the retry_on_failure and sending_queue
// settings of exporter id in the collector config at path, as YAML indented
// to go under an exporter of a generated config.
func shippedExporterSettings(t *testing.T, path, id string) string {
	t.Helper()
	cfg := loadYAML(t, path)
	exporters, _ := cfg["exporters"].(map[string]any)
	exp, ok := exporters[id].(map[string]any)
	require.True(t, ok, "%s has no exporter %s", path, id)
	settings := map[string]any{}
	for _, k := range []string{"retry_on_failure", "sending_queue"} {
		require.Contains(t, exp, k, "exporter %s of %s", id, path)
		settings[k] = exp[k]
	}
	out, err := yaml.Marshal(settings)
	require.NoError(t, err)
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
	return b.String()
}

func loadYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	text, err := os.ReadFile(path)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, yaml.Unmarshal(text, &m), "%s", path)
	return m
}

// writeAgentConfig writes the config of one agent: its own filter and host
// identity, exporting to the gateway (with the shipped retry and queue
// settings) and to its sink (no queue, no retry: the sink never fails, and
// it receives every collection in order).
func writeAgentConfig(t *testing.T, a agentSpec, gatewayURL, sinkURL, exporterSettings string) string {
	t.Helper()
	temporality := temporalityName(a)
	cfg := fmt.Sprintf(`# fleet end-to-end test: agent %[1]s (generated)
receivers:
  tcprtt:
    collection_interval: %[2]s
    initial_delay: 0s
    temporality: %[3]s
    group_by: [remote_address]
    filter:
      local_addresses: [%[4]s]
      remote_addresses: [%[4]s]

processors:
  resource:
    attributes:
      - key: service.name
        value: %[5]s
        action: upsert
      - key: service.instance.id
        value: %[1]s
        action: upsert
      - key: host.name
        value: %[1]s
        action: upsert

exporters:
  otlp_http/gateway:
    endpoint: %[6]s
%[8]s  otlp_http/sink:
    endpoint: %[7]s
    sending_queue:
      enabled: false
    retry_on_failure:
      enabled: false

service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [tcprtt]
      processors: [resource]
      exporters: [otlp_http/gateway, otlp_http/sink]
`, a.name, fleetInterval, temporality, a.prefix(), promJob, gatewayURL, sinkURL, exporterSettings)
	return writeFileIn(t, t.TempDir(), "agent-"+a.name+".yaml", []byte(cfg), 0o600)
}

// pairTraffic makes request/response round trips on one connection between
// an agent's client and server until finished.
type pairTraffic struct {
	conn   *tcptest.Conn
	stop   chan struct{}
	done   chan struct{}
	rounds int
	err    error
}

func startPairTraffic(t *testing.T, a agentSpec) *pairTraffic {
	t.Helper()
	p := &pairTraffic{conn: tcptest.Dial(t, a.server, a.client), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		buf := make([]byte, tcptest.MessageSize)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			for range 50 {
				if p.err = tcptest.RoundTrip(p.conn.Client, buf); p.err != nil {
					return
				}
				p.rounds++
			}
			time.Sleep(10 * time.Millisecond) // pacing, a few thousand round trips a second
		}
	}()
	t.Cleanup(func() { p.finish() })
	return p
}

// finish stops the traffic, closes the connection and returns the round
// trips made and the first error.
func (p *pairTraffic) finish() (int, error) {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	p.conn.Close()
	return p.rounds, p.err
}

// startFleetTraffic starts one connection per agent; the returned function
// stops them all, requires that they made round trips without error, keeps
// their number in f.rounds and returns when they stopped.
func startFleetTraffic(t *testing.T, f *fleet) func() time.Time {
	t.Helper()
	var ts []*pairTraffic
	for _, a := range f.agents {
		ts = append(ts, startPairTraffic(t, a.agentSpec))
	}
	return func() time.Time {
		for i, p := range ts {
			rounds, err := p.finish()
			require.NoError(t, err, "traffic of %s", f.agents[i].name)
			require.Positive(t, rounds, "round trips of %s", f.agents[i].name)
			t.Logf("traffic of %s: %d round trips", f.agents[i].name, rounds)
			f.rounds[f.agents[i].name] = rounds
		}
		return time.Now()
	}
}

// waitExports waits until every agent's sink received n exports more than
// it had in before (index by agent): n collections went by.
func waitExports(t *testing.T, f *fleet, before []int, n int, why string) {
	t.Helper()
	deadline := time.Now().Add(time.Duration(n)*fleetInterval + settleTimeout)
	for i := 0; i < len(f.agents); {
		a := f.agents[i]
		if len(a.sink.metrics()) >= before[i]+n {
			i++
			continue
		}
		if err := a.col.exited(); err != nil {
			t.Fatalf("agent %s exited: %v", a.name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: agent %s made %d exports, want %d", why, a.name, len(a.sink.metrics())-before[i], n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exportCounts is the number of exports each agent's sink holds.
func (f *fleet) exportCounts() []int {
	n := make([]int, len(f.agents))
	for i, a := range f.agents {
		n[i] = len(a.sink.metrics())
	}
	return n
}

// peerPoints returns, per peer, every tcp.rtt point a sink received, in
// export order.
func peerPoints(t *testing.T, sink *otlpSink) map[string][]pmetric.ExponentialHistogramDataPoint {
	t.Helper()
	out := map[string][]pmetric.ExponentialHistogramDataPoint{}
	for _, md := range sink.metrics() {
		forEachPoint(md, func(dp pmetric.ExponentialHistogramDataPoint) {
			v, ok := dp.Attributes().Get(attrPeerAddr)
			require.True(t, ok, "%s point without %s", metricName, attrPeerAddr)
			out[v.Str()] = append(out[v.Str()], dp)
		})
	}
	return out
}
