//go:build linux

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestDeployConfigsRun runs the collector configs of deploy/ with the
// privileges their deployment gives, and checks that tcp.rtt and the
// collector's self-telemetry come out:
//
//   - kubernetes: the ConfigMap's config as uid 0 holding only CAP_BPF and
//     CAP_PERFMON (bounding set, as the container runtime leaves them after
//     drop ALL + add), no_new_privs (allowPrivilegeEscalation: false), with
//     / and /sys read-only (readOnlyRootFilesystem; a container's sysfs).
//   - systemd: deploy/systemd/config.yaml as an unprivileged user (nobody,
//     standing in for DynamicUser) with ambient CAP_BPF and CAP_PERFMON,
//     no_new_privs (the unit's AmbientCapabilities, CapabilityBoundingSet,
//     NoNewPrivileges).
//
// Both export to the in-process sink (OTLP_ENDPOINT) every second instead
// of every 10 (collection_interval overridden through the yaml provider).
func TestDeployConfigsRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the otelcol-tcprtt binary; skipped with -short")
	}
	testenv.RequireBPF(t)
	setpriv := requireTool(t, "setpriv")
	unshare := requireTool(t, "unshare")
	requireTool(t, "mount")
	root := repoRoot(t)
	bin := collectorBinary(t)

	configs := map[string]shippedConfig{}
	for _, c := range shippedConfigs(t, root) {
		configs[c.name] = c
	}
	const k8sName, systemdName = "deploy/kubernetes/base/configmap.yaml#config.yaml", "deploy/systemd/config.yaml"
	caps := "-all,+bpf,+perfmon"

	t.Run("kubernetes", func(t *testing.T) {
		c, ok := configs[k8sName]
		require.True(t, ok, "%s not found", k8sName)
		dir := deployDir(t)
		cfg := writeFileIn(t, dir, "config.yaml", c.text, 0o644)
		sink := newOTLPSink(t)
		argv := []string{unshare, "--mount", "--propagation", "private", "--",
			"sh", "-ec", `mount -o remount,bind,ro / && mount --bind /sys /sys && mount -o remount,bind,ro /sys && exec "$@"`, "sh",
			setpriv, "--bounding-set=" + caps, "--inh-caps=-all", "--no-new-privs", "--",
			bin, "--config=" + cfg, "--config=yaml:receivers::tcprtt::collection_interval: 1s"}
		col := runDeployed(t, argv, map[string]string{"OTLP_ENDPOINT": sink.url, "K8S_NODE_NAME": "test-node"}, sink, "127.0.0.40", "127.0.0.41")
		checkResource(t, sink, map[string]string{
			"service.name": "otelcol-tcprtt", "service.instance.id": "test-node", "host.name": "test-node", "k8s.node.name": "test-node",
		})
		checkProcCredentials(t, col.cmd.Process.Pid, []string{"bpf", "perfmon"}, 0)
		checkReadOnly(t, col.cmd.Process.Pid, "/", "/sys")
		col.stop(t)
		// The periodic reader (every 60 s) pushes self-telemetry at shutdown
		// too. The receiver's asynchronous counters (samples_*) are gone by
		// then (unregistered at its shutdown); its scrape-duration histogram
		// is not, and proves the reader's endpoint.
		names := metricNames(sink)
		t.Logf("metrics received: %v", sortedKeys(names))
		assert.Contains(t, names, "otelcol_tcprtt_scrape_duration", "self-telemetry pushed to ${OTLP_ENDPOINT}/v1/metrics")
		require.NoError(t, sink.err())
	})

	t.Run("systemd", func(t *testing.T) {
		c, ok := configs[systemdName]
		require.True(t, ok, "%s not found", systemdName)
		dir := deployDir(t)
		cfg := writeFileIn(t, dir, "config.yaml", c.text, 0o644)
		raw, err := os.ReadFile(bin)
		require.NoError(t, err)
		exe := writeFileIn(t, dir, "otelcol-tcprtt", raw, 0o755)
		sink := newOTLPSink(t)
		// The config serves self-telemetry on 127.0.0.1:8888; use a free port.
		addr := freeLoopbackAddr(t)
		port := addr[strings.LastIndex(addr, ":")+1:]
		argv := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps=" + caps, "--ambient-caps=" + caps, "--bounding-set=" + caps, "--no-new-privs", "--",
			exe, "--config=" + cfg, "--config=yaml:receivers::tcprtt::collection_interval: 1s",
			"--config=yaml:service::telemetry::metrics::readers: [{pull: {exporter: {prometheus: {host: 127.0.0.1, port: " + port + "}}}}]"}
		// The unit sets HOST_NAME to the host name (%H).
		host, err := os.Hostname()
		require.NoError(t, err)
		col := runDeployed(t, argv, map[string]string{"OTLP_ENDPOINT": sink.url, "HOST_NAME": host}, sink, "127.0.0.42", "127.0.0.43")
		checkResource(t, sink, map[string]string{"service.name": "otelcol-tcprtt", "service.instance.id": host, "host.name": host})
		checkProcCredentials(t, col.cmd.Process.Pid, []string{"bpf", "perfmon"}, 65534)
		resp, err := http.Get("http://" + addr + "/metrics")
		require.NoError(t, err, "self-telemetry endpoint")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Contains(t, string(body), "otelcol_tcprtt_samples_recorded", "self-telemetry on %s", addr)
		col.stop(t)
		require.NoError(t, sink.err())
	})
}

