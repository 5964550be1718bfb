//go:build linux

package loader

import (
	"testing"

	"github.com/cilium/ebpf/asm"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// TestTakePublishesSlotAfterBarrier: when the program takes a cache entry,
// the store of its slot word (which makes the entry visible to user
// space) follows a fetching atomic on the entry, a full barrier on every
// architecture, after the stores of its base and counts: a scan on a
// weakly ordered CPU that sees the slot sees the entry's base. (The slot
// was stored last by LLVM's choice only, with plain stores before it.)
func TestTakePublishesSlotAfterBarrier(t *testing.T) {
	spec, err := bpf.LoadTcprtt()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bpf.TcprttProgTcprttFentry, bpf.TcprttProgTcprttTpBtf, bpf.TcprttProgTcprttRawTp, bpf.TcprttProgTcprttTracepoint} {
		insns := spec.Programs[name].Instructions
		slotStores := 0
		fenced := false // a fetching atomic on the entry since its base was stored
		for _, ins := range insns {
			op := ins.OpCode
			if !op.Class().IsStore() {
				continue
			}
			switch {
			case op.Mode() == asm.AtomicMode && op.AtomicOp() == asm.FetchAdd && ins.Offset == kmaps.CacheSeqOffset:
				fenced = true
			case op.Mode() == asm.MemMode && ins.Offset == kmaps.CacheBaseOffset && op.Size() == asm.Word:
				fenced = false
			case op.Mode() == asm.MemMode && ins.Offset == kmaps.CacheSlotOffset && op.Size() == asm.Word:
				slotStores++
				if !fenced {
					t.Errorf("%s: the entry's slot is stored without a barrier after its base (%v)", name, ins)
				}
			}
		}
		if slotStores == 0 {
			t.Errorf("%s: no store of a cache entry's slot found", name)
		}
	}
}
