//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// testPod is a pod the test creates through the API, with a real cgroup
// on this host named as its runtime would name it.
type testPod struct {
	ns, name, container string
	labels              map[string]any
	owner               map[string]string // k8s.<kind>.name it must get
	shape               func(uid, cid string) string
	uid, cid            string // set when created
	dir                 string // its cgroup
}

// TestKubernetesAPIServer applies deploy/kubernetes/workloads, as kustomize
// renders it, to a real API server (server-side), then runs the agent's
// shipped config with the DaemonSet ServiceAccount's token against it, as
// the kubelet would give it one (KUBERNETES_SERVICE_HOST/PORT and the token
// and CA files under /var/run/secrets/kubernetes.io/serviceaccount, in a
// mount namespace of its own). Pods created through the API (with status
// set as a kubelet would) have real cgroups here, named by their server-
// assigned UIDs and container ids, and processes in them make TCP traffic.
// The exported tcp.rtt of each pod's cgroup must carry its namespace, pod,
// workload and container names; a resource of no pod must carry none; the
// ServiceAccount's requests (audit log) must all have been allowed and
// used every rule of its ClusterRole. Every kustomization must also pass a
// server-side dry run, and the restricted gateway namespace must refuse a
// pod that breaks the restricted level.
func TestKubernetesAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, kube-apiserver and the collector; skipped with -short")
	}
	testenv.RequireBPF(t)
	root := repoRoot(t)
	kustomize := kustomizeBinary(t)
	const agentNS, agentSA, node = "otelcol-tcprtt", "otelcol-tcprtt", "tcprtt-e2e-node"
	api := startKubeAPI(t, "system:serviceaccount:"+agentNS+":"+agentSA)

	// The deployment, as `kubectl apply --server-side -k` sends it:
	// namespaces first (their objects need them).
	_, objs := kustomizeBuild(t, kustomize, filepath.Join(root, "deploy/kubernetes/workloads"))
	slices.SortStableFunc(objs, func(a, b renderedObject) int { return boolInt(b.Kind == "Namespace") - boolInt(a.Kind == "Namespace") })
	for _, o := range objs {
		api.mustApply(t, o.raw)
	}
	t.Logf("applied %d objects of deploy/kubernetes/workloads", len(objs))
	for _, k := range kustomizations(t, root) {
		if k.kind == "Component" {
			continue
		}
		_, objs := kustomizeBuild(t, kustomize, filepath.Join(root, k.rel))
		for _, o := range objs {
			code, body := api.apply(t, o.raw, true)
			assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, code, "server-side dry run of %s (%s): %s", o.id(), k.rel, body)
		}
		t.Logf("server-side dry run (strict field validation): %s, %d objects accepted", k.rel, len(objs))
	}
	checkPodSecurity(t, api, objs)

	// Workloads: a Deployment's pod (through its ReplicaSet) with a
	// containerd/systemd cgroup, a StatefulSet's pod with a cgroupfs one.
	base := "tcprtt-e2e-" + randomToken(t)[:8] // a parent of our own: other tests make kubepods cgroups too
	pods := []*testPod{
		// The Deployment controller's pod-template-hash label, from which
		// (and the ReplicaSet's name) k8sattributes derives the Deployment.
		{ns: "shop", name: "web-5d4f8c6b7-x2kq9", container: "app", labels: map[string]any{"app": "web", "pod-template-hash": "5d4f8c6b7"}, owner: map[string]string{"k8s.deployment.name": "web"},
			shape: func(uid, cid string) string {
				return base + ".slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope"
			}},
		{ns: "data", name: "db-0", container: "postgres", labels: map[string]any{"app": "db"}, owner: map[string]string{"k8s.statefulset.name": "db"},
			shape: func(uid, cid string) string { return base + "/kubepods/besteffort/pod" + uid + "/" + cid }},
	}
	v2 := cgroupV2Root(t)
	ownerRefs := createWorkloads(t, api)
	for _, p := range pods {
		api.mustApply(t, map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": p.ns}})
		// No controller-manager: the ServiceAccount admission needs the
		// namespace's default ServiceAccount to exist.
		api.mustApply(t, map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default", "namespace": p.ns}})
		stored := api.mustApply(t, map[string]any{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": p.name, "namespace": p.ns, "labels": p.labels, "ownerReferences": []any{ownerRefs[p.name]}},
			"spec": map[string]any{"nodeName": node, "automountServiceAccountToken": false,
				"containers": []any{map[string]any{"name": p.container, "image": "registry.example.com/" + p.container + ":1"}}}})
		p.uid, p.cid = uidOf(stored), randomToken(t)+randomToken(t)
		require.NotEmpty(t, p.uid)
		status := fmt.Sprintf(`{"status":{"phase":"Running","podIP":"10.244.0.%d","containerStatuses":[{"name":%q,"ready":true,"restartCount":0,"image":"registry.example.com/%s:1","imageID":"","containerID":"containerd://%s","started":true,"state":{"running":{"startedAt":"2026-01-01T00:00:00Z"}}}]}}`,
			len(p.name), p.container, p.container, p.cid)
		code, body := api.do(t, "PATCH", "/api/v1/namespaces/"+p.ns+"/pods/"+p.name+"/status", "application/merge-patch+json", []byte(status), api.adminToken)
		require.Equal(t, http.StatusOK, code, "pod status: %s", body)
		p.dir = makeTestCgroup(t, v2, p.shape(p.uid, p.cid))
		t.Logf("pod %s/%s uid %s, container %s: cgroup /%s", p.ns, p.name, p.uid, p.cid[:12], strings.TrimPrefix(p.dir, v2+"/"))
	}

	cm := findRendered(t, objs, "ConfigMap", "otelcol-tcprtt")
	token := api.serviceAccountToken(t, agentNS, agentSA)
	runEnrichedAgent(t, []byte(cm.Data["config.yaml"]), agentNS, node, api.url, api.caPEM, token, pods)
	checkAgentRBAC(t, api, objs)
}

// runEnrichedAgent runs the agent's config as the DaemonSet does, against
// the API server at apiURL with a ServiceAccount token of namespace ns, makes
// traffic from every pod's cgroup to a server in the test's own cgroup, and
// checks the k8s metadata of every exported tcp.rtt resource.
func runEnrichedAgent(t *testing.T, config []byte, ns, node, apiURL string, caPEM []byte, token string, pods []*testPod) {
	t.Helper()
	unshare := requireTool(t, "unshare")
	bash := requireTool(t, "bash")
	bin := collectorBinary(t)
	// The agent, as the DaemonSet runs it: the rendered ConfigMap's config,
	// the ServiceAccount's token where the kubelet mounts it, the node's
	// name from the downward API; collection every second.
	dir := deployDir(t)
	cfg := writeFileIn(t, dir, "config.yaml", config, 0o644)
	writeFileIn(t, dir, "token", []byte(token), 0o644)
	writeFileIn(t, dir, "ca.crt", caPEM, 0o644)
	writeFileIn(t, dir, "namespace", []byte(ns), 0o644)
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount"
	sink := newOTLPSink(t)
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(apiURL, "https://"))
	argv := []string{unshare, "--mount", "--propagation", "private", "--", "sh", "-ec",
		`mount -t tmpfs tmpfs /run && mkdir -p ` + sa + ` && cp "$0"/token "$0"/ca.crt "$0"/namespace ` + sa + `/ && shift && exec "$@"`,
		dir, "-", bin, "--config=" + cfg, "--config=yaml:receivers::tcprtt::collection_interval: 1s"}
	col := startProcessEnv(t, []string{"PATH=" + os.Getenv("PATH"), "OTLP_ENDPOINT=" + sink.url, "K8S_NODE_NAME=" + node,
		"KUBERNETES_SERVICE_HOST=" + host, "KUBERNETES_SERVICE_PORT=" + port}, argv[0], argv[1:]...)
	col.waitReady(t, readyTimeout)
	// Traffic: a client in each pod's cgroup, the server in the test's own
	// (no pod's).
	server := startLineEcho(t, "127.0.12.1")
	for _, p := range pods {
		startCgroupClient(t, bash, p.dir, server)
	}
	self, err := cgroup.ProcPath("self")
	require.NoError(t, err)

	want := map[string]map[string]string{} // container.id -> attributes
	for _, p := range pods {
		a := map[string]string{"k8s.namespace.name": p.ns, "k8s.pod.name": p.name, "k8s.pod.uid": p.uid, "k8s.container.name": p.container, "container.id": p.cid}
		for k, v := range p.owner {
			a[k] = v
		}
		want[p.cid] = a
	}
	deadline := time.Now().Add(dataTimeout + 30*time.Second)
	for {
		seen, outside := checkK8sResources(t, sink, want, self)
		if len(seen) == len(pods) && outside > 0 {
			t.Logf("every pod's resource enriched; %d resources of no pod without k8s metadata (the server's cgroup %s among them)", outside, self)
			break
		}
		if err := col.exited(); err != nil {
			t.Fatalf("collector exited: %v", err)
		}
		if time.Now().After(deadline) || t.Failed() {
			t.Fatalf("enriched resources seen for %v of %d pods, %d of no pod; %d exports", seen, len(pods), outside, len(sink.metrics()))
		}
		time.Sleep(500 * time.Millisecond)
	}
	col.stop(t)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// createWorkloads creates the owners of the test's pods (a Deployment and
// its ReplicaSet; a StatefulSet) and returns each pod's ownerReference.
func createWorkloads(t *testing.T, api *kubeAPI) map[string]any {
	t.Helper()
	template := func(app, container string) map[string]any {
		return map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": app}},
			"spec": map[string]any{"containers": []any{map[string]any{"name": container, "image": "registry.example.com/" + container + ":1"}}}}
	}
	selector := func(app string) map[string]any { return map[string]any{"matchLabels": map[string]any{"app": app}} }
	ref := func(kind, name, uid string) map[string]any {
		return map[string]any{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}
	}
	for _, ns := range []string{"shop", "data"} {
		api.mustApply(t, map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}})
	}
	dep := api.mustApply(t, map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "web", "namespace": "shop"},
		"spec": map[string]any{"selector": selector("web"), "template": template("web", "app")}})
	rs := api.mustApply(t, map[string]any{"apiVersion": "apps/v1", "kind": "ReplicaSet",
		"metadata": map[string]any{"name": "web-5d4f8c6b7", "namespace": "shop", "ownerReferences": []any{ref("Deployment", "web", uidOf(dep))}},
		"spec":     map[string]any{"selector": selector("web"), "template": template("web", "app")}})
	sts := api.mustApply(t, map[string]any{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": map[string]any{"name": "db", "namespace": "data"},
		"spec": map[string]any{"serviceName": "db", "selector": selector("db"), "template": template("db", "postgres")}})
	return map[string]any{
		"web-5d4f8c6b7-x2kq9": ref("ReplicaSet", "web-5d4f8c6b7", uidOf(rs)),
		"db-0":                ref("StatefulSet", "db", uidOf(sts)),
	}
}

