//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"

	tcprttreceiver "github.com/tcprtt/tcprtt/receiver"
)

// TestValidateBadConfigs runs every bad value through the built collector's
// `validate` command and through the receiver's own unmarshal + Validate
// (as the collector does it: confmap Unmarshal into the factory's default
// config, then confmap.Validate). Both must reject it with a message that
// names the key and the bad value. Needs only the binary, not root.

const validateTimeout = 30 * time.Second

// keyValue is a key and its bad value, as they must appear, in this order,
// on one line of the error.
type keyValue struct{ key, value string }

type badConfig struct {
	name     string
	receiver string // YAML of receivers::tcprtt, unindented
	want     []keyValue
	// unmarshal marks errors found when decoding (unknown keys), before
	// Validate runs.
	unmarshal bool
}

var badConfigs = []badConfig{
	{name: "local_ports 0", receiver: "filter:\n  local_ports: [80, 0]",
		want: []keyValue{{"filter.local_ports[1]", "0"}}},
	{name: "local_ports 65536", receiver: "filter:\n  local_ports: [65536]",
		want: []keyValue{{"filter.local_ports[0]", "65536"}}},
	{name: "remote_ports 0", receiver: "filter:\n  remote_ports: [0]",
		want: []keyValue{{"filter.remote_ports[0]", "0"}}},
	{name: "remote_ports 65536", receiver: "filter:\n  remote_ports: [443, 65536]",
		want: []keyValue{{"filter.remote_ports[1]", "65536"}}},
	{name: "malformed IPv4", receiver: "filter:\n  local_addresses: [10.0.0.256]",
		want: []keyValue{{"filter.local_addresses[0]", `"10.0.0.256"`}}},
	{name: "malformed IPv4 three octets", receiver: "filter:\n  remote_addresses: [192.0.2.1, 1.2.3]",
		want: []keyValue{{"filter.remote_addresses[1]", `"1.2.3"`}}},
	{name: "malformed IPv6", receiver: "filter:\n  remote_addresses: [\"2001:db8::g\"]",
		want: []keyValue{{"filter.remote_addresses[0]", `"2001:db8::g"`}}},
	{name: "not an address", receiver: "filter:\n  local_addresses: [localhost]",
		want: []keyValue{{"filter.local_addresses[0]", `"localhost"`}}},
	{name: "CIDR with host bits v4", receiver: "filter:\n  remote_addresses: [10.1.2.3/8]",
		want: []keyValue{{"filter.remote_addresses[0]", `"10.1.2.3/8"`}, {"did you mean", "10.0.0.0/8"}}},
	{name: "CIDR with host bits v6", receiver: "filter:\n  local_addresses: [\"2001:db8::1/32\"]",
		want: []keyValue{{"filter.local_addresses[0]", `"2001:db8::1/32"`}, {"did you mean", "2001:db8::/32"}}},
	{name: "prefix length 33", receiver: "filter:\n  local_addresses: [10.0.0.0/33]",
		want: []keyValue{{"filter.local_addresses[0]", `"10.0.0.0/33"`}}},
	{name: "prefix length 129", receiver: "filter:\n  remote_addresses: [\"2001:db8::/129\"]",
		want: []keyValue{{"filter.remote_addresses[0]", `"2001:db8::/129"`}}},
	{name: "prefix length negative", receiver: "filter:\n  remote_addresses: [10.0.0.0/-1]",
		want: []keyValue{{"filter.remote_addresses[0]", `"10.0.0.0/-1"`}}},
	{name: "prefix length not a number", receiver: "filter:\n  local_addresses: [10.0.0.0/x]",
		want: []keyValue{{"filter.local_addresses[0]", `"10.0.0.0/x"`}}},
	{name: "scale -1", receiver: "scale: -1",
		want: []keyValue{{"scale", "-1"}}},
	{name: "scale 9", receiver: "scale: 9",
		want: []keyValue{{"scale", "9"}}},
	{name: "unknown group_by", receiver: "group_by: [remote_address, peer_address]",
		want: []keyValue{{"group_by[1]", `"peer_address"`}}},
	{name: "duplicated group_by", receiver: "group_by: [local_port, remote_address, local_port]",
		want: []keyValue{{"group_by[2]", `"local_port"`}}},
	{name: "max_buckets 1", receiver: "max_buckets: 1",
		want: []keyValue{{"max_buckets", "1 is out of range 2..8193"}}},
	{name: "max_buckets above the widest point", receiver: "max_buckets: 8194",
		want: []keyValue{{"max_buckets", "8194"}}},
	{name: "max_buckets not an integer", receiver: "max_buckets: 160.5", unmarshal: true,
		want: []keyValue{{"max_buckets", "160.5 is not an integer"}}},
	{name: "unit min", receiver: "unit: min",
		want: []keyValue{{"unit", `"min"`}}},
	{name: "unknown temporality", receiver: "temporality: gauge",
		want: []keyValue{{"temporality", `"gauge"`}}},
	{name: "max_series 0", receiver: "max_series: 0",
		want: []keyValue{{"max_series", "0"}}},
	{name: "max_series above the limit", receiver: "max_series: 1000001",
		want: []keyValue{{"max_series", "1000001"}}},
	{name: "negative idle_timeout", receiver: "idle_timeout: -1s",
		want: []keyValue{{"idle_timeout", "-1s"}}},
	{name: "unknown attach_mode", receiver: "attach_mode: kprobe",
		want: []keyValue{{"attach_mode", `"kprobe"`}}},
	{name: "unknown top-level key", receiver: "scale: 3\nscael: 4", unmarshal: true,
		want: []keyValue{{"invalid keys", "scael"}}},
	{name: "unknown key under filter", receiver: "filter:\n  local_port: [22]", unmarshal: true,
		want: []keyValue{{"filter", "local_port"}}},
	{name: "unknown key next to filter", receiver: "filter: {local_ports: [22]}\nfilters: {remote_ports: [22]}", unmarshal: true,
		want: []keyValue{{"invalid keys", "filters"}}},
	{
		name: "every bad value at once",
		receiver: `filter:
  local_ports: [0]
  remote_ports: [65536]
  local_addresses: [10.0.0.256]
  remote_addresses: [10.1.2.3/8, 10.0.0.0/33]
scale: 9
group_by: [remote_address, remote_address, peer_address]
unit: min
temporality: gauge
max_series: 0
idle_timeout: -1s`,
		want: []keyValue{
			{"filter.local_ports[0]", "0"},
			{"filter.remote_ports[0]", "65536"},
			{"filter.local_addresses[0]", `"10.0.0.256"`},
			{"filter.remote_addresses[0]", `"10.1.2.3/8"`},
			{"filter.remote_addresses[1]", `"10.0.0.0/33"`},
			{"scale", "9"},
			{"group_by[1]", `"remote_address"`},
			{"group_by[2]", `"peer_address"`},
			{"unit", `"min"`},
			{"temporality", `"gauge"`},
			{"max_series", "0"},
			{"idle_timeout", "-1s"},
		},
	},
}

