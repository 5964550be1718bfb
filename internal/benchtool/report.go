//go:build linux

package main

import "fmt"

// report is the summary table of a run, in the form of README's
// performance table.
type report struct {
	date             string
	perEvent         []perEventResult
	throughput       float64 // 0: not measured
	throughputEmpty  float64
	throughputConfig string
}

func (r report) print() {
	if len(r.perEvent) == 0 && r.throughput == 0 {
		return
	}
	fmt.Printf("\nSummary (markdown, for README's performance table; measured %s, medians with the range over rounds):\n\n", r.date)
	fmt.Println("| what | tcprtt | empty program | reference-style program | tcprtt / empty | tcprtt / reference | target |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, p := range r.perEvent {
		target := "≤ 2× / ≤ 0.75×"
		if p.config == "heavy" {
			target = "≤ 3× empty"
		}
		fmt.Printf("| per-event ns/run, %s config, pooled over %d attach orders, %d rounds | %s | %s | %s | %s | %s | %s |\n",
			p.config, p.orders, p.rounds, spread(p.ns[cTcprtt], 0), spread(p.ns[cEmpty], 0), spread(p.ns[cReference], 0),
			spread(p.vsEmpty, 2), spread(p.vsRef, 2), target)
		fmt.Printf("| … %s config, when first on the hook (pays the socket's misses; all rounds) | %.0f | %.0f | %.0f | %.2f | %.2f | |\n",
			p.config, p.first[cTcprtt].perRun(), p.first[cEmpty].perRun(), p.first[cReference].perRun(),
			p.first[cTcprtt].perRun()/p.first[cEmpty].perRun(), p.first[cTcprtt].perRun()/p.first[cReference].perRun())
	}
	if r.throughput != 0 {
		fmt.Printf("| loopback request/response throughput with the program / without (%s config; 4 connections) | %.3f | %.3f | | | | ≥ 0.98 |\n",
			r.throughputConfig, r.throughput, r.throughputEmpty)
	}
}