// checkPodSecurity: the API server's Pod Security admission admits the
// gateway's pod in its restricted namespace and the agent's in its
// privileged one, and refuses the agent's pod in the restricted namespace
// (the labels are enforced, not decorative).
func checkPodSecurity(t *testing.T, api *kubeAPI, objs []renderedObject) {
	t.Helper()
	// A pod of o's template in namespace ns, run by ServiceAccount sa.
	podOf := func(o renderedObject, ns, sa string) map[string]any {
		tmpl := o.raw["spec"].(map[string]any)["template"].(map[string]any)
		spec := map[string]any{}
		for k, v := range tmpl["spec"].(map[string]any) {
			spec[k] = v
		}
		spec["serviceAccountName"] = sa
		return map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "pss-check", "namespace": ns}, "spec": spec}
	}
	agent := findRendered(t, objs, "DaemonSet", "otelcol-tcprtt")
	gw := findRendered(t, objs, "Deployment", "otelcol-tcprtt-gateway")
	agentSA, gwSA := agent.Spec.Template.Spec.ServiceAccountName, gw.Spec.Template.Spec.ServiceAccountName
	code, body := api.apply(t, podOf(gw, gw.Metadata.Namespace, gwSA), true)
	assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, code, "the gateway's pod in %s: %s", gw.Metadata.Namespace, body)
	code, body = api.apply(t, podOf(agent, agent.Metadata.Namespace, agentSA), true)
	assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, code, "the agent's pod in %s: %s", agent.Metadata.Namespace, body)
	// In the gateway's namespace with its ServiceAccount, so that only
	// Pod Security can refuse it.
	code, body = api.apply(t, podOf(agent, gw.Metadata.Namespace, gwSA), true)
	assert.Equal(t, http.StatusForbidden, code, "the agent's pod in the restricted %s must be refused: %s", gw.Metadata.Namespace, body)
	assert.Contains(t, string(body), `violates PodSecurity \"restricted:`, "(the JSON-quoted message)")
	t.Logf("Pod Security admission: gateway pod admitted in %s, agent pod refused there: %.200s", gw.Metadata.Namespace, body)
}

