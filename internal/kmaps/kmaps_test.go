package kmaps_test

import (
	"bytes"
	"encoding/binary"
	"math"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

func TestBinarySizes(t *testing.T) {
	assert.Equal(t, 48, kmaps.KeySize)
	assert.Equal(t, kmaps.KeySize, binary.Size(kmaps.Key{}))
	assert.Equal(t, uintptr(kmaps.KeySize), unsafe.Sizeof(kmaps.Key{}))
	assert.Equal(t, 8, binary.Size(kmaps.Ref{}))
	assert.Equal(t, uintptr(8), unsafe.Sizeof(kmaps.Ref{}))
	assert.Equal(t, 24, binary.Size(kmaps.AddrFilterKey{}))
	assert.Equal(t, uintptr(24), unsafe.Sizeof(kmaps.AddrFilterKey{}))
}

// encode returns the little-endian bytes of v, as the kernel sees them on
// the little-endian targets the program is built for.
func encode(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, binary.Write(&b, binary.LittleEndian, v))
	return b.Bytes()
}

func TestKeyBytes(t *testing.T) {
	k := kmaps.Key{
		LocalAddr:  netip.MustParseAddr("::ffff:10.1.2.3").As16(),
		RemoteAddr: netip.MustParseAddr("2001:db8::1").As16(),
		LocalPort:  0x1234,
		RemotePort: 0xabcd,
		Family:     6,
		Cgroup:     0x1122334455667788,
	}
	b := encode(t, k)
	require.Len(t, b, kmaps.KeySize)
	assert.Equal(t, k.LocalAddr[:], b[0:16])
	assert.Equal(t, k.RemoteAddr[:], b[16:32])
	assert.Equal(t, []byte{0x34, 0x12}, b[32:34], "local_port is host byte order")
	assert.Equal(t, []byte{0xcd, 0xab}, b[34:36])
	assert.Equal(t, byte(6), b[36])
	assert.Equal(t, []byte{0, 0, 0}, b[37:40], "padding")
	assert.Equal(t, []byte{0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11}, b[40:48], "cgroup id")

	var back kmaps.Key
	require.NoError(t, binary.Read(bytes.NewReader(b), binary.LittleEndian, &back))
	assert.Equal(t, k, back)
}

func TestRefBytes(t *testing.T) {
	b := encode(t, kmaps.Ref{Slot: 0x01020304})
	assert.Equal(t, []byte{4, 3, 2, 1, 0, 0, 0, 0}, b)
}

func TestAddrFilterKeyBytes(t *testing.T) {
	k := kmaps.NewAddrFilterKey(kmaps.Remote, netip.MustParsePrefix("10.0.0.0/8"))
	b := encode(t, k)
	require.Len(t, b, 24)
	assert.Equal(t, []byte{8 + 96 + 8, 0, 0, 0}, b[0:4])
	assert.Equal(t, byte(1), b[4], "direction")
	want := netip.MustParseAddr("::ffff:10.0.0.0").As16()
	assert.Equal(t, want[:], b[5:21])
	assert.Equal(t, []byte{0, 0, 0}, b[21:24])
}

