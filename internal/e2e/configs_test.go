//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// Collector configs shipped by the repository: README's examples (the
// complete configs among its ```yaml blocks, and the files under
// testdata/examples), the debug config, and the deploy configs
// (deploy/systemd/config.yaml, deploy/gateway/config.yaml and the collector
// configs inside the ConfigMaps under deploy/kubernetes). Every one must pass
// `otelcol-tcprtt validate` (`make validate-configs`), and so must every
// config the kustomizations render (TestKustomizations): none is exempt.

// shippedConfig is one collector config and the environment it expects.
type shippedConfig struct {
	name string // path relative to the repository root, plus "#key" for a ConfigMap entry
	text []byte
	// env holds values the deployment provides (a ConfigMap's other keys).
	env map[string]string
}

// configGlobs are the places collector configs live, relative to the root.
var configGlobs = []string{"testdata/*.yaml", "testdata/examples/*.yaml"}

// configDirs are searched recursively for configs and ConfigMaps.
var configDirs = []string{"deploy"}

// configDocs are Markdown files whose complete collector configs (```yaml
// blocks with receivers and service) are checked too.
var configDocs = []string{"README.md", "docs/prometheus.md"}

func TestConfigsValidate(t *testing.T) {
	root := repoRoot(t)
	bin := collectorBinary(t)
	configs := shippedConfigs(t, root)

	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) { checkShipped(t, bin, c) })
	}

	// validate must be able to fail, or the checks above prove nothing.
	t.Run("negative control", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bad.yaml")
		require.NoError(t, os.WriteFile(path, []byte(`receivers:
  tcprtt:
    scale: 99
exporters:
  debug:
service:
  pipelines:
    metrics:
      receivers: [tcprtt]
      exporters: [debug]
`), 0o600))
		out, err := validateShipped(bin, path, nil)
		require.Error(t, err, "validate accepted scale 99:\n%s", out)
		assert.Contains(t, string(out), "scale")
	})
}

// checkShipped validates c with the collector and checks that it names its
// host and rides out outages.
func checkShipped(t *testing.T, bin string, c shippedConfig) {
	t.Helper()
	path := writeShipped(t, c)
	env := validationEnv(c)
	out, err := validateShipped(bin, path, env)
	require.NoError(t, err, "otelcol-tcprtt validate --config=%s (env %v):\n%s", c.name, env, out)
	t.Logf("valid (env %v)", env)
	checkHostIdentity(t, c)
	checkOutageSettings(t, c)
}

// shippedConfigs finds every collector config of the repository; it fails
// the test if a place that must hold configs holds none.
func shippedConfigs(t *testing.T, root string) []shippedConfig {
	t.Helper()
	var files []string
	for _, g := range configGlobs {
		m, err := filepath.Glob(filepath.Join(root, g))
		require.NoError(t, err)
		require.NotEmpty(t, m, "no collector config matches %s", g)
		files = append(files, m...)
	}
	for _, d := range configDirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !e.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
				files = append(files, p)
			}
			return nil
		})
		require.NoError(t, err)
	}
	sort.Strings(files)

	var configs []shippedConfig
	perDir := map[string]int{}
	for _, f := range files {
		rel, err := filepath.Rel(root, f)
		require.NoError(t, err)
		found, err := configsInFile(rel, f)
		require.NoError(t, err, "%s", rel)
		configs = append(configs, found...)
		perDir[strings.SplitN(rel, string(filepath.Separator), 2)[0]] += len(found)
	}
	for _, d := range configDirs {
		require.NotZero(t, perDir[d], "no collector config found under %s/", d)
	}
	for _, doc := range configDocs {
		text, err := os.ReadFile(filepath.Join(root, doc))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		configs = append(configs, configsInMarkdown(doc, text)...)
	}
	return configs
}

// yamlFence matches a fenced ```yaml block (its text in group 1).
var yamlFence = regexp.MustCompile("(?ms)^```ya?ml[ \\t]*\\n(.*?)^```")

