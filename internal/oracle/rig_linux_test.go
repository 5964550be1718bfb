//go:build linux

package oracle

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
	"github.com/tcprtt/tcprtt/internal/tcptest"
	"github.com/tcprtt/tcprtt/internal/testenv"
)

// rig is tcprtt, read as the receiver's scraper reads it (loader Read,
// then the converter), and the oracle on the same hook. It keeps what
// tcprtt exported per attribute set: in cumulative, the last point of
// each start time; in delta, every point added up.
type rig struct {
	t     testing.TB
	spec  loader.Spec
	temp  convert.Temporality
	tr    *loader.Tracer
	conv  *convert.Converter
	or    *Oracle
	snap  kmaps.Snapshot
	rows  []uint64
	reads int

	cum      map[string]map[pcommon.Timestamp]*Counts
	delta    map[string]*Counts
	dupes    []string // attribute sets exported twice in one batch
	overflow bool     // spec.MaxSeries can overflow: compare totals, not series
}

// subnet is the second byte of the 127.x.0.0/16 a rig's traffic uses:
// each rig its own, so sockets of earlier rigs (their FINs, say) are
// filtered out of later ones.
var subnet atomic.Uint32

func nextSubnet() byte { return byte(100 + subnet.Add(1)%150) }

func newRig(t testing.TB, spec loader.Spec, temp convert.Temporality) *rig {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.MountTracefs(t)
	tr, err := loader.Open(spec)
	require.NoError(t, err, "open tcprtt")
	t.Cleanup(func() { tr.Close() })
	// One word per series and bucket seen, two more per series: far more
	// than any scenario here makes.
	or, err := Open(spec, tr.Mode(), 1<<17)
	require.NoError(t, err, "open the oracle on tcprtt's flavour %s", tr.Mode())
	t.Cleanup(func() { or.Close() })
	conv, err := convert.New(convert.Options{Table: spec.Table, GroupBy: spec.GroupBy, Temporality: temp, Start: tr.AttachedAt()})
	require.NoError(t, err)
	return &rig{t: t, spec: spec, temp: temp, tr: tr, conv: conv, or: or,
		cum: map[string]map[pcommon.Timestamp]*Counts{}, delta: map[string]*Counts{}}
}

// scrape is one scrape: Read, convert, and keep the points.
func (r *rig) scrape() {
	r.t.Helper()
	require.NoError(r.t, r.tr.Read(&r.snap, &r.rows))
	r.reads++
	md := pmetric.NewMetrics()
	r.conv.AppendResources(&r.snap, time.Now(), md.ResourceMetrics(), func(pcommon.InstrumentationScope) {})
	seen := map[string]bool{}
	for _, dp := range testenv.RTTPoints(md) {
		attrs := fmt.Sprint(dp.Attributes().AsRaw())
		if seen[attrs] {
			r.dupes = append(r.dupes, fmt.Sprintf("read %d: %s", r.reads, attrs))
		}
		seen[attrs] = true
		c := r.counts(dp)
		if r.temp == convert.Delta {
			if r.delta[attrs] == nil {
				r.delta[attrs] = &Counts{}
			}
			r.delta[attrs].Add(c)
			continue
		}
		byStart := r.cum[attrs]
		if byStart == nil {
			byStart = map[pcommon.Timestamp]*Counts{}
			r.cum[attrs] = byStart
		}
		if prev := byStart[dp.StartTimestamp()]; prev != nil {
			require.GreaterOrEqual(r.t, c.Total, prev.Total, "cumulative count of %s went backwards within start time %v (read %d)",
				attrs, dp.StartTimestamp(), r.reads)
		}
		byStart[dp.StartTimestamp()] = c
	}
}

// counts turns an exported point back into the kernel's terms: bucket
// positions of the table and the raw sum.
func (r *rig) counts(dp pmetric.ExponentialHistogramDataPoint) *Counts {
	r.t.Helper()
	tb := r.spec.Table
	require.Equal(r.t, int32(tb.Scale), dp.Scale(), "points at the table's scale (no max_buckets)")
	require.Zero(r.t, dp.Negative().BucketCounts().Len())
	c := &Counts{Zero: dp.ZeroCount(), Buckets: map[uint32]uint64{}, Total: dp.Count()}
	c.Sum = uint64(math.Round(dp.Sum() * float64(tb.Divisor)))
	n := c.Zero
	for j, v := range dp.Positive().BucketCounts().All() {
		if v == 0 {
			continue
		}
		pos := dp.Positive().Offset() + int32(j) - tb.MinIndex
		require.GreaterOrEqual(r.t, pos, int32(0))
		c.Buckets[uint32(pos)] += v
		n += v
	}
	require.Equal(r.t, c.Total, n, "a point's count is its zero count and buckets")
	return c
}

