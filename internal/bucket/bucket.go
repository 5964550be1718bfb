package bucket

import (
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"sync"
)

// Unit is the unit of exported values.
type Unit string

// Supported units. The raw kernel value is in 1/8 µs, so every unit is an
// integer number of raw steps and the exactness argument needs no rounding.
const (
	Seconds      Unit = "s"
	Milliseconds Unit = "ms"
	Microseconds Unit = "us"
)

// Divisor returns the number of raw units (1/8 µs) per u.
func (u Unit) Divisor() (uint64, error) {
	switch u {
	case Seconds:
		return 8_000_000, nil
	case Milliseconds:
		return 8_000, nil
	case Microseconds:
		return 8, nil
	}
	return 0, fmt.Errorf("bucket: unknown unit %q (want %q, %q or %q)", string(u), Seconds, Milliseconds, Microseconds)
}

// Valid reports whether u is one of the supported units.
func (u Unit) Valid() bool {
	_, err := u.Divisor()
	return err == nil
}

const (
	// MinScale and MaxScale bound the supported exponential-histogram
	// scales. 8 is the largest scale for which a 512-cell table still has at
	// most one boundary per cell (cell width log2(1+2^-9) < 2^-8).
	MinScale = 0
	MaxScale = 8
	// TableSize is the number of cells, indexed by the 9 mantissa bits that
	// follow the leading one. It is the same for every scale so the BPF map
	// has a fixed shape.
	TableSize = 512
)

const (
	cellShift = 31 - 9 // norm >> cellShift leaves the leading one and 9 bits
	cellWidth = 1 << cellShift
	topOctave = uint64(1) << 31
)

func checkScale(scale int) error {
	if scale < MinScale || scale > MaxScale {
		return fmt.Errorf("bucket: scale %d out of range [%d, %d]", scale, MinScale, MaxScale)
	}
	return nil
}

// exact decides bucket membership with integers only. q = divisor^(2^scale)
// is computed once; each test then costs scale squarings of raw.
type exact struct {
	scale   int
	divisor uint64
	q       *big.Int
}

func newExact(divisor uint64, scale int) *exact {
	q := new(big.Int).SetUint64(divisor)
	for range scale {
		q.Mul(q, q)
	}
	return &exact{scale: scale, divisor: divisor, q: q}
}

// pow returns raw^(2^scale).
func (e *exact) pow(raw uint64) *big.Int {
	p := new(big.Int).SetUint64(raw)
	for range e.scale {
		p.Mul(p, p)
	}
	return p
}

// abovePow reports whether raw/divisor > base^i, given p = raw^(2^scale),
// i.e. p > 2^i * q (i >= 0) or p * 2^-i > q (i < 0).
func (e *exact) abovePow(p *big.Int, i int64) bool {
	if i >= 0 {
		return p.Cmp(new(big.Int).Lsh(e.q, uint(i))) > 0
	}
	return new(big.Int).Lsh(p, uint(-i)).Cmp(e.q) > 0
}

func (e *exact) above(raw uint64, i int64) bool {
	return e.abovePow(e.pow(raw), i)
}

// index returns the largest i with raw/divisor > base^i (raw > 0). The float
// guess is at most one or two off; the loops make the answer exact whatever
// the guess, because abovePow is monotone in i.
func (e *exact) index(raw uint64) int64 {
	f := (math.Log2(float64(raw)) - math.Log2(float64(e.divisor))) * float64(int64(1)<<e.scale)
	i := int64(math.Ceil(f)) - 1
	p := e.pow(raw)
	for !e.abovePow(p, i) {
		i--
	}
	for e.abovePow(p, i+1) {
		i++
	}
	return i
}

// boundary returns floor(divisor * base^j): the largest raw with
// raw/divisor <= base^j, i.e. the last raw below bucket j.
func (e *exact) boundary(j int64) uint64 {
	n := int64(1) << e.scale
	oct, frac := j>>e.scale, j&(n-1)
	g := math.Ldexp(float64(e.divisor)*math.Exp2(float64(frac)/float64(n)), int(oct))
	r := uint64(0)
	if g >= 1 {
		r = uint64(math.Floor(g))
	}
	for r > 0 && e.above(r, j) {
		r--
	}
	for !e.above(r+1, j) {
		r++
	}
	return r
}