// configsInMarkdown returns the complete collector configs among the
// ```yaml blocks of a Markdown file, named by file and line.
func configsInMarkdown(rel string, text []byte) []shippedConfig {
	var out []shippedConfig
	for _, loc := range yamlFence.FindAllSubmatchIndex(text, -1) {
		block := text[loc[2]:loc[3]]
		var m map[string]any
		if yaml.Unmarshal(block, &m) != nil || !isCollectorConfig(m) {
			continue // a fragment (ocb manifest, one component)
		}
		line := 1 + bytes.Count(text[:loc[0]], []byte("\n"))
		out = append(out, shippedConfig{name: fmt.Sprintf("%s:%d", rel, line), text: block})
	}
	return out
}

// configsInFile returns the collector configs of one YAML file: the file
// itself if it is one, or the entries of every ConfigMap in it that are.
// Other Kubernetes objects and other YAML (kustomization) are skipped.
func configsInFile(rel, path string) ([]shippedConfig, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []shippedConfig
	dec := yaml.NewDecoder(bytes.NewReader(text))
	for doc := 0; ; doc++ {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", doc, err)
		}
		switch {
		case isCollectorConfig(m):
			if doc > 0 {
				return nil, errors.New("a collector config must be the file's only YAML document")
			}
			out = append(out, shippedConfig{name: rel, text: text})
		case m["kind"] == "ConfigMap":
			data, _ := m["data"].(map[string]any)
			env := map[string]string{}
			var entries []shippedConfig
			for key, v := range data {
				s, ok := v.(string)
				if !ok {
					return nil, fmt.Errorf("ConfigMap data %q is not a string", key)
				}
				var cm map[string]any
				if yaml.Unmarshal([]byte(s), &cm) == nil && isCollectorConfig(cm) {
					entries = append(entries, shippedConfig{name: rel + "#" + key, text: []byte(s)})
				} else {
					env[key] = s
				}
			}
			if len(entries) == 0 {
				return nil, errors.New("ConfigMap without a collector config")
			}
			for i := range entries {
				entries[i].env = env
			}
			sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
			out = append(out, entries...)
		}
	}
	return out, nil
}

// hostIdentity are the resource attributes a shipped config that exports
// over OTLP sets, so that several hosts can share a backend: Prometheus
// makes job of service.name and instance of service.instance.id, and keeps
// host.name in target_info.
var hostIdentity = []string{"service.name", "service.instance.id", "host.name"}

// otlpExporterTypes are the exporter types that send to a shared backend.
var otlpExporterTypes = map[string]bool{"otlp": true, "otlp_grpc": true, "otlp_http": true, "otlphttp": true}

// hostIdentityExempt holds the prefixes of config names that need not name
// their host nor ride out outages: README's minimal config, kept bare
// (docs/prometheus.md and testdata/examples have the complete ones).
var hostIdentityExempt = []string{"README.md:"}

func exempt(c shippedConfig) bool {
	return slices.ContainsFunc(hostIdentityExempt, func(p string) bool { return strings.HasPrefix(c.name, p) })
}

// checkHostIdentity checks that every metrics pipeline of c that exports
// over OTLP runs a resource processor setting hostIdentity.
func checkHostIdentity(t *testing.T, c shippedConfig) {
	t.Helper()
	if exempt(c) {
		return
	}
	var cfg struct {
		Processors map[string]struct {
			Attributes []struct {
				Key, Action string
				Value       any
			}
		}
		Service struct {
			Pipelines map[string]struct{ Receivers, Processors, Exporters []string }
		}
	}
	require.NoError(t, yaml.Unmarshal(c.text, &cfg))
	for name, pl := range cfg.Service.Pipelines {
		otlp := slices.ContainsFunc(pl.Exporters, func(id string) bool { return otlpExporterTypes[componentType(id)] })
		// A gateway's pipeline (deploy/gateway: no tcprtt receiver) forwards
		// its agents' resources, which it must leave as they are.
		tcprtt := slices.ContainsFunc(pl.Receivers, func(id string) bool { return componentType(id) == "tcprtt" })
		if componentType(name) != "metrics" || !otlp || !tcprtt {
			continue
		}
		set := map[string]string{}
		for _, id := range pl.Processors {
			if componentType(id) != "resource" {
				continue
			}
			for _, a := range cfg.Processors[id].Attributes {
				if (a.Action == "upsert" || a.Action == "insert") && a.Value != nil && a.Value != "" {
					set[a.Key] = fmt.Sprint(a.Value)
				}
			}
		}
		for _, k := range hostIdentity {
			assert.Contains(t, set, k, "pipeline %s exports over OTLP but no resource processor sets %s: series of several hosts would collide", name, k)
		}
		t.Logf("pipeline %s names its host: %v", name, set)
	}
}

