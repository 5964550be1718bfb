//go:build linux

package loader

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// bucketsPerSeries is how many adjacent buckets each injected series
// fills, about what a real peer's RTT spread gives at scale 3.
const bucketsPerSeries = 30

// injected opens a tracer whose filters exclude all real traffic and
// writes n series straight into its maps, as the program would have.
func injected(tb testing.TB, n int) *Tracer {
	tb.Helper()
	testenv.RequireBPF(tb)
	table, err := bucket.NewTable(3, bucket.Seconds)
	if err != nil {
		tb.Fatal(err)
	}
	t, err := Open(Spec{
		Mode: ModeTpBtf, GroupBy: kmaps.GroupRemoteAddress, Table: table,
		MaxSeries: uint32(n), RemotePorts: []uint16{1}, // nothing real matches
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.Close() })

	keys := make([]kmaps.Key, n)
	refs := make([]kmaps.Ref, n)
	for i := range n {
		var slot uint32
		if err := t.free.LookupAndDelete(nil, &slot); err != nil {
			tb.Fatal(err)
		}
		keys[i] = kmaps.Key{Family: 4, RemoteAddr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).As16()}
		refs[i] = kmaps.Ref{Slot: slot}
		first := uint32(100 + i%50) // spread the series over the range a bit
		var sum uint64
		for b := range uint32(bucketsPerSeries) {
			t.storeWord(slot, kmaps.RowBuckets+first+b, uint64(b+1))
			sum += uint64(b + 1)
		}
		*t.sumWord(0, slot) = sum * 1000
	}
	if _, err := t.index.BatchUpdate(keys, refs, &ebpf.BatchOptions{}); err != nil {
		tb.Fatal(err)
	}
	return t
}

var seriesCounts = []int{100, 1000, 10000}

// BenchmarkRead is the bare map read: the series index (batched lookups)
// and every series' row from the mmapped counts array.
func BenchmarkRead(b *testing.B) {
	for _, n := range seriesCounts {
		b.Run(fmt.Sprintf("series=%d", n), func(b *testing.B) {
			t := injected(b, n)
			var snap kmaps.Snapshot
			var rows []uint64
			b.ReportAllocs()
			for b.Loop() {
				if err := t.Read(&snap, &rows); err != nil {
					b.Fatal(err)
				}
			}
			if len(snap.Series) != n {
				b.Fatalf("read %d series, want %d", len(snap.Series), n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/series")
		})
	}
}

// BenchmarkScrape is what a scrape does: the same read, then conversion
// into the tcp.rtt pmetric. It also reports the heap in use afterwards.
func BenchmarkScrape(b *testing.B) {
	for _, n := range seriesCounts {
		b.Run(fmt.Sprintf("series=%d", n), func(b *testing.B) {
			t := injected(b, n)
			c, err := convert.New(convert.Options{
				Table: t.spec.Table, GroupBy: t.spec.GroupBy, Temporality: convert.Cumulative, Start: t.AttachedAt(),
			})
			if err != nil {
				b.Fatal(err)
			}
			var snap kmaps.Snapshot
			var rows []uint64
			var md pmetric.Metrics
			b.ReportAllocs()
			for b.Loop() {
				if err := t.Read(&snap, &rows); err != nil {
					b.Fatal(err)
				}
				md = pmetric.NewMetrics()
				c.Append(&snap, time.Now(), md.ResourceMetrics().AppendEmpty().ScopeMetrics().AppendEmpty().Metrics())
			}
			if got := md.DataPointCount(); got != n {
				b.Fatalf("%d points, want %d", got, n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/series")
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MiB-heap")
			runtime.KeepAlive(md)
		})
	}
}
