//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// The kustomizations under deploy/ as kustomize renders them, which is what
// `kubectl apply -k` sends: every one must build, and what it renders must
// hold together (TestKustomizations). The API server test applies the same
// renders (kube_apiserver_test.go).

// kustomizeVersion is the Makefile's KUSTOMIZE_VERSION (`make kustomize`).
const kustomizeVersion = "v5.7.1"

// kustomizeBinary returns TCPRTT_KUSTOMIZE, or the cache's kustomize of
// `make kustomize`. Missing: a failure under TCPRTT_REQUIRE_BPF=1 (CI), a
// skip otherwise.
func kustomizeBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv("TCPRTT_KUSTOMIZE")
	if p == "" {
		p = filepath.Join(cacheDir(t), "kustomize-"+kustomizeVersion, "kustomize")
	}
	if _, err := os.Stat(p); err != nil {
		msg := "kustomize not found (" + err.Error() + "): run `make kustomize` or set TCPRTT_KUSTOMIZE"
		if os.Getenv(testenv.RequireBPFEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// cacheDir is TCPRTT_CACHE, else $XDG_CACHE_HOME/tcprtt or ~/.cache/tcprtt
// (the Makefile's default).
func cacheDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("TCPRTT_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "tcprtt")
	}
	home, err := os.UserHomeDir()
	require.NoError(t, err)
	return filepath.Join(home, ".cache", "tcprtt")
}

// kustomization is one directory with a kustomization.yaml.
type kustomization struct {
	rel  string // relative to the repository root
	kind string // Kustomization or Component
	// images of a Component (the image name the manifests use).
	Images []struct {
		Name    string
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	}
	Components []string
}

// kustomizations finds every kustomization.yaml under deploy/.
func kustomizations(t *testing.T, root string) []kustomization {
	t.Helper()
	var out []kustomization
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Name() != "kustomization.yaml" {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var k kustomization
		var head struct{ Kind string }
		if err := yaml.Unmarshal(raw, &k); err != nil {
			return err
		}
		if err := yaml.Unmarshal(raw, &head); err != nil {
			return err
		}
		k.kind = head.Kind
		if k.kind == "" {
			k.kind = "Kustomization"
		}
		k.rel, err = filepath.Rel(root, filepath.Dir(p))
		out = append(out, k)
		return err
	})
	require.NoError(t, err)
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out
}

// renderedObject is one object of a kustomize build: its fields as a map
// (for generic checks) and decoded into k8sObject.
type renderedObject struct {
	k8sObject
	raw map[string]any
}

func (o renderedObject) id() string {
	return o.Kind + " " + o.Metadata.Namespace + "/" + o.Metadata.Name
}

// kustomizeBuild runs `kustomize build dir` and decodes what it renders.
func kustomizeBuild(t *testing.T, kustomize, dir string) ([]byte, []renderedObject) {
	t.Helper()
	cmd := exec.Command(kustomize, "build", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "kustomize build %s:\n%s", dir, stderr.String())
	return out, decodeObjects(t, out)
}

func decodeObjects(t *testing.T, text []byte) []renderedObject {
	t.Helper()
	var objs []renderedObject
	dec := yaml.NewDecoder(bytes.NewReader(text))
	for {
		var node yaml.Node
		if err := dec.Decode(&node); errors.Is(err, io.EOF) {
			return objs
		} else {
			require.NoError(t, err)
		}
		var o renderedObject
		require.NoError(t, node.Decode(&o.raw))
		require.NoError(t, node.Decode(&o.k8sObject))
		objs = append(objs, o)
	}
}

