package tcprttreceiver

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/receiver/internal/metadata"
)

// loadConfig unmarshals the entry name ("" for the bare type) of the
// testdata file into a default config.
func loadConfig(t *testing.T, file, name string) (*Config, error) {
	t.Helper()
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", file))
	require.NoError(t, err)
	sub, err := cm.Sub(component.NewIDWithName(metadata.Type, name).String())
	require.NoError(t, err)
	cfg := NewFactory().CreateDefaultConfig()
	err = sub.Unmarshal(cfg)
	return cfg.(*Config), err
}

func TestDefaultConfig(t *testing.T) {
	cfg, ok := NewFactory().CreateDefaultConfig().(*Config)
	require.True(t, ok)

	assert.Equal(t, 10*time.Second, cfg.CollectionInterval)
	assert.Equal(t, time.Second, cfg.InitialDelay)
	assert.Equal(t, time.Duration(0), cfg.Timeout)
	assert.Equal(t, []string{"remote_address"}, cfg.GroupBy)
	assert.Equal(t, 3, cfg.Scale)
	assert.Equal(t, 160, cfg.MaxBuckets)
	assert.Equal(t, "s", cfg.Unit)
	assert.Equal(t, "cumulative", cfg.Temporality)
	assert.Equal(t, 1000, cfg.MaxSeries)
	assert.Equal(t, 5*time.Minute, cfg.IdleTimeout)
	assert.Equal(t, "auto", cfg.AttachMode)
	assert.Empty(t, cfg.Filter.LocalPorts)
	assert.Empty(t, cfg.Filter.RemotePorts)
	assert.Empty(t, cfg.Filter.LocalAddresses)
	assert.Empty(t, cfg.Filter.RemoteAddresses)
	require.NoError(t, cfg.Validate())

	// Two default configs do not share their group_by slice.
	other := createDefaultConfig()
	other.GroupBy[0] = "local_port"
	assert.Equal(t, []string{"remote_address"}, cfg.GroupBy)
}

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name string
		want func() *Config
	}{
		{
			name: "",
			want: createDefaultConfig,
		},
		{
			name: "custom",
			want: func() *Config {
				c := createDefaultConfig()
				c.CollectionInterval = 30 * time.Second
				c.InitialDelay = 5 * time.Second
				c.Timeout = 2 * time.Second
				c.GroupBy = []string{"local_address", "remote_address", "local_port", "remote_port"}
				c.Filter.LocalPorts = []int{22, 443}
				c.Filter.RemotePorts = []int{5432}
				c.Filter.LocalAddresses = []string{"10.0.0.0/8", "2001:db8::/32"}
				c.Filter.RemoteAddresses = []string{"192.0.2.1", "::ffff:10.0.0.0/104", "2001:db8::1"}
				c.Scale = 5
				c.Unit = "ms"
				c.Temporality = "delta"
				c.MaxSeries = 5000
				c.MaxBuckets = 320
				c.IdleTimeout = 90 * time.Second
				c.AttachMode = "tp_btf"
				return c
			},
		},
		{
			name: "host",
			want: func() *Config {
				c := createDefaultConfig()
				c.GroupBy = []string{}
				return c
			},
		},
	}
	for _, tt := range tests {
		t.Run(component.NewIDWithName(metadata.Type, tt.name).String(), func(t *testing.T) {
			cfg, err := loadConfig(t, "config.yaml", tt.name)
			require.NoError(t, err)
			assert.Equal(t, tt.want(), cfg)
			assert.NoError(t, cfg.Validate())
		})
	}
}

// An explicit `group_by: []` must give one histogram for the whole host,
// not the default grouping by remote address.
func TestLoadConfigEmptyGroupBy(t *testing.T) {
	cfg, err := loadConfig(t, "config.yaml", "host")
	require.NoError(t, err)
	assert.NotNil(t, cfg.GroupBy)
	assert.Empty(t, cfg.GroupBy, "explicit empty group_by kept the default")

	spec, err := cfg.loaderSpec()
	require.NoError(t, err)
	assert.Equal(t, kmaps.GroupBy(0), spec.GroupBy)
}

