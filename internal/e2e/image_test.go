//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestImagePodman runs the image of `make image` under podman (runc) as the
// DaemonSets run it, twice at once, as two nodes: node-a with the base
// ConfigMap's config (per peer), node-b with the workloads overlay's (per
// cgroup and peer, the host's cgroup2 hierarchy mounted read-only). Each
// runs as uid 0 with every capability dropped but BPF and PERFMON,
// no_new_privs, a read-only root file system and the host's network (the
// DaemonSet's hostNetwork; it has no hostPID, nor do these). Processes in
// two pod-shaped cgroups make loopback traffic; both collectors export to
// an OTLP endpoint in this process, which keeps the exports and forwards
// them to a real Prometheus loaded with deploy/prometheus/. The test needs
// tcp.rtt points for each pod's peer from node-a and, from node-b, in a
// resource with that pod's container.id and k8s.pod.uid; then it makes
// real loss (testenv's loss addresses) for the retransmit panel, and every
// dashboard panel query and rule expression of deploy/ runs against that
// Prometheus (dashboards_test.go).
//
// The image's default command is replaced by the same --config plus two
// yaml overrides: collection every second (not 10) and self-telemetry
// pushed every second (not 60) to the same endpoint.
func TestImagePodman(t *testing.T) {
	tarball := imageTarball(t)
	testenv.RequireBPF(t)
	// Both nodes count every address, the loss addresses too, from their
	// start: no other test may lose segments there meanwhile.
	lockLossNets(t)
	podman := requireTool(t, "podman")
	requireTool(t, "runc")
	root := repoRoot(t)
	cgroupRoot, err := cgroup.FindMount()
	require.NoError(t, err, "the cgroup v2 hierarchy")

	image := loadImage(t, podman, tarball)
	prom := startPrometheusWith(t, prometheusBinary(t), shippedPrometheusConfig(t, root, "1s"))
	sink := newForwardingSink(t, prom.url+"/api/v1/otlp/v1/metrics")

	configs := map[string]shippedConfig{}
	for _, c := range shippedConfigs(t, root) {
		configs[c.name] = c
	}
	base := configs["deploy/kubernetes/base/configmap.yaml#config.yaml"]
	workloads := configs["deploy/kubernetes/workloads/configmap.yaml#config.yaml"]
	require.NotEmpty(t, base.text, "base ConfigMap config")
	require.NotEmpty(t, workloads.text, "workloads ConfigMap config")

	a := runImage(t, podman, image, "node-a", string(base.text), sink.url, nil)
	// The agents' k8s_attributes needs an API server (TestKubernetesAPIServer
	// runs it against one): here the pipeline goes without it, and the
	// container gets the overlay's extra capability.
	const withK8s, withoutK8s = "processors: [k8s_attributes, resource, batch]", "processors: [resource, batch]"
	require.Contains(t, string(workloads.text), withK8s, "the workloads pipeline")
	b := runImage(t, podman, image, "node-b", strings.Replace(string(workloads.text), withK8s, withoutK8s, 1), sink.url,
		[]string{"--volume", cgroupRoot + ":/host/sys/fs/cgroup:ro", "--cap-add", "DAC_READ_SEARCH"})

	pods := []*podCgroup{newPodCgroup(t, cgroupRoot, "127.0.0.61"), newPodCgroup(t, cgroupRoot, "127.0.0.62")}
	trafficStart := time.Now()
	deadline := time.Now().Add(2 * dataTimeout)
	for {
		for _, p := range pods {
			p.roundTrips(t, 50)
		}
		missing := missingPodPoints(sink, pods)
		if len(missing) == 0 {
			break
		}
		for _, c := range []*collector{a.col, b.col} {
			if err := c.exited(); err != nil {
				t.Fatalf("container exited: %v\n%s", err, c.stderr.String())
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("within %s: %s", 2*dataTimeout, strings.Join(missing, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range pods {
		t.Logf("pod %s (container %s…, cgroup %s): points from node-a (per peer) and node-b (per cgroup) for peer %s",
			p.uid, p.cid[:12], p.rel, p.server)
	}

	// Retransmissions for the dashboard's retransmit panel: one peer's
	// sockets retransmit, its counter having been 0 in Prometheus before.
	retrans := runLossTraffic(t, prom, lossFamilies[:1], 1, lossSize)

	// Some more traffic and scrapes, so that every rate window holds
	// points and the rules have been evaluated on them.
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); {
		for _, p := range pods {
			p.roundTrips(t, 50)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkShippedQueries(t, prom, root)
	checkRetransmitPanel(t, prom, root, retrans)
	writeHeatmap(t, prom, trafficStart, time.Now())
	t.Run("cgroup mount read-only", func(t *testing.T) { checkCgroupMountReadOnly(t, podman, image, cgroupRoot) })

	a.stop(t)
	b.stop(t)
	require.NoError(t, sink.err(), "OTLP endpoint")
	require.NoError(t, sink.forwardErr(), "forwarding to Prometheus")
	prom.stop(t)
}

// loadImage loads the host's platform of the layout tarball into podman's
// store and returns its id; it is removed at cleanup.
func loadImage(t *testing.T, podman, tarball string) string {
	t.Helper()
	out, err := exec.Command(podman, "pull", "-q", "oci-archive:"+tarball).CombinedOutput()
	require.NoError(t, err, "podman pull oci-archive:%s\n%s", tarball, out)
	id := strings.TrimSpace(string(out))
	require.Regexp(t, `^[0-9a-f]{64}$`, id, "podman pull -q output")
	t.Cleanup(func() { _ = exec.Command(podman, "rmi", "-f", id).Run() })
	return id
}

type container struct {
	name   string
	podman string
	col    *collector
}

// runImage runs the image in the foreground (podman's output is the
// collector's) with the DaemonSet's security context and host network.
func runImage(t *testing.T, podman, image, node, config, endpoint string, extra []string) *container {
	t.Helper()
	dir := deployDir(t)
	writeFileIn(t, dir, "config.yaml", []byte(config), 0o644)
	name := fmt.Sprintf("tcprtt-e2e-%s-%d", node, os.Getpid())
	args := []string{"--runtime", "runc", "run", "--rm", "--name", name, "--pull=never",
		// podman's default ulimits exceed this host's hard limits.
		"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
		"--network", "host",
		"--user", "0:0", "--cap-drop", "all", "--cap-add", "BPF,PERFMON",
		"--security-opt", "no-new-privileges", "--read-only",
		"--security-opt", "seccomp=" + bpfSeccompProfile(t),
		"--volume", dir + ":/etc/otelcol-tcprtt:ro",
		"--env", "OTLP_ENDPOINT=" + endpoint, "--env", "K8S_NODE_NAME=" + node,
	}
	args = append(args, extra...)
	args = append(args, image, "--config=/etc/otelcol-tcprtt/config.yaml",
		"--config=yaml:receivers::tcprtt::collection_interval: 1s",
		"--config=yaml:service::telemetry::metrics::readers: [{periodic: {interval: 1000, exporter: {otlp: {protocol: http/protobuf, endpoint: "+endpoint+"/v1/metrics}}}}]")
	t.Logf("podman %s", strings.Join(args, " "))
	c := &container{name: name, podman: podman}
	t.Cleanup(func() { _ = exec.Command(podman, "rm", "-f", "-t", "0", name).Run() })
	c.col = startProcessEnv(t, os.Environ(), podman, args...)
	c.col.waitReady(t, 2*readyTimeout)
	return c
}

func (c *container) stop(t *testing.T) {
	t.Helper()
	c.col.stop(t)
}

// defaultSeccomp is podman's default seccomp profile (containers-common).
const defaultSeccomp = "/usr/share/containers/seccomp.json"

// bpfSeccompProfile writes podman's default seccomp profile with bpf()
// allowed to a holder of CAP_BPF and perf_event_open() to a holder of
// CAP_PERFMON, as containerd's and Docker's current default profiles do
// (the DaemonSet's RuntimeDefault). Debian's podman 4.3 profile allows
// both only with CAP_SYS_ADMIN: with it the collector fails to load its
// program (EPERM from bpf(), which it reports as a memlock problem). This
// is the Localhost profile daemonset.yaml tells such runtimes to use.
func bpfSeccompProfile(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(defaultSeccomp)
	require.NoError(t, err, "podman's default seccomp profile")
	var prof map[string]any
	require.NoError(t, json.Unmarshal(raw, &prof), defaultSeccomp)
	syscalls, ok := prof["syscalls"].([]any)
	require.True(t, ok, "%s: no syscalls list", defaultSeccomp)
	granted := map[string]string{"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
	var out []any
	for _, sc := range syscalls {
		rule := sc.(map[string]any)
		if rule["action"] == "SCMP_ACT_ERRNO" {
			// The denial for processes without CAP_SYS_ADMIN: keep it for
			// the other system calls only.
			var names []any
			for _, n := range rule["names"].([]any) {
				if _, ours := granted[n.(string)]; !ours {
					names = append(names, n)
				}
			}
			if len(names) == 0 {
				continue
			}
			rule["names"] = names
		}
		out = append(out, rule)
	}
	for name, capability := range granted {
		out = append(out, map[string]any{"names": []string{name}, "action": "SCMP_ACT_ALLOW",
			"includes": map[string]any{"caps": []string{capability}}})
	}
	prof["syscalls"] = out
	data, err := json.Marshal(prof)
	require.NoError(t, err)
	return writeFileIn(t, t.TempDir(), "seccomp-bpf.json", data, 0o644)
}

// podCgroup is a kubelet-shaped cgroup (systemd driver, containerd) with
// a server in this process that answers lines; roundTrips runs a client
// in the cgroup (bash's /dev/tcp: the socket is created in the cgroup).
type podCgroup struct {
	uid, cid, rel, dir, server string
	port                       int
}

func newPodCgroup(t *testing.T, root, server string) *podCgroup {
	t.Helper()
	hex := randomHexString(t, 32)
	uid := hex[:8] + "-" + hex[8:12] + "-" + hex[12:16] + "-" + hex[16:20] + "-" + hex[20:]
	cid := randomHexString(t, 64)
	// Under a slice of its own (as kind nests a node's kubepods), so that
	// nothing here meets another test's cgroups.
	top := "tcprtt-e2e-" + randomHexString(t, 8) + ".slice"
	rel := top + "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") +
		".slice/cri-containerd-" + cid + ".scope"
	p := &podCgroup{uid: uid, cid: cid, rel: "/" + rel, dir: filepath.Join(root, rel), server: server}
	require.NoError(t, os.MkdirAll(p.dir, 0o755), "create cgroup %s", p.dir)
	t.Cleanup(func() { // deepest first; the clients have exited
		for d := p.dir; d != root; d = filepath.Dir(d) {
			if err := os.Remove(d); err != nil {
				t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	})
	echo, err := netip.ParseAddrPort(startLineEcho(t, server))
	require.NoError(t, err)
	p.port = int(echo.Port())
	return p
}

// roundTrips runs n line round trips from a bash started in the cgroup
// (clone3 CLONE_INTO_CGROUP, so no instant of it runs elsewhere).
func (p *podCgroup) roundTrips(t *testing.T, n int) {
	t.Helper()
	fd, err := syscall.Open(p.dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer syscall.Close(fd)
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%d || exit 1
for i in $(seq %d); do echo ping >&3; read -r line <&3 || exit 2; done`, p.server, p.port, n)
	cmd := exec.Command("bash", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "client in cgroup %s: %s", p.rel, out)
}

// missingPodPoints says which expected points the sink does not hold yet.
func missingPodPoints(sink *forwardingSink, pods []*podCgroup) []string {
	type key struct{ node, peer, cid, uid string }
	seen := map[key]bool{}
	for _, md := range sink.metrics() {
		for _, rm := range md.ResourceMetrics().All() {
			attrs := rm.Resource().Attributes().AsRaw()
			node, _ := attrs["service.instance.id"].(string)
			cid, _ := attrs["container.id"].(string)
			uid, _ := attrs["k8s.pod.uid"].(string)
			one := pmetric.NewMetrics()
			rm.CopyTo(one.ResourceMetrics().AppendEmpty())
			forEachPoint(one, func(dp pmetric.ExponentialHistogramDataPoint) {
				if v, ok := dp.Attributes().Get(attrPeerAddr); ok && dp.Count() > 0 {
					seen[key{node, v.Str(), cid, uid}] = true
				}
			})
		}
	}
	var missing []string
	for _, p := range pods {
		if !seen[key{"node-a", p.server, "", ""}] {
			missing = append(missing, "node-a: no point for peer "+p.server)
		}
		if !seen[key{"node-b", p.server, p.cid, p.uid}] {
			missing = append(missing, fmt.Sprintf("node-b: no point for peer %s in the resource of container %s…, pod %s", p.server, p.cid[:12], p.uid))
		}
	}
	return missing
}

func randomHexString(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, (n+1)/2)
	f, err := os.Open("/dev/urandom")
	require.NoError(t, err)
	defer f.Close()
	_, err = io.ReadFull(f, b)
	require.NoError(t, err)
	return fmt.Sprintf("%x", b)[:n]
}

// forwardingSink is the OTLP sink of e2e_test.go that also forwards each
// request, unchanged, to Prometheus' OTLP endpoint.
type forwardingSink struct {
	*otlpSink
	url, target string

	mu   sync.Mutex
	errs []string
}

func newForwardingSink(t *testing.T, target string) *forwardingSink {
	t.Helper()
	s := &forwardingSink{otlpSink: &otlpSink{}, target: target}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(s.serve)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	s.url = "http://" + ln.Addr().String()
	return s
}

func (s *forwardingSink) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fwd, _ := http.NewRequest(http.MethodPost, s.target, bytes.NewReader(body))
	for _, h := range []string{"Content-Type", "Content-Encoding"} {
		fwd.Header.Set(h, r.Header.Get(h))
	}
	if resp, err := http.DefaultClient.Do(fwd); err != nil {
		s.addErr(err.Error())
	} else {
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			s.addErr(fmt.Sprintf("%s: %s", resp.Status, msg))
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.serveHTTP(w, r)
}

func (s *forwardingSink) addErr(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, e)
}

func (s *forwardingSink) forwardErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d of the requests: first %s", len(s.errs), s.errs[0])
}