func componentType(id string) string { typ, _, _ := strings.Cut(id, "/"); return typ }

// checkOutageSettings checks that every OTLP exporter of c rides out an
// outage of its endpoint as docs/prometheus.md ("Outages and restarts")
// says and TestBackendOutage and TestRestarts run: retried until delivered
// (max_elapsed_time 0), in order (one consumer: Prometheus refuses samples
// older than the newest of their series), from a queue bounded in data
// points.
func checkOutageSettings(t *testing.T, c shippedConfig) {
	t.Helper()
	if exempt(c) {
		return
	}
	var cfg struct {
		Exporters map[string]struct {
			Retry struct {
				Enabled        bool
				MaxElapsedTime string `yaml:"max_elapsed_time"`
			} `yaml:"retry_on_failure"`
			Queue struct {
				Enabled      bool
				Sizer        string
				QueueSize    int `yaml:"queue_size"`
				NumConsumers int `yaml:"num_consumers"`
			} `yaml:"sending_queue"`
		}
	}
	require.NoError(t, yaml.Unmarshal(c.text, &cfg))
	for id, e := range cfg.Exporters {
		if !otlpExporterTypes[componentType(id)] {
			continue
		}
		assert.True(t, e.Retry.Enabled, "exporter %s: retry_on_failure.enabled", id)
		assert.Equal(t, "0s", e.Retry.MaxElapsedTime, "exporter %s: retry_on_failure.max_elapsed_time (retry until delivered)", id)
		assert.True(t, e.Queue.Enabled, "exporter %s: sending_queue.enabled", id)
		assert.Equal(t, "items", e.Queue.Sizer, "exporter %s: sending_queue.sizer (a bound in data points)", id)
		assert.Positive(t, e.Queue.QueueSize, "exporter %s: sending_queue.queue_size", id)
		assert.Equal(t, 1, e.Queue.NumConsumers, "exporter %s: sending_queue.num_consumers (in order)", id)
		t.Logf("exporter %s: retried until delivered, in order, up to %d points queued", id, e.Queue.QueueSize)
	}
}

func isCollectorConfig(m map[string]any) bool {
	_, service := m["service"]
	_, receivers := m["receivers"]
	return service && receivers
}

func writeShipped(t *testing.T, c shippedConfig) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, c.text, 0o644))
	return path
}

// envRef matches ${env:NAME}, ${env:NAME:-default} and ${NAME}.
var envRef = regexp.MustCompile(`\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// validationEnv gives every environment variable c references a value: the
// deployment's own (a ConfigMap key) if it has one, else a dummy of the
// right shape. References with a default are left unset to check the default.
func validationEnv(c shippedConfig) map[string]string {
	env := map[string]string{}
	for _, m := range envRef.FindAllSubmatch(c.text, -1) {
		name := string(m[1])
		if len(m[2]) > 0 {
			continue
		}
		if v, ok := c.env[name]; ok {
			env[name] = v
			continue
		}
		switch {
		case strings.Contains(name, "GRPC") && strings.Contains(name, "ENDPOINT"):
			env[name] = "collector.invalid:4317"
		case strings.Contains(name, "ENDPOINT"):
			env[name] = "http://collector.invalid:4318"
		default:
			env[name] = "dummy"
		}
	}
	return env
}

// validateShipped runs `otelcol-tcprtt validate` with only PATH, HOME and env.
func validateShipped(bin, config string, env map[string]string) ([]byte, error) {
	cmd := exec.Command(bin, "validate", "--config="+config)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd.CombinedOutput()
}