// `group_by:` with no value (YAML null) is only documented here: confmap
// leaves the default in place, like an absent key.
func TestLoadConfigNullGroupBy(t *testing.T) {
	cfg, err := loadConfig(t, "config.yaml", "null_group_by")
	require.NoError(t, err)
	t.Logf("group_by: (null) -> %#v", cfg.GroupBy)
	require.NoError(t, cfg.Validate())
}

func TestLoadConfigUnknownKeys(t *testing.T) {
	tests := []struct {
		name    string
		wantKey string
	}{
		{name: "top_level_typo", wantKey: "scael"},
		{name: "filter_typo", wantKey: "local_port"},
		{name: "singular_filter", wantKey: "filters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(t, "config_unknown_keys.yaml", tt.name)
			require.Error(t, err)
			t.Log(err)
			assert.Contains(t, err.Error(), tt.wantKey)
			assert.Contains(t, err.Error(), "invalid keys")
		})
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		// want are substrings of the error: the key and the value.
		want []string
	}{
		{"local port 0", func(c *Config) { c.Filter.LocalPorts = []int{22, 0} },
			[]string{"filter.local_ports[1]", "port 0 ", "1..65535"}},
		{"local port 65536", func(c *Config) { c.Filter.LocalPorts = []int{65536} },
			[]string{"filter.local_ports[0]", "port 65536 "}},
		{"local port -1", func(c *Config) { c.Filter.LocalPorts = []int{-1} },
			[]string{"filter.local_ports[0]", "port -1 "}},
		{"remote port 0", func(c *Config) { c.Filter.RemotePorts = []int{0} },
			[]string{"filter.remote_ports[0]", "port 0 "}},
		{"remote port 65536", func(c *Config) { c.Filter.RemotePorts = []int{443, 65536} },
			[]string{"filter.remote_ports[1]", "port 65536 "}},
		{"malformed local IP", func(c *Config) { c.Filter.LocalAddresses = []string{"10.0.0.300"} },
			[]string{"filter.local_addresses[0]", `"10.0.0.300"`, "not a valid IP"}},
		{"malformed remote IP", func(c *Config) { c.Filter.RemoteAddresses = []string{"::1", "example.com"} },
			[]string{"filter.remote_addresses[1]", `"example.com"`, "not a valid IP"}},
		{"empty address", func(c *Config) { c.Filter.RemoteAddresses = []string{""} },
			[]string{"filter.remote_addresses[0]", `""`}},
		{"malformed CIDR", func(c *Config) { c.Filter.LocalAddresses = []string{"10.0.0.0/x"} },
			[]string{"filter.local_addresses[0]", `"10.0.0.0/x"`, "not a valid CIDR"}},
		{"v4 host bits", func(c *Config) { c.Filter.LocalAddresses = []string{"10.1.2.3/8"} },
			[]string{"filter.local_addresses[0]", `"10.1.2.3/8"`, "host bits", "did you mean 10.0.0.0/8?"}},
		{"v6 host bits", func(c *Config) { c.Filter.RemoteAddresses = []string{"2001:db8::1/32"} },
			[]string{"filter.remote_addresses[0]", `"2001:db8::1/32"`, "host bits", "did you mean 2001:db8::/32?"}},
		{"v4-mapped host bits", func(c *Config) { c.Filter.RemoteAddresses = []string{"::ffff:10.1.0.0/104"} },
			[]string{"filter.remote_addresses[0]", `"::ffff:10.1.0.0/104"`, "did you mean ::ffff:10.0.0.0/104?"}},
		{"v4 prefix length 33", func(c *Config) { c.Filter.LocalAddresses = []string{"10.0.0.0/33"} },
			[]string{"filter.local_addresses[0]", `"10.0.0.0/33"`, "not a valid CIDR"}},
		{"v6 prefix length 129", func(c *Config) { c.Filter.RemoteAddresses = []string{"::/129"} },
			[]string{"filter.remote_addresses[0]", `"::/129"`, "not a valid CIDR"}},
		{"negative prefix length", func(c *Config) { c.Filter.RemoteAddresses = []string{"10.0.0.0/-1"} },
			[]string{"filter.remote_addresses[0]", `"10.0.0.0/-1"`}},
		{"v6 zone", func(c *Config) { c.Filter.LocalAddresses = []string{"fe80::1%eth0"} },
			[]string{"filter.local_addresses[0]", `"fe80::1%eth0"`, "zone"}},
		{"v6 zone in CIDR", func(c *Config) { c.Filter.RemoteAddresses = []string{"fe80::%eth0/64"} },
			[]string{"filter.remote_addresses[0]", `"fe80::%eth0/64"`}},
		{"scale -1", func(c *Config) { c.Scale = -1 },
			[]string{"scale", "-1", "0..8"}},
		{"scale 9", func(c *Config) { c.Scale = 9 },
			[]string{"scale", "9", "0..8"}},
		{"unknown group_by", func(c *Config) { c.GroupBy = []string{"remote_address", "remote_addr"} },
			[]string{"group_by[1]", `"remote_addr"`, "not one of"}},
		{"empty group_by entry", func(c *Config) { c.GroupBy = []string{""} },
			[]string{"group_by[0]", `""`, "not one of"}},
		{"duplicated group_by", func(c *Config) { c.GroupBy = []string{"remote_address", "local_port", "remote_address"} },
			[]string{"group_by[2]", `"remote_address"`, "twice"}},
		{"max_buckets 1", func(c *Config) { c.MaxBuckets = 1 },
			[]string{"max_buckets", "1 is out of range 2..8193"}},
		{"max_buckets 0", func(c *Config) { c.MaxBuckets = 0 },
			[]string{"max_buckets", "0 is out of range 2..8193"}},
		{"max_buckets -160", func(c *Config) { c.MaxBuckets = -160 },
			[]string{"max_buckets", "-160 is out of range"}},
		{"max_buckets 8194", func(c *Config) { c.MaxBuckets = 8194 },
			[]string{"max_buckets", "8194 is out of range", "8193 or more never downscales"}},
		{"unit min", func(c *Config) { c.Unit = "min" },
			[]string{"unit", `"min"`}},
		{"unit empty", func(c *Config) { c.Unit = "" },
			[]string{"unit", `""`}},
		{"unknown temporality", func(c *Config) { c.Temporality = "cumulitive" },
			[]string{"temporality", `"cumulitive"`}},
		{"max_series 0", func(c *Config) { c.MaxSeries = 0 },
			[]string{"max_series", "0 is out of range"}},
		{"max_series -1", func(c *Config) { c.MaxSeries = -1 },
			[]string{"max_series", "-1 is out of range"}},
		{"max_series 2_000_000", func(c *Config) { c.MaxSeries = 2_000_000 },
			[]string{"max_series", "2000000 is out of range"}},
		{"kernel memory", func(c *Config) { c.Scale, c.MaxSeries = 8, 1_000_000 },
			[]string{"max_series", "1000000", "scale 8", "MiB", "1024 MiB limit"}},
		{"negative idle_timeout", func(c *Config) { c.IdleTimeout = -time.Minute },
			[]string{"idle_timeout", "-1m0s"}},
		{"unknown attach_mode", func(c *Config) { c.AttachMode = "kprobe" },
			[]string{"attach_mode", `"kprobe"`, "auto, fentry, tp_btf, raw_tp, tracepoint"}},
		{"collection_interval 0", func(c *Config) { c.CollectionInterval = 0 },
			[]string{"collection_interval", "0s"}},
		{"negative collection_interval", func(c *Config) { c.CollectionInterval = -time.Second },
			[]string{"collection_interval", "-1s"}},
		{"collection_interval 1ns", func(c *Config) { c.CollectionInterval = 1 },
			[]string{"collection_interval", "1ns", "minimum of 100ms"}},
		{"collection_interval 99ms", func(c *Config) { c.CollectionInterval = 99 * time.Millisecond },
			[]string{"collection_interval", "99ms", "minimum of 100ms"}},
		{"idle_timeout 1ns", func(c *Config) { c.IdleTimeout = 1 },
			[]string{"idle_timeout", "1ns", "shorter than collection_interval (10s)", "or 0"}},
		{"idle_timeout below collection_interval", func(c *Config) { c.CollectionInterval, c.IdleTimeout = time.Minute, 59*time.Second },
			[]string{"idle_timeout", "59s", "collection_interval (1m0s)"}},
		{"timeout 1ns", func(c *Config) { c.Timeout = 1 },
			[]string{"timeout", "1ns", "minimum of 100ms"}},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second },
			[]string{"timeout", "-1s"}},
		{"negative initial_delay", func(c *Config) { c.InitialDelay = -time.Second },
			[]string{"initial_delay", "-1s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := createDefaultConfig()
			tt.mutate(c)
			err := c.Validate()
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			// One bad value, one error line.
			assert.Len(t, strings.Split(err.Error(), "\n"), 1, "%v", err)
			// What Validate rejects, loaderSpec does not silently accept
			// (for the keys loaderSpec reads).
			if _, specErr := c.loaderSpec(); specErr == nil {
				switch tt.name {
				case "max_buckets 1", "max_buckets 0", "max_buckets -160", "max_buckets 8194",
					"unknown temporality", "max_series 0", "max_series -1", "max_series 2_000_000",
					"kernel memory", "negative idle_timeout", "unknown attach_mode", "collection_interval 0", "negative collection_interval",
					"collection_interval 1ns", "collection_interval 99ms", "idle_timeout 1ns", "idle_timeout below collection_interval",
					"timeout 1ns", "negative timeout", "negative initial_delay":
				default:
					t.Errorf("loaderSpec accepted a config Validate rejects: %v", err)
				}
			}
		})
	}
}

