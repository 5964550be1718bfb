package reader

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/convert"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// The schedule harness: the real Read, in the order production calls it,
// through the series lifecycle and both converters (cumulative and
// delta), over the model program's memory, with runs of the program
// interleaved between reads and at every step inside them (see Point).
// A schedule is one seed; `go test -run TestSchedules -seed=N` replays
// one, -schedules=N runs more (1000 by default, a tenth with -short or
// -race; make test-schedules runs 20000).

var (
	flagSchedules = flag.Int("schedules", 1000, "schedules TestSchedules runs")
	flagSeed      = flag.Uint64("seed", 0, "run only the schedule of this seed (0: seeds 1..schedules)")
)

var errInjected = errors.New("injected map failure")

func TestSchedules(t *testing.T) {
	if *flagSeed != 0 {
		runSchedule(t, *flagSeed)
		return
	}
	n := *flagSchedules
	if testing.Short() || raceEnabled {
		n /= 10 // make test (-race) and the -count=20 runs (-short)
	}
	for seed := uint64(1); seed <= uint64(n); seed++ {
		if !runSchedule(t, seed) {
			t.Fatalf("schedule %d failed: replay with go test ./internal/reader -run TestSchedules -seed=%d -v", seed, seed)
		}
	}
}

// schedule is one run of the harness.
type schedule struct {
	t    testing.TB
	seed uint64
	rnd  *rand.Rand
	p    *program
	r    *Reader
	now  time.Time
	idle time.Duration

	sockets  []*socket
	rtt      []uint32 // by socket: its current srtt (raw)
	paused   []int    // by socket: reads left without traffic
	inflight []func() (struct{}, bool)
	stops    []func()
	traffic  bool

	conv     [2]*convert.Converter // cumulative, delta
	cum      map[string]map[int64]exported
	delta    map[string]exported
	recorded uint64
	fail     error
}

// exported is what the points of one attribute set say, by position.
type exported struct {
	count, zero uint64
	sum         float64
	buckets     map[int]uint64
}

func (s *schedule) errorf(format string, args ...any) {
	if s.fail == nil {
		s.fail = fmt.Errorf(format, args...)
	}
}

func runSchedule(t *testing.T, seed uint64) bool {
	s := newSchedule(t, seed)
	reads := 20 + s.rnd.IntN(20)
	for read := 0; read < reads && s.fail == nil; read++ {
		s.between()
		s.read(read)
	}
	// Quiesce: no more traffic; reads until every entry is drained and
	// every series expired and freed.
	s.traffic = false
	for read := 0; read < 12 && s.fail == nil; read++ {
		s.finishRuns()
		s.now = s.now.Add(s.idle + time.Second)
		s.read(reads + read)
	}
	if s.fail == nil {
		s.checkExact()
	}
	if s.fail != nil {
		t.Errorf("seed %d: %v", seed, s.fail)
		return false
	}
	return true
}

func newSchedule(t testing.TB, seed uint64) *schedule {
	rnd := rand.New(rand.NewPCG(seed, 0x7c9))
	scale := []int{0, 3, 3, 3, 0, 3, 0, 3, 3, 8}[rnd.IntN(10)]
	table, err := bucket.NewTable(scale, bucket.Microseconds)
	if err != nil {
		t.Fatal(err)
	}
	layout := kmaps.Layout{NumBuckets: table.NumBuckets, MaxSeries: uint32(1 + rnd.IntN(5))}
	cpus, perCPU := 2, 1<<rnd.IntN(3)
	entryCounts := rnd.IntN(4) != 0
	p := newProgram(layout, table, cpus, perCPU, entryCounts)
	nkeys := 2 + rnd.IntN(6)
	p.filtered = func(k kmaps.Key) bool { return k.RemotePort == 1 } // key 1: filtered out
	s := &schedule{
		t: t, seed: seed, rnd: rnd, p: p, now: time.Unix(1_000_000, 0),
		idle:     []time.Duration{0, 3 * time.Second, 5 * time.Second}[rnd.IntN(3)],
		inflight: make([]func() (struct{}, bool), cpus),
		stops:    make([]func(), cpus),
		traffic:  true,
		cum:      map[string]map[int64]exported{},
		delta:    map[string]exported{},
	}
	if s.idle == 0 {
		s.idle = 2 * time.Second
	}
	for i := range 3 + rnd.IntN(8) {
		key := kmaps.Key{Family: 4, RemotePort: uint16(1 + rnd.IntN(nkeys))}
		s.sockets = append(s.sockets, &socket{id: uint64(i)*0x9e3779b97f4a7c15 | 1, key: key, cpu: rnd.IntN(cpus)})
		s.rtt = append(s.rtt, uint32(50+rnd.IntN(5000)))
		s.paused = append(s.paused, 0)
	}
	cfg := Config{Layout: layout, EntryCounts: entryCounts, Now: func() time.Time { return s.now }}
	if []bool{true, false}[rnd.IntN(2)] {
		cfg.IdleTimeout = s.idle
	}
	p.shuffle = rnd.Shuffle
	s.r = New(cfg, p.mem, p)
	s.r.yield = func(Point) { s.steps(s.rnd.IntN(3)) }
	for i, temp := range []convert.Temporality{convert.Cumulative, convert.Delta} {
		c, err := convert.New(convert.Options{Table: table, GroupBy: kmaps.GroupRemotePort, Temporality: temp, Start: s.now})
		if err != nil {
			t.Fatal(err)
		}
		s.conv[i] = c
	}
	return s
}