// checkK8sResources checks every tcp.rtt resource received so far: one of
// a test pod's container carries exactly its pod's metadata; any other
// carries no pod metadata (k8s.node.name, the agent's own, aside). It
// returns the container ids of the pods seen enriched and the number of
// resources of no pod (cgroups of no container and no pod).
func checkK8sResources(t *testing.T, sink *otlpSink, want map[string]map[string]string, self string) (map[string]bool, int) {
	t.Helper()
	seen, outside := map[string]bool{}, 0
	for _, md := range sink.metrics() {
		rms := md.ResourceMetrics()
		for i := range rms.Len() {
			rm := rms.At(i)
			if !hasMetric(rm, metricName) {
				continue
			}
			attrs := map[string]string{}
			for k, v := range rm.Resource().Attributes().All() {
				attrs[k] = v.AsString()
			}
			if w, ok := want[attrs["container.id"]]; ok {
				for k, v := range w {
					assert.Equal(t, v, attrs[k], "resource of container %s: %s", attrs["container.id"], k)
				}
				seen[attrs["container.id"]] = true
				continue
			}
			for k := range attrs {
				if strings.HasPrefix(k, "k8s.") && k != "k8s.node.name" && k != "k8s.pod.uid" {
					t.Errorf("resource of no test pod (cgroup %s) has %s=%s", attrs["tcprtt.cgroup.path"], k, attrs[k])
				}
			}
			if attrs["container.id"] == "" && attrs["k8s.pod.uid"] == "" && attrs["tcprtt.cgroup.path"] == self {
				outside++
			}
		}
	}
	return seen, outside
}

