//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
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

// throughput alternates runs without and with the receiver's program
// attached, in ABBA order so that a drift of the machine's speed cancels
// out, and reports the medians and the median of the per-pair ratios,
// which it returns.
func throughput(config string, runs int, d time.Duration) float64 {
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
	fmt.Printf("   ratio with/without: %.3f (median of pair ratios; ratio of medians %.3f; pair ratios %.3f–%.3f)\n",
		median(ratios), median(with)/median(without), slices.Min(ratios), slices.Max(ratios))
	return median(ratios)
}

func rounded(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}
