//go:build linux

package loader

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/kmaps"
)

// Program names per mode, from the bpf2go output.
var programOf = map[Mode]string{
	ModeFentry:     bpf.TcprttProgTcprttFentry,
	ModeTpBtf:      bpf.TcprttProgTcprttTpBtf,
	ModeRawTp:      bpf.TcprttProgTcprttRawTp,
	ModeTracepoint: bpf.TcprttProgTcprttTracepoint,
}

var (
	parsedOnce sync.Once
	parsed     *ebpf.CollectionSpec
	parseErr   error
)

// collectionSpec returns a private copy of the embedded program's spec.
func collectionSpec() (*ebpf.CollectionSpec, error) {
	parsedOnce.Do(func() { parsed, parseErr = bpf.LoadTcprtt() })
	if parseErr != nil {
		return nil, fmt.Errorf("parse embedded tcprtt program: %w", parseErr)
	}
	return parsed.Copy(), nil
}

// Tracer is one loaded and attached instance of the program.
type Tracer struct {
	spec       Spec
	layout     kmaps.Layout
	mode       Mode
	attempts   []Attempt
	attachedAt time.Time

	coll   *ebpf.Collection
	prog   *ebpf.Program
	link   link.Link
	index  *ebpf.Map
	free   *ebpf.Map
	stats  *ebpf.Map
	sums   *ebpf.Map // per CPU
	counts []byte    // the counts array, mmapped

	// Reused across reads.
	keys      []kmaps.Key
	refs      []kmaps.Ref
	batchKeys []kmaps.Key // one batch of index lookups
	batchRefs []kmaps.Ref

	scratch  []uint64 // one row
	ncpu     int
	sumKeys  []uint32
	sumVals  []uint64 // per slot and CPU
	slotSums []uint64 // per slot, all CPUs
	now      func() time.Time
	activity []activity // by slot
	retiring []retired
	expired  uint64 // samples of freed rows
}

// Open loads and attaches the program for spec. In ModeAuto it tries the
// flavours of AutoOrder until one attaches; the returned Tracer reports
// the attempts that failed before it. If none attaches the error is an
// *AttachError listing every attempt.
func Open(spec Spec) (*Tracer, error) {
	if err := checkCapabilities(); err != nil {
		return nil, err
	}
	if spec.Table == nil {
		return nil, errors.New("loader: spec has no bucket table")
	}
	if err := spec.Layout().Validate(); err != nil {
		return nil, fmt.Errorf("loader: %w", err)
	}
	modes := []Mode{spec.Mode}
	if spec.Mode == ModeAuto || spec.Mode == "" {
		modes = AutoOrder
	}
	var attempts []Attempt
	for _, m := range modes {
		t, err := open(spec, m)
		if err == nil {
			t.attempts = attempts
			return t, nil
		}
		attempts = append(attempts, Attempt{Mode: m, Err: err})
	}
	return nil, &AttachError{Attempts: attempts}
}

