package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// WalkError reports the directories a walk could not read: the walk went
// on past them, and the cgroups in and below them have no path.
type WalkError struct {
	Root string
	// Count is the number of directories that could not be read.
	Count int
	// Examples are the first few errors, with their paths.
	Examples []error
}

const maxWalkExamples = 3

func (e *WalkError) Error() string {
	var ex []string
	for _, err := range e.Examples {
		ex = append(ex, err.Error())
	}
	return fmt.Sprintf("walk of the cgroup hierarchy %s: %d directories could not be read, so the cgroups in "+
		"and below them get no path (no container.id or k8s.pod.uid); check the permissions of the mount "+
		"(give the collector read access, or CAP_DAC_READ_SEARCH): %s",
		e.Root, e.Count, strings.Join(ex, "; "))
}

func (e *WalkError) add(err error) {
	e.Count++
	if len(e.Examples) < maxWalkExamples {
		e.Examples = append(e.Examples, err)
	}
}

// walk stats every directory below root and returns the cgroup paths by
// id. It goes on past directories it cannot read (returned as a
// *WalkError along with what it found); a cgroup removed during the walk
// is skipped silently. Only a root that cannot be read fails it whole.
func walk(root string) (map[uint64]string, error) {
	found := map[uint64]string{}
	problems := &WalkError{Root: root}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			// A cgroup removed during the walk: nothing to report.
			if !errors.Is(err, fs.ErrNotExist) {
				problems.add(err)
			}
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				problems.add(err)
			}
			return fs.SkipDir
		}
		ino, ok := inode(info)
		if !ok {
			problems.add(fmt.Errorf("no inode number for %s", p))
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			problems.add(err)
			return fs.SkipDir
		}
		if rel == "." {
			found[ino] = "/"
		} else {
			found[ino] = "/" + filepath.ToSlash(rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk cgroup hierarchy %s: %w", root, err)
	}
	if problems.Count > 0 {
		return found, problems
	}
	return found, nil
}