func TestKeyAddresses(t *testing.T) {
	t.Run("family 4", func(t *testing.T) {
		k := kmaps.Key{
			LocalAddr:  netip.MustParseAddr("::ffff:10.1.2.3").As16(),
			RemoteAddr: netip.MustParseAddr("::ffff:192.0.2.44").As16(),
			Family:     4,
		}
		l, r := k.LocalAddress(), k.RemoteAddress()
		assert.True(t, l.Is4())
		assert.Equal(t, "10.1.2.3", l.String())
		assert.Equal(t, 4, len(l.AsSlice()))
		assert.True(t, r.Is4())
		assert.Equal(t, "192.0.2.44", r.String())
		assert.Equal(t, "ipv4", k.NetworkType())
	})
	t.Run("family 4 ungrouped address", func(t *testing.T) {
		// A field that is not grouped is all zero bytes, which are not
		// v4-mapped, so it reads "::" even in an IPv4 key; the converter
		// only reads grouped fields.
		k := kmaps.Key{RemoteAddr: netip.MustParseAddr("::ffff:10.0.0.1").As16(), Family: 4}
		assert.Equal(t, "10.0.0.1", k.RemoteAddress().String())
		assert.Equal(t, "::", k.LocalAddress().String())
	})
	t.Run("family 6", func(t *testing.T) {
		k := kmaps.Key{
			LocalAddr:  netip.MustParseAddr("2001:db8::1").As16(),
			RemoteAddr: netip.MustParseAddr("fe80::2").As16(),
			Family:     6,
		}
		assert.Equal(t, "2001:db8::1", k.LocalAddress().String())
		assert.Equal(t, "fe80::2", k.RemoteAddress().String())
		assert.True(t, k.LocalAddress().Is6())
		assert.Equal(t, "ipv6", k.NetworkType())
	})
	t.Run("family 6 keeps v4-mapped bytes", func(t *testing.T) {
		// Only Family decides unmapping.
		k := kmaps.Key{LocalAddr: netip.MustParseAddr("::ffff:10.1.2.3").As16(), Family: 6}
		assert.Equal(t, "::ffff:10.1.2.3", k.LocalAddress().String())
	})
	t.Run("family 0", func(t *testing.T) {
		var k kmaps.Key
		assert.Equal(t, "", k.NetworkType())
		assert.Equal(t, "::", k.LocalAddress().String())
		assert.Equal(t, "::", k.RemoteAddress().String())
	})
	t.Run("unknown family", func(t *testing.T) {
		assert.Equal(t, "", kmaps.Key{Family: 5}.NetworkType())
	})
}

func TestNewAddrFilterKey(t *testing.T) {
	tests := []struct {
		dir     kmaps.Direction
		prefix  string
		wantLen uint32
		addr    string
	}{
		{kmaps.Local, "10.0.0.0/8", 8 + 96 + 8, "::ffff:10.0.0.0"},
		{kmaps.Remote, "192.0.2.1/32", 8 + 96 + 32, "::ffff:192.0.2.1"},
		{kmaps.Local, "0.0.0.0/0", 8 + 96, "::ffff:0.0.0.0"},
		{kmaps.Remote, "2001:db8::/32", 8 + 32, "2001:db8::"},
		{kmaps.Local, "2001:db8::1/128", 8 + 128, "2001:db8::1"},
		{kmaps.Remote, "::/0", 8, "::"},
	}
	for _, tt := range tests {
		k := kmaps.NewAddrFilterKey(tt.dir, netip.MustParsePrefix(tt.prefix))
		assert.Equal(t, tt.wantLen, k.Prefixlen, tt.prefix)
		assert.Equal(t, tt.dir, k.Direction, tt.prefix)
		assert.Equal(t, netip.MustParseAddr(tt.addr).As16(), k.Addr, tt.prefix)
	}
	assert.Equal(t, kmaps.Direction(0), kmaps.Local)
	assert.Equal(t, kmaps.Direction(1), kmaps.Remote)
}