// ReferenceIndex returns the exact OTLP bucket index of v = raw/divisor at
// the given scale, decided with math/big. It is slow and is the definition
// the tables are built from and tested against. It panics if raw is 0 (zero
// RTTs are counted separately and have no bucket), divisor is 0 or the scale
// is out of range, because those are programming errors.
func ReferenceIndex(raw uint32, divisor uint64, scale int) int32 {
	if raw == 0 {
		panic("bucket: ReferenceIndex(0): zero RTTs have no bucket")
	}
	if divisor == 0 {
		panic("bucket: ReferenceIndex: divisor 0")
	}
	if err := checkScale(scale); err != nil {
		panic(err)
	}
	return int32(newExact(divisor, scale).index(uint64(raw)))
}

// Entry is one cell of the kernel lookup table. Its layout (two uint32, 8
// bytes, no padding) is copied into a BPF array map, so do not change it.
type Entry struct {
	// Base is the position (minus k<<scale) of the first norm of the cell.
	Base uint32
	// Threshold is the largest norm of the cell still in bucket Base, or
	// 0xFFFFFFFF if the whole cell is in that bucket.
	Threshold uint32
}

// Table is the lookup table for one (scale, unit).
type Table struct {
	Scale   int
	Unit    Unit
	Divisor uint64
	// MinIndex is the bucket index of raw = 1; positions are relative to it.
	MinIndex int32
	// NumBuckets is the number of positions a uint32 raw > 0 can map to:
	// ReferenceIndex(math.MaxUint32) - MinIndex + 1. At scales >= 1 some of
	// them (at small raws) hold no integer raw at all.
	NumBuckets uint32
	Entries    [TableSize]Entry
}

type tableKey struct {
	scale int
	unit  Unit
}

var (
	cacheMu sync.Mutex
	cache   = map[tableKey]func() (*Table, error){}
)

// NewTable returns the table for scale and unit. Tables are built once per
// (scale, unit) and memoised; each call returns its own copy, so callers may
// modify it freely.
func NewTable(scale int, unit Unit) (*Table, error) {
	if err := checkScale(scale); err != nil {
		return nil, err
	}
	if _, err := unit.Divisor(); err != nil {
		return nil, err
	}
	k := tableKey{scale, unit}
	cacheMu.Lock()
	build, ok := cache[k]
	if !ok {
		build = sync.OnceValues(func() (*Table, error) { return buildTable(scale, unit) })
		cache[k] = build
	}
	cacheMu.Unlock()
	t, err := build()
	if err != nil {
		return nil, err
	}
	c := *t
	return &c, nil
}

// buildTable builds a table without the cache. Only the 2^scale bucket
// boundaries inside the top octave [2^31, 2^32) are needed: every other
// octave is the same picture shifted by whole multiples of 2^scale buckets.
func buildTable(scale int, unit Unit) (*Table, error) {
	if err := checkScale(scale); err != nil {
		return nil, err
	}
	d, err := unit.Divisor()
	if err != nil {
		return nil, err
	}
	e := newExact(d, scale)
	n := int64(1) << scale
	minIdx := e.index(1)
	top := minIdx + 31*n // index of 2^31, by the doubling identity
	if got := e.index(topOctave); got != top {
		return nil, fmt.Errorf("bucket: internal error: index(2^31) = %d, want %d", got, top)
	}

	// tops[m] = last raw of bucket top+m, for m = 0..n-1. Boundary top+m+1
	// lies in (2^31, 2^32] because bucket top contains 2^31 and bucket
	// top+n contains 2^32, so each value is in [2^31, 2^32-1].
	tops := make([]uint32, n)
	for m := range n {
		b := e.boundary(top + m + 1)
		if b < topOctave || b > math.MaxUint32 {
			return nil, fmt.Errorf("bucket: internal error: boundary %d = %d outside the top octave", top+m+1, b)
		}
		tops[m] = uint32(b)
	}

	t := &Table{Scale: scale, Unit: unit, Divisor: d, MinIndex: int32(minIdx)}
	m := 0
	for c := range TableSize {
		start := uint32(topOctave) | uint32(c)<<cellShift
		end := start + (cellWidth - 1)
		for m < len(tops) && tops[m] < start {
			m++
		}
		// Base = number of boundaries below the cell, because position of
		// 2^31 is exactly 31<<scale.
		ent := Entry{Base: uint32(m), Threshold: math.MaxUint32}
		if m < len(tops) && tops[m] < end {
			ent.Threshold = tops[m]
			if m+1 < len(tops) && tops[m+1] < end {
				return nil, fmt.Errorf("bucket: internal error: two boundaries in cell %d at scale %d", c, scale)
			}
		}
		t.Entries[c] = ent
	}
	maxIdx := e.index(math.MaxUint32)
	t.NumBuckets = uint32(maxIdx - minIdx + 1)
	if got := t.Position(math.MaxUint32); got != t.NumBuckets-1 {
		return nil, fmt.Errorf("bucket: internal error: Position(MaxUint32) = %d, want %d", got, t.NumBuckets-1)
	}
	return t, nil
}

