//go:build unix

package cgroup

import (
	"io/fs"
	"syscall"
	"testing"
	"time"
)

// The mount whose directory is the root cgroup (inode 1) wins.
func TestPickRoot(t *testing.T) {
	dirs := map[string]uint64{"/sys/fs/cgroup": 4242, "/host/sys/fs/cgroup": 1}
	stat := func(p string) (fs.FileInfo, error) {
		ino, ok := dirs[p]
		if !ok {
			return nil, fs.ErrNotExist
		}
		return fakeInfo{ino}, nil
	}
	for _, tc := range []struct {
		mounts []string
		want   string
	}{
		{[]string{"/sys/fs/cgroup", "/host/sys/fs/cgroup"}, "/host/sys/fs/cgroup"},
		{[]string{"/sys/fs/cgroup"}, "/sys/fs/cgroup"},
		{[]string{"/gone", "/sys/fs/cgroup"}, "/gone"},
	} {
		if got := pickRoot(tc.mounts, stat); got != tc.want {
			t.Errorf("pickRoot(%v) = %q, want %q", tc.mounts, got, tc.want)
		}
	}
}

type fakeInfo struct{ ino uint64 }

func (f fakeInfo) Name() string       { return "" }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return fs.ModeDir }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return true }
func (f fakeInfo) Sys() any           { return &syscall.Stat_t{Ino: f.ino} }
