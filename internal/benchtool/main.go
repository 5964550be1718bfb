//go:build linux

// Command benchtool measures what tcprtt costs the host (make bench):
// the program's per-event run time side by side with an empty program and
// a program written like the reference tool (bcc/libbpf-tools tcprtt) on
// the same hook, loopback request/response throughput with and without
// it, and the kernel memory of its maps; with -sections variants, the
// cost of each part of the per-segment path. Run it as root; the host may
// be busy (absolute figures vary with it), which is why every comparison
// is made side by side in one run and reported as a range over rounds.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
)

func main() {
	events := flag.Int("round-trips", 20000, "request/response round trips per per-event measurement")
	rounds := flag.Int("rounds", 5, "rounds of the per-event measurement (each over every attach order)")
	heavyRounds := flag.Int("heavy-rounds", 2, "rounds of the per-event measurement of the heavy config")
	tpRuns := flag.Int("throughput-runs", 40, "rotating triples (none, tcprtt, empty program) of the throughput measurement")
	tpTime := flag.Duration("throughput-time", 250*time.Millisecond, "duration of one throughput run")
	tpSpec := flag.String("throughput-config", "default", "configuration for the throughput runs: default, heavy, or empty (the do-nothing program)")
	only := flag.String("variants", "", "with -sections variants: measure only the variants whose name matches this regular expression")
	sections := flag.String("sections", "per-event,throughput,memory", "comma-separated sections to run: per-event, throughput, memory, variants")
	flag.Parse()
	want := map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		switch s = strings.TrimSpace(s); s {
		case "per-event", "throughput", "memory", "variants":
			want[s] = true
		default:
			fail("unknown section %q in -sections (want per-event, throughput, memory, variants)", s)
		}
	}

	date := time.Now().UTC().Format("2006-01-02")
	fmt.Printf("tcprtt benchmark, %s, %d CPUs, load average %s\n\n", date, numCPU(), loadAverage())
	var rep report
	rep.date = date
	if want["per-event"] || want["variants"] {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			fail("enable BPF run statistics (needs root): %v", err)
		}
		if want["per-event"] {
			fmt.Println("1. Per-event kernel cost (tp_btf/tcp_probe, loopback request/response, bpf_stats run_time_ns/run_cnt),")
			fmt.Println("   tcprtt side by side with the empty program and the reference-style program (bpf/bench.bpf.c)")
			rep.perEvent = append(rep.perEvent, perEvent("default", defaultSpec(), *events, *rounds))
			if *heavyRounds > 0 {
				rep.perEvent = append(rep.perEvent, perEvent("heavy", heavySpec(), *events, *heavyRounds))
			}
		}
		if want["variants"] {
			fmt.Println("\n5. Cost of the parts of the per-segment path (bench_variant, each side by side with empty and reference)")
			variantCosts(*events/2, *rounds, *only)
		}
		// Run statistics cost two clock reads per run: keep them off for
		// the throughput measurement.
		stats.Close()
	}

	if want["throughput"] && *tpRuns > 0 {
		fmt.Println("\n2. Throughput: loopback request/response transactions per second")
		rep.throughput, rep.throughputEmpty = throughput(*tpSpec, *tpRuns, *tpTime)
		rep.throughputConfig = *tpSpec
	}

	if want["memory"] {
		fmt.Println("\n4. Kernel map memory (map info memlock)")
		memory()
	}
	rep.print()
	if want["memory"] {
		fmt.Println("\n3. Scrape cost and receiver heap: go test -run '^$' -bench . ./internal/loader/ (printed below by make bench)")
	}
}

func memory() {
	for _, n := range []uint32{1000, 10000} {
		spec := defaultSpec()
		spec.MaxSeries = n
		spec.Retransmits = true // as the receiver's defaults: its socket map is preallocated
		t, err := loader.Open(spec)
		if err != nil {
			fail("%v", err)
		}
		mem, err := t.KernelMemory()
		t.Close()
		if err != nil {
			fail("%v", err)
		}
		fmt.Printf("   max_series %5d, scale %d, retransmits on: %8.2f MiB (counts array %8.2f MiB = %d rows x %d words x 8 B)\n",
			n, spec.Table.Scale, float64(mem)/(1<<20), float64(spec.Layout().Entries()*8)/(1<<20),
			spec.Layout().Rows(), spec.Layout().Stride())
	}
}

func numCPU() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 0
	}
	return set.Count()
}

// loadAverage is /proc/loadavg's first three fields: how busy the host was.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchtool: "+format+"\n", args...)
	os.Exit(1)
}

func table(scale int) *bucket.Table {
	t, err := bucket.NewTable(scale, bucket.Seconds)
	if err != nil {
		fail("%v", err)
	}
	return t
}

// defaultSpec is the receiver's default configuration.
func defaultSpec() loader.Spec {
	return loader.Spec{Mode: loader.ModeTpBtf, GroupBy: kmaps.GroupRemoteAddress, Table: table(3), MaxSeries: 1000}
}

// heavySpec groups by everything, filters on several v4 and v6 CIDRs and
// port lists (all matching the benchmark's traffic), at scale 8.
func heavySpec() loader.Spec {
	all := make([]uint16, 0, 64512)
	for p := 1024; p <= 65535; p++ {
		all = append(all, uint16(p))
	}
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("::1/128"),
	}
	return loader.Spec{
		Mode:           loader.ModeTpBtf,
		GroupBy:        kmaps.GroupLocalAddress | kmaps.GroupRemoteAddress | kmaps.GroupLocalPort | kmaps.GroupRemotePort,
		Table:          table(8),
		MaxSeries:      1000,
		LocalPorts:     all,
		RemotePorts:    all,
		LocalPrefixes:  prefixes,
		RemotePrefixes: prefixes,
	}
}
