//go:build linux

package loader

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Read fills snap with the current state of the maps, reusing its
// buffers (rows holds the series' bucket counts); see ReadContext.
func (t *Tracer) Read(snap *kmaps.Snapshot, rows *[]uint64) error {
	return t.ReadContext(context.Background(), snap, rows)
}

// ReadContext is Read under ctx: once ctx is done, a row that a moving
// cache entry keeps from being read exactly is reported as a lower bound
// (exact again at the next read) instead of read again, so a read always
// ends. The protocol it follows is internal/reader's. An error that is a
// *reader.LifecycleError comes with a complete snapshot, to be used.
func (t *Tracer) ReadContext(ctx context.Context, snap *kmaps.Snapshot, rows *[]uint64) error {
	if t.coll == nil {
		return errors.New("tcprtt program is closed")
	}
	return t.reader.Read(ctx, snap, rows)
}

// kernelMaps gives the reader the maps it reads and writes with system
// calls.
type kernelMaps struct {
	t *Tracer

	batchKeys []kmaps.Key // one batch of index lookups
	batchRefs []kmaps.Ref
}

const indexBatch = 1024

// ReadIndex reads series_index with batched lookups.
func (m *kernelMaps) ReadIndex(keys []kmaps.Key, refs []kmaps.Ref) ([]kmaps.Key, []kmaps.Ref, error) {
	if m.batchKeys == nil {
		m.batchKeys = make([]kmaps.Key, indexBatch)
		m.batchRefs = make([]kmaps.Ref, indexBatch)
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.t.index.BatchLookup(&cursor, m.batchKeys, m.batchRefs, nil)
		keys = append(keys, m.batchKeys[:n]...)
		refs = append(refs, m.batchRefs[:n]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return keys, refs, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return m.iterateIndex(keys[:0], refs[:0])
		}
		if err != nil {
			return keys, refs, err
		}
	}
}

func (m *kernelMaps) iterateIndex(keys []kmaps.Key, refs []kmaps.Ref) ([]kmaps.Key, []kmaps.Ref, error) {
	var k kmaps.Key
	var r kmaps.Ref
	it := m.t.index.Iterate()
	for it.Next(&k, &r) {
		keys = append(keys, k)
		refs = append(refs, r)
	}
	return keys, refs, it.Err()
}

func (m *kernelMaps) DeleteKey(key kmaps.Key) error {
	if err := m.t.index.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete series key: %w", err)
	}
	return nil
}

func (m *kernelMaps) PushFree(slot uint32) error {
	if err := m.t.free.Update(nil, slot, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("push free slot: %w", err)
	}
	return nil
}

// HasFree peeks at the free queue.
func (m *kernelMaps) HasFree() (bool, error) {
	var slot uint32
	err := m.t.free.Lookup(nil, &slot)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

func (m *kernelMaps) Stats() (kmaps.Stats, error) {
	var s kmaps.Stats
	// Runs the kernel skipped because another program was running on the
	// CPU (a softirq interrupting the hook, say): no sample could be taken.
	// Counted where the kernel counts them (README, Guarantees).
	ps, err := m.t.prog.Stats()
	if err != nil {
		return s, fmt.Errorf("read program stats: %w", err)
	}
	s.Missed = ps.RecursionMisses
	var perCPU []uint64
	for i, dst := range []*uint64{&s.Filtered, &s.Errors} {
		if err := m.t.stats.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read stats: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	if err := m.t.retransStats(&s.RetransCounted, &s.RetransFiltered, &s.RetransErrors, &s.RetransMissed); err != nil {
		return s, err
	}
	return s, nil
}
