package main

import (
	"bytes"
	"flag"
	"math"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/cgroup"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// samples are raw srtt values (1/8 µs) and how often each was seen.
type samples map[uint32]uint64

// us and ms give the raw srtt of a value in microseconds or milliseconds.
func us(v float64) uint32 { return uint32(math.Round(v * 8)) }
func ms(v float64) uint32 { return uint32(math.Round(v * 8000)) }

func mustTable(t *testing.T, scale int, unit bucket.Unit) *bucket.Table {
	t.Helper()
	table, err := bucket.NewTable(scale, unit)
	if err != nil {
		t.Fatal(err)
	}
	return table
}

// byPosition spreads a summarized series' buckets over all positions.
func byPosition(table *bucket.Table, s kmaps.Series) []uint64 {
	out := make([]uint64, table.NumBuckets)
	copy(out[s.Offset:], s.Buckets)
	return out
}

// series builds the cumulative kernel row holding s, placed with the
// kernel's own bucket algorithm (Table.Position).
func series(table *bucket.Table, key kmaps.Key, s samples) kmaps.Series {
	out := kmaps.Series{Key: key, Buckets: make([]uint64, table.NumBuckets)}
	for raw, n := range s {
		out.Sum += uint64(raw) * n
		if raw == 0 {
			out.Zero += n
			continue
		}
		out.Buckets[table.Position(raw)] += n
	}
	out.Summarize() // as the loader's read does
	return out
}

func cgroupKey(k kmaps.Key, id uint64) kmaps.Key {
	k.Cgroup = id
	return k
}

// fakeCgroupName names cgroups as cgroupName does from a resolver.
func fakeCgroupName(id uint64) string {
	paths := map[uint64]string{
		42:   "/system.slice/ssh.service",
		7001: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5d2f7a3c_8c4b_4a8e_9c51_0f2b7c9d1e23.slice/cri-containerd-3f1c2b7e9a8d4c6b5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f.scope",
	}
	// An id without a path here is one the resolver knows to be gone.
	return cgroupName(cgroup.Info{ID: id, Path: paths[id], Gone: paths[id] == ""})
}

func remoteKey(addr string) kmaps.Key {
	a := netip.MustParseAddr(addr)
	k := kmaps.Key{RemoteAddr: a.As16(), Family: 6}
	if a.Is4() {
		k.Family = 4
	}
	return k
}

func localKey(addr string) kmaps.Key {
	a := netip.MustParseAddr(addr)
	k := kmaps.Key{LocalAddr: a.As16(), Family: 6}
	if a.Is4() {
		k.Family = 4
	}
	return k
}

// golden compares got with testdata/name.golden, or rewrites it with
// -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/tcprtt -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (rerun with -update if the change is intended)\n--- got ---\n%s--- want ---\n%s",
			path, got, want)
	}
}

// interval renders one interval of snaps (cumulative, in order) and
// returns the output of the last.
func render(t *testing.T, r *renderer, stamp string, snaps ...*kmaps.Snapshot) string {
	t.Helper()
	iv := newIntervals(r.groupBy, r.table.NumBuckets)
	var out bytes.Buffer
	for _, s := range snaps {
		out.Reset()
		if err := r.writeInterval(&out, stamp, iv.next(s)); err != nil {
			t.Fatal(err)
		}
	}
	checkConsistent(t, out.String())
	return out.String()
}

var (
	headerRE = regexp.MustCompile(`^(All Addresses|(?:Cgroup = (?:/\S*|\(id \d+, removed\)|\(unknown\))(?:, )?)?(?:(?:Local|Remote) Address = \S+)?|Other .* limit\))(?: \[AVG ([0-9.]+) \w+, COUNT (\d+), RETRANS (\d+)\])?$`)
	rowRE    = regexp.MustCompile(`^ *([0-9.]+)(?: -> ([0-9.]+))? *: (\d+) +\|([* ]{40})\|$`)
)

