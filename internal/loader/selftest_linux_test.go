//go:build linux

package loader

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// kernelPositions runs the program's own bucket_position over raws in the
// kernel (BPF_PROG_RUN of bucket_selftest) with table loaded as the
// program's constants.
func kernelPositions(t *testing.T, table *bucket.Table, raws []uint32) []uint32 {
	t.Helper()
	cs, err := collectionSpec()
	if err != nil {
		t.Fatal(err)
	}
	for name := range cs.Programs {
		if name != bpf.TcprttProgBucketSelftest {
			delete(cs.Programs, name)
		}
	}
	spec := Spec{Table: table, MaxSeries: 1}
	if err := configure(cs, &spec); err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		t.Fatalf("load bucket_selftest: %v", err)
	}
	defer coll.Close()
	prog := coll.Programs[bpf.TcprttProgBucketSelftest]
	m := coll.Maps[bpf.TcprttMapSelftest]

	var out []uint32
	for len(raws) > 0 {
		var in, res bpf.TcprttSelftestValues
		n := copy(in.V[:], raws)
		raws = raws[n:]
		if err := m.Put(uint32(0), &in); err != nil {
			t.Fatal(err)
		}
		ret, err := prog.Run(&ebpf.RunOptions{})
		if err != nil || ret != 0 {
			t.Fatalf("run bucket_selftest: ret %d, %v", ret, err)
		}
		if err := m.Lookup(uint32(1), &res); err != nil {
			t.Fatal(err)
		}
		out = append(out, res.V[:n]...)
	}
	return out
}

// TestKernelBucketChoice checks, for every scale and unit, that the
// kernel puts the values at and around every bucket boundary where the
// exact Go reference does.
func TestKernelBucketChoice(t *testing.T) {
	testenv.RequireBPF(t)
	for scale := bucket.MinScale; scale <= bucket.MaxScale; scale++ {
		for _, unit := range []bucket.Unit{bucket.Seconds, bucket.Milliseconds, bucket.Microseconds} {
			t.Run(fmt.Sprintf("scale%d/%s", scale, unit), func(t *testing.T) {
				table, err := bucket.NewTable(scale, unit)
				if err != nil {
					t.Fatal(err)
				}
				raws := []uint32{1, 2, 3, 1<<32 - 1}
				for k := 2; k < 32; k++ {
					raws = append(raws, 1<<k-1, 1<<k, 1<<k+1)
				}
				last := uint32(0)
				for _, b := range table.BoundaryRaws() {
					if b == last {
						continue // an empty bucket: no raw value falls in it
					}
					last = b
					raws = append(raws, b, b+1)
					if b > 1 {
						raws = append(raws, b-1)
					}
				}
				got := kernelPositions(t, table, raws)
				for i, raw := range raws {
					want := bucket.ReferenceIndex(raw, table.Divisor, scale) - table.MinIndex
					if got[i] != uint32(want) {
						t.Fatalf("raw %d: kernel position %d, reference %d", raw, got[i], want)
					}
				}
				t.Logf("%d values checked", len(raws))
			})
		}
	}
}
