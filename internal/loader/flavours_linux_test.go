//go:build linux

package loader

import (
	"errors"
	"sync"
	"testing"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

var (
	probeMu   sync.Mutex
	probeSeen = map[Mode]error{}
)

// probed returns Probe(m), once per test binary.
func probed(m Mode) error {
	probeMu.Lock()
	defer probeMu.Unlock()
	err, ok := probeSeen[m]
	if !ok {
		err = Probe(m)
		probeSeen[m] = err
	}
	return err
}

// requireFlavour skips t, with the kernel's reason, if the running kernel
// refuses flavour m. tools/kernels checks the refusals against the
// flavours each kernel of the matrix is expected to attach.
func requireFlavour(t *testing.T, m Mode) {
	t.Helper()
	if err := probed(m); err != nil {
		t.Skipf("flavour %s refused by this kernel: %v", m, err)
	}
}

// TestFlavours reports which flavours this kernel attaches, one
// "tcprtt-flavour" line each (the kernel matrix reads them), and checks
// that every refusal is explained (a LoadError with a known cause) and
// that auto picks the first flavour the kernel accepts.
func TestFlavours(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
	first := Mode("")
	for _, m := range AutoModes() {
		err := probed(m)
		if err == nil {
			t.Logf("tcprtt-flavour %s attached", m)
			if first == "" {
				first = m
			}
			continue
		}
		var le *LoadError
		if !errors.As(err, &le) || le.Cause == CauseOther {
			t.Errorf("%s: refusal not explained: %v", m, err)
			le = &LoadError{Cause: CauseOther}
		}
		t.Logf("tcprtt-flavour %s refused (%s): %v", m, le.Cause, err)
	}
	if first == "" {
		t.Fatal("no flavour attaches on this kernel")
	}
	tr, err := Open(Spec{Mode: ModeAuto, Table: testTable(t), MaxSeries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Mode() != first {
		t.Errorf("auto attached %s, want %s (the first flavour Probe accepts)", tr.Mode(), first)
	}
	if len(tr.Attempts()) != indexOf(first) {
		t.Errorf("auto reports %d refused attempts before %s: %v", len(tr.Attempts()), first, tr.Attempts())
	}
}

func indexOf(m Mode) int {
	for i, v := range AutoModes() {
		if v == m {
			return i
		}
	}
	return -1
}
