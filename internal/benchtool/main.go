//go:build linux

// Command benchtool measures what tcprtt costs the host (make bench):
// the program's per-event run time next to an empty program on the same
// hook, loopback request/response throughput with and without it, and the
// kernel memory of its maps. Run it as root on an otherwise quiet machine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/tcptest"
)

func main() {
	events := flag.Int("round-trips", 20000, "request/response round trips per per-event measurement")
	repeats := flag.Int("repeats", 3, "measurements per attach order")
	tpRuns := flag.Int("throughput-runs", 20, "A/B pairs of the throughput measurement")
	tpTime := flag.Duration("throughput-time", 500*time.Millisecond, "duration of one throughput run")
	tpSpec := flag.String("throughput-config", "default", "configuration for the throughput runs: default, heavy, or empty (the do-nothing program)")
	flag.Parse()

	fmt.Printf("tcprtt benchmark, %s, %d CPUs\n\n", time.Now().UTC().Format("2006-01-02"), numCPU())
	fmt.Println("1. Per-event kernel cost (tp_btf/tcp_probe, loopback request/response, bpf_stats)")
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		fail("enable BPF run statistics (needs root): %v", err)
	}
	for _, c := range []struct {
		name string
		spec loader.Spec
	}{{"default", defaultSpec()}, {"heavy", heavySpec()}} {
		perEvent(c.name, c.spec, *events, *repeats)
	}
	// Run statistics cost two clock reads per run: keep them off for the
	// throughput measurement.
	stats.Close()

	if *tpRuns > 0 {
		fmt.Println("\n2. Throughput: loopback request/response transactions per second")
		throughput(*tpSpec, *tpRuns, *tpTime)
	}

	fmt.Println("\n4. Kernel map memory (map info memlock)")
	for _, n := range []uint32{1000, 10000} {
		spec := defaultSpec()
		spec.MaxSeries = n
		t, err := loader.Open(spec)
		if err != nil {
			fail("%v", err)
		}
		mem, err := t.KernelMemory()
		t.Close()
		if err != nil {
			fail("%v", err)
		}
		fmt.Printf("   max_series %5d, scale %d: %8.2f MiB (counts array %8.2f MiB = %d rows x %d words x 8 B)\n",
			n, spec.Table.Scale, float64(mem)/(1<<20), float64(spec.Layout().Entries()*8)/(1<<20),
			spec.Layout().Rows(), spec.Layout().Stride())
	}
	fmt.Println("\n3. Scrape cost and receiver heap: go test -run '^$' -bench . ./internal/loader/ (printed below by make bench)")
}

func numCPU() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 0
	}
	return set.Count()
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

// emptyProgram loads bench_empty, the do-nothing program on the same hook.
func emptyProgram() *ebpf.Program {
	cs, err := bpf.LoadTcprtt()
	if err != nil {
		fail("%v", err)
	}
	for name := range cs.Programs {
		if name != bpf.TcprttProgBenchEmpty {
			delete(cs.Programs, name)
		}
	}
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		fail("load empty program: %v", err)
	}
	p := coll.DetachProgram(bpf.TcprttProgBenchEmpty)
	coll.Close()
	return p
}

type runStats struct{ runs, ns uint64 }

func statsOf(p *ebpf.Program) runStats {
	s, err := p.Stats()
	if err != nil {
		fail("program stats: %v", err)
	}
	return runStats{runs: s.RunCount, ns: uint64(s.Runtime)}
}

func (s runStats) perRun() float64 { return float64(s.ns) / float64(s.runs) }

