//go:build linux

package loader

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/tcprtt/tcprtt/bpf"
)

// withoutFetchAtomics rewrites the program's fetching atomic adds into
// plain ones, for kernels that refuse the former (before 5.12, even in
// code the verifier would find dead). The program uses them only to
// bracket a window's move with full barriers, and keeps the fetched
// value nowhere that matters; a plain locked add is one on x86, and
// elsewhere entry counting is off without them (loadCollection).
func withoutFetchAtomics(ps *ebpf.ProgramSpec) {
	for i := range ps.Instructions {
		ins := &ps.Instructions[i]
		if ins.OpCode.Class().IsStore() && ins.OpCode.Mode() == asm.AtomicMode && ins.OpCode.AtomicOp() == asm.FetchAdd {
			ins.OpCode = asm.AddAtomic.OpCode(ins.OpCode.Size())
			ins.Constant = 0 // the immediate carries the atomic operation
		}
	}
}

// loadCollection creates the maps and the program of cs, counting in the
// socket cache entries unless spec.RowCountsOnly. Kernels before 5.12
// refuse the program's fetching atomics, in a pass over every instruction
// ("BPF_STX uses reserved fields"); other refusals are possible where a
// JIT lacks them. Then it is loaded again with plain atomic adds, which
// are full barriers on x86 only: elsewhere the samples are counted in the
// rows. It reports whether the loaded program counts in the entries.
func loadCollection(cs *ebpf.CollectionSpec, progName string, spec *Spec) (*ebpf.Collection, bool, error) {
	opts := ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: spec.KernelTypes}}
	entryCounts := !spec.RowCountsOnly
	if err := cs.Variables[bpf.TcprttVarCfgEntryCounts].Set(entryCounts); err != nil {
		return nil, false, fmt.Errorf("set %s: %w", bpf.TcprttVarCfgEntryCounts, err)
	}
	coll, err := ebpf.NewCollectionWithOptions(cs, opts)
	if err == nil {
		return coll, entryCounts, nil
	}
	withoutFetchAtomics(cs.Programs[progName])
	entryCounts = entryCounts && runtime.GOARCH == "amd64"
	if err := cs.Variables[bpf.TcprttVarCfgEntryCounts].Set(entryCounts); err != nil {
		return nil, false, fmt.Errorf("set %s: %w", bpf.TcprttVarCfgEntryCounts, err)
	}
	coll, retryErr := ebpf.NewCollectionWithOptions(cs, opts)
	if retryErr == nil {
		return coll, entryCounts, nil
	}
	if strings.Contains(err.Error(), "uses reserved fields") {
		return nil, false, retryErr // the atomics were the first refusal, not the last
	}
	return nil, false, err
}
