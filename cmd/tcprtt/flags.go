package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/netfilter"
)

// options are the parsed and validated command line.
type options struct {
	interval  time.Duration // 0: print only at the end
	duration  time.Duration // 0: run until interrupted
	timestamp bool
	unit      bucket.Unit
	scale     int
	groupBy   kmaps.GroupBy
	extended  bool
	family    uint8
	verbose   bool

	localPorts     []uint16
	remotePorts    []uint16
	localPrefixes  []netip.Prefix
	remotePrefixes []netip.Prefix
}

// usageError is a bad command line: exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// flagDef is one option: its letter (the reference tool's), its long name
// and its help line.
type flagDef struct {
	short, long string
	arg         string // value placeholder; "" for a switch
	help        string
}

var flagDefs = []flagDef{
	{"i", "interval", "SECONDS", "print every SECONDS (default: once, at the end)"},
	{"d", "duration", "SECONDS", "stop after SECONDS (default: run until Ctrl-C)"},
	{"T", "timestamp", "", "print the time (HH:MM:SS) before each interval"},
	{"m", "millisecond", "", "histograms in msecs (default: usecs)"},
	{"s", "scale", "SCALE", "exponential scale 0..8 (default 0): each power of\ntwo is split into 2^SCALE rows"},
	{"p", "lport", "PORTS", "only sockets with one of these local ports\n(comma-separated, 1..65535)"},
	{"P", "rport", "PORTS", "only sockets with one of these remote ports"},
	{"a", "laddr", "ADDRS", "only sockets with a local address in ADDRS:\ncomma-separated IPs or CIDRs, IPv4 or IPv6\n(e.g. 10.0.0.1,192.168.0.0/16,2001:db8::/32)"},
	{"A", "raddr", "ADDRS", "only sockets with a remote address in ADDRS"},
	{"b", "byladdr", "", "one histogram per local address"},
	{"B", "byraddr", "", "one histogram per remote address (not with -b)"},
	{"C", "bycgroup", "", "one histogram per cgroup v2 of the sockets' creators,\nheaded by its path; with -b or -B, one per cgroup\nand address"},
	{"e", "extension", "", "show the average RTT, the sample count and the\nretransmitted segments of each histogram"},
	{"4", "ipv4", "", "IPv4 only (IPv4-mapped IPv6 sockets are IPv4)"},
	{"6", "ipv6", "", "IPv6 only (not with -4)"},
	{"v", "verbose", "", "say on stderr which attach flavour is used and\nwhy the ones tried before it were refused"},
	{"h", "help", "", "show this help"},
}

const usageHead = `Usage: tcprtt [-h] [-v] [-T] [-m] [-e] [-b | -B] [-C] [-4 | -6] [-s SCALE]
              [-i SECONDS] [-d SECONDS] [-p PORTS] [-P PORTS]
              [-a ADDRS] [-A ADDRS]

Summarize the smoothed round-trip time (srtt) of established TCP connections
as histograms. An eBPF program samples each socket's srtt in the kernel on
every segment it receives (busy connections weigh more) and counts it in an
exact bucket; this command prints those counts, like the tcprtt tool of
bcc/libbpf-tools, from the same program and buckets as the OpenTelemetry
Collector receiver.

Options:
`

