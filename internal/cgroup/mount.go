package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// MountInfo is the mount table FindMount reads by default.
const MountInfo = "/proc/self/mountinfo"

// ErrNoCgroup2 is returned when no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 file system in " + MountInfo +
	" (grouping by cgroup needs the cgroup v2 hierarchy mounted, e.g. at /sys/fs/cgroup or /sys/fs/cgroup/unified)")

// Mounts returns the mount points of the cgroup v2 file system in a
// mountinfo table, in table order: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones, and in a container with a
// cgroup namespace its own view plus the host's, if bind-mounted.
func Mounts(mountinfo io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) == 0 || f[0] != "cgroup2" {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			out = append(out, unescape(f[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	if len(out) == 0 {
		return nil, ErrNoCgroup2
	}
	return out, nil
}

// rootID is the id of the root cgroup of the v2 hierarchy.
const rootID = 1

// FindMount returns the mount of the whole cgroup v2 hierarchy among
// this process's: the one whose directory is the root cgroup (id 1). A
// container in a cgroup namespace sees its own cgroup as the root of its
// /sys/fs/cgroup, where no other workload's cgroup is found; the host's,
// bind-mounted, is then preferred. Without a root mount, the first one
// (LocateMount says why, for a warning).
func FindMount() (string, error) {
	m, err := LocateMount()
	return m.Path, err
}

// Mount is the cgroup v2 mount LocateMount chose.
type Mount struct {
	Path string
	// Fallback, if not nil, says why Path is not the root cgroup's mount:
	// only the cgroups below Path can be named.
	Fallback error
}

// LocateMount is FindMount with the reason for a fallback.
func LocateMount() (Mount, error) {
	f, err := os.Open(MountInfo)
	if err != nil {
		return Mount{}, fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	mounts, err := Mounts(f)
	if err != nil {
		return Mount{}, err
	}
	return pickRoot(mounts, os.Stat), nil
}

func pickRoot(mounts []string, stat func(string) (fs.FileInfo, error)) Mount {
	var seen []string
	for _, m := range mounts {
		fi, err := stat(m)
		if err != nil {
			seen = append(seen, fmt.Sprintf("%s: %v", m, err))
			continue
		}
		if ino, ok := inode(fi); ok && ino == rootID {
			return Mount{Path: m}
		} else if ok {
			seen = append(seen, fmt.Sprintf("%s is cgroup id %d", m, ino))
		}
	}
	return Mount{Path: mounts[0], Fallback: fmt.Errorf("no cgroup2 mount in %s is the root cgroup (id %d): %s; "+
		"using %s, where only the cgroups below it are found (in a container with its own cgroup namespace, "+
		"mount the host's /sys/fs/cgroup, e.g. as a hostPath at /host/sys/fs/cgroup)",
		MountInfo, rootID, strings.Join(seen, ", "), mounts[0])}
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