// goodConfig sets every key to a valid, non-default value.
const goodConfig = `collection_interval: 30s
initial_delay: 5s
timeout: 2s
group_by: [local_address, remote_address, local_port, remote_port]
filter:
  local_ports: [1, 22, 65535]
  remote_ports: [5432]
  local_addresses: [10.0.0.0/8, "2001:db8::/32", 127.0.0.1]
  remote_addresses: [192.0.2.1, "::ffff:10.0.0.0/104", "2001:db8::1"]
scale: 8
max_buckets: 2
unit: us
temporality: delta
max_series: 1
idle_timeout: 0s
attach_mode: raw_tp`

func TestValidateBadConfigs(t *testing.T) {
	bin := validateBinary(t)
	for _, tc := range badConfigs {
		t.Run(tc.name, func(t *testing.T) {
			path := writeValidateConfig(t, tc.receiver)

			// The collector's validate command.
			code, out := runValidate(t, bin, path)
			t.Logf("otelcol-tcprtt validate: exit status %d:\n%s", code, indent(out))
			assert.NotEqual(t, 0, code, "validate exit status")
			assert.NotEqual(t, -1, code, "validate killed by a signal")
			assert.NotContains(t, out, "panic", "validate output")
			assert.Contains(t, out, "tcprtt", "validate output must name the receiver")
			for _, kv := range tc.want {
				assert.True(t, hasKeyValue(out, kv), "validate output names %s with %s on one line:\n%s", kv.key, kv.value, out)
			}

			// The receiver itself.
			err := receiverValidate(t, path, tc.unmarshal)
			require.Error(t, err, "receiver accepted %q", tc.receiver)
			t.Logf("receiver: %v", err)
			for _, kv := range tc.want {
				assert.True(t, hasKeyValue(err.Error(), kv), "receiver error names %s with %s on one line:\n%v", kv.key, kv.value, err)
			}
			if !tc.unmarshal {
				// The collector reports Validate's messages unchanged.
				for _, line := range strings.Split(err.Error(), "\n") {
					assert.Contains(t, out, line, "validate output lacks a line of Config.Validate's error")
				}
			}
		})
	}
}