func TestValidateReportsEveryError(t *testing.T) {
	c := createDefaultConfig()
	c.GroupBy = []string{"peer", "local_port", "local_port"}
	c.Filter.LocalPorts = []int{0, 22, 70000}
	c.Filter.RemotePorts = []int{-5}
	c.Filter.LocalAddresses = []string{"10.0.0.1/8", "bogus"}
	c.Filter.RemoteAddresses = []string{"::/129"}
	c.Scale = 12
	c.Unit = "ns"
	c.Temporality = "gauge"
	c.MaxSeries = 0
	c.IdleTimeout = -time.Second
	c.AttachMode = "kprobe"
	c.CollectionInterval = 0

	err := c.Validate()
	require.Error(t, err)
	msg := err.Error()
	for _, w := range []string{
		`group_by[0]: "peer" is not one of local_address, remote_address, local_port, remote_port, cgroup`,
		`group_by[2]: "local_port" is listed twice`,
		"filter.local_ports[0]: port 0 ",
		"filter.local_ports[2]: port 70000 ",
		"filter.remote_ports[0]: port -5 ",
		`filter.local_addresses[0]: "10.0.0.1/8"`,
		`filter.local_addresses[1]: "bogus"`,
		`filter.remote_addresses[0]: "::/129"`,
		"scale: 12 ",
		`unit: "ns"`,
		`temporality: "gauge"`,
		"max_series: 0 ",
		"idle_timeout: -1s",
		`attach_mode: "kprobe"`,
		"collection_interval: 0s",
	} {
		assert.Contains(t, msg, w)
	}
	assert.Len(t, strings.Split(msg, "\n"), 15, msg)
}

