//go:build unix

package cgroup

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// deepDir makes below root a chain of directories whose full path is
// longer than PATH_MAX, with *at calls relative to each parent: a
// directory the walk cannot read (ENAMETOOLONG), whoever runs the test
// (root reads any directory whatever its mode).
func deepDir(t *testing.T, root, top string) {
	t.Helper()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	name := top
	for depth := len(root); depth <= 4400; depth += len(name) + 1 {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatalf("mkdirat %s at depth %d: %v", name, depth, err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd, name = next, strings.Repeat("d", 200)
	}
	unix.Close(fd)
}

// One directory the walk cannot read costs the cgroups in and below it
// their path, not the whole map: the walk goes on, and the error counts
// and names what could not be read.
func TestWalkContinuesPastUnreadable(t *testing.T) {
	root := tree(t, service, dockerScope)
	deepDir(t, root, "a-deep") // walked between the two, in lexical order
	r := NewWalkResolver(root)
	defer r.Close()
	var problems []error
	r.OnProblem = func(err error) { problems = append(problems, err) }

	err := r.Scan()
	var we *WalkError
	if !errors.As(err, &we) || we.Count != 1 || !errors.Is(we.Examples[0], syscall.ENAMETOOLONG) ||
		!strings.Contains(err.Error(), "1 directories could not be read") {
		t.Fatalf("Scan: %v, want a WalkError of 1 directory (ENAMETOOLONG)", err)
	}
	for _, p := range []string{service, dockerScope, "system.slice", "a-deep"} {
		id := idOf(t, root, p)
		if got := r.Lookup(id); got.Path != "/"+p {
			t.Errorf("Lookup(%s) = %+v: the walk stopped at the unreadable directory", p, got)
		}
	}
	// Logged once, not per walk; counted in every round's stats.
	for range 3 {
		_ = r.Scan()
		r.EndRound()
	}
	if len(problems) != 1 {
		t.Errorf("OnProblem called %d times over 4 failing walks, want once: %v", len(problems), problems)
	}
	if got := r.Stats().WalkErrors; got != 1 {
		t.Errorf("Stats().WalkErrors = %d, want 1", got)
	}
}