func TestValidateGoodConfig(t *testing.T) {
	bin := validateBinary(t)
	for name, receiver := range map[string]string{"defaults": "", "every key set": goodConfig} {
		t.Run(name, func(t *testing.T) {
			path := writeValidateConfig(t, receiver)
			code, out := runValidate(t, bin, path)
			t.Logf("otelcol-tcprtt validate: exit status %d:\n%s", code, indent(out))
			assert.Equal(t, 0, code, "validate exit status; output:\n%s", out)
			assert.NoError(t, receiverValidate(t, path, false))
		})
	}
}

// validateBinary skips under -short and returns the collector binary
// (TCPRTT_OTELCOL or `make otelcol`, as the end-to-end test).
func validateBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the otelcol-tcprtt binary (slow); skipped with -short")
	}
	return collectorBinary(t)
}

// writeValidateConfig writes a collector config whose tcprtt receiver has
// the YAML receiver ("" for every default) and returns its path.
func writeValidateConfig(t *testing.T, receiver string) string {
	t.Helper()
	body := "    {}" // an explicit empty map: defaults
	if receiver != "" {
		body = "    " + strings.ReplaceAll(receiver, "\n", "\n    ")
	}
	cfg := fmt.Sprintf(`# otelcol-tcprtt validate test config (generated)
receivers:
  tcprtt:
%s

exporters:
  debug:

service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [tcprtt]
      exporters: [debug]
`, body)
	return writeFileIn(t, t.TempDir(), "otelcol-validate.yaml", []byte(cfg), 0o600)
}

// runValidate runs `bin validate --config=path` and returns its exit status
// and combined output.
func runValidate(t *testing.T, bin, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), validateTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "validate", "--config="+path)
	t.Logf("command: %s validate --config=%s", bin, path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %s validate: %v", bin, err)
	}
	require.NoError(t, ctx.Err(), "validate did not finish within %s", validateTimeout)
	return cmd.ProcessState.ExitCode(), string(out)
}

// receiverValidate decodes receivers::tcprtt of the config file into the
// factory's default config, as the collector does, and validates it. An
// unmarshal error is returned only when wantUnmarshalErr says one is
// expected; otherwise it fails the test.
func receiverValidate(t *testing.T, path string, wantUnmarshalErr bool) error {
	t.Helper()
	cm, err := confmaptest.LoadConf(path)
	require.NoError(t, err)
	sub, err := cm.Sub("receivers" + confmap.KeyDelimiter + "tcprtt")
	require.NoError(t, err)
	cfg := tcprttreceiver.NewFactory().CreateDefaultConfig()
	if err := sub.Unmarshal(cfg); err != nil {
		require.True(t, wantUnmarshalErr, "unexpected unmarshal error: %v", err)
		return err
	}
	require.False(t, wantUnmarshalErr, "unmarshal accepted the config")
	return confmap.Validate(cfg)
}

// hasKeyValue reports whether one line of text holds kv.key followed by
// kv.value (as a whole word where it starts or ends with a word character).
func hasKeyValue(text string, kv keyValue) bool {
	pattern := regexp.QuoteMeta(kv.value)
	if isWordByte(kv.value[0]) {
		pattern = `\b` + pattern
	}
	if isWordByte(kv.value[len(kv.value)-1]) {
		pattern += `\b`
	}
	re := regexp.MustCompile(pattern)
	for _, line := range strings.Split(text, "\n") {
		if i := strings.Index(line, kv.key); i >= 0 && re.MatchString(line[i+len(kv.key):]) {
			return true
		}
	}
	return false
}

func isWordByte(b byte) bool {
	return b == '_' || ('0' <= b && b <= '9') || ('a' <= b && b <= 'z') || ('A' <= b && b <= 'Z')
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
