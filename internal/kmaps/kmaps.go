// Package kmaps describes the kernel maps of the tcprtt program in pure Go:
// the series key and reference layouts, the row layout of the counts array,
// and the decoding of a snapshot of those maps into series. It has no
// dependency on the kernel, so all of it is testable without root.
package kmaps

import (
	"fmt"
	"net/netip"
)

// GroupBy is the set of socket fields that distinguish series; the bits
// match cfg_group_by in bpf/tcprtt.bpf.c.
type GroupBy uint32

const (
	GroupLocalAddress GroupBy = 1 << iota
	GroupRemoteAddress
	GroupLocalPort
	GroupRemotePort
	// GroupCgroup keys series by the socket's cgroup v2 id as well.
	GroupCgroup
)

// Has reports whether all fields of f are grouped.
func (g GroupBy) Has(f GroupBy) bool { return g&f == f }

// Filters is the set of active filters; the bits match cfg_filters.
type Filters uint32

const (
	FilterLocalPort Filters = 1 << iota
	FilterRemotePort
	FilterLocalAddress
	FilterRemoteAddress
)

// Direction selects the local or remote side of a socket in the filter
// maps.
type Direction uint8

const (
	Local  Direction = 0
	Remote Direction = 1
)

// PortFilterWords is the number of u64 words of the port_filter array:
// 65536 bits per direction.
const PortFilterWords = 2 * 1024

// PortFilterIndex returns the port_filter word and bit of port in dir.
func PortFilterIndex(dir Direction, port uint16) (word uint32, bit uint64) {
	return uint32(dir)*1024 + uint32(port>>6), 1 << (port & 63)
}

// Key is struct series_key: the grouped fields of a socket's 4-tuple and
// cgroup, the others zero. Addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d.
type Key struct {
	LocalAddr  [16]byte
	RemoteAddr [16]byte
	LocalPort  uint16 // host byte order
	RemotePort uint16
	Family     uint8 // 4, 6, or 0 when nothing is grouped
	_          [3]uint8
	// Cgroup is the id of the socket's cgroup v2 (the inode number of its
	// directory), 0 unless GroupCgroup.
	Cgroup uint64
}

// KeySize is the size of struct series_key.
const KeySize = 48

// LocalAddress returns the local address, unmapped to IPv4 for IPv4 keys.
func (k Key) LocalAddress() netip.Addr { return k.addr(k.LocalAddr) }

// RemoteAddress returns the remote address, unmapped to IPv4 for IPv4 keys.
func (k Key) RemoteAddress() netip.Addr { return k.addr(k.RemoteAddr) }

func (k Key) addr(b [16]byte) netip.Addr {
	a := netip.AddrFrom16(b)
	if k.Family == 4 {
		return a.Unmap()
	}
	return a
}

// NetworkType is the semantic-convention network.type of the key.
func (k Key) NetworkType() string {
	switch k.Family {
	case 4:
		return "ipv4"
	case 6:
		return "ipv6"
	}
	return ""
}

// Ref is struct series_ref: the counts row of a series.
type Ref struct {
	Slot   uint32
	Unused uint32 // always 0; keeps the index value 8 bytes
}

// AddrFilterKey is struct addr_filter_key, the LPM trie key of the address
// filters. Prefixlen counts the direction byte's 8 bits.
type AddrFilterKey struct {
	Prefixlen uint32
	Direction Direction
	Addr      [16]byte
	_         [3]byte
}

// NewAddrFilterKey returns the trie key matching prefix on side dir. IPv4
// prefixes are stored v4-mapped, as the program stores IPv4 addresses.
func NewAddrFilterKey(dir Direction, prefix netip.Prefix) AddrFilterKey {
	bits := prefix.Bits()
	if prefix.Addr().Is4() {
		bits += 96
	}
	return AddrFilterKey{
		Prefixlen: uint32(8 + bits),
		Direction: dir,
		Addr:      prefix.Addr().As16(),
	}
}

// Row layout of the counts array, in u64 words. The program never
// touches RowGeneration: user space keeps there how many times the row
// was given to a new series, so a reused row starts a new run. The sums
// are in their own array, per CPU and slot.
const (
	RowGeneration = 0
	RowZero       = 1
	RowBuckets    = 2
)