func TestValidateAccepts(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"default", func(*Config) {}},
		{"mixed v4 and v6 lists", func(c *Config) {
			c.Filter.LocalAddresses = []string{"10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0", "::/0"}
			c.Filter.RemoteAddresses = []string{"192.0.2.0/24", "fd00::/8"}
		}},
		{"bare IPs", func(c *Config) {
			c.Filter.LocalAddresses = []string{"127.0.0.1", "::1"}
			c.Filter.RemoteAddresses = []string{" 192.0.2.7 ", "2001:db8::7"}
		}},
		{"v4-mapped IPv6", func(c *Config) {
			c.Filter.RemoteAddresses = []string{"::ffff:10.0.0.0/104", "::ffff:192.0.2.1", "::ffff:0:0/96"}
		}},
		{"ports 1 and 65535", func(c *Config) {
			c.Filter.LocalPorts = []int{1, 65535}
			c.Filter.RemotePorts = []int{65535, 1}
		}},
		{"empty group_by", func(c *Config) { c.GroupBy = []string{} }},
		{"nil group_by", func(c *Config) { c.GroupBy = nil }},
		{"every group_by", func(c *Config) {
			c.GroupBy = []string{"remote_port", "local_port", "remote_address", "local_address", "cgroup"}
		}},
		{"cgroup alone", func(c *Config) { c.GroupBy = []string{"cgroup"} }},
		{"delta", func(c *Config) { c.Temporality = "delta" }},
		{"scale 0", func(c *Config) { c.Scale = 0 }},
		{"scale 8", func(c *Config) { c.Scale = 8 }},
		{"scale 0 max_series 1_000_000", func(c *Config) { c.Scale, c.MaxSeries = 0, 1_000_000 }},
		{"max_series 1", func(c *Config) { c.MaxSeries = 1 }},
		{"max_buckets 2, the fewest that hold samples on both sides of 1", func(c *Config) { c.MaxBuckets = 2 }},
		{"max_buckets 8193, never downscales", func(c *Config) { c.Scale, c.MaxBuckets = 8, 8193 }},
		{"idle_timeout 0 keeps series forever", func(c *Config) { c.IdleTimeout = 0 }},
		{"collection_interval 100ms, the minimum", func(c *Config) { c.CollectionInterval = 100 * time.Millisecond }},
		{"idle_timeout equal to collection_interval", func(c *Config) { c.IdleTimeout = c.CollectionInterval }},
		{"timeout 100ms, the minimum", func(c *Config) { c.Timeout = 100 * time.Millisecond }},
		{"timeout 0, none", func(c *Config) { c.Timeout = 0 }},
		{"initial_delay 0", func(c *Config) { c.InitialDelay = 0 }},
		{"scale 8 max_series 10_000", func(c *Config) { c.Scale, c.MaxSeries = 8, 10_000 }},
	}
	for _, m := range loader.Modes() {
		tests = append(tests, struct {
			name   string
			mutate func(*Config)
		}{"attach_mode " + string(m), func(c *Config) { c.AttachMode = string(m) }})
	}
	for _, u := range []bucket.Unit{bucket.Seconds, bucket.Milliseconds, bucket.Microseconds} {
		for _, scale := range []int{0, 8} {
			tests = append(tests, struct {
				name   string
				mutate func(*Config)
			}{fmt.Sprintf("unit %s scale %d", u, scale), func(c *Config) { c.Unit, c.Scale = string(u), scale }})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := createDefaultConfig()
			tt.mutate(c)
			require.NoError(t, c.Validate())
			_, err := c.loaderSpec()
			require.NoError(t, err)
		})
	}
}

