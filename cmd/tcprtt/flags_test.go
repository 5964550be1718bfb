package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range s {
		out = append(out, netip.MustParsePrefix(v))
	}
	return out
}

func TestParseArgs(t *testing.T) {
	defaults := options{unit: bucket.Microseconds}
	with := func(f func(o *options)) *options {
		o := defaults
		f(&o)
		return &o
	}
	cases := []struct {
		name    string
		args    []string
		want    *options
		wantErr string // substring of the usage error; "" for success
	}{
		{name: "defaults", args: nil, want: &defaults},
		{name: "interval and duration", args: []string{"-i", "1", "-d", "2.5"},
			want: with(func(o *options) { o.interval, o.duration = time.Second, 2500*time.Millisecond })},
		{name: "attached and = values", args: []string{"-i1", "-d=10"},
			want: with(func(o *options) { o.interval, o.duration = time.Second, 10*time.Second })},
		{name: "long names", args: []string{"--interval", "3", "--byraddr", "--extension", "--timestamp", "--millisecond", "--scale=3"},
			want: with(func(o *options) {
				o.interval, o.groupBy, o.extended, o.timestamp, o.unit, o.scale =
					3*time.Second, kmaps.GroupRemoteAddress, true, true, bucket.Milliseconds, 3
			})},
		{name: "grouped switches", args: []string{"-Bev", "-Tm"},
			want: with(func(o *options) {
				o.groupBy, o.extended, o.verbose, o.timestamp, o.unit = kmaps.GroupRemoteAddress, true, true, true, bucket.Milliseconds
			})},
		{name: "group ending with a value", args: []string{"-ei", "2"},
			want: with(func(o *options) { o.extended, o.interval = true, 2*time.Second })},
		{name: "group with attached value", args: []string{"-es3"},
			want: with(func(o *options) { o.extended, o.scale = true, 3 })},
		{name: "per local address", args: []string{"-b"},
			want: with(func(o *options) { o.groupBy = kmaps.GroupLocalAddress })},
		{name: "per cgroup", args: []string{"-C"},
			want: with(func(o *options) { o.groupBy = kmaps.GroupCgroup })},
		{name: "per cgroup and remote address", args: []string{"-BC"},
			want: with(func(o *options) { o.groupBy = kmaps.GroupCgroup | kmaps.GroupRemoteAddress })},
		{name: "per cgroup and local address, long", args: []string{"--bycgroup", "--byladdr"},
			want: with(func(o *options) { o.groupBy = kmaps.GroupCgroup | kmaps.GroupLocalAddress })},
		{name: "ipv4", args: []string{"-4"}, want: with(func(o *options) { o.family = 4 })},
		{name: "ipv6", args: []string{"--ipv6"}, want: with(func(o *options) { o.family = 6 })},
		{name: "ports: lists and repeats", args: []string{"-p", "80,443", "-p", "8080", "-P", "22"},
			want: with(func(o *options) { o.localPorts, o.remotePorts = []uint16{80, 443, 8080}, []uint16{22} })},
		{name: "addresses: IPs, CIDRs, v4-mapped, spaces", args: []string{"-a", "10.0.0.1, 192.168.0.0/16", "-A", "::1,2001:db8::/32,::ffff:10.1.2.3,::ffff:10.0.0.0/104"},
			want: with(func(o *options) {
				o.localPrefixes = prefixes("10.0.0.1/32", "192.168.0.0/16")
				o.remotePrefixes = prefixes("::1/128", "2001:db8::/32", "10.1.2.3/32", "10.0.0.0/8")
			})},
		{name: "max scale", args: []string{"-s", "8"}, want: with(func(o *options) { o.scale = 8 })},

		{name: "-b with -B", args: []string{"-b", "-B"}, wantErr: "-b (per local address) and -B (per remote address) cannot be used together"},
		{name: "-b with -B grouped", args: []string{"-bB"}, wantErr: "cannot be used together"},
		{name: "-4 with -6", args: []string{"-4", "-6"}, wantErr: "-4 (IPv4 only) and -6 (IPv6 only) cannot be used together"},
		{name: "zero interval", args: []string{"-i", "0"}, wantErr: `-i: want a positive number of seconds, got "0"`},
		{name: "negative duration", args: []string{"-d", "-1"}, wantErr: `-d: want a positive number of seconds, got "-1"`},
		{name: "word interval", args: []string{"-i", "soon"}, wantErr: `-i: want a positive number of seconds`},
		{name: "NaN interval", args: []string{"-i", "NaN"}, wantErr: `-i: want a positive number of seconds`},
		{name: "tiny interval", args: []string{"-i", "0.0001"}, wantErr: "below the 1 ms minimum"},
		{name: "scale too big", args: []string{"-s", "9"}, wantErr: `-s: scale must be an integer from 0 to 8, got "9"`},
		{name: "scale not a number", args: []string{"-s", "x"}, wantErr: `-s: scale must be an integer`},
		{name: "port 0", args: []string{"-p", "0"}, wantErr: `-p: "0" is not a port (1..65535)`},
		{name: "port too big", args: []string{"-P", "80,65536"}, wantErr: `-P: "65536" is not a port`},
		{name: "empty port", args: []string{"-p", "80,"}, wantErr: `-p: "" is not a port`},
		{name: "bad address", args: []string{"-A", "example.com"}, wantErr: `-A: "example.com" is not a valid IP address or CIDR`},
		{name: "host bits", args: []string{"-a", "10.0.0.1/8"}, wantErr: `has host bits set; did you mean 10.0.0.0/8?`},
		{name: "zone", args: []string{"-A", "fe80::1%eth0"}, wantErr: "IPv6 zone"},
		{name: "zone in CIDR", args: []string{"-A", "fe80::%eth0/64"}, wantErr: "not a valid CIDR"},
		{name: "v6 address with -4", args: []string{"-4", "-A", "::1"}, wantErr: "-A: ::1/128 can never match with -4"},
		{name: "v4 address with -6", args: []string{"-6", "-a", "10.0.0.0/8"}, wantErr: "-a: 10.0.0.0/8 can never match with -6"},
		{name: "unknown flag", args: []string{"-x"}, wantErr: "flag provided but not defined: -x"},
		{name: "unknown letter in group", args: []string{"-Bx"}, wantErr: "flag provided but not defined: -Bx"},
		{name: "missing value", args: []string{"-i"}, wantErr: "flag needs an argument: -i"},
		{name: "positional argument", args: []string{"1"}, wantErr: `unexpected argument "1"`},
		{name: "every error at once", args: []string{"-b", "-B", "-s", "10"}, wantErr: "-s: scale must be an integer from 0 to 8, got \"10\"\n-b (per local address)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseArgs(c.args)
			if c.wantErr != "" {
				var ue *usageError
				if !errors.As(err, &ue) {
					t.Fatalf("parseArgs(%q) = %+v, %v; want a usage error containing %q", c.args, got, err, c.wantErr)
				}
				if !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("parseArgs(%q) error %q, want it to contain %q", c.args, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseArgs(%q): %v", c.args, err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("parseArgs(%q) =\n%+v, want\n%+v", c.args, got, c.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"-e", "-h"}} {
		if _, err := parseArgs(args); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("parseArgs(%q) = %v, want flag.ErrHelp", args, err)
		}
	}
	u := usage()
	for _, d := range flagDefs {
		want := "-" + d.short + ", --" + d.long
		if d.arg != "" {
			want += " " + d.arg
		}
		if !strings.Contains(u, want) {
			t.Errorf("usage does not document %q", want)
		}
	}
	for _, want := range []string{
		"low < srtt <= high", "exclusive\n  below, inclusive above", "Ctrl-C", "CAP_BPF", "Exit status",
		"1 -> 2", "lowest non-empty row", "cgroup v2 of the process that created it", "-C -B",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("usage does not say %q", want)
		}
	}
	for i, l := range strings.Split(u, "\n") {
		if len(l) > 80 {
			t.Errorf("usage line %d is %d columns wide: %q", i+1, len(l), l)
		}
	}
}

// TestRunExitCodes runs the command's entry point on command lines that
// never reach the kernel.
func TestRunExitCodes(t *testing.T) {
	for _, c := range []struct {
		args       []string
		code       int
		stdout     string
		stderrPart string
	}{
		{args: []string{"-h"}, code: 0, stdout: usage()},
		{args: []string{"-b", "-B"}, code: 2, stderrPart: "tcprtt: -b (per local address) and -B (per remote address) cannot be used together; choose one\nRun 'tcprtt -h' for usage.\n"},
		{args: []string{"-z"}, code: 2, stderrPart: "flag provided but not defined: -z"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), c.args, &stdout, &stderr)
		if code != c.code || stdout.String() != c.stdout || !strings.Contains(stderr.String(), c.stderrPart) {
			t.Errorf("run(%q) = %d\nstdout %q\nstderr %q\nwant %d, stdout %q, stderr containing %q",
				c.args, code, stdout.String(), stderr.String(), c.code, c.stdout, c.stderrPart)
		}
	}
}