// CacheEntriesPerCPU is the number of entries of the per-CPU socket cache
// (CACHE_ENTRIES in the program; a power of two), CacheEntryBytes each.
const CacheEntriesPerCPU = 1024

// Layout of struct cache_entry: the socket it holds, its slot, and the
// counts and sum of its samples in a window of CacheWindow row words from
// base. User space reads the first cache line; it writes the slot of an
// entry it marks to drain and, one read later, frees the entry.
const (
	CacheEntryBytes   = 128
	CacheFamilyOffset = 12  // u16 family, then u16 misses: samples outside the window (rows only: every sample, wrapping)
	CacheSlotOffset   = 16  // u32
	CacheBaseOffset   = 20  // u32: the row word of counts[0]
	CacheSumOffset    = 24  // u64
	CacheCountOffset  = 32  // CacheWindow × u32
	CacheSeqOffset    = 104 // u32: odd while the program moves the counts to the row
	CacheWindow       = 8
)

// Slot values of a cache entry: below CacheSlotDrain a row;
// CacheSlotDrain|row an entry marked to drain, whose counts still belong
// to the row; CacheSlotFree no socket; CacheSlotFiltered a filtered socket
// (nothing counted).
const (
	CacheSlotDrain    = 0x80000000
	CacheSlotFree     = 0xfffffffe
	CacheSlotFiltered = 0xffffffff
)

// Layout is the geometry of the counts array.
type Layout struct {
	NumBuckets uint32 // buckets per row (positions 0..NumBuckets-1)
	MaxSeries  uint32 // rows 0..MaxSeries-1 belong to series; row MaxSeries is the overflow
}

// Stride is the number of u64 words per row.
func (l Layout) Stride() uint32 { return RowBuckets + l.NumBuckets }

// Rows is the number of rows, the overflow row included.
func (l Layout) Rows() uint32 { return l.MaxSeries + 1 }

// Entries is the number of u64 words of the counts array.
func (l Layout) Entries() uint64 {
	return (uint64(l.MaxSeries) + 1) * (uint64(l.NumBuckets) + RowBuckets)
}

// SumStride is the number of u64 sums per CPU in the cpu_sums array: one
// per row, rounded up to whole cache lines so no two CPUs share one.
func (l Layout) SumStride() uint32 { return (l.Rows() + 7) &^ 7 }

// SumBytes is the size of the cpu_sums array on ncpu possible CPUs.
func (l Layout) SumBytes(ncpu int) uint64 { return uint64(l.SumStride()) * uint64(ncpu) * 8 }

// CountBytes is the size of the counts array.
func (l Layout) CountBytes() uint64 { return l.Entries() * 8 }

// OverflowSlot is the row of the overflow series.
func (l Layout) OverflowSlot() uint32 { return l.MaxSeries }

// Validate checks that the counts array is addressable with the u32
// indices the program uses.
func (l Layout) Validate() error {
	if l.NumBuckets == 0 || l.MaxSeries == 0 {
		return fmt.Errorf("empty layout %+v", l)
	}
	if l.Entries() > 1<<32-1 || uint64(l.SumStride())*1024 > 1<<32-1 {
		return fmt.Errorf("%d rows of %d words exceed the kernel array's u32 index", l.Rows(), l.Stride())
	}
	return nil
}

// Stats are the program's counters besides the histograms.
type Stats struct {
	Filtered uint64 // samples of sockets excluded by the filters
	Errors   uint64 // samples that could not be read or placed (expected 0)
	// Missed counts the runs the kernel skipped (recursion_misses): a
	// segment seen by the hook while another program ran on its CPU.
	Missed uint64
	// Expired counts the samples of series removed for idleness (their
	// final counts), so that totals over all series stay monotonic.
	Expired uint64

	// The retransmit program's runs, each in one place: it added the
	// socket's growth in total_retrans to a series (counted, possibly 0:
	// an attempt the kernel refused), the filters refused the socket, it
	// could not read or place it (errors, expected 0), or the kernel
	// skipped it (missed).
	RetransCounted, RetransFiltered, RetransErrors, RetransMissed uint64
}

