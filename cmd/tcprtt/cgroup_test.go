package main

import (
	"testing"

	"github.com/tcprtt/tcprtt/internal/cgroup"
)

// A cgroup whose path is not known yet is not called removed; one the
// resolver knows to be gone is.
func TestCgroupName(t *testing.T) {
	for _, tc := range []struct {
		info cgroup.Info
		want string
	}{
		{cgroup.Info{ID: 7, Path: "/system.slice/ssh.service"}, "/system.slice/ssh.service"},
		{cgroup.Info{ID: 7, Path: "/system.slice/ssh.service", Gone: true}, "/system.slice/ssh.service"},
		{cgroup.Info{ID: 7, Gone: true}, "(id 7, removed)"},
		{cgroup.Info{ID: 7}, "(id 7, path not known yet)"},
		{cgroup.Info{}, "(unknown)"},
	} {
		if got := cgroupName(tc.info); got != tc.want {
			t.Errorf("cgroupName(%+v) = %q, want %q", tc.info, got, tc.want)
		}
	}
}
