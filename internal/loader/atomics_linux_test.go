//go:build linux

package loader

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/asm"

	"github.com/tcprtt/tcprtt/bpf"
)

func countAtomics(insns asm.Instructions, op asm.AtomicOp) int {
	n := 0
	for _, ins := range insns {
		if ins.OpCode.Class().IsStore() && ins.OpCode.Mode() == asm.AtomicMode && ins.OpCode.AtomicOp() == op {
			n++
		}
	}
	return n
}

// TestWithoutFetchAtomics: for kernels before 5.12, which refuse a
// program with any fetching atomic (even where the verifier would find it
// dead), every one of them becomes a plain atomic add, and nothing else
// changes.
func TestWithoutFetchAtomics(t *testing.T) {
	cs, err := bpf.LoadTcprtt()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bpf.TcprttProgTcprttFentry, bpf.TcprttProgTcprttTpBtf, bpf.TcprttProgTcprttRawTp, bpf.TcprttProgTcprttTracepoint} {
		ps := cs.Programs[name].Copy()
		fetch, plain := countAtomics(ps.Instructions, asm.FetchAdd), countAtomics(ps.Instructions, asm.AddAtomic)
		if fetch == 0 {
			t.Fatalf("%s: no fetching add (the window's move is bracketed by two)", name)
		}
		before := len(ps.Instructions)
		withoutFetchAtomics(ps)
		if n := countAtomics(ps.Instructions, asm.FetchAdd); n != 0 {
			t.Errorf("%s: %d fetching adds left", name, n)
		}
		if n := countAtomics(ps.Instructions, asm.AddAtomic); n != plain+fetch {
			t.Errorf("%s: %d plain adds, want %d", name, n, plain+fetch)
		}
		if len(ps.Instructions) != before {
			t.Errorf("%s: %d instructions, want %d", name, len(ps.Instructions), before)
		}
		// As the kernel reads them: an atomic's immediate is its operation.
		var b bytes.Buffer
		for i, ins := range ps.Instructions {
			b.Reset()
			if _, err := ins.Marshal(&b, binary.LittleEndian); err != nil {
				t.Fatal(err)
			}
			raw := b.Bytes()
			if raw[0]&0x07 == 0x03 && raw[0]&0xe0 == 0xc0 && binary.LittleEndian.Uint32(raw[4:8]) != 0 {
				t.Errorf("%s: instruction %d (%v) still has atomic operation %#x", name, i, ins, binary.LittleEndian.Uint32(raw[4:8]))
			}
		}
	}
}