// RetransSockets is how many sockets the retransmit program remembers the
// total_retrans of (bpf/retrans.h, an LRU map of 88 bytes per socket on
// 6.18: 352 KiB). Only a socket's consecutive retransmissions need its
// entry: one evicted between them counts its next event's own segments,
// as a socket first seen, and misses only what failed to send meanwhile.
const RetransSockets = 4096

// Series is one row of counts, decoded.
type Series struct {
	Key        Key
	Overflow   bool // the row of samples that found no free series
	Retired    bool // the final counts of a series expired for idleness
	Slot       uint32
	Generation uint32
	Sum        uint64 // of raw srtt values, 1/8 µs
	Zero       uint64 // samples with srtt 0
	// Buckets are the counts of positions Offset, Offset+1, … (position =
	// bucket index - table.MinIndex). Outside them every bucket is empty;
	// after Summarize the first and last are non-empty (or there are none).
	Buckets []uint64
	Offset  int
	Total   uint64 // Zero + Σ Buckets, set by Summarize
	// Retransmits are the segments the series' sockets retransmitted
	// (the retransmit program's count for the row; 0 when it is off).
	Retransmits uint64
}

// Summarize sets Total and trims Buckets to the non-empty range.
func (s *Series) Summarize() {
	s.Total = s.Zero
	first, last := -1, -1
	for i, c := range s.Buckets {
		if c == 0 {
			continue
		}
		s.Total += c
		if first < 0 {
			first = i
		}
		last = i
	}
	if first < 0 {
		s.Buckets, s.Offset = s.Buckets[:0], 0
		return
	}
	s.Buckets = s.Buckets[first : last+1]
	s.Offset += first
}

// Since sets d to the samples s has beyond prev, an earlier reading of
// the same series (the kernel's counts only grow): the differences of the
// zero count, sum, total and buckets, the buckets trimmed to the non-empty
// range. d keeps its own buckets, reused across calls.
func (s *Series) Since(prev *Series, d *Series) {
	d.Zero, d.Sum = s.Zero-prev.Zero, s.Sum-prev.Sum
	d.Retransmits = s.Retransmits - prev.Retransmits
	d.Total = d.Zero
	d.Buckets, d.Offset = d.Buckets[:0], 0
	first, last := -1, -1
	for i, v := range s.Buckets {
		if v != prev.Bucket(s.Offset+i) {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return
	}
	for i := first; i <= last; i++ {
		n := s.Buckets[i] - prev.Bucket(s.Offset+i)
		d.Buckets = append(d.Buckets, n)
		d.Total += n
	}
	d.Offset = s.Offset + first
}

// CopyCounts copies the counts of s into dst, which keeps buckets of its
// own (s.Buckets usually aliases a read buffer that is reused).
func (s *Series) CopyCounts(dst *Series) {
	dst.Zero, dst.Sum, dst.Total, dst.Offset = s.Zero, s.Sum, s.Total, s.Offset
	dst.Retransmits = s.Retransmits
	dst.Buckets = append(dst.Buckets[:0], s.Buckets...)
}

// Bucket returns the count at position pos.
func (s *Series) Bucket(pos int) uint64 {
	if i := pos - s.Offset; i >= 0 && i < len(s.Buckets) {
		return s.Buckets[i]
	}
	return 0
}

// RowID identifies one cumulative run of counts: a row (slot) and its
// generation; a recycled row starts a new run with a new generation.
type RowID struct {
	Slot, Generation uint32
}

// Snapshot is one read of the kernel maps.
type Snapshot struct {
	Series []Series
	// Pending are series retired at an earlier read whose rows wait for
	// their last samples: no point now, a final point at a later read.
	Pending []RowID
	Stats   Stats
}

// DecodeRow fills s from a row of the counts array (all but Sum, which
// is kept per CPU in the sums array) and summarizes it.
// s.Buckets aliases row (trimmed to the non-empty range), so decoding
// copies nothing; keep the row as long as s is used.
func DecodeRow(row []uint64, l Layout, s *Series) error {
	if uint32(len(row)) != l.Stride() {
		return fmt.Errorf("row of %d words, layout wants %d", len(row), l.Stride())
	}
	s.Generation = uint32(row[RowGeneration])
	s.Zero = row[RowZero]
	s.Buckets, s.Offset = row[RowBuckets:], 0
	s.Summarize()
	return nil
}