const usageTail = `
Options take their value as the next argument (-i 1) or attached (-i1, -i=1);
switches may be grouped (-Be). Filters combine with AND; within one list any
entry matches.

Reading the output:
  Each interval shows the samples taken during that interval only. The kernel
  counts are never cleared: each print subtracts the previous reading, so no
  sample is lost between prints.
  A row "low -> high" counts the samples with low < srtt <= high: exclusive
  below, inclusive above (the OpenTelemetry exponential histogram rule; the
  reference tool's rows are instead [low, high] of truncated integers).
  At scale 0 the rows are powers of two: 1 -> 2, 2 -> 4, 4 -> 8, ... At scale
  S each power of two is split into 2^S rows with bounds 2^(k/2^S), printed
  cut to the srtt resolution of 1/8 usec (3 decimals of usecs, 6 of msecs):
  any srtt is in the row its printed bounds say.
  Rows end at the highest non-empty row. At scale 0 they start at 1 -> 2 (or
  lower if there are samples at or below 1); at higher scales they start at
  the lowest non-empty row. A row "0" (shown only if non-zero) counts samples
  of sockets with no RTT estimate yet (srtt 0).
  With -b, -B or -C, up to %d addresses (cgroups, cgroup and address
  pairs) at a time get their own histogram (fewer at scales >= 5, to keep
  the kernel's counters within %d MiB; -v prints the limit); one silent for
  %d minutes gives its place up. Samples of further ones share one
  histogram, "Other remote (or local) addresses (over the N series limit)".
  -C: a socket counts in the cgroup v2 of the process that created it (an
  accepted socket in its listener's), even after that process moved; a
  cgroup removed since shows its last path. Needs the cgroup v2 hierarchy
  (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).

Examples:
  tcprtt                      # one histogram of all sockets, printed at Ctrl-C
  tcprtt -i 1 -d 10           # print every second, for 10 seconds
  tcprtt -m -T                # milliseconds, with timestamps
  tcprtt -i 5 -B -e -p 443    # per remote address, with averages, for
                              # the sockets of local port 443
  tcprtt -A 10.0.0.0/8,fd00::/8 -s 3   # finer rows (8 per power of two)
  tcprtt -i 10 -C -B          # per cgroup (container, pod, service) and
                              # remote address

Exit status: 0 when done or interrupted (Ctrl-C/SIGTERM prints the last,
partial interval first), 1 when the program cannot be loaded or read (for
example without privileges), 2 for a bad command line.

Needs a Linux kernel with BTF (/sys/kernel/btf/vmlinux; 5.10 is the oldest
tested) and CAP_BPF and CAP_PERFMON (or root).
`

// usage returns the help text.
func usage() string {
	var b strings.Builder
	b.WriteString(usageHead)
	for _, d := range flagDefs {
		left := "  -" + d.short + ", --" + d.long
		if d.arg != "" {
			left += " " + d.arg
		}
		lines := strings.Split(d.help, "\n")
		fmt.Fprintf(&b, "%-26s%s\n", left, lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(&b, "%-26s%s\n", "", l)
		}
	}
	fmt.Fprintf(&b, usageTail, maxSeriesCap, maxCountsArrayMiB, int(idleTimeout.Minutes()))
	return b.String()
}

// listFlag collects every occurrence of a repeatable option.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// rawFlags are the command line before validation.
type rawFlags struct {
	interval, duration, scale string
	timestamp, millisecond    bool
	byLocal, byRemote         bool
	byCgroup                  bool
	extended, verbose, help   bool
	ipv4, ipv6                bool

	localPorts, remotePorts listFlag
	localAddrs, remoteAddrs listFlag
}

func (r *rawFlags) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("tcprtt", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by the caller
	fs.Usage = func() {}
	str := map[string]*string{"i": &r.interval, "d": &r.duration, "s": &r.scale}
	lists := map[string]*listFlag{"p": &r.localPorts, "P": &r.remotePorts, "a": &r.localAddrs, "A": &r.remoteAddrs}
	bools := map[string]*bool{
		"T": &r.timestamp, "m": &r.millisecond, "b": &r.byLocal, "B": &r.byRemote, "C": &r.byCgroup,
		"e": &r.extended, "4": &r.ipv4, "6": &r.ipv6, "v": &r.verbose, "h": &r.help,
	}
	for _, d := range flagDefs {
		for _, name := range []string{d.short, d.long} {
			switch {
			case str[d.short] != nil:
				fs.StringVar(str[d.short], name, "", d.help)
			case lists[d.short] != nil:
				fs.Var(lists[d.short], name, d.help)
			case bools[d.short] != nil:
				fs.BoolVar(bools[d.short], name, false, d.help)
			default:
				panic("flag -" + d.short + " has no variable")
			}
		}
	}
	return fs
}

