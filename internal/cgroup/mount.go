package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// MountInfo is the mount table FindMount reads by default.
const MountInfo = "/proc/self/mountinfo"

// ErrNoCgroup2 is returned when no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 file system in " + MountInfo +
	" (grouping by cgroup needs the cgroup v2 hierarchy mounted, e.g. at /sys/fs/cgroup or /sys/fs/cgroup/unified)")

// FindMount returns the mount point of the cgroup v2 hierarchy in a
// mountinfo table: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified
// on hybrid ones. Where several are mounted (a container that also sees
// the host's, bind-mounted), the one mounted at its file system's root
// ("/" in the root column) wins over one that shows a subtree, and the
// first of those wins.
func FindMount(mountinfo io.Reader) (string, error) {
	var first, subtree string
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) == 0 || f[0] != "cgroup2" {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		root, point := unescape(f[3]), unescape(f[4])
		if root == "/" && first == "" {
			first = point
		} else if subtree == "" {
			subtree = point
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mount table: %w", err)
	}
	if first != "" {
		return first, nil
	}
	if subtree != "" {
		return subtree, nil
	}
	return "", ErrNoCgroup2
}

// FindMountHere reads this process's mount table.
func FindMountHere() (string, error) {
	f, err := os.Open(MountInfo)
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	return FindMount(f)
}

// unescape undoes the kernel's octal escapes of space, tab, newline and
// backslash in mountinfo fields ("\040").
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ProcPath returns the cgroup v2 path of process pid ("self" for this
// one) from /proc/<pid>/cgroup: the "0::" line.
func ProcPath(pid string) (string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("read cgroup of process %s: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("process %s: no cgroup v2 (0::) line in /proc/%s/cgroup", pid, pid)
}