func open(spec Spec, mode Mode) (_ *Tracer, err error) {
	progName, ok := programOf[mode]
	if !ok {
		return nil, fmt.Errorf("unknown attach mode %q", mode)
	}
	cs, err := collectionSpec()
	if err != nil {
		return nil, err
	}
	for name := range cs.Programs {
		if name != progName {
			delete(cs.Programs, name)
		}
	}
	delete(cs.Maps, bpf.TcprttMapSelftest)
	if err := configure(cs, &spec); err != nil {
		return nil, err
	}

	coll, err := ebpf.NewCollection(cs)
	if errors.Is(err, unix.EPERM) {
		// cilium/ebpf's hint about MEMLOCK does not apply to kernels with
		// memcg accounting (5.11+); say plainly that the kernel refused.
		return nil, fmt.Errorf("load refused by the kernel: %w", unix.EPERM)
	}
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	t := &Tracer{
		spec:   spec,
		layout: spec.Layout(),
		mode:   mode,
		coll:   coll,
		prog:   coll.Programs[progName],
		index:  coll.Maps[bpf.TcprttMapSeriesIndex],
		free:   coll.Maps[bpf.TcprttMapFreeSlots],
		stats:  coll.Maps[bpf.TcprttMapStats],
		sums:   coll.Maps[bpf.TcprttMapSums],

		scratch:  make([]uint64, spec.Layout().Stride()),
		now:      time.Now,
		activity: make([]activity, spec.MaxSeries),
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.ncpu, err = ebpf.PossibleCPU(); err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	if err := t.fillMaps(); err != nil {
		return nil, err
	}
	t.counts, err = mmapArray(coll.Maps[bpf.TcprttMapCounts])
	if err != nil {
		return nil, err
	}
	t.attachedAt = time.Now()
	t.link, err = attach(mode, t.prog)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	return t, nil
}

// configure sets the program's constants and map sizes from spec.
func configure(cs *ebpf.CollectionSpec, spec *Spec) error {
	layout := spec.Layout()
	var table [len(spec.Table.Entries)]bpf.TcprttBucketEntry
	for i, e := range spec.Table.Entries {
		table[i] = bpf.TcprttBucketEntry{Base: e.Base, Threshold: e.Threshold}
	}
	vars := map[string]any{
		bpf.TcprttVarCfgGroupBy:    uint32(spec.GroupBy),
		bpf.TcprttVarCfgFilters:    uint32(spec.Filters()),
		bpf.TcprttVarCfgFamily:     uint32(spec.Family),
		bpf.TcprttVarCfgRdonlyCast: !spec.HelperReads,
		bpf.TcprttVarCfgScale:      uint32(spec.Table.Scale),
		bpf.TcprttVarCfgStride:     layout.Stride(),
		bpf.TcprttVarCfgMaxSeries:  layout.MaxSeries,
		bpf.TcprttVarCfgBuckets:    table,
	}
	for name, v := range vars {
		vs, ok := cs.Variables[name]
		if !ok {
			return fmt.Errorf("embedded program lacks variable %s", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	cs.Maps[bpf.TcprttMapSeriesIndex].MaxEntries = layout.MaxSeries
	cs.Maps[bpf.TcprttMapFreeSlots].MaxEntries = layout.MaxSeries
	cs.Maps[bpf.TcprttMapCounts].MaxEntries = uint32(layout.Entries())
	cs.Maps[bpf.TcprttMapSums].MaxEntries = layout.Rows()
	cs.Maps[bpf.TcprttMapAddrFilter].MaxEntries = uint32(max(1, len(spec.LocalPrefixes)+len(spec.RemotePrefixes)))
	return nil
}

// fillMaps hands every series slot to the free queue and writes the
// filters, before the program is attached.
func (t *Tracer) fillMaps() error {
	for slot := range t.layout.MaxSeries {
		if err := t.free.Update(nil, slot, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("fill free slot queue: %w", err)
		}
	}
	ports := t.coll.Maps[bpf.TcprttMapPortFilter]
	words := map[uint32]uint64{}
	for _, p := range t.spec.LocalPorts {
		w, bit := kmaps.PortFilterIndex(kmaps.Local, p)
		words[w] |= bit
	}
	for _, p := range t.spec.RemotePorts {
		w, bit := kmaps.PortFilterIndex(kmaps.Remote, p)
		words[w] |= bit
	}
	for w, bits := range words {
		if err := ports.Put(w, bits); err != nil {
			return fmt.Errorf("write port filter: %w", err)
		}
	}
	addrs := t.coll.Maps[bpf.TcprttMapAddrFilter]
	for _, p := range t.spec.LocalPrefixes {
		if err := addrs.Put(kmaps.NewAddrFilterKey(kmaps.Local, p), uint8(1)); err != nil {
			return fmt.Errorf("write local address filter %s: %w", p, err)
		}
	}
	for _, p := range t.spec.RemotePrefixes {
		if err := addrs.Put(kmaps.NewAddrFilterKey(kmaps.Remote, p), uint8(1)); err != nil {
			return fmt.Errorf("write remote address filter %s: %w", p, err)
		}
	}
	return nil
}

func mmapArray(m *ebpf.Map) ([]byte, error) {
	size := int(m.MaxEntries()) * int(m.ValueSize())
	page := os.Getpagesize()
	size = (size + page - 1) / page * page
	b, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap counts array: %w", err)
	}
	return b, nil
}

func attach(mode Mode, prog *ebpf.Program) (link.Link, error) {
	switch mode {
	case ModeFentry, ModeTpBtf:
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case ModeRawTp:
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: "tcp_probe", Program: prog})
	case ModeTracepoint:
		l, err := link.Tracepoint("tcp", "tcp_probe", prog, nil)
		if errors.Is(err, os.ErrPermission) {
			// The event id is read from tracefs, which is root-only by
			// default: CAP_BPF and CAP_PERFMON do not cover it.
			err = fmt.Errorf("%w (the tracepoint flavour reads tracefs, which needs CAP_DAC_READ_SEARCH or root)", err)
		}
		return l, err
	}
	return nil, fmt.Errorf("unknown attach mode %q", mode)
}

// Mode returns the flavour that attached.
func (t *Tracer) Mode() Mode { return t.mode }

// Attempts returns the flavours tried and refused before Mode.
func (t *Tracer) Attempts() []Attempt { return t.attempts }

// AttachedAt is when the program started counting: the start time of
// every cumulative series.
func (t *Tracer) AttachedAt() time.Time { return t.attachedAt }

// Layout returns the counts array geometry.
func (t *Tracer) Layout() kmaps.Layout { return t.layout }

// KernelMemory is the memory the kernel charges for t's maps (the
// per-socket storage is charged to the sockets and not included).
func (t *Tracer) KernelMemory() (uint64, error) {
	var total uint64
	for name, m := range t.coll.Maps {
		info, err := m.Info()
		if err != nil {
			return 0, fmt.Errorf("map %s info: %w", name, err)
		}
		// An LPM trie reports no memlock: its nodes are allocated as
		// prefixes are added, a few dozen bytes each.
		n, _ := info.Memlock()
		total += n
	}
	return total, nil
}

// Program returns the attached program (for run statistics).
func (t *Tracer) Program() *ebpf.Program { return t.prog }

// Read fills snap with the current state of the maps, reusing its
// buffers (rows holds the series' bucket counts). Rows are read from the
// mmapped counts array with atomic loads, so a concurrent increment is
// never torn.
//
// Read also expires idle series (Spec.IdleTimeout): a series whose counts
// did not change for that long is removed from the index, so a new socket
// with its key takes a fresh row, and its row's generation is bumped, so
// sockets that cached it resolve again. The row is read one last time and
// freed at the next Read, after any program that saw the old generation
// has long finished; that final read is reported (Retired) if it changed.
func (t *Tracer) Read(snap *kmaps.Snapshot, rows *[]uint64) error {
	if t.coll == nil {
		return errors.New("tcprtt program is closed")
	}
	now := t.now()
	if err := t.readIndex(); err != nil {
		return err
	}
	// Each series keeps only its non-empty bucket range, packed into rows;
	// the capacity covers the worst case, so appends never move earlier
	// series' buckets.
	need := (len(t.keys) + len(t.retiring) + 1) * int(t.layout.NumBuckets)
	if cap(*rows) < need {
		*rows = make([]uint64, 0, need)
	}
	packed := (*rows)[:0]
	snap.Series = snap.Series[:0]

	if err := t.freeRetired(snap, &packed); err != nil {
		return err
	}
	for i, ref := range t.refs {
		s := kmaps.Series{Key: t.keys[i], Slot: ref.Slot}
		if err := t.readSeries(&s, &packed); err != nil {
			return err
		}
		if s.Generation != ref.Generation {
			continue // recycled since the index was read
		}
		snap.Series = append(snap.Series, s)
		if err := t.trackActivity(&snap.Series[len(snap.Series)-1], now); err != nil {
			return err
		}
	}
	o := kmaps.Series{Overflow: true, Slot: t.layout.OverflowSlot()}
	if err := t.readSeries(&o, &packed); err != nil {
		return err
	}
	// The overflow row is never reset: one cumulative run, whatever its
	// generation (which only tells cached sockets that rows were freed).
	o.Generation = 0
	if o.Total > 0 {
		snap.Series = append(snap.Series, o)
	}
	// The sums are read after the counts: the program adds to a bucket
	// first, so every counted sample is in its sum (a sample landing in
	// between may be in the sum a read early).
	if err := t.readSums(snap.Series); err != nil {
		return err
	}
	for i := range snap.Series {
		snap.Series[i].Sum = t.slotSums[snap.Series[i].Slot]
	}
	var err error
	snap.Stats, err = t.readStats()
	snap.Stats.Expired = t.expired
	return err
}

// activity is what Read remembers of a series row to detect idleness.
type activity struct {
	generation uint32
	count      uint64
	since      time.Time // last time count changed
}

// retired is a row taken from its series at the previous Read.
type retired struct {
	key        kmaps.Key
	slot       uint32
	generation uint32 // the series' generation, before the bump
	count      uint64 // at the last Read
}

// trackActivity notes whether s changed and retires it once idle.
func (t *Tracer) trackActivity(s *kmaps.Series, now time.Time) error {
	count := s.Total
	a := &t.activity[s.Slot]
	if a.since.IsZero() || a.generation != s.Generation || a.count != count {
		*a = activity{generation: s.Generation, count: count, since: now}
		return nil
	}
	if t.spec.IdleTimeout <= 0 || now.Sub(a.since) < t.spec.IdleTimeout {
		return nil
	}
	if err := t.index.Delete(s.Key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("expire idle series: %w", err)
	}
	t.storeWord(s.Slot, kmaps.RowGeneration, uint64(s.Generation+1))
	*a = activity{}
	t.retiring = append(t.retiring, retired{key: s.Key, slot: s.Slot, generation: s.Generation, count: count})
	return nil
}

// freeRetired reads the rows retired at the previous Read a last time,
// reports those that changed since, zeroes them and returns their slots
// to the free queue.
func (t *Tracer) freeRetired(snap *kmaps.Snapshot, packed *[]uint64) error {
	for _, r := range t.retiring {
		s := kmaps.Series{Key: r.key, Slot: r.slot, Retired: true}
		if err := t.readSeries(&s, packed); err != nil {
			return err
		}
		s.Generation = r.generation
		if s.Total != r.count {
			snap.Series = append(snap.Series, s)
		}
		t.expired += s.Total
		for w := uint32(kmaps.RowZero); w < t.layout.Stride(); w++ {
			t.storeWord(r.slot, w, 0)
		}
		if err := t.sums.Put(r.slot, make([]uint64, t.ncpu)); err != nil {
			return fmt.Errorf("clear expired series sum: %w", err)
		}
		if err := t.free.Update(nil, r.slot, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("free expired series slot: %w", err)
		}
	}
	if len(t.retiring) > 0 {
		// Sockets cached as overflow see the new generation and look
		// for one of the freed rows.
		atomic.AddUint64(t.word(t.layout.OverflowSlot(), kmaps.RowGeneration), 1)
	}
	t.retiring = t.retiring[:0]
	return nil
}

// readSeries decodes the row of s.Slot and appends its non-empty bucket
// range to packed, which s.Buckets then aliases. The row is first copied
// to a scratch row that stays in cache; only the few non-empty buckets
// are kept.
func (t *Tracer) readSeries(s *kmaps.Series, packed *[]uint64) error {
	t.loadRow(s.Slot, t.scratch)
	if err := kmaps.DecodeRow(t.scratch, t.layout, s); err != nil {
		return err
	}
	start := len(*packed)
	*packed = append(*packed, s.Buckets...)
	s.Buckets = (*packed)[start:len(*packed):len(*packed)]
	return nil
}

// words is the mmapped counts array as u64 words.
func (t *Tracer) words() []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(t.counts))), len(t.counts)/8)
}