// exported is what tcprtt exported per attribute set.
func (r *rig) exported() map[string]*Counts {
	out := map[string]*Counts{}
	if r.temp == convert.Delta {
		for a, c := range r.delta {
			out[a] = &Counts{}
			out[a].Add(c)
		}
		return out
	}
	for a, byStart := range r.cum {
		out[a] = &Counts{}
		for _, c := range byStart {
			out[a].Add(c)
		}
	}
	return out
}

// quiesce scrapes after traffic stopped until what tcprtt exported stays
// the same over three reads (drains take a read after the mark, a retired
// row another), at least five reads, and no segment reached the hook
// during them (the oracle's count unchanged): a straggler (a delayed
// ACK, a retransmission on a slow VM) would otherwise be in the oracle's
// counts and not yet in tcprtt's.
func (r *rig) quiesce() {
	r.t.Helper()
	time.Sleep(150 * time.Millisecond) // the last delayed ACKs
	for range 20 {
		before, err := r.or.Counted()
		require.NoError(r.t, err)
		last, same := "", 0
		for i := 0; i < 40 && (i < 5 || same < 3); i++ {
			r.scrape()
			now := fmt.Sprint(r.exported())
			if now == last {
				same++
			} else {
				same = 0
			}
			last = now
			time.Sleep(20 * time.Millisecond)
		}
		after, err := r.or.Counted()
		require.NoError(r.t, err)
		if before == after {
			return
		}
		r.t.Logf("%d samples arrived while quiescing: again", after-before)
	}
	r.t.Fatal("no quiet moment after the traffic stopped: segments kept reaching the hook")
}

// attrsOf is the attribute set of a series key under group_by g, as the
// receiver's points carry them (attributes of the semantic conventions).
func attrsOf(k kmaps.Key, g kmaps.GroupBy) string {
	m := map[string]any{}
	if g != 0 {
		if g.Has(kmaps.GroupLocalAddress) {
			m[convert.AttrLocalAddress] = k.LocalAddress().String()
		}
		if g.Has(kmaps.GroupLocalPort) {
			m[convert.AttrLocalPort] = int64(k.LocalPort)
		}
		if g.Has(kmaps.GroupRemoteAddress) {
			m[convert.AttrPeerAddress] = k.RemoteAddress().String()
		}
		if g.Has(kmaps.GroupRemotePort) {
			m[convert.AttrPeerPort] = int64(k.RemotePort)
		}
		m[convert.AttrNetworkType] = k.NetworkType()
	}
	return fmt.Sprint(m)
}

var overflowAttrs = fmt.Sprint(map[string]any{convert.AttrOverflow: true})