// between is what happens between two reads: runs, pauses, and time.
func (s *schedule) between() {
	for i := range s.sockets {
		switch {
		case s.paused[i] > 0:
			s.paused[i]--
		case s.rnd.IntN(12) == 0:
			s.paused[i] = 1 + s.rnd.IntN(4) // quiet past idle_timeout, then back
		}
	}
	s.steps(s.rnd.IntN(60))
	s.finishRuns() // no run lasts an interval (package doc, A0)
	if s.rnd.IntN(15) == 0 {
		s.p.failDelete = 1
	}
	s.now = s.now.Add(time.Duration(500+s.rnd.IntN(1500)) * time.Millisecond)
}

// steps takes n steps: a step of a run in flight, or a new run.
func (s *schedule) steps(n int) {
	for range n {
		cpu := s.rnd.IntN(len(s.inflight))
		if s.inflight[cpu] != nil {
			s.advance(cpu)
			continue
		}
		if !s.traffic {
			continue
		}
		i := s.rnd.IntN(len(s.sockets))
		sk := s.sockets[i]
		if s.paused[i] > 0 {
			continue
		}
		if s.rnd.IntN(20) == 0 {
			sk.cpu = s.rnd.IntN(len(s.inflight)) // segments now arrive on another CPU
		}
		if sk.cpu != cpu {
			continue
		}
		s.inflight[cpu], s.stops[cpu] = iter.Pull(s.p.run(sk, s.nextRTT(i)))
		s.advance(cpu)
	}
}

func (s *schedule) advance(cpu int) {
	if _, ok := s.inflight[cpu](); !ok {
		s.stops[cpu]()
		s.inflight[cpu], s.stops[cpu] = nil, nil
	}
}

func (s *schedule) finishRuns() {
	for cpu := range s.inflight {
		for s.inflight[cpu] != nil {
			s.advance(cpu)
		}
	}
}

// nextRTT moves socket i's srtt a little, sometimes a lot (its window
// moves), sometimes to 0.
func (s *schedule) nextRTT(i int) uint32 {
	r := s.rtt[i]
	switch s.rnd.IntN(30) {
	case 0:
		r *= 3
	case 1:
		r = max(r/3, 1)
	case 2:
		return 0
	default:
		r = uint32(float64(r) * (0.97 + 0.06*s.rnd.Float64()))
	}
	s.rtt[i] = max(min(r, 1<<28), 1)
	return s.rtt[i]
}

// read runs one Read and both conversions, and checks what can be
// checked while traffic goes on.
func (s *schedule) read(n int) {
	var snap kmaps.Snapshot
	var rows []uint64
	err := s.r.Read(context.Background(), &snap, &rows)
	var le *LifecycleError
	if err != nil && !errors.As(err, &le) {
		s.errorf("read %d: %v", n, err)
		return
	}
	for _, ser := range snap.Series {
		debugf("read %d: slot %d gen %d key %d retired %v overflow %v total %d sum %d\n", n, ser.Slot, ser.Generation, ser.Key.RemotePort, ser.Retired, ser.Overflow, ser.Total, ser.Sum)
	}
	debugf("read %d: pending %v err %v\n", n, snap.Pending, err)
	recorded := snap.Stats.Expired
	for _, ser := range snap.Series {
		if !ser.Retired {
			recorded += ser.Total
		}
	}
	if recorded < s.recorded {
		s.errorf("read %d: samples recorded went from %d to %d", n, s.recorded, recorded)
	}
	s.recorded = recorded
	for i, c := range s.conv {
		ms := pmetric.NewMetricSlice()
		c.Append(&snap, s.now, ms)
		s.points(n, i == 1, ms)
	}
	for attrs := range s.delta {
		if cum, delta := s.cumulative(attrs), s.delta[attrs]; !cum.equal(delta) {
			s.errorf("read %d, %s: cumulative %s, deltas add up to %s", n, attrs, cum, delta)
		}
	}
	for attrs := range s.cum {
		want := s.truthOf(attrs)
		if got := s.cumulative(attrs); !got.atMost(want) {
			s.errorf("read %d, %s: exported %s, more than the program counted %s", n, attrs, got, want)
		}
	}
}

