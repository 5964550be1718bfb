//go:build linux

package loader

import (
	"runtime"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Whether the kernel has BPF atomics that return the old value (5.12+),
// probed once with a program that uses one.
var (
	fetchAtomicsOnce sync.Once
	fetchAtomics     bool
)

func haveFetchAtomics() bool {
	fetchAtomicsOnce.Do(func() {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.SocketFilter,
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R1, 0),
				asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
				asm.Mov.Imm(asm.R1, 1),
				asm.FetchAdd.Mem(asm.RFP, asm.R1, asm.DWord, -8),
				asm.Mov.Imm(asm.R0, 0),
				asm.Return(),
			},
			License: "GPL",
		})
		if err == nil {
			p.Close()
			fetchAtomics = true
		}
	})
	return fetchAtomics
}

// withoutFetchAtomics rewrites the program's fetching atomic adds into
// plain ones, for kernels that refuse the former (before 5.12, even in
// code the verifier would find dead). The program uses them only to
// bracket a window's move with full barriers, and keeps the fetched
// value nowhere that matters; a plain locked add is one on x86, and
// elsewhere entry counting is off without them (entryCountsOrdered).
func withoutFetchAtomics(ps *ebpf.ProgramSpec) {
	for i := range ps.Instructions {
		ins := &ps.Instructions[i]
		if ins.OpCode.Class().IsStore() && ins.OpCode.Mode() == asm.AtomicMode && ins.OpCode.AtomicOp() == asm.FetchAdd {
			ins.OpCode = asm.AddAtomic.OpCode(ins.OpCode.Size())
		}
	}
}

// entryCountsOrdered reports whether the program can count samples in its
// socket cache entries: user space reads an entry consistently with its
// row only if the program's adds to the entry's sequence word are full
// barriers, as fetching atomics are everywhere and x86's locked adds are.
// Elsewhere (arm64 before 5.12) samples are counted in the rows only.
func entryCountsOrdered(fetch bool) bool {
	return fetch || runtime.GOARCH == "amd64"
}
