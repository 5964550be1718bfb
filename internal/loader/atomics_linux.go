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
				asm.StoreImm(asm.R10, -8, 0, asm.DWord),
				asm.Mov.Imm(asm.R1, 1),
				asm.FetchAdd.Mem(asm.R10, asm.R1, asm.DWord, -8),
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

// entryCountsOrdered reports whether the program can count samples in its
// socket cache entries: user space reads an entry consistently with its
// row only if the program's adds to the entry's sequence word are full
// barriers, as fetching atomics are everywhere and x86's locked adds are.
// Elsewhere (arm64 before 5.12) samples are counted in the rows only.
func entryCountsOrdered(fetch bool) bool {
	return fetch || runtime.GOARCH == "amd64"
}