// expandArgs rewrites the reference tool's short-option forms that the
// flag package does not know: grouped switches (-Be → -B -e) and values
// attached to their letter (-i1 → -i 1). Anything else is left for the
// flag package to accept or report.
func expandArgs(fs *flag.FlagSet, args []string) []string {
	isSwitch := func(f *flag.Flag) bool {
		b, ok := f.Value.(interface{ IsBoolFlag() bool })
		return ok && b.IsBoolFlag()
	}
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || len(a) < 2 || a[0] != '-' {
			return append(out, args[i:]...) // flag parsing stops here
		}
		name := strings.TrimLeft(a, "-")
		name, _, hasValue := strings.Cut(name, "=")
		if f := fs.Lookup(name); f != nil || strings.HasPrefix(a, "--") {
			out = append(out, a)
			if f != nil && !hasValue && !isSwitch(f) && i+1 < len(args) {
				i++
				out = append(out, args[i]) // its value, even if it starts with '-'
			}
			continue
		}
		// A group of single-letter options.
		var group []string
		ok := true
		for j := 1; j < len(a); j++ {
			f := fs.Lookup(a[j : j+1])
			if f == nil {
				ok = false
				break
			}
			group = append(group, "-"+a[j:j+1])
			if !isSwitch(f) {
				if rest := a[j+1:]; rest != "" {
					group = append(group, strings.TrimPrefix(rest, "="))
				} else if i+1 < len(args) {
					i++
					group = append(group, args[i])
				}
				break
			}
		}
		if !ok {
			out = append(out, a) // the flag package names the bad option
			continue
		}
		out = append(out, group...)
	}
	return out
}

// parseArgs parses and validates the command line (without the program
// name). It returns flag.ErrHelp for -h, and a *usageError for anything
// wrong.
func parseArgs(args []string) (*options, error) {
	var r rawFlags
	fs := r.flagSet()
	if err := fs.Parse(expandArgs(fs, args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, flag.ErrHelp
		}
		return nil, &usageError{err}
	}
	if r.help {
		return nil, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return nil, usageErrorf("unexpected argument %q (options only)", fs.Arg(0))
	}

	o := &options{
		timestamp: r.timestamp,
		unit:      bucket.Microseconds,
		extended:  r.extended,
		verbose:   r.verbose,
	}
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	var err error

	if r.interval != "" {
		if o.interval, err = parseSeconds("-i", r.interval); err != nil {
			fail(err)
		}
	}
	if r.duration != "" {
		if o.duration, err = parseSeconds("-d", r.duration); err != nil {
			fail(err)
		}
	}
	if r.millisecond {
		o.unit = bucket.Milliseconds
	}
	if r.scale != "" {
		o.scale, err = strconv.Atoi(r.scale)
		if err != nil || o.scale < bucket.MinScale || o.scale > bucket.MaxScale {
			fail(usageErrorf("-s: scale must be an integer from %d to %d, got %q", bucket.MinScale, bucket.MaxScale, r.scale))
		}
	}
	switch {
	case r.byLocal && r.byRemote:
		fail(usageErrorf("-b (per local address) and -B (per remote address) cannot be used together; choose one"))
	case r.byLocal:
		o.groupBy = kmaps.GroupLocalAddress
	case r.byRemote:
		o.groupBy = kmaps.GroupRemoteAddress
	}
	if r.byCgroup {
		o.groupBy |= kmaps.GroupCgroup
	}
	switch {
	case r.ipv4 && r.ipv6:
		fail(usageErrorf("-4 (IPv4 only) and -6 (IPv6 only) cannot be used together; omit both for both families"))
	case r.ipv4:
		o.family = 4
	case r.ipv6:
		o.family = 6
	}
	if o.localPorts, err = parsePorts("-p", r.localPorts); err != nil {
		fail(err)
	}
	if o.remotePorts, err = parsePorts("-P", r.remotePorts); err != nil {
		fail(err)
	}
	if o.localPrefixes, err = parsePrefixes("-a", r.localAddrs, o.family); err != nil {
		fail(err)
	}
	if o.remotePrefixes, err = parsePrefixes("-A", r.remoteAddrs, o.family); err != nil {
		fail(err)
	}
	if len(errs) > 0 {
		return nil, &usageError{errors.Join(errs...)}
	}
	return o, nil
}