// checkConsistent checks what every printed interval must satisfy: rows
// follow their column header, bounds increase and chain (each row starts
// where the previous ended), bars are proportional to the largest count,
// and the extended COUNT is the sum of the rows.
func checkConsistent(t *testing.T, out string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	var count, sum, maxCount uint64
	var stars []int
	var counts []uint64
	prevHigh := ""
	hasCount := false
	flush := func() {
		if hasCount && sum != count {
			t.Errorf("histogram rows sum to %d, header says COUNT %d", sum, count)
		}
		for i, n := range stars {
			if want := int(counts[i] * barWidth / maxCount); n != want {
				t.Errorf("row with count %d has %d stars, want %d", counts[i], n, want)
			}
		}
		sum, maxCount, stars, counts, prevHigh, hasCount = 0, 0, nil, nil, "", false
	}
	for _, l := range lines {
		if m := headerRE.FindStringSubmatch(l); m != nil {
			flush()
			if m[3] != "" {
				hasCount = true
				count, _ = strconv.ParseUint(m[3], 10, 64)
			}
			continue
		}
		m := rowRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[3], 10, 64)
		sum += n
		maxCount = max(maxCount, n)
		counts = append(counts, n)
		stars = append(stars, strings.Count(m[4], "*"))
		if m[2] == "" { // the zero row
			continue
		}
		low, _ := strconv.ParseFloat(m[1], 64)
		high, _ := strconv.ParseFloat(m[2], 64)
		if !(low < high) {
			t.Errorf("row %q: bounds do not increase", l)
		}
		if prevHigh != "" && prevHigh != m[1] {
			t.Errorf("row %q starts at %s, previous row ended at %s", l, m[1], prevHigh)
		}
		prevHigh = m[2]
	}
	flush()
}

func TestGolden(t *testing.T) {
	us0 := mustTable(t, 0, bucket.Microseconds)
	us3 := mustTable(t, 3, bucket.Microseconds)
	ms0 := mustTable(t, 0, bucket.Milliseconds)
	ms3 := mustTable(t, 3, bucket.Milliseconds)

	// A loopback-like and a LAN-like mixture, in µs.
	mixed := samples{us(17.5): 3, us(24): 40, us(31): 122, us(32): 7, us(40.125): 300, us(64): 90,
		us(100): 55, us(250): 12, us(1900): 2}

	cases := []struct {
		name  string
		r     *renderer
		stamp string
		snaps []*kmaps.Snapshot
	}{
		{
			name: "scale0_all",
			r:    &renderer{table: us0, unitName: "usecs"},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us0, kmaps.Key{}, mixed),
			}}},
		},
		{
			name: "scale0_all_extended_zero_and_below_1us",
			r:    &renderer{table: us0, unitName: "usecs", extended: true},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us0, kmaps.Key{}, samples{0: 4, 1: 1, us(0.5): 2, us(0.75): 3, us(1): 5, us(3): 9, us(12): 1}),
			}}},
		},
		{
			name: "scale3_all",
			r:    &renderer{table: us3, unitName: "usecs"},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us3, kmaps.Key{}, mixed),
			}}},
		},
		{
			name: "scale3_all_extended",
			r:    &renderer{table: us3, unitName: "usecs", extended: true},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us3, kmaps.Key{}, mixed),
			}}},
		},
		{
			name: "scale0_msecs_extended",
			r:    &renderer{table: ms0, unitName: "msecs", extended: true},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(ms0, kmaps.Key{}, samples{ms(0.021): 30, ms(0.9): 2, ms(12.5): 70, ms(24): 110, ms(31.9): 15, ms(180): 1}),
			}}},
		},
		{
			name: "scale3_msecs_wan",
			r:    &renderer{table: ms3, unitName: "msecs", extended: true},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(ms3, kmaps.Key{}, samples{ms(11): 4, ms(12.5): 70, ms(13): 61, ms(14.2): 20, ms(16): 8, ms(19.7): 1}),
			}}},
		},
		{
			// Two cumulative readings: the output is their difference, in
			// address order (IPv4 before IPv6), the overflow series last.
			name:  "scale0_byraddr_extended_timestamp_delta",
			r:     &renderer{table: us0, unitName: "usecs", groupBy: kmaps.GroupRemoteAddress, maxSeries: 3, extended: true},
			stamp: "12:34:56",
			snaps: []*kmaps.Snapshot{
				{Series: []kmaps.Series{
					series(us0, remoteKey("10.0.0.7"), samples{us(300): 10}),
					series(us0, remoteKey("127.0.0.3"), samples{us(20): 5, us(40): 5}),
					series(us0, remoteKey("::1"), samples{us(30): 1}),
				}},
				{Series: []kmaps.Series{
					series(us0, remoteKey("::1"), samples{us(30): 21, us(70): 4}),
					series(us0, remoteKey("127.0.0.3"), samples{us(20): 25, us(40): 85, us(90): 3}),
					series(us0, remoteKey("10.0.0.7"), samples{us(300): 10}), // idle: not shown
					func() kmaps.Series {
						s := series(us0, kmaps.Key{}, samples{us(5000): 3, us(9000): 1})
						s.Overflow, s.Slot = true, 3
						return s
					}(),
				}},
			},
		},
		{
			name: "scale3_bylocal_extended",
			r:    &renderer{table: us3, unitName: "usecs", groupBy: kmaps.GroupLocalAddress, maxSeries: 10000, extended: true},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us3, localKey("2001:db8::1"), samples{us(22): 7, us(23.5): 9, us(26): 2}),
				series(us3, localKey("192.168.1.20"), samples{us(180): 40, us(220): 44, us(260): 3}),
			}}},
		},
		{
			// Per cgroup and remote address, in cgroup id order: a removed
			// cgroup never seen shows its id; the overflow series last.
			name: "scale0_bycgroup_byraddr_extended",
			r:    &renderer{table: us0, unitName: "usecs", groupBy: kmaps.GroupCgroup | kmaps.GroupRemoteAddress, maxSeries: 4, extended: true, cgroupName: fakeCgroupName},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us0, cgroupKey(remoteKey("127.0.0.3"), 7001), samples{us(20): 5, us(40): 5}),
				series(us0, cgroupKey(remoteKey("10.0.0.7"), 42), samples{us(300): 10}),
				series(us0, cgroupKey(remoteKey("127.0.0.3"), 42), samples{us(30): 2}),
				series(us0, cgroupKey(remoteKey("::1"), 9999), samples{us(70): 1}),
				func() kmaps.Series {
					s := series(us0, kmaps.Key{}, samples{us(5000): 3})
					s.Overflow, s.Slot = true, 4
					return s
				}(),
			}}},
		},
		{
			name: "scale0_bycgroup",
			r:    &renderer{table: us0, unitName: "usecs", groupBy: kmaps.GroupCgroup, maxSeries: 4, cgroupName: fakeCgroupName},
			snaps: []*kmaps.Snapshot{{Series: []kmaps.Series{
				series(us0, cgroupKey(kmaps.Key{Family: 4}, 7001), samples{us(20): 5, us(40): 5}),
				series(us0, cgroupKey(kmaps.Key{Family: 6}, 7001), samples{us(40): 1}),
				series(us0, cgroupKey(kmaps.Key{Family: 4}, 42), samples{us(300): 10}),
			}}},
		},
		{
			name:  "no_samples",
			r:     &renderer{table: us0, unitName: "usecs", extended: true},
			stamp: "00:00:01",
			snaps: []*kmaps.Snapshot{{}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			golden(t, c.name, render(t, c.r, c.stamp, c.snaps...))
		})
	}
}