// Position returns the bucket of raw relative to MinIndex using exactly the
// kernel's algorithm. raw must be > 0 (zeros are counted separately); it
// panics on 0 rather than silently returning the bucket of raw = 1.
func (t *Table) Position(raw uint32) uint32 {
	if raw == 0 {
		panic("bucket: Position(0): zero RTTs have no bucket")
	}
	k := bits.Len32(raw) - 1
	norm := raw << uint(31-k)
	e := &t.Entries[(norm>>cellShift)&(TableSize-1)]
	pos := uint32(k)<<uint(t.Scale) + e.Base
	if norm > e.Threshold {
		pos++
	}
	return pos
}

// Index returns the OTLP bucket index of raw (> 0): MinIndex + Position(raw).
func (t *Table) Index(raw uint32) int32 {
	return t.MinIndex + int32(t.Position(raw))
}

func (t *Table) bound(index int64) float64 {
	n := int64(1) << t.Scale
	// Split into whole octaves and a fraction so the power of two is exact
	// and only 2^(frac/n) is rounded.
	return math.Ldexp(math.Exp2(float64(index&(n-1))/float64(n)), int(index>>t.Scale))
}

// LowerBound returns base^index in the table's unit, the exclusive lower
// end of bucket index. Float64, for display only.
func (t *Table) LowerBound(index int32) float64 { return t.bound(int64(index)) }

// UpperBound returns base^(index+1) in the table's unit, the inclusive upper
// end of bucket index. Float64, for display only.
func (t *Table) UpperBound(index int32) float64 { return t.bound(int64(index) + 1) }

// topBoundaries recovers, from the entries alone, the last raw of each of the
// 2^scale buckets that start in the top octave. Deriving it from Entries
// (rather than keeping the build's intermediate) means tests of BoundaryRaws
// test exactly the data that is shipped to the kernel.
func (t *Table) topBoundaries() []uint32 {
	n := 1 << t.Scale
	out := make([]uint32, 0, n)
	last := uint32(0) // bucket (relative to 2^31) of the previous cell's end
	for c := range TableSize {
		ent := t.Entries[c]
		start := uint32(topOctave) | uint32(c)<<cellShift
		for ; last < ent.Base; last++ {
			out = append(out, start-1) // boundary exactly at a cell edge
		}
		if ent.Threshold != math.MaxUint32 {
			out = append(out, ent.Threshold)
			last++
		}
	}
	for len(out) < n { // boundaries at 2^32-1, just past the last cell
		out = append(out, math.MaxUint32)
	}
	return out
}

// BoundaryRaws returns, for each index i = MinIndex+p in the table's range
// except the last (p = 0 .. NumBuckets-2), the largest raw whose index is
// <= i; raw+1 is then the first raw whose index is > i. For every non-empty
// bucket i this is the largest raw in bucket i and raw+1 is the first raw of
// bucket i+1. At scales >= 1 the buckets between small consecutive raws
// hold no integer raw (e.g. at scale 8 raw 1 and raw 2 are 256 buckets
// apart); their entries repeat the previous value, so the slice is
// non-decreasing, and strictly increasing once buckets are wider than one
// raw step (raw above about 1/(2^(2^-scale)-1), e.g. ~370 at scale 8).
func (t *Table) BoundaryRaws() []uint32 {
	if t.NumBuckets < 2 {
		return nil
	}
	tops := t.topBoundaries()
	mask := uint32(len(tops) - 1)
	out := make([]uint32, t.NumBuckets-1)
	for p := range out {
		q := uint32(p) // boundary above position p = boundary p+1
		// Boundary q+1 relative to raw 1 equals boundary
		// (q+1) + shift*2^s relative to raw 1, i.e. the top-octave boundary
		// q&mask, divided by 2^shift.
		shift := 31 - q>>uint(t.Scale)
		out[p] = tops[q&mask] >> shift
	}
	return out
}
