package main

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestLoop runs in a synctest bubble: its clock advances only when every
// goroutine of the test waits, so a print is never late by the machine's
// load (a slow VM once made the 200 ms boundary pass unprinted).
func TestLoop(t *testing.T) {
	synctest.Test(t, testLoop)
}

func testLoop(t *testing.T) {
	count := func(interval, duration time.Duration, cancelAfter time.Duration) (int, time.Duration) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if cancelAfter > 0 {
			time.AfterFunc(cancelAfter, cancel)
		}
		n := 0
		start := time.Now()
		if err := loop(ctx, interval, duration, func() error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n, time.Since(start)
	}
	// Every interval, then the partial last one at the deadline.
	if n, took := count(100*time.Millisecond, 250*time.Millisecond, 0); n != 3 || took < 250*time.Millisecond {
		t.Errorf("-i 0.1 -d 0.25: %d prints in %v, want 3 in >= 250ms", n, took)
	}
	// A boundary at the deadline prints once.
	if n, _ := count(50*time.Millisecond, 100*time.Millisecond, 0); n != 2 {
		t.Errorf("-i 0.05 -d 0.1: %d prints, want 2", n)
	}
	// Without -i, once at the end.
	if n, _ := count(0, 50*time.Millisecond, 0); n != 1 {
		t.Errorf("-d 0.05: %d prints, want 1", n)
	}
	// Interrupted: the partial interval is printed.
	if n, took := count(0, 0, 50*time.Millisecond); n != 1 || took > 5*time.Second {
		t.Errorf("Ctrl-C: %d prints after %v, want 1", n, took)
	}
	if n, _ := count(100*time.Millisecond, 0, 250*time.Millisecond); n != 3 {
		t.Errorf("-i 0.1, Ctrl-C at 0.25: %d prints, want 3", n)
	}
	// A print error ends the loop.
	boom := errors.New("boom")
	if err := loop(context.Background(), time.Millisecond, 0, func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("loop error = %v, want boom", err)
	}
}
