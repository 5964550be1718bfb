//go:build linux

// Package oracle loads bpf/oracle.bpf.c, the tests' reference for tcprtt's
// numbers: a deliberately simple program on the same hook that counts every
// sample of a series, keyed as tcprtt keys it, with atomic adds into one
// hash map (no cache, no windows, no free queue, no overflow). Tests attach
// it beside tcprtt and compare, after traffic stops, what tcprtt exported
// per series with what the oracle counted.
package oracle

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/loader"
)

// Words of a series other than bucket positions (oracle.bpf.c).
const (
	wordZero = 0xfffffffe
	wordSum  = 0xffffffff
)

// Counts is what the oracle counted for one series.
type Counts struct {
	Zero    uint64
	Buckets map[uint32]uint64 // by bucket position (the table's Position)
	Sum     uint64            // raw srtt, 1/8 µs
	Total   uint64            // Zero + Σ Buckets
}

// Add adds o to c.
func (c *Counts) Add(o *Counts) {
	if c.Buckets == nil {
		c.Buckets = map[uint32]uint64{}
	}
	c.Zero += o.Zero
	c.Sum += o.Sum
	c.Total += o.Total
	for p, n := range o.Buckets {
		c.Buckets[p] += n
	}
}

// Oracle is one loaded and attached instance of the oracle program.
type Oracle struct {
	coll   *ebpf.Collection
	prog   *ebpf.Program
	link   link.Link
	counts *ebpf.Map
	stats  *ebpf.Map
}

var programOf = map[loader.Mode]string{
	loader.ModeFentry:     bpf.OracleProgOracleFentry,
	loader.ModeTpBtf:      bpf.OracleProgOracleTpBtf,
	loader.ModeRawTp:      bpf.OracleProgOracleRawTp,
	loader.ModeTracepoint: bpf.OracleProgOracleTracepoint,
}

// Open loads the oracle configured as spec (group_by, filters, family,
// scale and unit, helper reads) and attaches it with mode, the flavour
// tcprtt attached with (loader.Tracer.Mode). words bounds the hash map:
// one element per series and bucket it sees, plus two per series.
func Open(spec loader.Spec, mode loader.Mode, words uint32) (_ *Oracle, err error) {
	progName, ok := programOf[mode]
	if !ok {
		return nil, fmt.Errorf("oracle: no program for attach mode %q", mode)
	}
	if spec.Table == nil {
		return nil, errors.New("oracle: spec has no bucket table")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("oracle: raise RLIMIT_MEMLOCK: %w", err)
	}
	cs, err := bpf.LoadOracle()
	if err != nil {
		return nil, fmt.Errorf("oracle: parse embedded program: %w", err)
	}
	for name := range cs.Programs {
		if name != progName {
			delete(cs.Programs, name)
		}
	}
	var table [len(spec.Table.Entries)]bpf.OracleBucketEntry
	for i, e := range spec.Table.Entries {
		table[i] = bpf.OracleBucketEntry{Base: e.Base, Threshold: e.Threshold}
	}
	// The values loader.configure gives tcprtt's variables of the same names.
	for name, v := range map[string]any{
		bpf.OracleVarCfgGroupBy:    uint32(spec.GroupBy),
		bpf.OracleVarCfgFilters:    uint32(spec.Filters()),
		bpf.OracleVarCfgFamily:     uint32(spec.Family),
		bpf.OracleVarCfgRdonlyCast: !spec.HelperReads,
		bpf.OracleVarCfgScale:      uint32(spec.Table.Scale),
		bpf.OracleVarCfgBuckets:    table,
	} {
		if err := cs.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("oracle: set %s: %w", name, err)
		}
	}
	cs.Maps[bpf.OracleMapCounts].MaxEntries = words
	cs.Maps[bpf.OracleMapAddrFilter].MaxEntries = uint32(max(1, len(spec.LocalPrefixes)+len(spec.RemotePrefixes)))
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		return nil, fmt.Errorf("oracle: load (%s): %w", mode, err)
	}
	o := &Oracle{coll: coll, counts: coll.Maps[bpf.OracleMapCounts], stats: coll.Maps[bpf.OracleMapStats]}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	if err := fillFilters(coll, &spec); err != nil {
		return nil, err
	}
	prog := coll.Programs[progName]
	o.prog = prog
	switch mode {
	case loader.ModeFentry, loader.ModeTpBtf:
		o.link, err = link.AttachTracing(link.TracingOptions{Program: prog})
	case loader.ModeRawTp:
		o.link, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "tcp_probe", Program: prog})
	case loader.ModeTracepoint:
		o.link, err = link.Tracepoint("tcp", "tcp_probe", prog, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("oracle: attach %s: %w", mode.Hook(), err)
	}
	return o, nil
}