// compare checks tcprtt's exported totals against the oracle's, per
// series: count, zero count, every bucket and the sum, exactly. With
// overflow, each series' exported counts are at most the oracle's (its
// sockets may have counted in the overflow series for a while), and the
// series plus the overflow series add up to the oracle's total exactly.
// It returns the oracle's total sample count.
func (r *rig) compare() uint64 {
	r.t.Helper()
	oerrs, _, err := r.or.Stats()
	require.NoError(r.t, err)
	require.Zero(r.t, oerrs, "samples the oracle could not count")
	require.Zero(r.t, r.snap.Stats.Errors, "samples tcprtt could not count")
	byKey, err := r.or.Read()
	require.NoError(r.t, err)
	want := map[string]*Counts{}
	var all Counts
	for k, c := range byKey {
		a := attrsOf(k, r.spec.GroupBy)
		if want[a] == nil {
			want[a] = &Counts{}
		}
		want[a].Add(c)
		all.Add(c)
	}
	got := r.exported()
	// A run the kernel skips for nesting (recursion_misses: a softirq on
	// the CPU of a run in progress, README "Nesting and missed runs") is a
	// segment that program did not see; each program is skipped on its
	// own. Where either skipped any, a series may differ by what they
	// skipped, no more; else everything must be equal.
	oMissed, err := r.or.Missed()
	require.NoError(r.t, err)
	tMissed := r.snap.Stats.Missed
	if tMissed > 0 || oMissed > 0 {
		r.compareWithMisses(want, got, tMissed, oMissed)
		return r.totalOf(want)
	}
	if len(r.dupes) > 0 {
		r.t.Errorf("%d points exported with attributes another point of the same batch has, first: %s", len(r.dupes), r.dupes[0])
	}
	// Where the kernel lets a run start while another is in progress on
	// the CPU, tcprtt's plain per-CPU adds may lose an increment that the
	// oracle's atomic ones keep: tcprtt may be short there, never over.
	unprotected := nestingUnprotected(r.tr.Mode())
	var gotAll Counts
	bad := 0
	for _, a := range slices.Sorted(maps.Keys(got)) {
		gotAll.Add(got[a])
		if a == overflowAttrs && r.overflow {
			continue
		}
		w := want[a]
		if w == nil {
			w = &Counts{}
		}
		if d := diff(w, got[a], r.overflow || unprotected); d != "" {
			bad++
			r.t.Errorf("series %s: %s%s", a, d, r.runs(a))
		}
	}
	for a, w := range want {
		if got[a] == nil && !r.overflow {
			bad++
			r.t.Errorf("series %s: oracle counted %d samples, tcprtt exported none", a, w.Total)
		}
	}
	counted, err := r.or.Counted()
	require.NoError(r.t, err)
	require.Equal(r.t, counted, all.Total, "the oracle's map holds every sample it counted")
	if d := diff(&all, &gotAll, unprotected); d != "" {
		r.t.Errorf("all series together: %s", d)
	}
	if unprotected && (gotAll.Total != all.Total || gotAll.Sum != all.Sum) {
		r.t.Logf("%s on this kernel does not prevent nested runs: tcprtt short by %d samples and %d of sum (README, Nesting and missed runs)",
			r.tr.Mode(), all.Total-gotAll.Total, all.Sum-gotAll.Sum)
	}
	r.t.Logf("%s, %s, scale %d, %d reads: %d series, %d samples, sum %d; %d series differ",
		r.tr.Mode(), r.temp, r.spec.Table.Scale, r.reads, len(want), all.Total, all.Sum, bad)
	require.Positive(r.t, all.Total, "the scenario made traffic the oracle saw")
	return all.Total
}

// nestingUnprotected reports whether this kernel runs a program of mode
// nested in another run of it on the same CPU (README, "Nesting and missed
// runs", as checked in the kernel sources): fentry before 5.12, tp_btf
// and raw_tp before 6.1; the classic tracepoint never does.
func nestingUnprotected(mode loader.Mode) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	before := func(ma, mi int) bool { return major < ma || major == ma && minor < mi }
	switch mode {
	case loader.ModeFentry:
		return before(5, 12)
	case loader.ModeTpBtf, loader.ModeRawTp:
		return before(6, 1)
	}
	return false
}

// compareWithMisses: tcprtt short of the oracle by at most the runs
// tcprtt's program missed, above it by at most those the oracle missed,
// over all series.
func (r *rig) compareWithMisses(want, got map[string]*Counts, tMissed, oMissed uint64) {
	r.t.Helper()
	var short, over uint64
	if r.overflow { // samples of a series may be in the overflow series: totals only
		var w, g uint64
		for _, c := range want {
			w += c.Total
		}
		for _, c := range got {
			g += c.Total
		}
		want, got = map[string]*Counts{"all": {Total: w}}, map[string]*Counts{"all": {Total: g}}
	}
	for a := range want {
		g := got[a]
		if g == nil {
			g = &Counts{}
		}
		if w := want[a].Total; g.Total < w {
			short += w - g.Total
		} else {
			over += g.Total - w
		}
	}
	for a, g := range got {
		if want[a] == nil && !(a == overflowAttrs && r.overflow) {
			over += g.Total
		}
	}
	r.t.Logf("missed runs: tcprtt %d, oracle %d; tcprtt exported %d samples fewer and %d more than the oracle counted",
		tMissed, oMissed, short, over)
	if short > tMissed || over > oMissed {
		r.t.Errorf("differences beyond the missed runs: %d short (tcprtt missed %d), %d over (the oracle missed %d)",
			short, tMissed, over, oMissed)
	}
}

