//go:build !race

// The race detector makes this sweep of 3·2^32 values take many minutes;
// `make test` runs it in a separate, non-race pass.

package bucket

import (
	"fmt"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExhaustive checks every uint32 raw for a few tables against the
// verified BoundaryRaws by walking them in order. Every cell in every octave
// is covered, including the scale-8 tables whose cells are closest to
// holding two boundaries. Skipped with -short.
func TestExhaustive(t *testing.T) {
	if testing.Short() {
		t.Skip("exhaustive uint32 sweep skipped in -short mode")
	}
	for _, c := range []struct {
		scale int
		unit  Unit
	}{{8, Milliseconds}, {8, Seconds}, {3, Microseconds}} {
		tbl, err := NewTable(c.scale, c.unit)
		require.NoError(t, err)
		br := tbl.BoundaryRaws()
		const parts = 8
		for part := range uint64(parts) {
			lo := max(1, part<<32/parts)
			hi := (part+1)<<32/parts - 1
			t.Run(fmt.Sprintf("scale=%d/unit=%s/%d..%d", c.scale, c.unit, lo, hi), func(t *testing.T) {
				t.Parallel()
				p := uint32(sort.Search(len(br), func(i int) bool { return uint64(br[i]) >= lo }))
				for raw := lo; raw <= hi; raw++ {
					for int(p) < len(br) && uint64(br[p]) < raw {
						p++
					}
					if got := tbl.Position(uint32(raw)); got != p {
						t.Fatalf("Position(%d) = %d, want %d", raw, got, p)
					}
				}
			})
		}
	}
}