// fillFilters writes spec's port and address filters as the loader
// writes tcprtt's.
func fillFilters(coll *ebpf.Collection, spec *loader.Spec) error {
	words := map[uint32]uint64{}
	for _, p := range spec.LocalPorts {
		w, bit := kmaps.PortFilterIndex(kmaps.Local, p)
		words[w] |= bit
	}
	for _, p := range spec.RemotePorts {
		w, bit := kmaps.PortFilterIndex(kmaps.Remote, p)
		words[w] |= bit
	}
	for w, bits := range words {
		if err := coll.Maps[bpf.OracleMapPortFilter].Put(w, bits); err != nil {
			return fmt.Errorf("oracle: write port filter: %w", err)
		}
	}
	addrs := coll.Maps[bpf.OracleMapAddrFilter]
	for dir, prefixes := range map[kmaps.Direction][]netip.Prefix{kmaps.Local: spec.LocalPrefixes, kmaps.Remote: spec.RemotePrefixes} {
		for _, p := range prefixes {
			if err := addrs.Put(kmaps.NewAddrFilterKey(dir, p), uint8(1)); err != nil {
				return fmt.Errorf("oracle: write address filter %s: %w", p, err)
			}
		}
	}
	return nil
}

// key is struct oracle_key.
type key struct {
	Series kmaps.Key
	Word   uint32
	_      uint32
}

// Read returns the oracle's counts per series key. Read it after traffic
// has stopped: the map is iterated while the program may still add.
func (o *Oracle) Read() (map[kmaps.Key]*Counts, error) {
	out := map[kmaps.Key]*Counts{}
	var k key
	var v uint64
	it := o.counts.Iterate()
	for it.Next(&k, &v) {
		c := out[k.Series]
		if c == nil {
			c = &Counts{Buckets: map[uint32]uint64{}}
			out[k.Series] = c
		}
		switch k.Word {
		case wordSum:
			c.Sum += v
		case wordZero:
			c.Zero += v
			c.Total += v
		default:
			c.Buckets[k.Word] += v
			c.Total += v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("oracle: iterate counts: %w", err)
	}
	return out, nil
}

// Stats returns the samples the oracle could not count (expected 0) and
// those of sockets the filters excluded.
func (o *Oracle) Stats() (errs, filtered uint64, err error) {
	if err := o.stats.Lookup(uint32(0), &errs); err != nil {
		return 0, 0, fmt.Errorf("oracle: read stats: %w", err)
	}
	if err := o.stats.Lookup(uint32(1), &filtered); err != nil {
		return 0, 0, fmt.Errorf("oracle: read stats: %w", err)
	}
	return errs, filtered, nil
}

// Counted returns how many samples the oracle counted (of sockets its
// filters let through): unchanged across a read, it tells that no sample
// arrived meanwhile.
func (o *Oracle) Counted() (uint64, error) {
	var n uint64
	if err := o.stats.Lookup(uint32(2), &n); err != nil {
		return 0, fmt.Errorf("oracle: read stats: %w", err)
	}
	return n, nil
}

// Missed returns the runs the kernel skipped because another run of the
// oracle was in progress on the CPU (recursion_misses): segments it did
// not see. tcprtt's program is skipped on its own, at other moments.
func (o *Oracle) Missed() (uint64, error) {
	st, err := o.prog.Stats()
	if err != nil {
		return 0, fmt.Errorf("oracle: program stats: %w", err)
	}
	return st.RecursionMisses, nil
}

// Close detaches the oracle and releases its maps. Safe to call twice.
func (o *Oracle) Close() error {
	var err error
	if o.link != nil {
		err = o.link.Close()
		o.link = nil
	}
	if o.coll != nil {
		o.coll.Close()
		o.coll = nil
	}
	return err
}