// runDeployed starts argv with only PATH and env in its environment, waits
// until the collector is ready, makes traffic from client to server and
// waits until the sink received a tcp.rtt point with count > 0 for peer
// server (the client socket's point).
func runDeployed(t *testing.T, argv []string, env map[string]string, sink *otlpSink, client, server string) *collector {
	t.Helper()
	environ := []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	t.Logf("command: %s", strings.Join(argv, " "))
	col := startProcessEnv(t, environ, argv[0], argv[1:]...)
	col.waitReady(t, readyTimeout)

	conn := tcptest.Dial(t, netip.MustParseAddr(server), netip.MustParseAddr(client))
	deadline := time.Now().Add(dataTimeout)
	for {
		conn.RoundTrips(t, 50)
		var count uint64
		for _, md := range sink.metrics() {
			forEachPoint(md, func(dp pmetric.ExponentialHistogramDataPoint) {
				if v, ok := dp.Attributes().Get(attrPeerAddr); ok && v.Str() == server {
					count = max(count, dp.Count())
				}
			})
		}
		if count > 0 {
			t.Logf("%s point for %s=%s: count %d", metricName, attrPeerAddr, server, count)
			break
		}
		if err := col.exited(); err != nil {
			t.Fatalf("collector exited: %v\n%s", err, col.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s point for %s=%s within %s; %d exports received", metricName, attrPeerAddr, server, dataTimeout, len(sink.metrics()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn.Close()
	// A shipped config should not make the collector warn (deprecated
	// keys or formats, for example).
	for _, line := range strings.Split(col.stderr.String(), "\n") {
		if f := strings.Split(line, "\t"); len(f) > 1 && f[1] == "warn" {
			t.Errorf("collector warned: %s", line)
		}
	}
	return col
}

// checkProcCredentials checks the uid, capability sets and no_new_privs of
// a running process: exactly caps in effective, permitted and bounding.
func checkProcCredentials(t *testing.T, pid int, caps []string, uid int) {
	t.Helper()
	bits := map[string]uint{"bpf": 39, "perfmon": 38}
	var want uint64
	for _, c := range caps {
		want |= 1 << bits[c]
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	status := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			status[k] = strings.TrimSpace(v)
		}
	}
	assert.Equal(t, strings.Repeat(strconv.Itoa(uid)+"\t", 3)+strconv.Itoa(uid), status["Uid"], "uids")
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
		got, err := strconv.ParseUint(status[set], 16, 64)
		require.NoError(t, err, "%s", set)
		assert.Equal(t, want, got, "%s: %#x, want %#x (%v)", set, got, want, caps)
	}
	assert.Equal(t, "1", status["NoNewPrivs"], "no_new_privs")
	t.Logf("pid %d: Uid %s, CapEff %s, CapBnd %s, CapAmb %s, NoNewPrivs %s",
		pid, status["Uid"], status["CapEff"], status["CapBnd"], status["CapAmb"], status["NoNewPrivs"])
}

// checkReadOnly checks that the given paths are on read-only mounts as the
// process sees them (through its root, in its mount namespace).
func checkReadOnly(t *testing.T, pid int, paths ...string) {
	t.Helper()
	for _, p := range paths {
		var st unix.Statfs_t
		require.NoError(t, unix.Statfs(fmt.Sprintf("/proc/%d/root%s", pid, p), &st), "statfs %s", p)
		assert.NotZero(t, st.Flags&unix.ST_RDONLY, "%s is not read-only for the collector (statfs flags %#x)", p, st.Flags)
	}
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(testenv.RequireBPFEnv) == "1" {
			t.Fatalf("%s (util-linux) not found: %v", name, err)
		}
		t.Skipf("%s (util-linux) not found: %v", name, err)
	}
	return p
}