func TestLoaderSpec(t *testing.T) {
	c := createDefaultConfig()
	c.GroupBy = []string{"local_port", "remote_address"}
	c.Filter.LocalPorts = []int{22, 65535}
	c.Filter.RemotePorts = []int{1}
	c.Filter.LocalAddresses = []string{"10.0.0.0/8", "2001:db8::/32"}
	c.Filter.RemoteAddresses = []string{"::ffff:10.0.0.0/104", "192.0.2.1", "2001:db8::1"}
	c.Scale = 5
	c.Unit = "us"
	c.MaxSeries = 42
	c.CollectionInterval, c.IdleTimeout = 5*time.Second, 7*time.Second
	c.AttachMode = "raw_tp"
	require.NoError(t, c.Validate())

	spec, err := c.loaderSpec()
	require.NoError(t, err)
	assert.Equal(t, kmaps.GroupLocalPort|kmaps.GroupRemoteAddress, spec.GroupBy)
	assert.Equal(t, []uint16{22, 65535}, spec.LocalPorts)
	assert.Equal(t, []uint16{1}, spec.RemotePorts)
	assert.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8::/32"),
	}, spec.LocalPrefixes)
	assert.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("2001:db8::1/128"),
	}, spec.RemotePrefixes)
	assert.True(t, spec.RemotePrefixes[0].Addr().Is4(), "v4-mapped prefix not unmapped")
	assert.Equal(t, loader.ModeRawTp, spec.Mode)
	assert.Equal(t, uint32(42), spec.MaxSeries)
	assert.Equal(t, 7*time.Second, spec.IdleTimeout)
	require.NotNil(t, spec.Table)
	assert.Equal(t, 5, spec.Table.Scale)
	assert.Equal(t, bucket.Microseconds, spec.Table.Unit)
	assert.Equal(t, uint64(8), spec.Table.Divisor)
	assert.Equal(t, uint8(0), spec.Family)
	assert.Equal(t, kmaps.FilterLocalPort|kmaps.FilterRemotePort|kmaps.FilterLocalAddress|kmaps.FilterRemoteAddress,
		spec.Filters())
	assert.Equal(t, uint32(42), spec.Layout().MaxSeries)
	assert.Equal(t, spec.Table.NumBuckets, spec.Layout().NumBuckets)
	require.NoError(t, spec.Layout().Validate())
}