// TestIntervalsDelta checks the per-interval counts against the
// cumulative kernel rows, including a recycled row (new generation) and
// the aliasing of Buckets with the read buffer.
func TestIntervalsDelta(t *testing.T) {
	table := mustTable(t, 0, bucket.Microseconds)
	key := remoteKey("127.0.0.3")
	iv := newIntervals(kmaps.GroupRemoteAddress, table.NumBuckets)

	s1 := series(table, key, samples{us(20): 5})
	hs := iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s1}})
	if len(hs) != 1 || hs[0].count() != 5 || hs[0].sum != uint64(us(20))*5 {
		t.Fatalf("first interval: %+v", hs)
	}
	// The loader reuses its row buffer: next must have copied the counts.
	for i := range s1.Buckets {
		s1.Buckets[i] = 1 << 40
	}

	s2 := series(table, key, samples{us(20): 7, us(50): 1})
	hs = iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s2}})
	if len(hs) != 1 || hs[0].count() != 3 || hs[0].buckets[table.Position(us(20))] != 2 ||
		hs[0].buckets[table.Position(us(50))] != 1 || hs[0].sum != uint64(us(20))*2+uint64(us(50)) {
		t.Fatalf("second interval: %+v", hs)
	}

	if hs = iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s2}}); len(hs) != 0 {
		t.Fatalf("no new samples, got %+v", hs)
	}

	// The same key on a recycled row starts again from zero.
	s3 := series(table, key, samples{us(9): 2})
	s3.Slot, s3.Generation = 4, 1
	hs = iv.next(&kmaps.Snapshot{Series: []kmaps.Series{s3}})
	if len(hs) != 1 || hs[0].count() != 2 {
		t.Fatalf("recycled row: %+v", hs)
	}
	if len(iv.prev) != 1 {
		t.Fatalf("vanished series not forgotten: %d kept", len(iv.prev))
	}
}

func TestRowRange(t *testing.T) {
	us0 := mustTable(t, 0, bucket.Microseconds)
	us3 := mustTable(t, 3, bucket.Microseconds)
	ms0 := mustTable(t, 0, bucket.Milliseconds)
	firstRow := func(table *bucket.Table, s samples) string {
		r := &renderer{table: table}
		rows := r.rows(&histogram{buckets: byPosition(table, series(table, kmaps.Key{}, s))})
		return rows[0].low + " -> " + rows[0].high + " ... " + rows[len(rows)-1].low + " -> " + rows[len(rows)-1].high
	}
	for _, c := range []struct {
		table *bucket.Table
		s     samples
		want  string
	}{
		{us0, samples{us(40): 1}, "1 -> 2 ... 32 -> 64"},
		{us0, samples{us(2): 1}, "1 -> 2 ... 1 -> 2"},
		{us0, samples{us(1): 1, us(3): 1}, "0.5 -> 1 ... 2 -> 4"}, // 1 is in (0.5, 1]
		{us0, samples{1: 1}, "0.0625 -> 0.125 ... 0.0625 -> 0.125"},
		{ms0, samples{ms(0.02): 1}, "0.015625 -> 0.03125 ... 0.015625 -> 0.03125"},
		{ms0, samples{ms(0.02): 1, ms(3): 1}, "0.015625 -> 0.03125 ... 2 -> 4"},
		{us3, samples{us(40): 1, us(64): 1}, "38.054 -> 41.498 ... 58.688 -> 64"},
	} {
		if got := firstRow(c.table, c.s); got != c.want {
			t.Errorf("scale %d %s %v: rows %q, want %q", c.table.Scale, c.table.Unit, c.s, got, c.want)
		}
	}
}

