// Command tcprtt prints histograms of the smoothed round-trip time of
// established TCP connections in the terminal, in the layout of the tcprtt
// tool of bcc/libbpf-tools. It loads the same eBPF program, with the same
// exact bucket tables, as the tcprtt receiver of the OpenTelemetry
// Collector (internal/loader, internal/bucket). Run `tcprtt -h` for usage.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/reader"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills the process the usual way.
	context.AfterFunc(ctx, stop)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole command; it returns the exit status. Cancelling ctx
// (Ctrl-C) prints the interval in progress and returns 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage())
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "tcprtt: %v\nRun 'tcprtt -h' for usage.\n", err)
		return 2
	}
	spec, err := opts.spec()
	if err != nil {
		fmt.Fprintf(stderr, "tcprtt: %v\n", err)
		return 1
	}
	tracer, err := loader.Open(spec)
	if err != nil {
		fmt.Fprintf(stderr, "tcprtt: %v\n", err)
		return 1
	}
	defer tracer.Close()
	if opts.verbose {
		for _, a := range tracer.Attempts() {
			fmt.Fprintf(stderr, "tcprtt: attach flavour %s refused: %v\n", a.Mode, a.Err)
		}
		fmt.Fprintf(stderr, "tcprtt: attached with flavour %s (%s)\n", tracer.Mode(), tracer.Mode().Hook())
		if spec.GroupBy != 0 {
			fmt.Fprintf(stderr, "tcprtt: up to %d addresses get their own histogram\n", spec.MaxSeries)
		}
	}

	out := bufio.NewWriter(stdout)
	r := &renderer{
		table:     spec.Table,
		unitName:  unitName(spec.Table.Unit),
		groupBy:   spec.GroupBy,
		maxSeries: spec.MaxSeries,
		extended:  opts.extended,
	}
	p := &printer{tracer: tracer, intervals: newIntervals(spec.GroupBy, spec.Table.NumBuckets), r: r, out: out, timestamp: opts.timestamp}
	if spec.GroupBy.Has(kmaps.GroupCgroup) {
		m, err := cgroup.LocateMount()
		if err != nil {
			fmt.Fprintf(stderr, "tcprtt: -C: %v\n", err)
			return 1
		}
		if m.Fallback != nil {
			fmt.Fprintf(stderr, "tcprtt: warning: -C: %v\n", m.Fallback)
		}
		p.cgroups = cgroup.NewResolver(m.Path)
		p.cgroups.OnProblem = func(err error) { fmt.Fprintf(stderr, "tcprtt: warning: -C: %v\n", err) }
		if err := p.cgroups.HandleErr(); err != nil {
			fmt.Fprintf(stderr, "tcprtt: warning: -C: new cgroups are named by a walk of the hierarchy, "+
				"so one may show without its path for an interval (opening them by id needs CAP_DAC_READ_SEARCH): %v\n", err)
		}
		_ = p.cgroups.Start() // a walk error went to OnProblem
		defer p.cgroups.Close()
		r.cgroupName = func(id uint64) string { return cgroupName(p.cgroups.Lookup(id)) }
	}

	if opts.duration > 0 {
		fmt.Fprintf(out, "Tracing TCP RTT for %s secs.\n", formatSeconds(opts.duration))
	} else {
		fmt.Fprintln(out, "Tracing TCP RTT... Hit Ctrl-C to end.")
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintf(stderr, "tcprtt: %v\n", err)
		return 1
	}

	err = loop(ctx, opts.interval, opts.duration, p.print)
	if err != nil {
		fmt.Fprintf(stderr, "tcprtt: %v\n", err)
		return 1
	}
	if opts.verbose {
		fmt.Fprintf(stderr, "tcprtt: %d samples filtered out, %d samples not placed (expected 0)\n",
			p.snap.Stats.Filtered, p.snap.Stats.Errors)
	}
	return 0
}

// cgroupName is the path of a cgroup (its last one if it was removed
// since), or its id when the path is not known: removed before it could
// be looked up, or not found yet by the walk (without the capability to
// open cgroups by id).
func cgroupName(info cgroup.Info) string {
	switch {
	case info.Path != "":
		return info.Path
	case info.ID == 0:
		return "(unknown)"
	case info.Gone:
		return fmt.Sprintf("(id %d, removed)", info.ID)
	}
	return fmt.Sprintf("(id %d, path not known yet)", info.ID)
}

// lookupCgroups looks up the cgroup of every series the kernel holds,
// printed in this interval or not, so that the resolver keeps a removed
// cgroup's last path as long as its series lives (it forgets an id after
// a round without a lookup).
func lookupCgroups(r *cgroup.Resolver, snap *kmaps.Snapshot) {
	for i := range snap.Series {
		if id := snap.Series[i].Key.Cgroup; id != 0 {
			r.Lookup(id)
		}
	}
}

// formatSeconds prints d in seconds without a trailing ".0".
func formatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// loop calls print every interval (if > 0) counted from now, and once
// more at the end: after duration (if > 0) or when ctx is cancelled. An
// interval boundary that coincides with the end prints once.
func loop(ctx context.Context, interval, duration time.Duration, print func() error) error {
	start := time.Now()
	var deadline time.Time
	if duration > 0 {
		deadline = start.Add(duration)
	}
	k := int64(1)
	for {
		var next time.Time
		if interval > 0 {
			next = start.Add(time.Duration(k) * interval)
		}
		last := false
		if !deadline.IsZero() && (next.IsZero() || !next.Before(deadline)) {
			next, last = deadline, true
		}
		var tick <-chan time.Time
		var timer *time.Timer
		if !next.IsZero() {
			timer = time.NewTimer(time.Until(next))
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return print()
		case <-tick:
		}
		if err := print(); err != nil || last {
			return err
		}
		// Skip boundaries already past (a slow terminal, a suspended
		// process): the next print still covers every sample since this one.
		for now := time.Now(); interval > 0 && !start.Add(time.Duration(k)*interval).After(now); {
			k++
		}
	}
}

// printer reads the maps and prints one interval.
type printer struct {
	tracer    *loader.Tracer
	intervals *intervals
	r         *renderer
	out       *bufio.Writer
	timestamp bool

	snap    kmaps.Snapshot
	rows    []uint64
	cgroups *cgroup.Resolver // with -C
}

func (p *printer) print() error {
	if err := p.tracer.Read(&p.snap, &p.rows); err != nil {
		var lifecycle *reader.LifecycleError
		if !errors.As(err, &lifecycle) {
			return err
		}
		fmt.Fprintf(os.Stderr, "tcprtt: %v (retried at the next interval)\n", err) // the snapshot is complete
	}
	stamp := ""
	if p.timestamp {
		stamp = time.Now().Format("15:04:05")
	}
	if p.cgroups != nil {
		lookupCgroups(p.cgroups, &p.snap)
	}
	if err := p.r.writeInterval(p.out, stamp, p.intervals.next(&p.snap)); err != nil {
		return err
	}
	if p.cgroups != nil {
		p.cgroups.EndRound()
	}
	return p.out.Flush()
}