func TestLoaderSpecGroupByBits(t *testing.T) {
	tests := []struct {
		groupBy []string
		want    kmaps.GroupBy
	}{
		{nil, 0},
		{[]string{}, 0},
		{[]string{"local_address"}, kmaps.GroupLocalAddress},
		{[]string{"remote_address"}, kmaps.GroupRemoteAddress},
		{[]string{"local_port"}, kmaps.GroupLocalPort},
		{[]string{"remote_port"}, kmaps.GroupRemotePort},
		{[]string{"remote_port", "local_address"}, kmaps.GroupRemotePort | kmaps.GroupLocalAddress},
		{[]string{"local_address", "remote_address", "local_port", "remote_port"}, 0b1111},
		{[]string{"cgroup"}, kmaps.GroupCgroup},
		{[]string{"cgroup", "remote_address"}, kmaps.GroupCgroup | kmaps.GroupRemoteAddress},
	}
	for _, tt := range tests {
		c := createDefaultConfig()
		c.GroupBy = tt.groupBy
		spec, err := c.loaderSpec()
		require.NoError(t, err, tt.groupBy)
		assert.Equal(t, tt.want, spec.GroupBy, tt.groupBy)
	}
	// The bits match cfg_group_by in the BPF program.
	assert.Equal(t, kmaps.GroupBy(1), kmaps.GroupLocalAddress)
	assert.Equal(t, kmaps.GroupBy(2), kmaps.GroupRemoteAddress)
	assert.Equal(t, kmaps.GroupBy(4), kmaps.GroupLocalPort)
	assert.Equal(t, kmaps.GroupBy(8), kmaps.GroupRemotePort)
	assert.Equal(t, kmaps.GroupBy(16), kmaps.GroupCgroup)
}

func TestLoaderSpecDefaults(t *testing.T) {
	spec, err := createDefaultConfig().loaderSpec()
	require.NoError(t, err)
	assert.Equal(t, kmaps.GroupRemoteAddress, spec.GroupBy)
	assert.Equal(t, loader.ModeAuto, spec.Mode)
	assert.Equal(t, uint32(1000), spec.MaxSeries)
	assert.Equal(t, 5*time.Minute, spec.IdleTimeout)
	assert.Equal(t, 3, spec.Table.Scale)
	assert.Equal(t, bucket.Seconds, spec.Table.Unit)
	assert.Empty(t, spec.LocalPorts)
	assert.Empty(t, spec.RemotePorts)
	assert.Empty(t, spec.LocalPrefixes)
	assert.Empty(t, spec.RemotePrefixes)
	assert.Equal(t, kmaps.Filters(0), spec.Filters())
	assert.Equal(t, convert.Cumulative, convert.Temporality(createDefaultConfig().Temporality))
}

func TestKernelBytesLimit(t *testing.T) {
	// The limit is on max_series+1 rows of RowBuckets+NumBuckets u64 words
	// plus one u64 sum per row and possible CPU.
	table, err := bucket.NewTable(8, bucket.Seconds)
	require.NoError(t, err)
	stride := uint64(kmaps.RowBuckets+table.NumBuckets) + uint64(possibleCPUs())
	// The largest max_series that fits in maxKernelBytes at scale 8.
	largest := int(maxKernelBytes/(8*stride)) - 1
	require.Greater(t, largest, 0)
	require.Less(t, largest, maxSeriesLimit)

	c := createDefaultConfig()
	c.Scale, c.MaxSeries = 8, largest
	assert.NoError(t, c.Validate())
	assert.LessOrEqual(t, c.kernelBytes(), uint64(maxKernelBytes))

	c.MaxSeries = largest + 1
	err = c.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "max_series")
	assert.Greater(t, c.kernelBytes(), uint64(maxKernelBytes))
}

