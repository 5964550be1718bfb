//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/tcptest"
)

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

// throughput measures loopback request/response throughput without any
// program, with the receiver's program (config) and with the empty
// program alone, in rotating order so that a drift of the machine's speed
// falls on every arm alike. Each triple of runs gives the ratios
// with/without and empty/without; it prints their medians and ranges and
// returns the median with/without. The empty program's ratio is the hook's
// own cost plus the host's noise: what tcprtt's ratio can be compared with.
func throughput(config string, runs int, d time.Duration) (withRatio, emptyRatio float64) {
	const conns = 4
	timed := func() float64 {
		// What an arm allocated to load its program (the receiver's
		// loader, the parsed objects) is collected before the clock
		// starts, in every arm: a collection inside the window would be
		// charged to the program.
		runtime.GC()
		deadline := time.Now().Add(d)
		return drive(conns, func(*atomic.Int64) bool { return time.Now().After(deadline) })
	}
	empty := emptyProgram()
	defer empty.Close()
	withEmpty := func() float64 {
		l, err := link.AttachTracing(link.TracingOptions{Program: empty})
		if err != nil {
			fail("attach empty program: %v", err)
		}
		defer l.Close()
		return timed()
	}
	withTcprtt := func() float64 {
		if config == "empty" {
			return withEmpty()
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
	arms := []func() float64{timed, withTcprtt, withEmpty}
	tx := make([][]float64, len(arms))
	var ratios, emptyRatios []float64
	for i := range runs {
		got := make([]float64, len(arms))
		for _, a := range rotations(len(arms))[i%len(arms)] {
			got[a] = arms[a]()
			tx[a] = append(tx[a], got[a])
		}
		ratios, emptyRatios = append(ratios, got[1]/got[0]), append(emptyRatios, got[2]/got[0])
	}
	fmt.Printf("   %s config, %d connections, %d rotating triples of %s runs (none, tcprtt, empty program)\n", config, conns, runs, d)
	fmt.Printf("   without a program: median %8.0f tx/s\n", median(tx[0]))
	fmt.Printf("   with tcprtt:       median %8.0f tx/s\n", median(tx[1]))
	fmt.Printf("   with empty:        median %8.0f tx/s\n", median(tx[2]))
	fmt.Printf("   ratio with/without: %.3f (median of per-triple ratios, range %.3f–%.3f; ratio of medians %.3f)\n",
		median(ratios), slices.Min(ratios), slices.Max(ratios), median(tx[1])/median(tx[0]))
	fmt.Printf("   ratio empty/without: %.3f (range %.3f–%.3f): the hook alone and the host's noise\n",
		median(emptyRatios), slices.Min(emptyRatios), slices.Max(emptyRatios))
	fmt.Printf("   summary throughput with/without=%.3f empty/without=%.3f\n", median(ratios), median(emptyRatios))
	return median(ratios), median(emptyRatios)
}
