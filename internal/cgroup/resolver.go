package cgroup

import (
	"errors"
	"sync"
	"time"
)

// Info is what is known of one cgroup id.
type Info struct {
	ID uint64
	// Path is the cgroup's path below the cgroup v2 root ("/" for the
	// root, "/system.slice/ssh.service"), "" if not known: see Gone.
	Path string
	// Gone is true when the cgroup is known to be removed (or outside this
	// mount's view). With a Path, it was removed after the Path was
	// learnt; without one, before. A Path "" with Gone false is a cgroup
	// not resolved yet (no capability to open it by handle, and no walk
	// since it was first looked up).
	Gone bool
	Workload
}

// DefaultMinRescan is the least time between two walks.
const DefaultMinRescan = 2 * time.Second

// DefaultRefresh is how often the background walk runs when ids are
// resolved by walking (it notices removed cgroups).
const DefaultRefresh = time.Minute

// Resolver maps cgroup ids to paths, by one of two means:
//
//   - by handle: with CAP_DAC_READ_SEARCH, an id unknown to the map is
//     opened with open_by_handle_at(2) on the cgroup2 mount (the id is the
//     cgroup's kernfs file handle) and its path read back: a new cgroup
//     resolves in the Lookup that first sees it, in microseconds.
//   - by walk: otherwise, a walk of the hierarchy stats every directory
//     (the id of a cgroup v2 is its directory's inode number). The walk
//     runs in the background goroutine of Start, never in Lookup: once at
//     Start, when an unknown id is looked up (at most once per MinRescan),
//     and every Refresh. An unknown id gets its path from the first walk
//     that begins after its first lookup; if that walk does not find it,
//     it is gone.
//
// Cgroups that vanish keep their last path while they are still looked up
// (sockets outlive their cgroup's processes, and their series with them)
// and are forgotten at the first EndRound that follows a round without a
// lookup. A Resolver is safe for concurrent use.
type Resolver struct {
	root string
	// MinRescan rate-limits the walks.
	MinRescan time.Duration
	// Refresh is the period of the background walk in walk mode.
	Refresh time.Duration
	// OnProblem, if set before Start, is called (from the walk's
	// goroutine or from Lookup) when cgroups cannot be resolved: a walk
	// that could not read some directories (a *WalkError) after one that
	// could, or a failure to open an id by handle. Once per episode, not
	// per walk or per id.
	OnProblem func(error)
	now       func() time.Time

	handles    *handles // nil: walk mode
	handlesErr error    // why not by handle

	mu         sync.Mutex
	byID       map[uint64]*entry
	round      uint64
	missing    int // ids looked up in this round without a path
	lastRound  Stats
	scans      int
	walkErrs   int  // directories the last walk could not read
	walkFailed bool // the last walk reported a problem
	handleErr  bool // a handle failure was reported
	begun      uint64

	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

type entry struct {
	info   Info
	live   bool   // seen in the last walk
	used   uint64 // round of the last lookup
	asked  uint64 // walks begun before the first lookup (pending ids)
	byWalk bool   // pending: waits for a walk
}

// Stats are counts for self-telemetry.
type Stats struct {
	// Unresolved is the number of cgroup ids looked up in the last
	// completed round that had no path.
	Unresolved int
	// WalkErrors is the number of directories the last walk could not
	// read.
	WalkErrors int
}

// NewResolver returns a Resolver for the cgroup v2 hierarchy mounted at
// root (see FindMount). It resolves ids by handle if this process may
// (HandleErr says why not); call Start before the first lookup and Close
// at the end.
func NewResolver(root string) *Resolver {
	r := newResolver(root)
	r.handles, r.handlesErr = openHandles(root)
	return r
}

// NewWalkResolver is NewResolver that never resolves by handle: ids are
// resolved by the background walk only.
func NewWalkResolver(root string) *Resolver {
	r := newResolver(root)
	r.handlesErr = errors.New("resolution by handle not asked for")
	return r
}

func newResolver(root string) *Resolver {
	// Rounds count from 1 so that 0 means never looked up.
	return &Resolver{
		root: root, MinRescan: DefaultMinRescan, Refresh: DefaultRefresh, now: time.Now,
		byID: map[uint64]*entry{}, round: 1, wake: make(chan struct{}, 1),
	}
}

// HandleErr returns why ids are not resolved by handle, nil if they are.
func (r *Resolver) HandleErr() error { return r.handlesErr }

// ByHandle reports whether ids are resolved by handle.
func (r *Resolver) ByHandle() bool { return r.handles != nil }

// Root is the mount point the Resolver reads.
func (r *Resolver) Root() string { return r.root }

// Start walks the hierarchy once if ids are resolved by walk (so that the
// cgroups of the first collection have their paths) and starts the
// background walks. The error of that first walk is returned for logging;
// the Resolver works with what it found.
func (r *Resolver) Start() error {
	var err error
	if r.handles == nil {
		err = r.Scan()
	}
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go r.loop()
	return err
}

// Close stops the background walks and releases the mount. It may be
// called more than once, and without Start.
func (r *Resolver) Close() {
	r.mu.Lock()
	closed := r.closed
	r.closed = true
	r.mu.Unlock()
	if closed {
		return
	}
	if r.stop != nil {
		close(r.stop)
		<-r.done
	}
	if r.handles != nil {
		r.handles.close()
	}
}

// loop runs the walks asked for by lookups and, in walk mode, the
// periodic ones, at most one per MinRescan.
func (r *Resolver) loop() {
	defer close(r.done)
	var refresh <-chan time.Time
	if r.handles == nil {
		t := time.NewTicker(max(r.Refresh, time.Second))
		defer t.Stop()
		refresh = t.C
	}
	for {
		select {
		case <-r.stop:
			return
		case <-r.wake:
		case <-refresh:
		}
		_ = r.Scan() // reported through OnProblem and Stats
		select {
		case <-r.stop:
			return
		case <-time.After(r.MinRescan):
		}
	}
}

// Lookup returns what is known of id, resolving it by handle if it is
// new; in walk mode a new id is left for the next walk (Info without a
// Path, Gone false). Id 0 (the kernel could not read the socket's cgroup)
// is never looked for.
func (r *Resolver) Lookup(id uint64) Info {
	if id == 0 {
		return Info{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.byID[id]
	if !ok {
		e = &entry{info: Info{ID: id}}
		r.byID[id] = e
		r.resolve(e)
	}
	if e.used != r.round && e.info.Path == "" {
		r.missing++
	}
	e.used = r.round
	return e.info
}

// resolve fills in a new entry by handle, or leaves it for a walk.
func (r *Resolver) resolve(e *entry) {
	if r.handles != nil {
		p, err := r.handles.path(e.info.ID)
		switch {
		case err == nil:
			e.info.Path, e.info.Workload = p, Parse(p)
			return
		case errors.Is(err, errGone):
			e.info.Gone = true
			return
		}
		if !r.handleErr && r.OnProblem != nil {
			r.handleErr = true
			r.OnProblem(err)
		}
	}
	e.byWalk, e.asked = true, r.begun
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// EndRound marks the end of one conversion: cgroups that are not live in
// the last walk and were not looked up in the round that ends are
// forgotten.
func (r *Resolver) EndRound() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, e := range r.byID {
		if !e.live && e.used != r.round {
			delete(r.byID, id)
		}
	}
	r.lastRound = Stats{Unresolved: r.missing, WalkErrors: r.walkErrs}
	r.missing = 0
	r.round++
}

// Stats returns the counts of the last completed round.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastRound
}

// Scan walks the hierarchy now and updates the map; the background walks
// call it. It goes on past directories it cannot read: the error is then
// a *WalkError and the map holds what was found.
func (r *Resolver) Scan() error {
	r.mu.Lock()
	r.begun++
	seq := r.begun
	r.mu.Unlock()

	found, err := walk(r.root)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.scans++
	var we *WalkError
	switch {
	case errors.As(err, &we):
		r.walkErrs = we.Count
	case err != nil:
		r.walkErrs = 1
	default:
		r.walkErrs = 0
	}
	if err != nil && !r.walkFailed && r.OnProblem != nil {
		r.OnProblem(err)
	}
	r.walkFailed = err != nil
	if found == nil {
		return err // the root itself could not be read: keep the map
	}
	// Gone cgroups keep their last path until EndRound finds them unused.
	for id, e := range r.byID {
		if _, ok := found[id]; ok {
			continue
		}
		if e.live {
			e.live, e.info.Gone = false, true
		}
		// A walk that began after the id's first lookup did not find it:
		// gone, or outside this mount's view (unless the walk could not
		// read everything).
		if e.byWalk && e.asked < seq && err == nil {
			e.byWalk, e.info.Gone = false, true
		}
	}
	for id, p := range found {
		e, ok := r.byID[id]
		if !ok {
			e = &entry{}
			r.byID[id] = e
		}
		if !e.live || e.info.Path != p {
			e.info = Info{ID: id, Path: p, Workload: Parse(p)}
		}
		e.live, e.byWalk = true, false
	}
	return err
}

// Has reports whether id is in the map.
func (r *Resolver) Has(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.byID[id]
	return ok
}

// Len is the number of ids the Resolver holds (live cgroups from the last
// walk and others still in use).
func (r *Resolver) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}

// Scans is the number of walks so far.
func (r *Resolver) Scans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.scans
}
