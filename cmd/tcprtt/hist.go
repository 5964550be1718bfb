package main

import (
	"fmt"
	"io"
	"math/big"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/tcprtt/tcprtt/internal/bucket"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// histogram is what one header and its rows show: the samples of one
// address (or of all sockets) during one interval.
type histogram struct {
	addr     netip.Addr // the grouped address; invalid for "All Addresses"
	cgroup   uint64     // the cgroup v2 id, with -C
	overflow bool       // samples of addresses beyond the series limit
	zero     uint64     // samples with srtt exactly 0
	sum      uint64     // of raw srtt values, in 1/8 µs
	buckets  []uint64   // by position: bucket index - table.MinIndex
	retrans  uint64     // segments retransmitted during the interval
}

func (h *histogram) count() uint64 {
	n := h.zero
	for _, c := range h.buckets {
		n += c
	}
	return n
}

// seriesID identifies one cumulative run of kernel counts. A recycled row
// comes back with a new generation and starts again from zero.
type seriesID struct {
	key        kmaps.Key
	overflow   bool
	slot       uint32
	generation uint32
}

// cumulative is the last kernel reading of one series.
type cumulative struct {
	last  kmaps.Series // its own copy of the buckets
	round uint64
}

// intervals turns the kernel's cumulative snapshots into the histograms of
// each interval: the maps are never cleared, so every sample counted
// between two reads lands in exactly one interval.
type intervals struct {
	groupBy    kmaps.GroupBy
	numBuckets int // positions of the table
	prev       map[seriesID]*cumulative
	round      uint64
	delta      kmaps.Series // scratch
}

func newIntervals(groupBy kmaps.GroupBy, numBuckets uint32) *intervals {
	return &intervals{groupBy: groupBy, numBuckets: int(numBuckets), prev: map[seriesID]*cumulative{}}
}

// next returns the histograms of the samples counted since the previous
// call (since the program was attached, on the first call), one per
// address that had samples, sorted by address, the overflow one last.
func (iv *intervals) next(snap *kmaps.Snapshot) []*histogram {
	iv.round++
	type displayKey struct {
		addr     netip.Addr
		cgroup   uint64
		overflow bool
	}
	merged := map[displayKey]*histogram{}
	for i := range snap.Series {
		s := &snap.Series[i]
		id := seriesID{key: s.Key, overflow: s.Overflow, slot: s.Slot, generation: s.Generation}
		p, ok := iv.prev[id]
		if !ok {
			p = &cumulative{}
			iv.prev[id] = p
		}
		p.round = iv.round
		last := &p.last
		if s.Total == last.Total && s.Retransmits == last.Retransmits {
			continue // idle (counts only grow): nothing to show, nothing to update
		}

		dk := displayKey{overflow: s.Overflow}
		if !s.Overflow {
			dk.addr = iv.address(s.Key)
			dk.cgroup = s.Key.Cgroup
		}
		h := merged[dk]
		if h == nil {
			h = &histogram{addr: dk.addr, cgroup: dk.cgroup, overflow: dk.overflow, buckets: make([]uint64, iv.numBuckets)}
			merged[dk] = h
		}
		d := &iv.delta
		s.Since(last, d)
		h.zero += d.Zero
		h.sum += d.Sum
		h.retrans += d.Retransmits
		for i, v := range d.Buckets {
			h.buckets[d.Offset+i] += v
		}
		s.CopyCounts(last)
	}
	for id, p := range iv.prev {
		if p.round != iv.round {
			delete(iv.prev, id)
		}
	}

	out := make([]*histogram, 0, len(merged))
	for _, h := range merged {
		if h.count() > 0 || h.retrans > 0 {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b *histogram) int {
		if a.overflow != b.overflow {
			if a.overflow {
				return 1
			}
			return -1
		}
		if a.cgroup != b.cgroup {
			if a.cgroup < b.cgroup {
				return -1
			}
			return 1
		}
		return a.addr.Compare(b.addr)
	})
	return out
}

func (iv *intervals) address(k kmaps.Key) netip.Addr {
	switch {
	case iv.groupBy.Has(kmaps.GroupLocalAddress):
		return k.LocalAddress()
	case iv.groupBy.Has(kmaps.GroupRemoteAddress):
		return k.RemoteAddress()
	}
	return netip.Addr{}
}

// Layout of the rows, as the reference tool draws them.
const (
	barWidth      = 40 // stars of the largest row
	minBoundWidth = 10 // each of the two bound columns
	minCountWidth = 8
)

// renderer draws histograms in the reference tool's terminal layout.
type renderer struct {
	table     *bucket.Table
	unitName  string // "usecs" or "msecs"
	groupBy   kmaps.GroupBy
	maxSeries uint32 // for the overflow histogram's header
	extended  bool
	// cgroupName names a cgroup id in headers (with -C).
	cgroupName func(id uint64) string
}

func unitName(u bucket.Unit) string {
	if u == bucket.Milliseconds {
		return "msecs"
	}
	return "usecs"
}

// title is the header line of h, without the extended part.
func (r *renderer) title(h *histogram) string {
	side := "remote"
	if r.groupBy.Has(kmaps.GroupLocalAddress) {
		side = "local"
	}
	byAddr := r.groupBy.Has(kmaps.GroupLocalAddress) || r.groupBy.Has(kmaps.GroupRemoteAddress)
	if r.groupBy.Has(kmaps.GroupCgroup) {
		switch {
		case h.overflow && byAddr:
			return fmt.Sprintf("Other cgroups and %s addresses (over the %d series limit)", side, r.maxSeries)
		case h.overflow:
			return fmt.Sprintf("Other cgroups (over the %d series limit)", r.maxSeries)
		}
		title := "Cgroup = " + r.cgroupName(h.cgroup)
		switch {
		case !h.addr.IsValid():
			return title
		case side == "local":
			return title + ", Local Address = " + h.addr.String()
		default:
			return title + ", Remote Address = " + h.addr.String()
		}
	}
	switch {
	case h.overflow:
		return fmt.Sprintf("Other %s addresses (over the %d series limit)", side, r.maxSeries)
	case !h.addr.IsValid():
		return "All Addresses"
	case side == "local":
		return "Local Address = " + h.addr.String()
	default:
		return "Remote Address = " + h.addr.String()
	}
}

// row is one printed line of a histogram.
type row struct {
	low, high string // high == "" for the zero row
	count     uint64
}

// rowRange returns the first and last bucket positions to print, or
// ok == false if no bucket has samples. The rows end at the highest
// non-empty bucket. At scale 0 they start at the bucket just above 1 unit,
// (1, 2], or lower if a lower bucket has samples, which gives the
// reference tool's picture; at higher scales, where an octave has 2^scale
// rows, they start at the lowest non-empty bucket.
func (r *renderer) rowRange(buckets []uint64) (first, last int, ok bool) {
	first, last = -1, -1
	for i, c := range buckets {
		if c == 0 {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
	}
	if first < 0 {
		return 0, 0, false
	}
	if r.table.Scale == 0 {
		// Position of bucket index 0, i.e. (1, 2].
		if one := int(-r.table.MinIndex); one >= 0 && one < first {
			first = one
		}
	}
	return first, last, true
}

// rows returns the printed rows of h.
func (r *renderer) rows(h *histogram) []row {
	var rows []row
	if h.zero > 0 {
		rows = append(rows, row{low: "0", count: h.zero})
	}
	first, last, ok := r.rowRange(h.buckets)
	if !ok {
		return rows
	}
	bounds := make([]float64, 0, last-first+2)
	for p := first; p <= last+1; p++ {
		bounds = append(bounds, r.table.LowerBound(r.table.MinIndex+int32(p)))
	}
	labels := formatBounds(bounds, r.table.Scale, r.table.Divisor)
	for i, p := 0, first; p <= last; i, p = i+1, p+1 {
		rows = append(rows, row{low: labels[i], high: labels[i+1], count: h.buckets[p]})
	}
	return rows
}

// formatBounds formats increasing bucket bounds. At scale 0 they are
// powers of two, printed exactly. At higher scales they are irrational
// (except at whole powers of two) and are cut, not rounded, to the srtt
// resolution: srtt is a multiple of 1/divisor of the unit (1/8 usec), a
// decimal with resolutionDecimals(divisor) digits after the point, so for
// every possible srtt v and bound B, v <= B exactly when v <= the printed
// bound. More decimals are used only if two bounds would print the same
// (sub-resolution buckets, which can hold no sample).
func formatBounds(bounds []float64, scale int, divisor uint64) []string {
	out := make([]string, len(bounds))
	if scale == 0 {
		for i, b := range bounds {
			out[i] = strconv.FormatFloat(b, 'f', -1, 64)
		}
		return out
	}
	for decimals := resolutionDecimals(divisor); ; decimals++ {
		distinct := true
		for i, b := range bounds {
			out[i] = formatFloor(b, decimals)
			if i > 0 && out[i] == out[i-1] {
				distinct = false
			}
		}
		if distinct || decimals >= 20 {
			return out
		}
	}
}

// resolutionDecimals is the number of decimals of 1/divisor: the smallest
// d with 10^d a multiple of divisor (divisor is 2^a * 5^b).
func resolutionDecimals(divisor uint64) int {
	p := uint64(1)
	for d := 0; d < 19; d++ {
		if p%divisor == 0 {
			return d
		}
		p *= 10
	}
	return 19
}

// formatFloor prints v > 0 cut down to decimals digits after the point,
// without trailing zeros.
func formatFloor(v float64, decimals int) string {
	// Exact arithmetic: v is a binary fraction, so v * 10^decimals is a
	// rational whose floor is the digits to print.
	r := new(big.Rat).SetFloat64(v)
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(decimals)), nil)
	r.Mul(r, new(big.Rat).SetInt(scale))
	q := new(big.Int).Quo(r.Num(), r.Denom()) // floor, v > 0
	s := q.String()
	if decimals > 0 {
		if len(s) <= decimals {
			s = strings.Repeat("0", decimals-len(s)+1) + s
		}
		s = s[:len(s)-decimals] + "." + s[len(s)-decimals:]
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// average returns the mean of h in the table's unit.
func (r *renderer) average(h *histogram) float64 {
	n := h.count()
	if n == 0 {
		return 0
	}
	return float64(h.sum) / float64(r.table.Divisor) / float64(n)
}

// write draws h: the header line, the column header and the rows.
func (r *renderer) write(w io.Writer, h *histogram) error {
	var b strings.Builder
	b.WriteString(r.title(h))
	if r.extended {
		fmt.Fprintf(&b, " [AVG %.3f %s, COUNT %d, RETRANS %d]", r.average(h), r.unitName, h.count(), h.retrans)
	}
	b.WriteByte('\n')

	rows := r.rows(h)
	boundWidth, countWidth := minBoundWidth, minCountWidth
	var maxCount uint64
	for _, rw := range rows {
		boundWidth = max(boundWidth, len(rw.low), len(rw.high))
		countWidth = max(countWidth, len(strconv.FormatUint(rw.count, 10)))
		maxCount = max(maxCount, rw.count)
	}
	// The unit name starts 5 columns in and the colon lines up with the
	// rows' colons, as in the reference tool.
	fmt.Fprintf(&b, "%5s%-*s : %-*s distribution\n", "", 2*boundWidth-1, r.unitName, countWidth, "count")
	for _, rw := range rows {
		arrow := " -> "
		if rw.high == "" {
			arrow = "    "
		}
		fmt.Fprintf(&b, "%*s%s%-*s : %-*d |%s|\n", boundWidth, rw.low, arrow, boundWidth, rw.high,
			countWidth, rw.count, stars(rw.count, maxCount))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// stars is the bar of count: barWidth stars for most, proportionally fewer
// (rounded down) for smaller counts, padded with spaces.
func stars(count, most uint64) string {
	n := 0
	if most > 0 && count > 0 {
		// count*barWidth/most without overflow; count <= most keeps the
		// quotient <= barWidth (and bits.Div64 from panicking).
		hi, lo := bits.Mul64(min(count, most), barWidth)
		q, _ := bits.Div64(hi, lo, most)
		n = int(q)
	}
	return strings.Repeat("*", n) + strings.Repeat(" ", barWidth-n)
}

// writeInterval prints one interval as the reference tool does: a blank
// line, the time if stamp is not empty, then the histograms one after the
// other (their header lines set them apart; blank lines set intervals
// apart).
func (r *renderer) writeInterval(w io.Writer, stamp string, hs []*histogram) error {
	var b strings.Builder
	b.WriteByte('\n')
	if stamp != "" {
		b.WriteString(stamp + "\n")
	}
	for _, h := range hs {
		if err := r.write(&b, h); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
