package main

import (
	"strings"
	"testing"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// TestIntervalsRetransmits: each interval shows the segments retransmitted
// during it beside the histogram (-e), also for an address that only
// retransmitted (no sample in the interval).
func TestIntervalsRetransmits(t *testing.T) {
	table := mustTable(t, 0, bucket.Microseconds)
	key := remoteKey("127.0.0.3")
	iv := newIntervals(kmaps.GroupRemoteAddress, table.NumBuckets)

	s := series(table, key, samples{us(20): 5})
	s.Retransmits = 4
	hs := iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s}})
	if len(hs) != 1 || hs[0].retrans != 4 {
		t.Fatalf("first interval: %+v", hs)
	}
	s = series(table, key, samples{us(20): 5}) // no new sample
	s.Retransmits = 6
	hs = iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s}})
	if len(hs) != 1 || hs[0].retrans != 2 || hs[0].count() != 0 {
		t.Fatalf("retransmits only: %+v", hs)
	}
	r := &renderer{table: table, unitName: unitName(table.Unit), extended: true}
	var b strings.Builder
	if err := r.write(&b, hs[0]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "COUNT 0, RETRANS 2]") {
		t.Fatalf("header without the retransmits:\n%s", b.String())
	}
	if hs = iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s}}); len(hs) != 0 {
		t.Fatalf("nothing new, got %+v", hs)
	}
}