func TestPortFilterIndex(t *testing.T) {
	tests := []struct {
		dir  kmaps.Direction
		port uint16
		word uint32
		bit  uint64
	}{
		{kmaps.Local, 0, 0, 1},
		{kmaps.Local, 63, 0, 1 << 63},
		{kmaps.Local, 64, 1, 1},
		{kmaps.Local, 65535, 1023, 1 << 63},
		{kmaps.Remote, 0, 1024, 1},
		{kmaps.Remote, 63, 1024, 1 << 63},
		{kmaps.Remote, 64, 1025, 1},
		{kmaps.Remote, 65535, 2047, 1 << 63},
	}
	for _, tt := range tests {
		word, bit := kmaps.PortFilterIndex(tt.dir, tt.port)
		assert.Equal(t, tt.word, word, "dir %d port %d", tt.dir, tt.port)
		assert.Equal(t, tt.bit, bit, "dir %d port %d", tt.dir, tt.port)
	}

	// Every (direction, port) has its own bit, inside the array.
	seen := make([]uint64, kmaps.PortFilterWords)
	for _, dir := range []kmaps.Direction{kmaps.Local, kmaps.Remote} {
		for p := 0; p <= math.MaxUint16; p++ {
			word, bit := kmaps.PortFilterIndex(dir, uint16(p))
			require.Less(t, word, uint32(kmaps.PortFilterWords))
			require.Equal(t, 1, popcount(bit))
			require.Zero(t, seen[word]&bit, "dir %d port %d collides", dir, p)
			seen[word] |= bit
		}
	}
	for i, w := range seen {
		require.Equal(t, ^uint64(0), w, "word %d not fully used", i)
	}
}

func popcount(x uint64) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

func TestGroupByHas(t *testing.T) {
	g := kmaps.GroupLocalPort | kmaps.GroupRemoteAddress
	assert.True(t, g.Has(kmaps.GroupLocalPort))
	assert.True(t, g.Has(kmaps.GroupRemoteAddress))
	assert.True(t, g.Has(kmaps.GroupLocalPort|kmaps.GroupRemoteAddress))
	assert.False(t, g.Has(kmaps.GroupLocalAddress))
	assert.False(t, g.Has(kmaps.GroupLocalPort|kmaps.GroupRemotePort))
	assert.False(t, kmaps.GroupBy(0).Has(kmaps.GroupRemotePort))
}

func TestFilterBits(t *testing.T) {
	// The bits match cfg_filters in the BPF program.
	assert.Equal(t, kmaps.Filters(1), kmaps.FilterLocalPort)
	assert.Equal(t, kmaps.Filters(2), kmaps.FilterRemotePort)
	assert.Equal(t, kmaps.Filters(4), kmaps.FilterLocalAddress)
	assert.Equal(t, kmaps.Filters(8), kmaps.FilterRemoteAddress)
}

func TestLayout(t *testing.T) {
	l := kmaps.Layout{NumBuckets: 10, MaxSeries: 4}
	assert.Equal(t, uint32(12), l.Stride())
	assert.Equal(t, uint32(5), l.Rows())
	assert.Equal(t, uint64(60), l.Entries())
	assert.Equal(t, uint32(4), l.OverflowSlot())
	assert.NoError(t, l.Validate())

	one := kmaps.Layout{NumBuckets: 1, MaxSeries: 1}
	assert.Equal(t, uint32(3), one.Stride())
	assert.Equal(t, uint32(2), one.Rows())
	assert.Equal(t, uint64(6), one.Entries())
	assert.Equal(t, uint32(1), one.OverflowSlot())
	assert.NoError(t, one.Validate())

	assert.Equal(t, 0, kmaps.RowGeneration)
	assert.Equal(t, 1, kmaps.RowZero)
	assert.Equal(t, 2, kmaps.RowBuckets)
}

func TestLayoutValidate(t *testing.T) {
	// 2^32-1 = 65535 * 65537: the largest addressable array.
	largest := kmaps.Layout{NumBuckets: 65537 - kmaps.RowBuckets, MaxSeries: 65535 - 1}
	require.Equal(t, uint64(1<<32-1), largest.Entries())
	assert.NoError(t, largest.Validate())

	tests := []struct {
		name string
		l    kmaps.Layout
	}{
		{"empty", kmaps.Layout{}},
		{"no buckets", kmaps.Layout{MaxSeries: 10}},
		{"no series", kmaps.Layout{NumBuckets: 10}},
		{"one word too many", kmaps.Layout{NumBuckets: 65537 - kmaps.RowBuckets, MaxSeries: 65535}},
		{"scale 8 with a million series", kmaps.Layout{NumBuckets: 8192, MaxSeries: 1_000_000}},
		{"max buckets and series", kmaps.Layout{NumBuckets: 1 << 20, MaxSeries: 1 << 20}},
		// Rows() = MaxSeries+1 must not wrap to 0 in uint32.
		{"max_series MaxUint32", kmaps.Layout{NumBuckets: 1, MaxSeries: math.MaxUint32}},
		// Stride() = RowBuckets+NumBuckets must not wrap in uint32.
		{"num_buckets MaxUint32-1", kmaps.Layout{NumBuckets: math.MaxUint32 - 1, MaxSeries: 1}},
		{"num_buckets MaxUint32", kmaps.Layout{NumBuckets: math.MaxUint32, MaxSeries: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Error(t, tt.l.Validate(), "%+v: Stride %d Rows %d Entries %d",
				tt.l, tt.l.Stride(), tt.l.Rows(), tt.l.Entries())
		})
	}
}