// deployDir is a directory every user can read, removed at the end.
func deployDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcprtt-deploy-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	return dir
}

func writeFileIn(t *testing.T, dir, name string, data []byte, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, perm))
	require.NoError(t, os.Chmod(p, perm))
	return p
}

// checkResource checks the resource of every export of tcp.rtt the sink
// received: exactly the attributes want, which name the host (resource
// processor of the deploy configs).
func checkResource(t *testing.T, sink *otlpSink, want map[string]string) {
	t.Helper()
	seen := 0
	for _, md := range sink.metrics() {
		rms := md.ResourceMetrics()
		for i := range rms.Len() {
			rm := rms.At(i)
			if !hasMetric(rm, metricName) {
				continue // the self-telemetry's own resource
			}
			seen++
			got := map[string]string{}
			for k, v := range rm.Resource().Attributes().All() {
				got[k] = v.AsString()
			}
			if !assert.Equal(t, want, got, "resource attributes of %s", metricName) {
				return
			}
		}
	}
	require.NotZero(t, seen, "no %s export", metricName)
	t.Logf("%s resource in %d exports: %v", metricName, seen, want)
}

func hasMetric(rm pmetric.ResourceMetrics, name string) bool {
	sms := rm.ScopeMetrics()
	for j := range sms.Len() {
		ms := sms.At(j).Metrics()
		for k := range ms.Len() {
			if ms.At(k).Name() == name {
				return true
			}
		}
	}
	return false
}

func metricNames(sink *otlpSink) map[string]bool {
	names := map[string]bool{}
	for _, md := range sink.metrics() {
		for _, m := range testenv.Metrics(md) {
			names[m.Name()] = true
		}
	}
	return names
}

