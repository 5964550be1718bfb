//go:build linux

package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/tcprtt/tcprtt/internal/loader"
)

// sideBySide attaches the contenders in order (indexes into cs), drives
// request/response traffic, detaches them and returns each contender's
// run statistics over the traffic, indexed like cs. Several programs on
// one tracepoint run in attach order; the first pays the socket's cache
// misses, so callers vary the order.
func sideBySide(cs []contender, order []int, roundTrips int) []runStats {
	progs := make([]*ebpf.Program, len(cs))
	detach := make([]func(), 0, len(cs))
	for _, i := range order {
		p, d := cs[i].attach()
		progs[i] = p
		detach = append(detach, d)
	}
	before := make([]runStats, len(cs))
	for i, p := range progs {
		before[i] = statsOf(p)
	}
	requestResponse(1, roundTrips)
	out := make([]runStats, len(cs))
	for i, p := range progs {
		out[i] = statsOf(p).sub(before[i])
	}
	for _, d := range detach {
		d()
	}
	return out
}

// permutations returns every order of n contenders.
func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for at := 0; at <= len(p); at++ {
			out = append(out, slices.Insert(slices.Clone(p), at, n-1))
		}
	}
	return out
}

// rotations returns the n cyclic orders of n contenders: each contender
// is at each position once.
func rotations(n int) [][]int {
	out := make([][]int, n)
	for r := range n {
		for i := range n {
			out[r] = append(out[r], (r+i)%n)
		}
	}
	return out
}

func orderString(cs []contender, order []int) string {
	names := make([]string, len(order))
	for k, i := range order {
		names[k] = cs[i].name
	}
	return strings.Join(names, " > ")
}

// Indexes of the three contenders of the per-event measurement.
const (
	cTcprtt = iota
	cEmpty
	cReference
)

// perEventResult is what perEvent measured, per round: each contender's
// run time per run pooled over all attach orders, and the ratios.
type perEventResult struct {
	config         string
	rounds, orders int
	ns             [3][]float64
	vsEmpty, vsRef []float64
	first          [3]runStats // pooled over the orders in which it ran first
}

// perEvent measures tcprtt with spec side by side with the empty program
// and the reference-style program, all three attached at once, in every
// attach order, for several rounds.
func perEvent(name string, spec loader.Spec, roundTrips, rounds int) perEventResult {
	empty, ref := emptyProgram(), referenceProgram(false)
	defer empty.Close()
	defer ref.Close()
	cs := []contender{tcprttContender("tcprtt", spec), loadedContender("empty", empty), loadedContender("reference", ref)}
	orders := permutations(len(cs))
	res := perEventResult{config: name, rounds: rounds, orders: len(orders)}
	fmt.Printf("   %s config: %d rounds of %d attach orders, %d round trips each (ns per run)\n", name, rounds, len(orders), roundTrips)
	for r := range rounds {
		pooled := make([]runStats, len(cs))
		for _, o := range orders {
			st := sideBySide(cs, o, roundTrips)
			res.first[o[0]] = res.first[o[0]].add(st[o[0]])
			for i := range cs {
				pooled[i] = pooled[i].add(st[i])
			}
			fmt.Printf("     round %d  %-28s tcprtt %s  empty %s  reference %s  (%d runs)\n",
				r+1, orderString(cs, o), st[cTcprtt], st[cEmpty], st[cReference], st[cTcprtt].runs)
		}
		for i := range cs {
			res.ns[i] = append(res.ns[i], pooled[i].perRun())
		}
		ve := pooled[cTcprtt].perRun() / pooled[cEmpty].perRun()
		vr := pooled[cTcprtt].perRun() / pooled[cReference].perRun()
		res.vsEmpty, res.vsRef = append(res.vsEmpty, ve), append(res.vsRef, vr)
		fmt.Printf("     round %d  pooled over the %d orders:  tcprtt %s  empty %s  reference %s  tcprtt/empty %.2f  tcprtt/reference %.2f\n",
			r+1, len(orders), pooled[cTcprtt], pooled[cEmpty], pooled[cReference], ve, vr)
	}
	fmt.Printf("   %s over %d rounds, median (min–max): tcprtt/empty %s, tcprtt/reference %s; ns/run tcprtt %s, empty %s, reference %s\n",
		name, rounds, spread(res.vsEmpty, 2), spread(res.vsRef, 2),
		spread(res.ns[cTcprtt], 0), spread(res.ns[cEmpty], 0), spread(res.ns[cReference], 0))
	fmt.Printf("   %s when first on the hook (pays the socket's misses), all rounds: tcprtt %s, empty %s, reference %s ns/run; tcprtt/reference %.2f\n",
		name, res.first[cTcprtt], res.first[cEmpty], res.first[cReference],
		res.first[cTcprtt].perRun()/res.first[cReference].perRun())
	fmt.Printf("   summary %s tcprtt/empty=%.3f tcprtt/reference=%.3f tcprtt_ns=%.1f empty_ns=%.1f reference_ns=%.1f\n",
		name, median(res.vsEmpty), median(res.vsRef), median(res.ns[cTcprtt]), median(res.ns[cEmpty]), median(res.ns[cReference]))
	return res
}

// spread formats the median of v and its range.
func spread(v []float64, decimals int) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", decimals, median(v), decimals, slices.Min(v), decimals, slices.Max(v))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