func TestDecodeRow(t *testing.T) {
	l := kmaps.Layout{NumBuckets: 4, MaxSeries: 2}
	// Two rows in one buffer, as the loader reads them.
	buf := []uint64{
		7, 2, 10, 0, 30, 1,
		8, 0, 0, 5, 0, 0,
	}
	stride := int(l.Stride())
	require.Len(t, buf, 2*stride)

	s := kmaps.Series{Key: kmaps.Key{Family: 4}, Slot: 1, Retired: true}
	row := buf[:stride:stride]
	require.NoError(t, kmaps.DecodeRow(row, l, &s))
	assert.Equal(t, uint32(7), s.Generation)
	assert.Equal(t, uint64(0), s.Sum, "sums are not in the row")
	assert.Equal(t, uint64(2), s.Zero)
	assert.Equal(t, []uint64{10, 0, 30, 1}, s.Buckets)
	assert.Equal(t, uint64(2+10+30+1), s.Total)
	// Fields DecodeRow does not own are left alone.
	assert.Equal(t, kmaps.Key{Family: 4}, s.Key)
	assert.Equal(t, uint32(1), s.Slot)
	assert.False(t, s.Overflow)
	assert.True(t, s.Retired)

	// Buckets aliases the row: no copy.
	require.Len(t, s.Buckets, 4)
	assert.Same(t, &row[kmaps.RowBuckets], &s.Buckets[0])
	row[kmaps.RowBuckets+2] = 31
	assert.Equal(t, uint64(31), s.Buckets[2])
	assert.Equal(t, uint64(2+10+30+1), s.Total, "the total is as of DecodeRow")
	s.Summarize()
	assert.Equal(t, uint64(2+10+31+1), s.Total)
	assert.Equal(t, 0, s.Offset)
	assert.Len(t, s.Buckets, 4)

	var s2 kmaps.Series
	require.NoError(t, kmaps.DecodeRow(buf[stride:], l, &s2))
	assert.Equal(t, uint32(8), s2.Generation)
	assert.Equal(t, uint64(5), s2.Total)
	// Trimmed to the one non-empty bucket, position 1, still aliasing.
	assert.Equal(t, 1, s2.Offset)
	assert.Equal(t, []uint64{5}, s2.Buckets)
	assert.Same(t, &buf[stride+kmaps.RowBuckets+1], &s2.Buckets[0])
}

func TestDecodeRowGenerationIsU32(t *testing.T) {
	l := kmaps.Layout{NumBuckets: 1, MaxSeries: 1}
	var s kmaps.Series
	require.NoError(t, kmaps.DecodeRow([]uint64{1<<32 | 5, 0, 0}, l, &s))
	assert.Equal(t, uint32(5), s.Generation)
}