func (t *Tracer) word(slot, word uint32) *uint64 {
	return &t.words()[uint64(slot)*uint64(t.layout.Stride())+uint64(word)]
}

func (t *Tracer) storeWord(slot, word uint32, v uint64) {
	atomic.StoreUint64(t.word(slot, word), v)
}

func (t *Tracer) loadRow(slot uint32, row []uint64) {
	start := uint64(slot) * uint64(t.layout.Stride())
	src := t.words()[start : start+uint64(len(row))]
	for i := range row {
		row[i] = atomic.LoadUint64(&src[i])
	}
}

// readSums reads the per-CPU sums of the slots of series into
// t.slotSums. Slots are handed out lowest first, so the series' slots are
// read with one batched lookup of the slots up to the highest in use (5.6+
// kernels), and the overflow slot on its own.
func (t *Tracer) readSums(series []kmaps.Series) error {
	rows := int(t.layout.Rows())
	if t.slotSums == nil {
		t.sumKeys = make([]uint32, rows)
		t.sumVals = make([]uint64, rows*t.ncpu)
		t.slotSums = make([]uint64, rows)
	}
	n := 0
	for i := range series {
		if !series[i].Overflow {
			n = max(n, int(series[i].Slot)+1)
		}
	}
	if n > 0 {
		var cursor ebpf.MapBatchCursor
		got, err := t.sums.BatchLookup(&cursor, t.sumKeys[:n], t.sumVals[:n*t.ncpu], nil)
		switch {
		case errors.Is(err, ebpf.ErrNotSupported):
			for slot := range n {
				if err := t.lookupSum(uint32(slot)); err != nil {
					return err
				}
			}
		case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
			return fmt.Errorf("read sums: %w", err)
		default:
			for i := range got {
				t.slotSums[t.sumKeys[i]] = sumOf(t.sumVals[i*t.ncpu : (i+1)*t.ncpu])
			}
		}
	}
	return t.lookupSum(t.layout.OverflowSlot())
}

