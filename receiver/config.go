package tcprttreceiver

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/scraper/scraperhelper"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/netfilter"
)

// Config is the configuration of the tcprtt receiver. Every key is
// documented, with its default, in README.md.
type Config struct {
	scraperhelper.ControllerConfig `mapstructure:",squash"`

	// GroupBy lists the socket fields that distinguish series:
	// local_address, remote_address, local_port, remote_port, cgroup (one
	// resource per cgroup v2). Empty gives one histogram for the whole host.
	GroupBy []string `mapstructure:"group_by"`
	// Filter restricts which sockets are measured.
	Filter FilterConfig `mapstructure:"filter"`
	// Scale is the exponential histogram scale, 0..8: the kernel counts at
	// it, and it is the finest scale a data point may have.
	Scale int `mapstructure:"scale"`
	// MaxBuckets bounds the positive buckets of a data point, as the SDKs'
	// max_size: a point whose populated range does not fit at Scale is
	// downscaled exactly until it does.
	MaxBuckets int `mapstructure:"max_buckets"`
	// Unit of the exported values: s, ms or us.
	Unit string `mapstructure:"unit"`
	// Temporality of the exported points: cumulative or delta.
	Temporality string `mapstructure:"temporality"`
	// MaxSeries bounds the number of distinct attribute sets; samples of
	// further sets go to one overflow series.
	MaxSeries int `mapstructure:"max_series"`
	// IdleTimeout removes a series that received no samples for this long,
	// freeing its room; 0 keeps series forever.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// AttachMode forces one attach flavour; auto tries them in order.
	AttachMode string `mapstructure:"attach_mode"`
	// Metrics switches each metric on or off (metrics_config.go).
	Metrics MetricsConfig `mapstructure:"metrics"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// FilterConfig restricts measurement to sockets matching every non-empty
// list (within a list, any entry may match).
type FilterConfig struct {
	LocalPorts      []int    `mapstructure:"local_ports"`
	RemotePorts     []int    `mapstructure:"remote_ports"`
	LocalAddresses  []string `mapstructure:"local_addresses"`
	RemoteAddresses []string `mapstructure:"remote_addresses"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// group_by values.
const (
	groupLocalAddress  = "local_address"
	groupRemoteAddress = "remote_address"
	groupLocalPort     = "local_port"
	groupRemotePort    = "remote_port"
	groupCgroup        = "cgroup"
)

var groupBits = map[string]kmaps.GroupBy{
	groupLocalAddress:  kmaps.GroupLocalAddress,
	groupRemoteAddress: kmaps.GroupRemoteAddress,
	groupLocalPort:     kmaps.GroupLocalPort,
	groupRemotePort:    kmaps.GroupRemotePort,
	groupCgroup:        kmaps.GroupCgroup,
}

// Defaults.
const (
	defaultCollectionInterval = 10 * time.Second
	defaultScale              = 3
	defaultMaxBuckets         = 160 // the OpenTelemetry SDKs' default max_size
	defaultUnit               = bucket.Seconds
	defaultTemporality        = convert.Cumulative
	defaultMaxSeries          = 1000
	defaultIdleTimeout        = 5 * time.Minute
	defaultAttachMode         = loader.ModeAuto

	// maxSeriesLimit keeps the kernel's series index reasonable; the counts
	// array is bounded separately by maxKernelBytes.
	maxSeriesLimit = 1_000_000
	// maxKernelBytes bounds the kernel memory that grows with max_series:
	// the counts array (max_series+1 rows of 2 + buckets u64 words) plus
	// the per-CPU sums (max_series+1 u64 per possible CPU), so a typo
	// cannot pin gigabytes of kernel memory.
	maxKernelBytes = 1 << 30

	// minCollectionInterval keeps the collector from reading the kernel
	// maps in a loop: one collection of 10k series takes ~20 ms.
	minCollectionInterval = 100 * time.Millisecond
	// minTimeout: a shorter scrape timeout fails collections that are
	// merely reading a large map (0 means no timeout).
	minTimeout = 100 * time.Millisecond
)

// possibleCPUs is the number of CPUs the per-CPU sums are sized for (a
// variable so tests can ask what a 128-CPU host would need).
var possibleCPUs = loader.PossibleCPUs

func createDefaultConfig() *Config {
	cc := scraperhelper.NewDefaultControllerConfig()
	cc.CollectionInterval = defaultCollectionInterval
	return &Config{
		ControllerConfig: cc,
		GroupBy:          []string{groupRemoteAddress},
		Scale:            defaultScale,
		MaxBuckets:       defaultMaxBuckets,
		Unit:             string(defaultUnit),
		Temporality:      string(defaultTemporality),
		MaxSeries:        defaultMaxSeries,
		IdleTimeout:      defaultIdleTimeout,
		AttachMode:       string(defaultAttachMode),
		Metrics:          defaultMetrics(),
	}
}

// Unmarshal rejects values the generic decoding would silently bend: a
// fractional number where an integer is wanted (scale: 8.9 would become 8)
// and a bare number where a duration is wanted (idle_timeout: 5 would be
// 5 ns), then decodes as usual.
func (c *Config) Unmarshal(conf *confmap.Conf) error {
	if conf == nil {
		return nil
	}
	var errs []error
	for _, key := range []string{"scale", "max_buckets", "max_series"} {
		errs = append(errs, checkInteger(key, conf.Get(key)))
	}
	for _, key := range []string{"filter::local_ports", "filter::remote_ports"} {
		if list, ok := conf.Get(key).([]any); ok {
			for i, v := range list {
				errs = append(errs, checkInteger(fmt.Sprintf("%s[%d]", key, i), v))
			}
		}
	}
	for _, key := range []string{"collection_interval", "initial_delay", "timeout", "idle_timeout"} {
		errs = append(errs, checkDuration(key, conf.Get(key)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return conf.Unmarshal(c)
}

func checkInteger(key string, v any) error {
	if f, ok := v.(float64); ok && f != math.Trunc(f) {
		return fmt.Errorf("%s: %v is not an integer", strings.ReplaceAll(key, "::", "."), f)
	}
	return nil
}

func checkDuration(key string, v any) error {
	var n float64
	switch x := v.(type) {
	case int:
		n = float64(x)
	case int64:
		n = float64(x)
	case uint64:
		n = float64(x)
	case float64:
		n = x
	default:
		return nil // a string such as "5m", or unset
	}
	if n != 0 {
		return fmt.Errorf("%s: %v has no unit; write e.g. %vs or %vms", key, v, v, v)
	}
	return nil
}

// Validate checks every key and names the bad ones with their values.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}

	if err := c.parseLists(&loader.Spec{}); err != nil {
		errs = append(errs, err)
	}
	scaleOK := c.Scale >= bucket.MinScale && c.Scale <= bucket.MaxScale
	if !scaleOK {
		bad("scale", "%d is out of range %d..%d", c.Scale, bucket.MinScale, bucket.MaxScale)
	}
	if c.MaxBuckets < bucket.MinMaxBuckets || c.MaxBuckets > bucket.MaxPointBuckets {
		bad("max_buckets", "%d is out of range %d..%d (%d or more never downscales: no point spans more buckets)",
			c.MaxBuckets, bucket.MinMaxBuckets, bucket.MaxPointBuckets, bucket.MaxPointBuckets)
	}
	unitOK := bucket.Unit(c.Unit).Valid()
	if !unitOK {
		bad("unit", "%q is not one of s, ms, us", c.Unit)
	}
	if t := convert.Temporality(c.Temporality); t != convert.Cumulative && t != convert.Delta {
		bad("temporality", "%q is not one of cumulative, delta", c.Temporality)
	}
	if c.MaxSeries < 1 || c.MaxSeries > maxSeriesLimit {
		bad("max_series", "%d is out of range 1..%d", c.MaxSeries, maxSeriesLimit)
	} else if scaleOK && unitOK {
		if bytes := c.kernelBytes(); bytes > maxKernelBytes {
			bad("max_series", "%d at scale %d needs %d MiB of kernel memory for counts and per-CPU sums "+
				"(%d possible CPUs), more than the %d MiB limit; lower max_series or scale",
				c.MaxSeries, c.Scale, bytes>>20, possibleCPUs(), maxKernelBytes>>20)
		}
	}
	switch {
	case c.IdleTimeout < 0:
		bad("idle_timeout", "%s must not be negative (0 keeps series forever)", c.IdleTimeout)
	case c.IdleTimeout > 0 && c.CollectionInterval > 0 && c.IdleTimeout < c.CollectionInterval:
		// Expiry is checked at each collection: a series idle for less than
		// one interval would restart (new start time, counts from zero)
		// whenever a collection found it quiet.
		bad("idle_timeout", "%s is shorter than collection_interval (%s); use at least %s, or 0 to keep series forever",
			c.IdleTimeout, c.CollectionInterval, c.CollectionInterval)
	}
	if !loader.Mode(c.AttachMode).Valid() {
		bad("attach_mode", "%q is not one of %s", c.AttachMode, joinModes())
	}
	if c.CollectionInterval < minCollectionInterval {
		bad("collection_interval", "%s is below the minimum of %s", c.CollectionInterval, minCollectionInterval)
	}
	if c.Timeout != 0 && c.Timeout < minTimeout {
		bad("timeout", "%s is below the minimum of %s (0 means no timeout)", c.Timeout, minTimeout)
	}
	if c.InitialDelay < 0 {
		bad("initial_delay", "%s must not be negative", c.InitialDelay)
	}
	errs = append(errs, c.Metrics.validate())
	return errors.Join(errs...)
}

// kernelBytes is the size of the counts array and the per-CPU sums for c
// (scale and unit valid).
func (c *Config) kernelBytes() uint64 {
	t, err := bucket.NewTable(c.Scale, bucket.Unit(c.Unit))
	if err != nil {
		return 0
	}
	l := kmaps.Layout{NumBuckets: t.NumBuckets, MaxSeries: uint32(c.MaxSeries)}
	return l.CountBytes() + l.SumBytes(possibleCPUs())
}

func joinModes() string {
	var names []string
	for _, m := range loader.Modes() {
		names = append(names, string(m))
	}
	return strings.Join(names, ", ")
}

func (c *Config) groupBy() (kmaps.GroupBy, error) {
	var g kmaps.GroupBy
	var errs []error
	for i, name := range c.GroupBy {
		bit, ok := groupBits[name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("group_by[%d]: %q is not one of local_address, remote_address, local_port, remote_port, cgroup", i, name))
		case g.Has(bit):
			errs = append(errs, fmt.Errorf("group_by[%d]: %q is listed twice", i, name))
		}
		g |= bit
	}
	return g, errors.Join(errs...)
}

func parsePorts(key string, ports []int) ([]uint16, error) {
	var out []uint16
	var errs []error
	for i, p := range ports {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s[%d]: port %d is out of range 1..65535", key, i, p))
			continue
		}
		out = append(out, uint16(p))
	}
	return out, errors.Join(errs...)
}

// parsePrefixes accepts IPs and CIDRs, IPv4 and IPv6, by the rules of
// netfilter.ParsePrefix.
func parsePrefixes(key string, values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for i, v := range values {
		p, err := netfilter.ParsePrefix(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %q %w", key, i, v, err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// parseLists turns group_by and the filter lists into their form in spec,
// reporting every bad entry.
func (c *Config) parseLists(spec *loader.Spec) error {
	var errs [5]error
	spec.GroupBy, errs[0] = c.groupBy()
	spec.LocalPorts, errs[1] = parsePorts("filter.local_ports", c.Filter.LocalPorts)
	spec.RemotePorts, errs[2] = parsePorts("filter.remote_ports", c.Filter.RemotePorts)
	spec.LocalPrefixes, errs[3] = parsePrefixes("filter.local_addresses", c.Filter.LocalAddresses)
	spec.RemotePrefixes, errs[4] = parsePrefixes("filter.remote_addresses", c.Filter.RemoteAddresses)
	return errors.Join(errs[:]...)
}

// loaderSpec turns a validated Config into the program's spec.
func (c *Config) loaderSpec() (loader.Spec, error) {
	var spec loader.Spec
	if err := c.parseLists(&spec); err != nil {
		return spec, err
	}
	var err error
	if spec.Table, err = bucket.NewTable(c.Scale, bucket.Unit(c.Unit)); err != nil {
		return spec, err
	}
	// An IPv6 prefix matches IPv6 sockets only, although the program
	// keeps IPv4 addresses v4-mapped.
	spec.LocalPrefixes = netfilter.KernelPrefixes(spec.LocalPrefixes)
	spec.RemotePrefixes = netfilter.KernelPrefixes(spec.RemotePrefixes)
	spec.Mode = loader.Mode(c.AttachMode)
	spec.MaxSeries = uint32(c.MaxSeries)
	spec.IdleTimeout = c.IdleTimeout
	spec.Retransmits = c.Metrics.Retransmits.Enabled
	return spec, nil
}