// checkAgentRBAC reads the audit log of the agent's ServiceAccount: every
// request was allowed, the resources it asked for are exactly those its
// ClusterRole grants, and it used no verb the role does not grant (the
// role's list may go unused: client-go's informer lists only where the
// server lacks watch with sendInitialEvents).
func checkAgentRBAC(t *testing.T, api *kubeAPI, objs []renderedObject) {
	t.Helper()
	granted := roleGrants(findRendered(t, objs, "ClusterRole", "otelcol-tcprtt"))
	used := map[string][]string{}
	events := api.auditEvents(t)
	require.NotEmpty(t, events, "the agent made no API request")
	for _, e := range events {
		if e.ObjectRef.Resource == "" {
			// A non-resource URL (/version, /api): every authenticated
			// user may read these (the default system:discovery role).
			t.Logf("agent request %s %s: %d", e.Verb, e.RequestURI, e.ResponseStatus.Code)
			continue
		}
		res := e.ObjectRef.APIGroup + "/" + e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			res += "/" + e.ObjectRef.Subresource
		}
		assert.Less(t, e.ResponseStatus.Code, 400, "agent request %s %s refused (%d)", e.Verb, e.RequestURI, e.ResponseStatus.Code)
		used[res] = append(used[res], e.Verb)
	}
	for k, v := range used {
		slices.Sort(v)
		used[k] = slices.Compact(v)
	}
	assert.ElementsMatch(t, mapKeys(granted), mapKeys(used), "resources the ClusterRole grants (want) and the agent asked for (got)")
	for res, verbs := range used {
		for _, v := range verbs {
			assert.Contains(t, granted[res], v, "the agent used %s on %s", v, res)
		}
	}
	t.Logf("agent ServiceAccount: %d requests, by resource and verb %v; granted %v", len(events), used, granted)
}

// cgroupV2Root is the cgroup2 mount of this host (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on hybrid hosts).
func cgroupV2Root(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 2 && fields[2] == "cgroup2" {
			return fields[1]
		}
	}
	t.Fatal("no cgroup2 mount in /proc/self/mounts")
	return ""
}

// makeTestCgroup creates root/rel and its parents, removed deepest first at
// the end of the test (after the processes in them, registered later, end).
func makeTestCgroup(t *testing.T, root, rel string) string {
	t.Helper()
	dir := root
	for _, seg := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, seg)
		if err := os.Mkdir(dir, 0o755); err == nil {
			d := dir
			t.Cleanup(func() {
				var err error
				for range 100 {
					if err = syscall.Rmdir(d); err == nil || os.IsNotExist(err) {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
				t.Errorf("remove cgroup %s: %v", d, err)
			})
		} else if !os.IsExist(err) {
			t.Fatalf("create cgroup %s: %v", dir, err)
		}
	}
	return dir
}

// startLineEcho serves line echo on addr:0 in the test process and returns
// its address.
func startLineEcho(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp4", addr+":0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					if _, err := c.Write(line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// startCgroupClient runs a bash that moves itself into the cgroup dir, then
// opens a TCP connection to server (so the socket is the cgroup's) and
// makes a round trip every 20 ms until killed at the end of the test.
func startCgroupClient(t *testing.T, bash, dir, server string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(server)
	cmd := exec.Command(bash, "-c", `echo $$ > "$0/cgroup.procs" || exit 1
exec 3<>"/dev/tcp/$1/$2" || exit 1
while :; do echo ping >&3; read -r l <&3 || exit 0; sleep 0.02; done`, dir, host, port)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, startFromSpawner(cmd))
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}
