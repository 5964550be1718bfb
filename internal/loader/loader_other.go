//go:build !linux

package loader

import (
	"context"
	"errors"
	"runtime"
	"time"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// ErrNotLinux is returned by Open on every other OS: eBPF tracing of TCP
// is Linux only.
var ErrNotLinux = errors.New("requires Linux: the program is eBPF, which this OS does not have")

// Tracer is never created outside Linux.
type Tracer struct{}

// Open always fails outside Linux.
func Open(Spec) (*Tracer, error) { return nil, ErrNotLinux }

func (*Tracer) Mode() Mode                            { return "" }
func (*Tracer) Attempts() []Attempt                   { return nil }
func (*Tracer) AttachedAt() time.Time                 { return time.Time{} }
func (*Tracer) Layout() kmaps.Layout                  { return kmaps.Layout{} }
func (*Tracer) Read(*kmaps.Snapshot, *[]uint64) error { return ErrNotLinux }
func (*Tracer) ReadContext(context.Context, *kmaps.Snapshot, *[]uint64) error {
	return ErrNotLinux
}
func (*Tracer) Close() error { return nil }

func (*Tracer) RetransMode() Mode          { return "" }
func (*Tracer) RetransAttempts() []Attempt { return nil }

// PossibleCPUs is the number of CPUs per-CPU maps would be sized for.
func PossibleCPUs() int { return runtime.NumCPU() }

// Probe always fails outside Linux.
func Probe(Mode) error { return ErrNotLinux }