// TestKernelBytesCountPerCPUSums: the per-CPU sums count toward the
// bound. On a 128-CPU host, max_series 1,000,000 at scale 0 needs 280 MB
// of counts but another 1 GB of sums; it used to pass validation.
func TestKernelBytesCountPerCPUSums(t *testing.T) {
	defer func(f func() int) { possibleCPUs = f }(possibleCPUs)
	c := createDefaultConfig()
	c.Scale, c.MaxSeries = 0, maxSeriesLimit

	possibleCPUs = func() int { return 2 }
	assert.NoError(t, c.Validate(), "2 CPUs: counts and sums fit")

	possibleCPUs = func() int { return 128 }
	err := c.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "max_series: 1000000 at scale 0 needs")
	assert.Contains(t, err.Error(), "128 possible CPUs")
}

// TestUnmarshalRejectsBentValues: values the generic decoding would
// silently truncate or misread are rejected, naming the key and value.
func TestUnmarshalRejectsBentValues(t *testing.T) {
	for _, tt := range []struct {
		conf map[string]any
		want string
	}{
		{map[string]any{"scale": 8.9}, "scale: 8.9 is not an integer"},
		{map[string]any{"max_series": 10.5}, "max_series: 10.5 is not an integer"},
		{map[string]any{"max_buckets": 160.5}, "max_buckets: 160.5 is not an integer"},
		{map[string]any{"filter": map[string]any{"local_ports": []any{80, 80.5}}}, "filter.local_ports[1]: 80.5 is not an integer"},
		{map[string]any{"idle_timeout": 5}, "idle_timeout: 5 has no unit"},
		{map[string]any{"collection_interval": 2.5}, "collection_interval: 2.5 has no unit"},
	} {
		cfg := createDefaultConfig()
		err := confmap.NewFromStringMap(tt.conf).Unmarshal(cfg)
		assert.ErrorContains(t, err, tt.want, "%v", tt.conf)
	}
	cfg := createDefaultConfig()
	require.NoError(t, confmap.NewFromStringMap(map[string]any{
		"scale": 4.0, "idle_timeout": 0, "timeout": "5s", "filter": map[string]any{"remote_ports": []any{443}},
	}).Unmarshal(cfg))
	assert.Equal(t, 4, cfg.Scale)
	assert.Equal(t, []int{443}, cfg.Filter.RemotePorts)
	assert.Equal(t, 5*time.Second, cfg.Timeout)
}

// An IPv6 prefix in a filter matches IPv6 sockets only: none of the
// spec's entries may contain a v4-mapped address (the program's key of
// every IPv4 socket), unless the prefix is written v4-mapped.
func TestLoaderSpecIPv6PrefixExcludesIPv4(t *testing.T) {
	c := createDefaultConfig()
	c.Filter.LocalAddresses = []string{"::/0"}
	c.Filter.RemoteAddresses = []string{"::/64", "::ffff:127.0.0.0/104"}
	require.NoError(t, c.Validate())
	spec, err := c.loaderSpec()
	require.NoError(t, err)
	v4 := netip.MustParseAddr("::ffff:127.0.0.1")
	for _, p := range spec.LocalPrefixes {
		assert.False(t, p.Contains(v4), "local entry %s of ::/0 matches IPv4 sockets", p)
		assert.True(t, p.Addr().Is6())
	}
	assert.Len(t, spec.LocalPrefixes, 96)
	var v4Entries []netip.Prefix
	for _, p := range spec.RemotePrefixes {
		assert.False(t, p.Contains(v4), "remote entry %s of ::/64 matches IPv4 sockets", p)
		if p.Addr().Is4() {
			v4Entries = append(v4Entries, p)
		}
	}
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, v4Entries)
	assert.Len(t, spec.RemotePrefixes, 32+1)
}
