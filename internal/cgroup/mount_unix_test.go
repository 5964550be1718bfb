//go:build unix

package cgroup

import (
	"io/fs"
	"strings"
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
		mounts   []string
		want     string
		fallback string // in the reason, "" for none
	}{
		{[]string{"/sys/fs/cgroup", "/host/sys/fs/cgroup"}, "/host/sys/fs/cgroup", ""},
		{[]string{"/sys/fs/cgroup"}, "/sys/fs/cgroup", "/sys/fs/cgroup is cgroup id 4242"},
		{[]string{"/gone", "/sys/fs/cgroup"}, "/gone", "/gone: file does not exist, /sys/fs/cgroup is cgroup id 4242"},
	} {
		got := pickRoot(tc.mounts, stat)
		if got.Path != tc.want {
			t.Errorf("pickRoot(%v) = %q, want %q", tc.mounts, got.Path, tc.want)
		}
		switch {
		case tc.fallback == "" && got.Fallback != nil:
			t.Errorf("pickRoot(%v): fallback %v, want none", tc.mounts, got.Fallback)
		case tc.fallback != "" && (got.Fallback == nil || !strings.Contains(got.Fallback.Error(), tc.fallback) ||
			!strings.Contains(got.Fallback.Error(), "using "+tc.want)):
			t.Errorf("pickRoot(%v): fallback %v, want one naming %q and using %s", tc.mounts, got.Fallback, tc.fallback, tc.want)
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