// points takes in one batch of points.
func (s *schedule) points(n int, delta bool, ms pmetric.MetricSlice) {
	seen := map[string]bool{}
	for _, m := range ms.All() {
		for _, dp := range m.ExponentialHistogram().DataPoints().All() {
			attrs := attrsOf(dp)
			if seen[attrs] {
				s.errorf("read %d: two points of %s in one batch", n, attrs)
			}
			seen[attrs] = true
			e := exportedOf(dp, s.p.table)
			if delta {
				s.delta[attrs] = s.delta[attrs].plus(e)
				continue
			}
			starts := s.cum[attrs]
			if starts == nil {
				starts = map[int64]exported{}
				s.cum[attrs] = starts
			}
			start := int64(dp.StartTimestamp())
			if prev, ok := starts[start]; ok && !prev.atMost(e) {
				s.errorf("read %d, %s: cumulative went from %s to %s within one start time", n, attrs, prev, e)
			}
			starts[start] = e
		}
	}
}

func (s *schedule) cumulative(attrs string) exported {
	var sum exported
	for _, e := range s.cum[attrs] {
		sum = sum.plus(e)
	}
	return sum
}

// truthOf is what the program counted for the attribute set.
func (s *schedule) truthOf(attrs string) exported {
	var t *truth
	if attrs == "overflow" {
		t = &s.p.overflow
	} else {
		for k, kt := range s.p.truth {
			if keyAttrs(k) == attrs {
				t = kt
			}
		}
	}
	if t == nil {
		return exported{}
	}
	e := exported{zero: t.zero, sum: float64(t.sum) / float64(s.p.table.Divisor), buckets: map[int]uint64{}}
	e.count = t.zero
	for pos, c := range t.buckets {
		e.buckets[pos] = c
		e.count += c
	}
	return e
}

// checkExact: once quiet, every sample the program counted was exported,
// once, with its bucket and sum.
func (s *schedule) checkExact() {
	all := map[string]bool{"overflow": s.p.overflow.sum > 0 || s.p.overflow.zero > 0 || len(s.p.overflow.buckets) > 0}
	for k := range s.p.truth {
		all[keyAttrs(k)] = true
	}
	for attrs := range s.cum {
		all[attrs] = true
	}
	for attrs, any := range all {
		if !any {
			continue
		}
		want := s.truthOf(attrs)
		if got := s.cumulative(attrs); !got.equal(want) {
			s.errorf("after quiescing, %s: exported %s, the program counted %s", attrs, got, want)
		}
	}
	if runs := s.p.runs; runs == 0 {
		s.errorf("no program run")
	}
}

func keyAttrs(k kmaps.Key) string { return fmt.Sprintf("port=%d", k.RemotePort) }

func attrsOf(dp pmetric.ExponentialHistogramDataPoint) string {
	if v, ok := dp.Attributes().Get(convert.AttrOverflow); ok && v.Bool() {
		return "overflow"
	}
	v, _ := dp.Attributes().Get(convert.AttrPeerPort)
	return fmt.Sprintf("port=%d", v.Int())
}

func exportedOf(dp pmetric.ExponentialHistogramDataPoint, table *bucket.Table) exported {
	e := exported{count: dp.Count(), zero: dp.ZeroCount(), sum: dp.Sum(), buckets: map[int]uint64{}}
	off := int(dp.Positive().Offset())
	for i, c := range dp.Positive().BucketCounts().All() {
		if c > 0 {
			e.buckets[off+i-int(table.MinIndex)] = c
		}
	}
	return e
}

func (e exported) plus(o exported) exported {
	r := exported{count: e.count + o.count, zero: e.zero + o.zero, sum: e.sum + o.sum, buckets: map[int]uint64{}}
	for p, c := range e.buckets {
		r.buckets[p] += c
	}
	for p, c := range o.buckets {
		r.buckets[p] += c
	}
	return r
}

// atMost reports whether every count and the sum of e are at most o's.
func (e exported) atMost(o exported) bool {
	if e.count > o.count || e.zero > o.zero || e.sum > o.sum+1e-9*math.Max(1, o.sum) {
		return false
	}
	for p, c := range e.buckets {
		if c > o.buckets[p] {
			return false
		}
	}
	return true
}

func (e exported) equal(o exported) bool { return e.atMost(o) && o.atMost(e) }

func (e exported) String() string {
	return fmt.Sprintf("{count %d zero %d sum %g buckets %v}", e.count, e.zero, e.sum, e.buckets)
}
