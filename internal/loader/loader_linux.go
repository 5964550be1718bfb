//go:build linux

package loader

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/bpf"
	"github.com/tcprtt/tcprtt/internal/kmaps"
	"github.com/tcprtt/tcprtt/internal/reader"
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
// Every load starts here, so it also raises RLIMIT_MEMLOCK where the
// kernel needs it (an error there is reported if a load then fails).
func collectionSpec() (*ebpf.CollectionSpec, error) {
	_ = raiseMemlock()
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

	coll    *ebpf.Collection
	prog    *ebpf.Program
	link    link.Link
	index   *ebpf.Map
	free    *ebpf.Map
	stats   *ebpf.Map
	counts  []byte // the counts array, mmapped
	sums    []byte // cpu_sums, mmapped: per CPU, one u64 per slot
	cache   []byte // sk_cache, mmapped
	retrans []byte // retrans, mmapped: one u64 per slot

	// The retransmit program (retrans_linux.go), when Spec.Retransmits.
	retransColl     *ebpf.Collection
	retransProg     *ebpf.Program
	retransLink     link.Link
	settleProg      *ebpf.Program // the state-change program beside the retransmit one (retrans.h)
	settleLink      link.Link
	retransMode     Mode
	retransAttempts []Attempt

	entryCounts bool // the program counts in its cache entries (else in the rows only)
	ncpu        int
	now         func() time.Time // the reader's clock (tests move it)
	reader      *reader.Reader
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
		modes = AutoModes()
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
	if mode == ModeTracepoint {
		// Before loading: a program that cannot find the socket would
		// attach and count every segment as an error.
		if err := checkTracepointRecord(); err != nil {
			return nil, err
		}
	}
	cs, err := collectionSpec()
	if err != nil {
		return nil, err
	}
	for name := range cs.Programs {
		if name != progName {
			delete(cs.Programs, name) // the retransmit program loads on its own (retrans_linux.go)
		}
	}
	delete(cs.Maps, bpf.TcprttMapSelftest)
	if err := configure(cs, &spec); err != nil {
		return nil, err
	}

	coll, entryCounts, err := loadCollection(cs, progName, &spec)
	if err != nil {
		return nil, explainLoad(mode, err, currentLoadEnv())
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
		ncpu:   PossibleCPUs(),

		entryCounts: entryCounts,
		now:         time.Now,
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if err := t.fillMaps(); err != nil {
		return nil, err
	}
	for _, m := range []struct {
		name string
		dst  *[]byte
	}{{bpf.TcprttMapCounts, &t.counts}, {bpf.TcprttMapCpuSums, &t.sums}, {bpf.TcprttMapSkCache, &t.cache}, {bpf.TcprttMapRetrans, &t.retrans}} {
		if *m.dst, err = mmapArray(coll.Maps[m.name]); err != nil {
			return nil, fmt.Errorf("%s: %w", m.name, err)
		}
	}
	t.reader = reader.New(reader.Config{
		Layout: t.layout, IdleTimeout: spec.IdleTimeout, EntryCounts: entryCounts,
		Now: func() time.Time { return t.now() },
	}, reader.Memory{Counts: t.counts, Sums: t.sums, Cache: t.cache, Retrans: t.retrans, CPUs: t.ncpu}, &kernelMaps{t: t})
	t.attachedAt = time.Now()
	t.link, err = attach(mode, t.prog)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return nil, &LoadError{Cause: CauseNoSupport, Reason: "this kernel loads but cannot attach " + mode.Hook(), Err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	if spec.Retransmits {
		if err := t.openRetrans(); err != nil {
			return nil, err
		}
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
		bpf.TcprttVarCfgGroupBy:       uint32(spec.GroupBy),
		bpf.TcprttVarCfgFilters:       uint32(spec.Filters()),
		bpf.TcprttVarCfgFamily:        uint32(spec.Family),
		bpf.TcprttVarCfgRdonlyCast:    !spec.HelperReads,
		bpf.TcprttVarCfgScale:         uint32(spec.Table.Scale),
		bpf.TcprttVarCfgStride:        layout.Stride(),
		bpf.TcprttVarCfgMaxSeries:     layout.MaxSeries,
		bpf.TcprttVarCfgSumStride:     layout.SumStride(),
		bpf.TcprttVarCfgCacheEntries:  uint32(kmaps.CacheEntriesPerCPU),
		bpf.TcprttVarCfgOneCacheEntry: spec.OneCacheEntry,
		bpf.TcprttVarCfgBuckets:       table,
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
	cs.Maps[bpf.TcprttMapRetrans].MaxEntries = layout.Rows()
	cs.Maps[bpf.TcprttMapRetransSeen].MaxEntries = 1 // preallocated: only as large as it is used
	if spec.Retransmits {
		cs.Maps[bpf.TcprttMapRetransSeen].MaxEntries = kmaps.RetransSockets
	}
	// The CPU number indexes the per-CPU arrays: size them for every
	// possible CPU.
	ncpu := uint32(PossibleCPUs())
	cs.Maps[bpf.TcprttMapCpuSums].MaxEntries = ncpu * layout.SumStride()
	cs.Maps[bpf.TcprttMapSkCache].MaxEntries = ncpu * kmaps.CacheEntriesPerCPU
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
		return nil, fmt.Errorf("mmap: %w", err)
	}
	return b, nil
}

func attach(mode Mode, prog *ebpf.Program) (link.Link, error) {
	return attachEvent(mode, prog, "tcp", "tcp_probe")
}

// attachEvent attaches prog, built for flavour mode, to the event group/name
// (the fentry and tp_btf flavours name their target in their section).
func attachEvent(mode Mode, prog *ebpf.Program, group, name string) (link.Link, error) {
	switch mode {
	case ModeFentry, ModeTpBtf:
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case ModeRawTp:
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: prog})
	case ModeTracepoint:
		l, err := link.Tracepoint(group, name, prog, nil)
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

// Close detaches the program and releases every kernel object of t. It is
// safe to call more than once.
func (t *Tracer) Close() error {
	errs := []error{t.closeRetrans()}
	if t.link != nil {
		errs = append(errs, t.link.Close())
		t.link = nil
	}
	for _, b := range []*[]byte{&t.counts, &t.sums, &t.cache, &t.retrans} {
		if *b != nil {
			errs = append(errs, unix.Munmap(*b))
			*b = nil
		}
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

// AutoModes is the order ModeAuto tries the flavours in on this kernel
// (OrderFor its release).
func AutoModes() []Mode {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return AutoOrder
	}
	return OrderFor(unix.ByteSliceToString(u.Release[:]))
}
