package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// Info is what is known of one cgroup id.
type Info struct {
	ID uint64
	// Path is the cgroup's path below the cgroup v2 root ("/" for the
	// root, "/system.slice/ssh.service"), "" if the id was never seen in
	// the hierarchy (it went before a scan could find it).
	Path string
	// Gone is true when the cgroup was removed after Path was learnt.
	Gone bool
	Workload
}

// DefaultMinRescan is how soon after a scan an unknown id may cause the
// next one.
const DefaultMinRescan = 2 * time.Second

// DefaultRefresh is how old the last walk may be at the end of a round
// before the next one, which finds the cgroups removed since.
const DefaultRefresh = time.Minute

// Resolver maps cgroup ids to paths. The id of a cgroup v2 is the inode
// number of its directory (kernfs gives each node a 64-bit id that is
// never reused, and uses it as the inode number), so a walk of the
// hierarchy that stats every directory yields the whole map.
//
// The map is rebuilt by walking the hierarchy when an id is looked up that
// the last walk did not see, at most once per MinRescan, and at the end of
// a round when the last walk is older than Refresh. Cgroups that
// vanish from a walk keep their last path while they are still looked up
// (sockets outlive their cgroup's processes, and their series with them)
// and are forgotten at the first EndRound that follows a round without a
// lookup. A Resolver is not safe for concurrent use.
type Resolver struct {
	root string
	// MinRescan rate-limits the walks that unknown ids cause.
	MinRescan time.Duration
	// Refresh bounds how long a removed cgroup stays in the map unnoticed.
	Refresh time.Duration
	now     func() time.Time

	byID     map[uint64]*entry
	lastScan time.Time
	scanned  bool
	round    uint64
	scans    int
}

type entry struct {
	info Info
	live bool   // seen in the last walk
	used uint64 // round of the last lookup
}

// NewResolver returns a Resolver for the cgroup v2 hierarchy mounted at
// root (see FindMount).
func NewResolver(root string) *Resolver {
	// Rounds count from 1 so that 0 means never looked up.
	return &Resolver{
		root: root, MinRescan: DefaultMinRescan, Refresh: DefaultRefresh, now: time.Now,
		byID: map[uint64]*entry{}, round: 1,
	}
}

// Root is the mount point the Resolver walks.
func (r *Resolver) Root() string { return r.root }

// Lookup returns what is known of id, walking the hierarchy again if id
// is new and the rate limit allows. An id never found has no Path; id 0
// (the kernel could not read the socket's cgroup) is never looked for.
func (r *Resolver) Lookup(id uint64) Info {
	if id == 0 {
		return Info{}
	}
	e, ok := r.byID[id]
	if !ok {
		if r.scanned && r.now().Sub(r.lastScan) < r.MinRescan {
			return Info{ID: id} // ask again next round
		}
		// An error leaves the map as it was; the id is then remembered
		// as unknown until it is no longer looked up.
		_ = r.Scan()
		if e, ok = r.byID[id]; !ok {
			// The walk began after the kernel recorded id, so a cgroup
			// it did not find is gone (or outside this mount's view):
			// remember that, so that the id alone is reported without a
			// walk for it every round.
			e = &entry{info: Info{ID: id}}
			r.byID[id] = e
		}
	}
	e.used = r.round
	return e.info
}

// EndRound marks the end of one conversion: cgroups that are gone and
// were not looked up in the round that ends are forgotten, after a walk
// if the last one is older than Refresh.
func (r *Resolver) EndRound() {
	if !r.scanned || r.now().Sub(r.lastScan) >= r.Refresh {
		_ = r.Scan() // on error the next round tries again
	}
	for id, e := range r.byID {
		if !e.live && e.used != r.round {
			delete(r.byID, id)
		}
	}
	r.round++
}

// Scan walks the hierarchy and rebuilds the map.
func (r *Resolver) Scan() error {
	r.lastScan, r.scanned = r.now(), true
	r.scans++
	found := map[uint64]string{}
	err := filepath.WalkDir(r.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// A cgroup removed during the walk: skip it, keep walking.
			if p != r.root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fs.SkipDir
			}
			return err
		}
		ino, ok := inode(info)
		if !ok {
			return fmt.Errorf("no inode number for %s", p)
		}
		rel, err := filepath.Rel(r.root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			found[ino] = "/"
		} else {
			found[ino] = "/" + filepath.ToSlash(rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk cgroup hierarchy %s: %w", r.root, err)
	}
	// Gone cgroups keep their last path until EndRound finds them unused.
	for id, e := range r.byID {
		if _, ok := found[id]; !ok && e.live {
			e.live, e.info.Gone = false, true
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
		e.live = true
	}
	return nil
}

// Has reports whether id is in the map.
func (r *Resolver) Has(id uint64) bool { _, ok := r.byID[id]; return ok }

// Len is the number of ids the Resolver holds (live cgroups from the last
// walk and gone ones still in use).
func (r *Resolver) Len() int { return len(r.byID) }

// Scans is the number of walks so far.
func (r *Resolver) Scans() int { return r.scans }