// TestKustomizations builds every kustomization under deploy/ with a real
// kustomize and checks what it renders:
//   - every collector config passes `otelcol-tcprtt validate`, names its
//     host and has the outage settings of docs/prometheus.md on every OTLP
//     exporter (as TestConfigsValidate, none exempt);
//   - an agent's config (tcprtt receiver) keeps the base ConfigMap's
//     service.telemetry exactly; any other config pushes its self-telemetry
//     too (explicit readers, not the default :8888 reader);
//   - every namespaced object's namespace is rendered with a Pod Security
//     level, and the pods of a "restricted" namespace comply with it;
//   - every container runs the image the image component names (base/,
//     which is not applied alone, the placeholder);
//   - every hostPath is mounted read-only, recursively;
//   - deploy/kubernetes/workloads: checkWorkloadsManifests.
func TestKustomizations(t *testing.T) {
	root := repoRoot(t)
	kustomize := kustomizeBinary(t)
	bin := validateBinary(t)

	all := kustomizations(t, root)
	var built []string
	image := ""
	named := map[string]bool{} // kustomizations that name the image (use the image component)
	for _, k := range all {
		if k.kind == "Component" {
			for _, im := range k.Images {
				if im.Name == "otelcol-tcprtt" {
					image = im.NewName + ":" + im.NewTag
				}
			}
			continue
		}
		built = append(built, k.rel)
		for _, c := range k.Components {
			if filepath.Base(c) == "image" {
				named[k.rel] = true
			}
		}
	}
	require.NotEmpty(t, image, "no component names the otelcol-tcprtt image (images: name: otelcol-tcprtt)")
	for _, want := range []string{"deploy/kubernetes", "deploy/kubernetes/workloads"} {
		require.Contains(t, built, want, "kustomization not found")
		require.True(t, named[want], "%s does not use the image component", want)
	}

	baseCM, err := configsInFile("deploy/kubernetes/base/configmap.yaml", filepath.Join(root, "deploy/kubernetes/base/configmap.yaml"))
	require.NoError(t, err)
	require.Len(t, baseCM, 1)
	baseTelemetry := telemetryOf(t, baseCM[0].text)
	require.NotEmpty(t, baseTelemetry, "the base ConfigMap's config has no service.telemetry")

	for _, rel := range built {
		t.Run(rel, func(t *testing.T) {
			text, objs := kustomizeBuild(t, kustomize, filepath.Join(root, rel))
			t.Logf("kustomize build %s: %d objects, %d bytes", rel, len(objs), len(text))
			// base/ is built too (it must build), but names no image: only
			// what includes it does.
			want := "otelcol-tcprtt"
			if named[rel] {
				want = image
			}
			checkRendered(t, bin, rel, objs, baseTelemetry, want)
			if rel == "deploy/kubernetes/workloads" {
				checkWorkloadsManifests(t, objs)
			}
		})
	}
}

// telemetryOf returns service.telemetry of a collector config.
func telemetryOf(t *testing.T, text []byte) map[string]any {
	t.Helper()
	var cfg struct {
		Service struct{ Telemetry map[string]any }
	}
	require.NoError(t, yaml.Unmarshal(text, &cfg))
	return cfg.Service.Telemetry
}

func checkRendered(t *testing.T, bin, rel string, objs []renderedObject, baseTelemetry map[string]any, image string) {
	namespaces := map[string]map[string]string{} // name -> labels
	for _, o := range objs {
		if o.Kind == "Namespace" {
			namespaces[o.Metadata.Name] = o.Metadata.Labels
		}
	}
	configs := 0
	for _, o := range objs {
		if o.Metadata.Namespace != "" {
			assert.Contains(t, namespaces, o.Metadata.Namespace, "%s: its namespace is not in the kustomization", o.id())
		}
		switch o.Kind {
		case "Namespace":
			level := o.Metadata.Labels["pod-security.kubernetes.io/enforce"]
			assert.Contains(t, []string{"privileged", "baseline", "restricted"}, level, "%s: pod-security.kubernetes.io/enforce", o.id())
		case "ConfigMap":
			for key, v := range o.Data {
				var m map[string]any
				if yaml.Unmarshal([]byte(v), &m) != nil || !isCollectorConfig(m) {
					continue
				}
				configs++
				c := shippedConfig{name: rel + ": " + o.id() + "#" + key, text: []byte(v), env: map[string]string{}}
				for k, v := range o.Data {
					if k != key {
						c.env[k] = v
					}
				}
				t.Run(o.Metadata.Namespace+"/"+o.Metadata.Name+"#"+key, func(t *testing.T) {
					checkShipped(t, bin, c)
					checkTelemetry(t, c, baseTelemetry)
				})
			}
		case "DaemonSet", "Deployment":
			pod := o.Spec.Template.Spec
			for _, c := range pod.Containers {
				assert.Equal(t, image, c.Image, "%s: container %s runs the image of the image component", o.id(), c.Name)
				for _, m := range c.VolumeMounts {
					for _, v := range pod.Volumes {
						if v.Name == m.Name && v.HostPath.Path != "" {
							assert.True(t, m.ReadOnly, "%s: hostPath %s mounted read-only", o.id(), v.HostPath.Path)
							assert.Equal(t, "Enabled", m.RecursiveReadOnly, "%s: hostPath %s read-only all the way down (recursiveReadOnly)", o.id(), v.HostPath.Path)
						}
					}
				}
			}
			if namespaces[o.Metadata.Namespace]["pod-security.kubernetes.io/enforce"] == "restricted" {
				assert.Empty(t, restrictedViolations(pod), "%s: in a restricted namespace", o.id())
			}
		}
	}
	assert.Positive(t, configs, "no collector config rendered")
}

