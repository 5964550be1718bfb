//go:build linux

package main

import (
	"fmt"
	"regexp"

	"github.com/cilium/ebpf"
)

// A variant of the per-segment path: today's cached path of tcprtt
// (bench_variant with no flags) with parts switched off or moved.
type variant struct {
	name  string
	flags uint32
	// Programs other than bench_variant (the product, the reference with
	// direct reads) are measured the same way for comparison.
	load    func() *ebpf.Program
	product bool // tcprtt_tp_btf itself, loaded by the loader
}

// allVariants starts with today's path, the baseline.
var allVariants = []variant{
	{name: "today: sk_storage, generation, bucket, per-CPU sum"},
	{name: "tcprtt_tp_btf (the product, default config)", product: true},
	{name: "reference with direct reads (bpf_rdonly_cast)", load: func() *ebpf.Program { return referenceProgram(true) }},
	{name: "today, 8-byte sk_storage value (as tcprtt's)", flags: vSmallSk},
	{name: "- generation check", flags: vNoGen},
	{name: "- per-CPU sum", flags: vNoSum},
	{name: "sum as atomic add in the row (generation's line)", flags: vSumInRow},
	{name: "- sk_storage (series known)", flags: vDirect},
	{name: "- bucket add", flags: vNoBucket},
	{name: "- table read (octave only)", flags: vNoTable},
	{name: "bucket word on the generation's line", flags: vOneLine},
	{name: "bucket counts in a per-CPU row", flags: vPercpuRow},
	{name: "A: - generation, bucket+sum on one row line", flags: vNoGen | vSumInRow | vOneLine},
	{name: "B: - generation, bucket on one line, per-CPU sum", flags: vNoGen | vOneLine},
	{name: "C: - generation, per-CPU row, per-CPU sum", flags: vNoGen | vPercpuRow},
	{name: "D: no sk_storage, row by address hash, key+bucket+sum on one line", flags: vAddrRow | vNoGen | vSumInRow | vOneLine},
	{name: "D': as D, per-CPU sum", flags: vAddrRow | vNoGen | vOneLine},
	{name: "sk_storage lookup only", flags: vNoGen | vNoSum | vNoBucket},
	{name: "counts in the socket's storage only", flags: vSkCounts},
	{name: "floor: srtt + table read only", flags: vDirect | vNoGen | vNoSum | vNoBucket},
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
	// Today's path (no flags) is the baseline of "vs today's path": always
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
	const today = 0
	fmt.Printf("\n   variant costs over %d rounds, median (min–max); \"above empty\" = variant − empty in the same batch\n\n", rounds)
	fmt.Println("| variant | ns/run | above empty, ns | vs today's path, ns | / empty | / reference |")
	fmt.Println("|---|---|---|---|---|---|")
	for vi, v := range variants {
		fmt.Printf("| %s | %s | %s | %+.0f | %s | %s |\n", v.name, spread(ns[vi], 0), spread(above[vi], 0),
			median(above[vi])-median(above[today]), spread(vsEmpty[vi], 2), spread(vsRef[vi], 2))
	}
}