// perEvent attaches tcprtt and the empty program to tcp_probe in both
// orders (the first program pays the socket's cache misses), drives
// traffic, and prints the mean run time of each and their ratio.
func perEvent(name string, spec loader.Spec, events, repeats int) {
	empty := emptyProgram()
	defer empty.Close()
	var ratios []float64
	for _, tcprttFirst := range []bool{true, false} {
		for range repeats {
			var t *loader.Tracer
			var l link.Link
			var err error
			attachEmpty := func() {
				if l, err = link.AttachTracing(link.TracingOptions{Program: empty}); err != nil {
					fail("attach empty program: %v", err)
				}
			}
			if !tcprttFirst {
				attachEmpty()
			}
			if t, err = loader.Open(spec); err != nil {
				fail("%v", err)
			}
			if tcprttFirst {
				attachEmpty()
			}
			e0, p0 := statsOf(empty), statsOf(t.Program())
			requestResponse(1, events)
			e1, p1 := statsOf(empty), statsOf(t.Program())
			l.Close()
			t.Close()
			e := runStats{e1.runs - e0.runs, e1.ns - e0.ns}
			p := runStats{p1.runs - p0.runs, p1.ns - p0.ns}
			order := "tcprtt first"
			if !tcprttFirst {
				order = "empty first "
			}
			ratio := p.perRun() / e.perRun()
			ratios = append(ratios, ratio)
			fmt.Printf("   %-7s %s: tcprtt %6.1f ns/run, empty %6.1f ns/run, ratio %.2f (%d runs)\n",
				name, order, p.perRun(), e.perRun(), ratio, p.runs)
		}
	}
	fmt.Printf("   %-7s median ratio over both orders: %.2f\n", name, median(ratios))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// requestResponse runs round trips of 32-byte messages over conns
// loopback connections and returns the transactions per second.
func requestResponse(conns, roundTrips int) float64 {
	return drive(conns, func(done *atomic.Int64) bool { return done.Load() >= int64(roundTrips) })
}

func drive(conns int, stop func(*atomic.Int64) bool) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tcptest.Echo(c, tcptest.MessageSize)
			}()
		}
	}()
	var done atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			fail("dial: %v", err)
		}
		c.(*net.TCPConn).SetNoDelay(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			var b [tcptest.MessageSize]byte
			for !stop(&done) {
				if err := tcptest.RoundTrip(c, b[:]); err != nil {
					if !errors.Is(err, io.EOF) {
						fail("%v", err)
					}
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(done.Load()) / time.Since(start).Seconds()
}

// throughput alternates runs without and with the receiver's program
// attached, in ABBA order so that a drift of the machine's speed cancels
// out, and reports the medians and the median of the per-pair ratios.
func throughput(config string, runs int, d time.Duration) {
	const conns = 4
	timed := func() float64 {
		deadline := time.Now().Add(d)
		return drive(conns, func(*atomic.Int64) bool { return time.Now().After(deadline) })
	}
	withTcprtt := func() float64 {
		if config == "empty" {
			p := emptyProgram()
			defer p.Close()
			l, err := link.AttachTracing(link.TracingOptions{Program: p})
			if err != nil {
				fail("attach empty program: %v", err)
			}
			defer l.Close()
			return timed()
		}
		spec := defaultSpec()
		if config == "heavy" {
			spec = heavySpec()
		}
		t, err := loader.Open(spec)
		if err != nil {
			fail("%v", err)
		}
		defer t.Close()
		return timed()
	}
	var without, with, ratios []float64
	for i := range runs {
		var a, b float64
		if i%2 == 0 {
			a = timed()
			b = withTcprtt()
		} else {
			b = withTcprtt()
			a = timed()
		}
		without, with, ratios = append(without, a), append(with, b), append(ratios, b/a)
	}
	fmt.Printf("   %s config, %d connections, %d ABBA pairs of %s runs\n", config, conns, runs, d)
	fmt.Printf("   without tcprtt: median %8.0f tx/s  (runs %v)\n", median(without), rounded(without))
	fmt.Printf("   with tcprtt:    median %8.0f tx/s  (runs %v)\n", median(with), rounded(with))
	fmt.Printf("   ratio with/without: %.3f (median of pair ratios; ratio of medians %.3f)\n",
		median(ratios), median(with)/median(without))
}

func rounded(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}