func TestSpec(t *testing.T) {
	o, err := parseArgs([]string{"-B", "-m", "-s", "3", "-6", "-p", "443", "-P", "8443", "-a", "::1", "-A", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := o.spec()
	if err != nil {
		t.Fatal(err)
	}
	if spec.Mode != loader.ModeAuto || spec.GroupBy != kmaps.GroupRemoteAddress || spec.Family != 6 ||
		spec.Table.Scale != 3 || spec.Table.Unit != bucket.Milliseconds || spec.MaxSeries != maxSeriesCap ||
		spec.IdleTimeout != idleTimeout ||
		!reflect.DeepEqual(spec.LocalPorts, []uint16{443}) || !reflect.DeepEqual(spec.RemotePorts, []uint16{8443}) ||
		!reflect.DeepEqual(spec.LocalPrefixes, prefixes("::1/128")) ||
		!reflect.DeepEqual(spec.RemotePrefixes, prefixes("2001:db8::/32")) {
		t.Fatalf("spec = %+v", spec)
	}

	o, err = parseArgs(nil)
	if err != nil {
		t.Fatal(err)
	}
	if spec, err = o.spec(); err != nil {
		t.Fatal(err)
	}
	if spec.GroupBy != 0 || spec.MaxSeries != 1 || spec.IdleTimeout != 0 || spec.Family != 0 ||
		spec.Table.Scale != 0 || spec.Table.Unit != bucket.Microseconds || spec.Filters() != 0 {
		t.Fatalf("default spec = %+v", spec)
	}
}

// -A ::/0 means IPv6 peers only: no entry of the spec contains a
// v4-mapped address, the program's key of every IPv4 socket; with -4 it
// is refused as never matching.
func TestSpecIPv6PrefixExcludesIPv4(t *testing.T) {
	o, err := parseArgs([]string{"-A", "::/0", "-a", "::ffff:127.0.0.0/104"})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := o.spec()
	if err != nil {
		t.Fatal(err)
	}
	v4 := netip.MustParseAddr("::ffff:127.0.0.1")
	for _, p := range spec.RemotePrefixes {
		if p.Contains(v4) || !p.Addr().Is6() {
			t.Errorf("entry %s of -A ::/0 matches IPv4 sockets", p)
		}
	}
	if len(spec.RemotePrefixes) != 96 || !reflect.DeepEqual(spec.LocalPrefixes, prefixes("127.0.0.0/8")) {
		t.Errorf("remote %v, local %v", spec.RemotePrefixes, spec.LocalPrefixes)
	}
	if _, err := parseArgs([]string{"-4", "-A", "::/0"}); err == nil || !strings.Contains(err.Error(), "::/0 can never match with -4") {
		t.Errorf("-4 -A ::/0: %v", err)
	}
	if _, err := parseArgs([]string{"-6", "-A", "::/0"}); err != nil {
		t.Errorf("-6 -A ::/0: %v", err)
	}
}

func TestMaxSeries(t *testing.T) {
	for scale := bucket.MinScale; scale <= bucket.MaxScale; scale++ {
		table, err := bucket.NewTable(scale, bucket.Microseconds)
		if err != nil {
			t.Fatal(err)
		}
		if n := maxSeries(0, table); n != 1 {
			t.Errorf("scale %d, one histogram: %d series", scale, n)
		}
		n := maxSeries(kmaps.GroupRemoteAddress, table)
		l := kmaps.Layout{NumBuckets: table.NumBuckets, MaxSeries: n}
		if n < 1 || n > maxSeriesCap || l.Entries()*8 > maxCountsArrayMiB<<20 || l.Validate() != nil {
			t.Errorf("scale %d: %d series need %d bytes", scale, n, l.Entries()*8)
		}
		if scale <= 4 && n != maxSeriesCap {
			t.Errorf("scale %d: %d series, want %d", scale, n, maxSeriesCap)
		}
	}
}
