//go:build linux

package testenv

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFObjects counts this process's open BPF programs, maps and links (by
// their file descriptors). Unlike LoadedPrograms it is not disturbed by
// other processes, such as test binaries of other packages running in
// parallel.
func BPFObjects() (progs, maps, links int, err error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, 0, 0, err
	}
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // closed meanwhile (the ReadDir fd itself, say)
		}
		switch target {
		case "anon_inode:bpf-prog":
			progs++
		case "anon_inode:bpf-map":
			maps++
		case "anon_inode:bpf_link":
			links++
		}
	}
	return progs, maps, links, nil
}

// MountTracefs mounts tracefs at /sys/kernel/tracing if it is not there:
// the classic tracepoint flavour reads the event's id from it.
func MountTracefs(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/sys/kernel/tracing/events"); err == nil {
		return
	}
	if err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		t.Fatalf("mount tracefs for the tracepoint flavour: %v", err)
	}
}