// checkTelemetry: an agent's config (a tcprtt receiver) keeps the base
// ConfigMap's service.telemetry; every other config at least pushes its
// metrics through explicit readers (without them the collector serves
// them on localhost:8888, the node's port under hostNetwork).
func checkTelemetry(t *testing.T, c shippedConfig, base map[string]any) {
	t.Helper()
	got := telemetryOf(t, c.text)
	var cfg struct{ Receivers map[string]any }
	require.NoError(t, yaml.Unmarshal(c.text, &cfg))
	if slices.ContainsFunc(mapKeys(cfg.Receivers), func(id string) bool { return componentType(id) == "tcprtt" }) {
		assert.Equal(t, base, got, "service.telemetry differs from the base ConfigMap's")
		return
	}
	metrics, _ := got["metrics"].(map[string]any)
	readers, _ := metrics["readers"].([]any)
	assert.NotEmpty(t, readers, "service.telemetry.metrics.readers: none, so the default reader on localhost:8888")
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// restrictedViolations lists what of the "restricted" Pod Security Standard
// a pod spec breaks (its securityContext rules and volume types; the API
// server test has the admission controller judge the same objects).
func restrictedViolations(pod podSpec) []string {
	var v []string
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		v = append(v, "host namespaces")
	}
	for _, vol := range pod.Volumes {
		if vol.HostPath.Path != "" {
			v = append(v, "hostPath volume "+vol.Name)
		}
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		nonRoot := pod.SecurityContext.RunAsNonRoot
		if sc.RunAsNonRoot != nil {
			nonRoot = sc.RunAsNonRoot
		}
		if nonRoot == nil || !*nonRoot {
			v = append(v, c.Name+": runAsNonRoot is not true")
		}
		for _, uid := range []*int{pod.SecurityContext.RunAsUser, sc.RunAsUser} {
			if uid != nil && *uid == 0 {
				v = append(v, c.Name+": runAsUser 0")
			}
		}
		seccomp := pod.SecurityContext.SeccompProfile.Type
		if sc.SeccompProfile.Type != "" {
			seccomp = sc.SeccompProfile.Type
		}
		if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
			v = append(v, c.Name+": seccompProfile "+seccomp)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			v = append(v, c.Name+": allowPrivilegeEscalation is not false")
		}
		if sc.Privileged != nil && *sc.Privileged {
			v = append(v, c.Name+": privileged")
		}
		if !slices.Contains(sc.Capabilities.Drop, "ALL") {
			v = append(v, c.Name+": capabilities.drop lacks ALL")
		}
		for _, a := range sc.Capabilities.Add {
			if a != "NET_BIND_SERVICE" {
				v = append(v, c.Name+": capabilities.add "+a)
			}
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			v = append(v, c.Name+": readOnlyRootFilesystem is not true (not required by restricted, by this project)")
		}
	}
	return v
}

// TestRestrictedViolations: the check must be able to fail.
func TestRestrictedViolations(t *testing.T) {
	yes, no, zero := true, false, 0
	good := podSpec{}
	good.SecurityContext.RunAsNonRoot = &yes
	good.SecurityContext.SeccompProfile.Type = "RuntimeDefault"
	c := containerSpec{Name: "c"}
	c.SecurityContext.AllowPrivilegeEscalation = &no
	c.SecurityContext.ReadOnlyRootFilesystem = &yes
	c.SecurityContext.Capabilities.Drop = []string{"ALL"}
	good.Containers = []containerSpec{c}
	assert.Empty(t, restrictedViolations(good))

	bad := good
	bad.HostNetwork = true
	bc := c
	bc.SecurityContext.RunAsUser = &zero
	bc.SecurityContext.Capabilities.Add = []string{"BPF"}
	bc.SecurityContext.AllowPrivilegeEscalation = nil
	bad.Containers = []containerSpec{bc}
	assert.ElementsMatch(t, []string{"host namespaces", "c: runAsUser 0", "c: allowPrivilegeEscalation is not false", "c: capabilities.add BPF"},
		restrictedViolations(bad))
}
