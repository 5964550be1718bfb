//go:build linux

package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
)

// contender is one program measured side by side with others: attach
// attaches it (anew each time, so that the attach order can change) and
// returns the program whose run statistics count and a detach function.
type contender struct {
	name   string
	attach func() (*ebpf.Program, func())
}

// tcprttContender is the receiver's program for spec, loaded and attached
// by the loader as the receiver does (fresh maps each time).
func tcprttContender(name string, spec loader.Spec) contender {
	return contender{name: name, attach: func() (*ebpf.Program, func()) {
		t, err := loader.Open(spec)
		if err != nil {
			fail("%v", err)
		}
		return t.Program(), func() { t.Close() }
	}}
}

// loadedContender attaches an already loaded program of the benchmark
// object (its maps live as long as the program).
func loadedContender(name string, p *ebpf.Program) contender {
	return contender{name: name, attach: func() (*ebpf.Program, func()) {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			fail("attach %s: %v", name, err)
		}
		return p, func() { l.Close() }
	}}
}

// loadBench loads one program of the benchmark object (bpf/bench.bpf.c)
// with the given constants and map sizes; every load has maps of its own.
func loadBench(prog string, vars map[string]any, sizes map[string]uint32) *ebpf.Program {
	cs, err := bpf.LoadBench()
	if err != nil {
		fail("parse embedded benchmark programs: %v", err)
	}
	for name := range cs.Programs {
		if name != prog {
			delete(cs.Programs, name)
		}
	}
	for name, v := range vars {
		if err := cs.Variables[name].Set(v); err != nil {
			fail("set %s: %v", name, err)
		}
	}
	for name, n := range sizes {
		cs.Maps[name].MaxEntries = n
	}
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		fail("load %s: %v", prog, err)
	}
	p := coll.DetachProgram(prog)
	// The program holds references to its maps.
	coll.Close()
	return p
}

// emptyProgram is bench_empty, the do-nothing program on the same hook.
func emptyProgram() *ebpf.Program { return loadBench(bpf.BenchProgBenchEmpty, nil, nil) }

// referenceProgram is bench_reference, written like bcc/libbpf-tools
// tcprtt -B; direct reads its fields through bpf_rdonly_cast instead of
// BPF_CORE_READ (probe reads, as the tool does).
func referenceProgram(direct bool) *ebpf.Program {
	return loadBench(bpf.BenchProgBenchReference, map[string]any{bpf.BenchVarCfgRefDirect: direct}, nil)
}

// Flags of bench_variant (bpf/bench.bpf.c).
const (
	vReadsOnly   = 1 << 0
	vConfigIndex = 1 << 1
	vEpoch       = 1 << 2
	vNoCount     = 1 << 3
	vNoSum       = 1 << 4
	vInEntry     = 1 << 5
	vNoTable     = 1 << 6
)

// variantRows is the number of rows of a variant's maps; series are
// assigned in order of first sight, so only a few are used.
const variantRows = 1024

// variantProgram is bench_variant with flags, at scale 3 and tcprtt's
// default row width, with tcprtt's per-CPU sizes for the possible CPUs.
func variantProgram(flags uint32) *ebpf.Program {
	t, err := bucket.NewTable(3, bucket.Seconds)
	if err != nil {
		fail("%v", err)
	}
	layout := kmaps.Layout{NumBuckets: t.NumBuckets, MaxSeries: variantRows - 1}
	var table [len(t.Entries)]bpf.BenchBucketEntry
	for i, e := range t.Entries {
		table[i] = bpf.BenchBucketEntry{Base: e.Base, Threshold: e.Threshold}
	}
	ncpu := uint32(loader.PossibleCPUs())
	return loadBench(bpf.BenchProgBenchVariant, map[string]any{
		bpf.BenchVarCfgVariant:   flags,
		bpf.BenchVarCfgScale:     uint32(t.Scale),
		bpf.BenchVarCfgStride:    layout.Stride(),
		bpf.BenchVarCfgSumStride: layout.SumStride(),
		bpf.BenchVarCfgBuckets:   table,
	}, map[string]uint32{
		bpf.BenchMapVariantCounts: uint32(layout.Entries()),
		bpf.BenchMapVariantSums:   ncpu * layout.SumStride(),
		bpf.BenchMapVariantCache:  ncpu * kmaps.CacheEntriesPerCPU,
	})
}

type runStats struct{ runs, ns uint64 }

func statsOf(p *ebpf.Program) runStats {
	s, err := p.Stats()
	if err != nil {
		fail("program stats: %v", err)
	}
	return runStats{runs: s.RunCount, ns: uint64(s.Runtime)}
}

func (s runStats) sub(o runStats) runStats { return runStats{s.runs - o.runs, s.ns - o.ns} }
func (s runStats) add(o runStats) runStats { return runStats{s.runs + o.runs, s.ns + o.ns} }

func (s runStats) perRun() float64 {
	if s.runs == 0 {
		return 0
	}
	return float64(s.ns) / float64(s.runs)
}

func (s runStats) String() string { return fmt.Sprintf("%6.1f", s.perRun()) }
