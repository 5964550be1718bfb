//go:build linux

package kmaps_test

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// sameLayout checks that the pure-Go type ours has the size of the
// bpf2go-generated type gen, and that every named field of gen has a field
// of ours with the same name (renamed in rename), offset, size and kind.
// Blank fields (bpf2go's structs.HostLayout and padding) are only counted
// through the total size; named padding is listed in rename as "".
func sameLayout(t *testing.T, ours, gen any, rename map[string]string) {
	t.Helper()
	o, g := reflect.TypeOf(ours), reflect.TypeOf(gen)
	assert.Equal(t, g.Size(), o.Size(), "size of %v vs %v", o, g)
	assert.Equal(t, binary.Size(gen), binary.Size(ours), "binary size of %v vs %v", o, g)
	assert.Equal(t, g.Align(), o.Align(), "alignment of %v vs %v", o, g)

	named := 0
	for i := range g.NumField() {
		gf := g.Field(i)
		if gf.Name == "_" {
			continue
		}
		name := gf.Name
		if r, ok := rename[name]; ok {
			if r == "" {
				continue
			}
			name = r
		}
		named++
		of, ok := o.FieldByName(name)
		if !assert.True(t, ok, "%v has no field %s (%v.%s)", o, name, g, gf.Name) {
			continue
		}
		assert.Equal(t, gf.Offset, of.Offset, "offset of %v.%s", o, name)
		assert.Equal(t, gf.Type.Size(), of.Type.Size(), "size of %v.%s", o, name)
		assert.Equal(t, gf.Type.Kind(), of.Type.Kind(), "kind of %v.%s", o, name)
		if gf.Type.Kind() == reflect.Array {
			assert.Equal(t, gf.Type.Elem().Size(), of.Type.Elem().Size(), "element of %v.%s", o, name)
		}
	}
	// ours has no named field the generated type lacks.
	ourNamed := 0
	for i := range o.NumField() {
		if o.Field(i).Name != "_" {
			ourNamed++
		}
	}
	assert.Equal(t, named, ourNamed, "named fields of %v vs %v", o, g)
}

func TestLayoutMatchesBPF(t *testing.T) {
	sameLayout(t, kmaps.Key{}, bpf.TcprttSeriesKey{}, map[string]string{"Pad": ""})
	sameLayout(t, kmaps.Ref{}, bpf.TcprttSeriesRef{}, nil)
	sameLayout(t, kmaps.AddrFilterKey{}, bpf.TcprttAddrFilterKey{}, nil)

	assert.Equal(t, kmaps.KeySize, binary.Size(bpf.TcprttSeriesKey{}))
}

// The same value encodes to the same bytes through either type.
func TestBytesMatchBPF(t *testing.T) {
	k := kmaps.Key{LocalPort: 443, RemotePort: 51000, Family: 4, Cgroup: 0x0102030405060708}
	k.LocalAddr[15], k.RemoteAddr[0] = 1, 0x20
	g := bpf.TcprttSeriesKey{
		LocalAddr: k.LocalAddr, RemoteAddr: k.RemoteAddr,
		LocalPort: k.LocalPort, RemotePort: k.RemotePort, Family: k.Family, Cgroup: k.Cgroup,
	}
	assert.Equal(t, bytesOf(t, g), bytesOf(t, k))

	r := kmaps.Ref{Slot: 12345}
	assert.Equal(t, bytesOf(t, bpf.TcprttSeriesRef{Slot: r.Slot}), bytesOf(t, r))
	// One socket cache entry per cache line, as the program assumes.
	assert.Equal(t, kmaps.CacheEntryBytes, binary.Size(bpf.TcprttCacheEntry{}))
	var e bpf.TcprttCacheEntry
	assert.Equal(t, uintptr(kmaps.CacheSlotOffset), unsafe.Offsetof(e.Slot))
	assert.Equal(t, uintptr(kmaps.CacheBaseOffset), unsafe.Offsetof(e.Base))
	assert.Equal(t, uintptr(kmaps.CacheSumOffset), unsafe.Offsetof(e.Sum))
	assert.Equal(t, uintptr(kmaps.CacheCountOffset), unsafe.Offsetof(e.Counts))
	assert.Equal(t, uintptr(kmaps.CacheSeqOffset), unsafe.Offsetof(e.Seq))
	assert.Equal(t, kmaps.CacheWindow, len(e.Counts))

	a := kmaps.AddrFilterKey{Prefixlen: 112, Direction: kmaps.Remote}
	a.Addr[10], a.Addr[11], a.Addr[12] = 0xff, 0xff, 10
	assert.Equal(t, bytesOf(t, bpf.TcprttAddrFilterKey{Prefixlen: a.Prefixlen, Direction: uint8(a.Direction), Addr: a.Addr}),
		bytesOf(t, a))
}

func bytesOf(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, binary.Write(&b, binary.NativeEndian, v))
	return b.Bytes()
}