// TestDeployManifests ties the Kubernetes and systemd manifests to what
// TestDeployConfigsRun reproduces: exactly CAP_BPF and CAP_PERFMON, no
// privilege escalation, a read-only root, and the config and endpoint the
// runs use. Needs no privileges.
func TestDeployManifests(t *testing.T) {
	root := repoRoot(t)

	t.Run("kubernetes", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(root, "deploy/kubernetes/base/daemonset.yaml"))
		require.NoError(t, err)
		var ds struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						HostNetwork bool   `yaml:"hostNetwork"`
						DNSPolicy   string `yaml:"dnsPolicy"`
						Containers  []struct {
							Args []string
							Env  []struct {
								Name      string
								ValueFrom struct {
									ConfigMapKeyRef struct{ Name, Key string } `yaml:"configMapKeyRef"`
									FieldRef        struct {
										FieldPath string `yaml:"fieldPath"`
									} `yaml:"fieldRef"`
								} `yaml:"valueFrom"`
							}
							SecurityContext struct {
								RunAsUser                *int  `yaml:"runAsUser"`
								Privileged               *bool `yaml:"privileged"`
								AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
								ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
								Capabilities             struct{ Add, Drop []string }
							} `yaml:"securityContext"`
							VolumeMounts []struct {
								Name      string
								MountPath string `yaml:"mountPath"`
							} `yaml:"volumeMounts"`
						}
						Volumes []struct {
							Name      string
							ConfigMap struct{ Name string } `yaml:"configMap"`
						}
					}
				}
			}
		}
		require.NoError(t, yaml.Unmarshal(raw, &ds))
		require.Equal(t, "DaemonSet", ds.Kind)
		pod := ds.Spec.Template.Spec
		require.Len(t, pod.Containers, 1)
		c := pod.Containers[0]
		sc := c.SecurityContext
		assert.ElementsMatch(t, []string{"BPF", "PERFMON"}, sc.Capabilities.Add, "capabilities.add")
		assert.Equal(t, []string{"ALL"}, sc.Capabilities.Drop, "capabilities.drop")
		if assert.NotNil(t, sc.Privileged) {
			assert.False(t, *sc.Privileged, "privileged")
		}
		if assert.NotNil(t, sc.AllowPrivilegeEscalation) {
			assert.False(t, *sc.AllowPrivilegeEscalation, "allowPrivilegeEscalation")
		}
		if assert.NotNil(t, sc.ReadOnlyRootFilesystem) {
			assert.True(t, *sc.ReadOnlyRootFilesystem, "readOnlyRootFilesystem")
		}
		if assert.NotNil(t, sc.RunAsUser) {
			assert.Zero(t, *sc.RunAsUser, "runAsUser (no ambient capabilities in Kubernetes)")
		}
		if pod.HostNetwork {
			assert.Equal(t, "ClusterFirstWithHostNet", pod.DNSPolicy, "dnsPolicy with hostNetwork")
		}

		// The config it mounts and the endpoint it passes come from the ConfigMap.
		cms, err := configsInFile("deploy/kubernetes/base/configmap.yaml", filepath.Join(root, "deploy/kubernetes/base/configmap.yaml"))
		require.NoError(t, err)
		require.Len(t, cms, 1)
		var endpointRef, nodeNameField string
		for _, e := range c.Env {
			switch e.Name {
			case "OTLP_ENDPOINT":
				endpointRef = e.ValueFrom.ConfigMapKeyRef.Key
			case "K8S_NODE_NAME":
				nodeNameField = e.ValueFrom.FieldRef.FieldPath
			}
		}
		assert.Contains(t, cms[0].env, endpointRef, "OTLP_ENDPOINT must come from a key of the ConfigMap")
		// The node's name names its data (host.name, service.instance.id).
		assert.Equal(t, "spec.nodeName", nodeNameField, "K8S_NODE_NAME must come from the downward API")
		assert.Contains(t, string(cms[0].text), "${env:K8S_NODE_NAME}", "the ConfigMap's config names the node")
		var mountPath string
		for _, m := range c.VolumeMounts {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.ConfigMap.Name == "otelcol-tcprtt" {
					mountPath = m.MountPath
				}
			}
		}
		require.NotEmpty(t, mountPath, "no mount of the ConfigMap")
		key := cms[0].name[strings.Index(cms[0].name, "#")+1:]
		assert.Contains(t, c.Args, "--config="+mountPath+"/"+key)
	})

	t.Run("systemd", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(root, "deploy/systemd/otelcol-tcprtt.service"))
		require.NoError(t, err)
		unit := map[string]string{}
		var environment []string // every Environment= line
		for _, line := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				unit[k] = v
				if k == "Environment" {
					environment = append(environment, v)
				}
			}
		}
		// The host's name names its data (config.yaml: host.name,
		// service.instance.id from ${env:HOST_NAME}).
		assert.Contains(t, environment, "HOST_NAME=%H", "Environment=")
		cfg, err := os.ReadFile(filepath.Join(root, "deploy/systemd/config.yaml"))
		require.NoError(t, err)
		assert.Contains(t, string(cfg), "${env:HOST_NAME}", "deploy/systemd/config.yaml names the host")
		assert.Equal(t, "CAP_BPF CAP_PERFMON", unit["AmbientCapabilities"])
		assert.Equal(t, "CAP_BPF CAP_PERFMON", unit["CapabilityBoundingSet"])
		assert.Equal(t, "yes", unit["NoNewPrivileges"])
		assert.Equal(t, "yes", unit["DynamicUser"])
		assert.NotEmpty(t, unit["User"])
		assert.NotEqual(t, "root", unit["User"])
		assert.Contains(t, unit["ExecStart"], "--config=/etc/otelcol-tcprtt/config.yaml")
		assert.Contains(t, string(raw), "install -D -m 0644 deploy/systemd/config.yaml /etc/otelcol-tcprtt/config.yaml")
		for _, forbidden := range []string{"PrivateUsers", "PrivateNetwork"} {
			assert.NotEqual(t, "yes", unit[forbidden], "%s=yes breaks tcprtt", forbidden)
		}
	})
}