// maxDuration keeps time.Duration arithmetic far from overflow.
const maxDuration = 100 * 365 * 24 * time.Hour

func parseSeconds(opt, v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || f <= 0 {
		return 0, usageErrorf("%s: want a positive number of seconds, got %q", opt, v)
	}
	d := time.Duration(f * float64(time.Second))
	if f*float64(time.Second) > float64(maxDuration) {
		d = maxDuration
	}
	if d < time.Millisecond {
		return 0, usageErrorf("%s: %q seconds is below the 1 ms minimum", opt, v)
	}
	return d, nil
}

// splitList splits the occurrences of a repeatable option at commas.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			out = append(out, strings.TrimSpace(s))
		}
	}
	return out
}

func parsePorts(opt string, values []string) ([]uint16, error) {
	var out []uint16
	var errs []error
	for _, s := range splitList(values) {
		p, err := strconv.ParseUint(s, 10, 32)
		if err != nil || p < 1 || p > 65535 {
			errs = append(errs, usageErrorf("%s: %q is not a port (1..65535)", opt, s))
			continue
		}
		out = append(out, uint16(p))
	}
	return out, errors.Join(errs...)
}

func parsePrefixes(opt string, values []string, family uint8) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, s := range splitList(values) {
		p, err := netfilter.ParsePrefix(s)
		if err != nil {
			errs = append(errs, usageErrorf("%s: %q %v", opt, s, err))
			continue
		}
		if is4 := p.Addr().Is4(); (family == 4 && !is4) || (family == 6 && is4) {
			errs = append(errs, usageErrorf("%s: %s can never match with -%d", opt, p, family))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// Series limits. With -b/-B each address takes one row of
// 2 + table.NumBuckets u64 counters in a kernel array sized at load time;
// an address without samples for idleTimeout gives its row back (checked
// at each print), as in the receiver.
const (
	maxSeriesCap      = 10000
	maxCountsArrayMiB = 64
	idleTimeout       = 5 * time.Minute
)

// maxSeries is the number of per-address series to size the kernel maps
// for: 1 without grouping, else maxSeriesCap or fewer at fine scales so
// the counts array stays within maxCountsArrayMiB.
func maxSeries(groupBy kmaps.GroupBy, table *bucket.Table) uint32 {
	if groupBy == 0 {
		return 1
	}
	rowBytes := uint64(kmaps.Layout{NumBuckets: table.NumBuckets}.Stride()) * 8
	fit := uint64(maxCountsArrayMiB<<20)/rowBytes - 1 // one row is the overflow
	return uint32(min(uint64(maxSeriesCap), max(fit, 1)))
}

// spec returns the loader spec of o.
func (o *options) spec() (loader.Spec, error) {
	table, err := bucket.NewTable(o.scale, o.unit)
	if err != nil {
		return loader.Spec{}, err
	}
	spec := loader.Spec{
		Mode:        loader.ModeAuto,
		GroupBy:     o.groupBy,
		Table:       table,
		MaxSeries:   maxSeries(o.groupBy, table),
		Family:      o.family,
		LocalPorts:  o.localPorts,
		RemotePorts: o.remotePorts,
		// An IPv6 prefix matches IPv6 sockets only, as in the receiver,
		// although the program keeps IPv4 addresses v4-mapped.
		LocalPrefixes:  netfilter.KernelPrefixes(o.localPrefixes),
		RemotePrefixes: netfilter.KernelPrefixes(o.remotePrefixes),
		Retransmits:    o.extended, // shown with -e only: without it, no second program
	}
	if o.groupBy != 0 {
		spec.IdleTimeout = idleTimeout
	}
	return spec, nil
}