func (r *rig) totalOf(want map[string]*Counts) uint64 {
	var n uint64
	for _, w := range want {
		n += w.Total
	}
	require.Positive(r.t, n, "the scenario made traffic the oracle saw")
	return n
}

// runs describes the cumulative runs exported for attrs (start time:
// count of its last point), for failure messages.
func (r *rig) runs(attrs string) string {
	if r.temp != convert.Cumulative {
		return ""
	}
	byStart := r.cum[attrs]
	out := " runs (start: count):"
	for _, st := range slices.Sorted(maps.Keys(byStart)) {
		out += fmt.Sprintf(" %s: %d", st.AsTime().Format("15:04:05.000"), byStart[st].Total)
	}
	return out
}

// diff describes how got differs from want ("" if not at all). With
// atMost, got may be less than want in every count.
func diff(want, got *Counts, atMost bool) string {
	ok := func(w, g uint64) bool { return w == g || atMost && g < w }
	var out string
	if !ok(want.Total, got.Total) || !ok(want.Sum, got.Sum) || !ok(want.Zero, got.Zero) {
		out = fmt.Sprintf("count want %d got %d, sum want %d got %d, zero want %d got %d; ",
			want.Total, got.Total, want.Sum, got.Sum, want.Zero, got.Zero)
	}
	positions := slices.Sorted(maps.Keys(want.Buckets))
	for p := range got.Buckets {
		if _, ok := want.Buckets[p]; !ok {
			positions = append(positions, p)
		}
	}
	n := 0
	for _, p := range positions {
		if !ok(want.Buckets[p], got.Buckets[p]) {
			if n < 4 {
				out += fmt.Sprintf("bucket %d want %d got %d; ", p, want.Buckets[p], got.Buckets[p])
			}
			n++
		}
	}
	if n > 4 {
		out += fmt.Sprintf("(%d buckets differ)", n)
	}
	return out
}

// traffic runs round trips on conns until stopped, conn i (below pinned)
// from a thread pinned to the i-th of the CPUs the test may use (so the
// sockets of one series count on every CPU). pause, if set, is asked
// before each round trip how long conn i should wait first.
type traffic struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
	n    atomic.Int64 // round trips made
}

func cpus(t testing.TB) []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Logf("no CPU affinity (%v): threads run where the scheduler puts them", err)
		return nil
	}
	var out []int
	for c := range 1024 {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out
}

func startTraffic(t testing.TB, conns []*tcptest.Conn, pinned int, pause func(i int, round int) time.Duration) *traffic {
	tf := &traffic{stop: make(chan struct{})}
	cpuList := cpus(t)
	for i, c := range conns {
		tf.wg.Add(1)
		go func() {
			defer tf.wg.Done()
			if len(cpuList) > 0 && i < pinned {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				var set unix.CPUSet
				set.Set(cpuList[i%len(cpuList)])
				_ = unix.SchedSetaffinity(0, &set) // best effort: the comparison holds either way
			}
			buf := make([]byte, tcptest.MessageSize)
			for round := 0; ; round++ {
				if pause != nil {
					if d := pause(i, round); d > 0 {
						select {
						case <-tf.stop:
							return
						case <-time.After(d):
						}
					}
				}
				select {
				case <-tf.stop:
					return
				default:
				}
				if err := tcptest.RoundTrip(c.Client, buf); err != nil {
					tf.mu.Lock()
					tf.err = fmt.Errorf("conn %d: %w", i, err)
					tf.mu.Unlock()
					return
				}
				tf.n.Add(1)
			}
		}()
	}
	return tf
}

func (tf *traffic) end(t testing.TB) {
	t.Helper()
	close(tf.stop)
	tf.wg.Wait()
	require.NoError(t, tf.err)
	t.Logf("%d round trips", tf.n.Load())
}

// addr is 127.net.a.b.
func addr(net, a, b byte) netip.Addr { return netip.AddrFrom4([4]byte{127, net, a, b}) }
