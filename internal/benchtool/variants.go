//go:build linux

package main

import (
	"fmt"
	"regexp"

	"github.com/cilium/ebpf"
)

// A variant of the per-segment path: tcprtt's path (bench_variant with no
// flags) with parts switched off or moved.
type variant struct {
	name  string
	flags uint32
	// Programs other than bench_variant (the product, the reference with
	// direct reads) are measured the same way for comparison.
	load    func() *ebpf.Program
	product bool // tcprtt_tp_btf itself, loaded by the loader
}

// allVariants starts with the modelled path, the baseline.
var allVariants = []variant{
	{name: "row path: cache entry, bucket (shared row), per-CPU sum"},
	{name: "tcprtt_tp_btf (the product, default config)", product: true},
	{name: "reference with direct reads (bpf_rdonly_cast)", load: func() *ebpf.Program { return referenceProgram(true) }},
	{name: "floor: srtt and the socket's identity read", flags: vReadsOnly},
	{name: "+ entry checked against an epoch word", flags: vEpoch},
	{name: "entry index from a config load", flags: vConfigIndex},
	{name: "- count (slot known, nothing written)", flags: vNoCount},
	{name: "- per-CPU sum", flags: vNoSum},
	{name: "count and sum in the entry's line, no row (tcprtt's way)", flags: vInEntry},
}

// variantCosts measures every variant side by side with the empty and the
// reference-style program (three attach orders, each at each position
// once) for several rounds, and prints per variant the medians over
// rounds of its run time, its ratios to both, and its cost above the
// empty program relative to today's path.
func variantCosts(roundTrips, rounds int, only string) {
	re, err := regexp.Compile(only)
	if err != nil {
		fail("-variants: %v", err)
	}
	// The modelled path (no flags) is the baseline of "vs the path": always
	// measured, first in the list.
	variants := allVariants[:1]
	for _, v := range allVariants[1:] {
		if re.MatchString(v.name) {
			variants = append(variants, v)
		}
	}
	empty, ref := emptyProgram(), referenceProgram(false)
	defer empty.Close()
	defer ref.Close()
	above := make([][]float64, len(variants)) // ns above empty, per round
	vsEmpty := make([][]float64, len(variants))
	vsRef := make([][]float64, len(variants))
	ns := make([][]float64, len(variants))
	for r := range rounds {
		for vi, v := range variants {
			var c contender
			var p *ebpf.Program
			switch {
			case v.load != nil:
				p = v.load()
			case v.product:
				c = tcprttContender("tcprtt", defaultSpec())
			default:
				p = variantProgram(v.flags)
			}
			if p != nil {
				c = loadedContender("variant", p)
			}
			cs := []contender{c, loadedContender("empty", empty), loadedContender("reference", ref)}
			pooled := make([]runStats, len(cs))
			for _, o := range rotations(len(cs)) {
				st := sideBySide(cs, o, roundTrips)
				for i := range cs {
					pooled[i] = pooled[i].add(st[i])
				}
			}
			if p != nil {
				p.Close() // and with it the variant's maps
			}
			x, e, rf := pooled[0].perRun(), pooled[1].perRun(), pooled[2].perRun()
			ns[vi] = append(ns[vi], x)
			above[vi] = append(above[vi], x-e)
			vsEmpty[vi] = append(vsEmpty[vi], x/e)
			vsRef[vi] = append(vsRef[vi], x/rf)
			fmt.Printf("     round %d  %-52s %6.1f ns/run  empty %6.1f  reference %6.1f\n", r+1, v.name, x, e, rf)
		}
	}
	const path = 0
	fmt.Printf("\n   variant costs over %d rounds, median (min–max); \"above empty\" = variant − empty in the same batch\n\n", rounds)
	fmt.Println("| variant | ns/run | above empty, ns | vs the path, ns | / empty | / reference |")
	fmt.Println("|---|---|---|---|---|---|")
	for vi, v := range variants {
		fmt.Printf("| %s | %s | %s | %+.0f | %s | %s |\n", v.name, spread(ns[vi], 0), spread(above[vi], 0),
			median(above[vi])-median(above[path]), spread(vsEmpty[vi], 2), spread(vsRef[vi], 2))
	}
}