// TestBoundsExact checks, at every scale and unit and for every bucket
// of the table, that the printed bounds are distinct and place every
// possible srtt exactly: with r the largest raw srtt at or below a bucket
// boundary (from the kernel tables' BoundaryRaws), the printed boundary b
// must satisfy r/D <= b < (r+1)/D, so "v <= b" holds for exactly the srtt
// values counted at or below it. Whole powers of two print exactly.
func TestBoundsExact(t *testing.T) {
	for scale := bucket.MinScale; scale <= bucket.MaxScale; scale++ {
		for _, unit := range []bucket.Unit{bucket.Microseconds, bucket.Milliseconds} {
			table := mustTable(t, scale, unit)
			var bounds []float64
			for p := int32(0); p <= int32(table.NumBuckets); p++ {
				bounds = append(bounds, table.LowerBound(table.MinIndex+p))
			}
			labels := formatBounds(bounds, scale, table.Divisor)
			for i, l := range labels {
				if i > 0 && l == labels[i-1] {
					t.Fatalf("scale %d %s: bounds %d and %d both print as %s", scale, unit, i-1, i, l)
				}
				if bounds[i] >= 1 && bounds[i] == math.Exp2(math.Round(math.Log2(bounds[i]))) &&
					l != strconv.FormatFloat(bounds[i], 'f', -1, 64) {
					t.Errorf("scale %d %s: power of two %v printed as %q", scale, unit, bounds[i], l)
				}
			}
			d := new(big.Rat).SetInt64(int64(table.Divisor))
			for p, r := range table.BoundaryRaws() {
				label := labels[p+1] // the upper bound of position p
				b, ok := new(big.Rat).SetString(label)
				if !ok {
					t.Fatalf("scale %d %s: bound %q is not a decimal", scale, unit, label)
				}
				lo := new(big.Rat).Quo(new(big.Rat).SetInt64(int64(r)), d)
				hi := new(big.Rat).Quo(new(big.Rat).SetInt64(int64(r)+1), d)
				if b.Cmp(lo) < 0 || b.Cmp(hi) >= 0 {
					t.Fatalf("scale %d %s: upper bound of position %d printed as %s, want in [%s, %s)",
						scale, unit, p, label, lo.FloatString(9), hi.FloatString(9))
				}
			}
		}
	}
}

func TestFormatFloor(t *testing.T) {
	for _, c := range []struct {
		v        float64
		decimals int
		want     string
	}{
		{107.63474, 3, "107.634"}, {2048, 3, "2048"}, {0.0625, 3, "0.062"}, {0.0625, 4, "0.0625"},
		{1.5, 0, "1"}, {0.00012207, 6, "0.000122"}, {0.9999999, 3, "0.999"}, {12.3, 6, "12.3"},
	} {
		if got := formatFloor(c.v, c.decimals); got != c.want {
			t.Errorf("formatFloor(%v, %d) = %q, want %q", c.v, c.decimals, got, c.want)
		}
	}
	if d := resolutionDecimals(8); d != 3 {
		t.Errorf("resolutionDecimals(8) = %d", d)
	}
	if d := resolutionDecimals(8000); d != 6 {
		t.Errorf("resolutionDecimals(8000) = %d", d)
	}
}

func TestStars(t *testing.T) {
	for _, c := range []struct {
		count, most uint64
		want        int
	}{
		{0, 0, 0}, {0, 10, 0}, {10, 10, 40}, {1, 40, 1}, {39, 40, 39}, {1, 41, 0},
		{math.MaxUint64, math.MaxUint64, 40}, {math.MaxUint64 / 2, math.MaxUint64, 19},
	} {
		s := stars(c.count, c.most)
		if len(s) != barWidth || strings.Count(s, "*") != c.want || strings.TrimRight(s, " ") != strings.Repeat("*", c.want) {
			t.Errorf("stars(%d, %d) = %q, want %d stars", c.count, c.most, s, c.want)
		}
	}
}