func (t *Tracer) lookupSum(slot uint32) error {
	perCPU := t.sumVals[:t.ncpu]
	if err := t.sums.Lookup(slot, &perCPU); err != nil {
		return fmt.Errorf("read sum of slot %d: %w", slot, err)
	}
	t.slotSums[slot] = sumOf(perCPU)
	return nil
}

func sumOf(perCPU []uint64) uint64 {
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum
}

const indexBatch = 1024

// readIndex reads series_index into t.keys/t.refs with batched lookups.
func (t *Tracer) readIndex() error {
	t.keys, t.refs = t.keys[:0], t.refs[:0]
	if t.batchKeys == nil {
		t.batchKeys = make([]kmaps.Key, indexBatch)
		t.batchRefs = make([]kmaps.Ref, indexBatch)
	}
	keys, refs := t.batchKeys, t.batchRefs
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.index.BatchLookup(&cursor, keys, refs, nil)
		t.keys = append(t.keys, keys[:n]...)
		t.refs = append(t.refs, refs[:n]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return t.iterateIndex()
		}
		if err != nil {
			return fmt.Errorf("read series index: %w", err)
		}
	}
}

func (t *Tracer) iterateIndex() error {
	t.keys, t.refs = t.keys[:0], t.refs[:0]
	var k kmaps.Key
	var r kmaps.Ref
	it := t.index.Iterate()
	for it.Next(&k, &r) {
		t.keys = append(t.keys, k)
		t.refs = append(t.refs, r)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read series index: %w", err)
	}
	return nil
}

