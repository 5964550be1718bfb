//go:build !linux

package loader

import (
	"errors"
	"testing"
)

// On other systems the factory still builds (a multi-platform ocb build
// with tcprtt works) and Start fails with a clear error.
func TestOpenRequiresLinux(t *testing.T) {
	tr, err := Open(Spec{Mode: ModeAuto})
	if tr != nil || !errors.Is(err, ErrNotLinux) {
		t.Fatalf("Open = %v, %v; want ErrNotLinux", tr, err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
}
