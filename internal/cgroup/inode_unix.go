//go:build unix

package cgroup

import (
	"io/fs"
	"syscall"
)

// inode returns the inode number of a stat result: the cgroup id for a
// cgroup v2 directory.
func inode(fi fs.FileInfo) (uint64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return uint64(st.Ino), true
}