func (t *Tracer) readStats() (kmaps.Stats, error) {
	var s kmaps.Stats
	var perCPU []uint64
	for i, dst := range []*uint64{&s.Filtered, &s.Errors} {
		if err := t.stats.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read stats: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return s, nil
}

// Close detaches the program and releases every kernel object of t. It is
// safe to call more than once.
func (t *Tracer) Close() error {
	var errs []error
	if t.link != nil {
		errs = append(errs, t.link.Close())
		t.link = nil
	}
	if t.counts != nil {
		errs = append(errs, unix.Munmap(t.counts))
		t.counts = nil
	}
	if t.coll != nil {
		t.coll.Close()
		t.coll = nil
	}
	return errors.Join(errs...)
}

// checkCapabilities fails early, with the names of what is missing, when
// the process can certainly not load the program.
func checkCapabilities() error {
	eff, err := effectiveCapabilities()
	if err != nil {
		return nil // unknown: let the kernel decide
	}
	const capSysAdmin, capPerfmon, capBPF = 21, 38, 39
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	return fmt.Errorf("missing capabilities %v: tcprtt needs CAP_BPF and CAP_PERFMON (or root) to load "+
		"its eBPF program; run as root or grant them (e.g. AmbientCapabilities=CAP_BPF CAP_PERFMON "+
		"in a systemd unit, or setcap cap_bpf,cap_perfmon+ep on the binary)", missing)
}

func effectiveCapabilities() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}