func TestDecodeRowWrongLength(t *testing.T) {
	l := kmaps.Layout{NumBuckets: 4, MaxSeries: 2}
	for _, n := range []int{0, 3, 5, 7, 12} {
		s := kmaps.Series{Generation: 9, Sum: 9, Zero: 9, Buckets: []uint64{9}}
		err := kmaps.DecodeRow(make([]uint64, n), l, &s)
		require.Error(t, err, "row of %d words", n)
		assert.Contains(t, err.Error(), "wants 6")
		// s is untouched on error.
		assert.Equal(t, kmaps.Series{Generation: 9, Sum: 9, Zero: 9, Buckets: []uint64{9}}, s)
	}
	assert.Error(t, kmaps.DecodeRow(nil, l, &kmaps.Series{}))
}

func TestSeriesSummarize(t *testing.T) {
	count := func(s kmaps.Series) uint64 {
		s.Summarize()
		return s.Total
	}
	assert.Equal(t, uint64(0), count(kmaps.Series{}))
	assert.Equal(t, uint64(3), count(kmaps.Series{Zero: 3}))
	assert.Equal(t, uint64(6), count(kmaps.Series{Buckets: []uint64{1, 2, 3}}))
	assert.Equal(t, uint64(10), count(kmaps.Series{Zero: 4, Buckets: []uint64{1, 2, 3}, Sum: 1 << 40}))

	s := kmaps.Series{Zero: 1, Buckets: []uint64{0, 0, 5, 0, 7, 0}, Offset: 10}
	s.Summarize()
	assert.Equal(t, uint64(13), s.Total)
	assert.Equal(t, 12, s.Offset, "trimmed to the first non-empty bucket")
	assert.Equal(t, []uint64{5, 0, 7}, s.Buckets)
	assert.Equal(t, uint64(5), s.Bucket(12))
	assert.Equal(t, uint64(0), s.Bucket(13))
	assert.Equal(t, uint64(7), s.Bucket(14))
	assert.Equal(t, uint64(0), s.Bucket(11))
	assert.Equal(t, uint64(0), s.Bucket(15))
	s = kmaps.Series{Zero: 2, Buckets: []uint64{0, 0}}
	s.Summarize()
	assert.Empty(t, s.Buckets, "no non-empty bucket")
	assert.Equal(t, uint64(2), s.Total)
}

func TestSeriesSinceAndCopyCounts(t *testing.T) {
	prev := kmaps.Series{Zero: 1, Sum: 100, Buckets: []uint64{2, 0, 3}, Offset: 5}
	prev.Summarize()
	cur := kmaps.Series{Zero: 2, Sum: 170, Buckets: []uint64{1, 2, 0, 5, 4}, Offset: 4}
	cur.Summarize()

	var d kmaps.Series
	cur.Since(&prev, &d)
	assert.Equal(t, uint64(1), d.Zero)
	assert.Equal(t, uint64(70), d.Sum)
	// Positions 4..8: cur 1 2 0 5 4, prev 0 2 0 3 0 -> 1 0 0 2 4.
	assert.Equal(t, 4, d.Offset)
	assert.Equal(t, []uint64{1, 0, 0, 2, 4}, d.Buckets)
	assert.Equal(t, uint64(1+1+2+4), d.Total)

	// Only a middle bucket grew: the difference is trimmed to it.
	cur2 := kmaps.Series{Zero: 2, Sum: 171, Buckets: []uint64{1, 2, 0, 6, 4}, Offset: 4}
	cur2.Summarize()
	cur2.Since(&cur, &d)
	assert.Equal(t, 7, d.Offset)
	assert.Equal(t, []uint64{1}, d.Buckets)
	assert.Equal(t, uint64(1), d.Total)
	assert.Zero(t, d.Zero)

	// Nothing new.
	cur2.Since(&cur2, &d)
	assert.Empty(t, d.Buckets)
	assert.Zero(t, d.Total)

	var kept kmaps.Series
	cur.CopyCounts(&kept)
	cur.Buckets[0] = 99 // the read buffer is reused
	assert.Equal(t, []uint64{1, 2, 0, 5, 4}, kept.Buckets)
	assert.Equal(t, cur.Total, kept.Total)
	assert.Equal(t, 4, kept.Offset)
}
