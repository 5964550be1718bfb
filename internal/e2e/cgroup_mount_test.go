//go:build linux

package e2e

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// TestHostCgroupMountReadOnly shows on this host why the workloads
// DaemonSet mounts the host's /sys/fs/cgroup with recursiveReadOnly:
// Enabled. It mounts the hierarchy as a container runtime does for a
// hostPath volume (a recursive bind in a mount namespace of its own), then
// makes it read-only the two ways a runtime can:
//   - readOnly: true alone (a read-only remount of the bind): only the top
//     is read-only, so on a hybrid host, whose cgroup v1 controllers and
//     cgroup2 tree are submounts, a write below succeeds (the container,
//     uid 0, could change every pod's cgroups);
//   - recursiveReadOnly: Enabled (what runc and crun do for it:
//     mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY), Linux 5.12+): the
//     same write fails with EROFS.
//
// The write is the creation of a cgroup directory in a submount (removed
// when it succeeds). This is the kernel mechanism on this host's layout;
// the container runtimes themselves are not run here.
func TestHostCgroupMountReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv(testenv.RequireBPFEnv) == "1" {
			t.Fatal("needs root (mount namespaces and bind mounts)")
		}
		t.Skip("needs root (mount namespaces and bind mounts)")
	}
	sub := cgroupSubmount(t)
	if sub == "" {
		t.Skip("/sys/fs/cgroup has no submounts here (cgroup v2 only): readOnly alone is already read-only all the way down")
	}
	rel := strings.TrimPrefix(sub, "/sys/fs/cgroup/")
	t.Logf("submount of /sys/fs/cgroup written to: %s", sub)

	topOnly := writeUnderReadOnlyBind(t, rel, false)
	assert.NoError(t, topOnly, "readOnly alone: a write in the submount %s succeeds (the finding)", rel)
	recursive := writeUnderReadOnlyBind(t, rel, true)
	assert.ErrorIs(t, recursive, unix.EROFS, "recursiveReadOnly: a write in the submount %s must fail", rel)
	t.Logf("mkdir in %s under a read-only bind of /sys/fs/cgroup: readOnly alone: %v; recursive: %v", rel, topOnly, recursive)
}

// cgroupSubmount returns a mount point below /sys/fs/cgroup, the cgroup2
// one if there is one, "" if there is none.
func cgroupSubmount(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	require.NoError(t, err)
	defer f.Close()
	var v1 string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || !strings.HasPrefix(fields[1], "/sys/fs/cgroup/") {
			continue
		}
		if fields[2] == "cgroup2" {
			return fields[1]
		}
		if v1 == "" && fields[2] == "cgroup" {
			v1 = fields[1]
		}
	}
	require.NoError(t, sc.Err())
	return v1
}

// writeUnderReadOnlyBind binds /sys/fs/cgroup recursively onto a temporary
// directory in a new mount namespace (on a thread locked to it, which ends
// with it), makes the bind read-only (recursively or at its top only), and
// returns the error of creating a directory in the submount rel below it.
// Top-level read-only is checked in both cases.
func writeUnderReadOnlyBind(t *testing.T, rel string, recursive bool) error {
	t.Helper()
	dir := t.TempDir()
	name := "tcprtt-rro-" + randomToken(t)[:8]
	type result struct{ write, setup error }
	done := make(chan result)
	go func() {
		// Never unlocked: the thread, in its own mount namespace, exits
		// with this goroutine.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		fail := func(what string, err error) { r.setup = errors.Join(errors.New(what), err) }
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			fail("unshare CLONE_NEWNS", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			fail("make / private", err)
			return
		}
		if err := unix.Mount("/sys/fs/cgroup", dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			fail("rbind /sys/fs/cgroup", err)
			return
		}
		if recursive {
			err := unix.MountSetattr(unix.AT_FDCWD, dir, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
			if err != nil {
				fail("mount_setattr AT_RECURSIVE MOUNT_ATTR_RDONLY", err)
				return
			}
		} else {
			var st unix.Statfs_t
			if err := unix.Statfs(dir, &st); err != nil {
				fail("statfs", err)
				return
			}
			// Keep the flags the kernel locks (nosuid, nodev, noexec) as
			// a runtime does.
			flags := uintptr(unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY) | uintptr(st.Flags&(unix.ST_NOSUID|unix.ST_NODEV|unix.ST_NOEXEC))
			if err := unix.Mount("", dir, "", flags, ""); err != nil {
				fail("remount the bind read-only", err)
				return
			}
		}
		if err := unix.Mkdir(filepath.Join(dir, "tcprtt-rro-top"), 0o755); !errors.Is(err, unix.EROFS) {
			fail("the top of the bind is not read-only", err)
			return
		}
		p := filepath.Join(dir, rel, name)
		r.write = unix.Mkdir(p, 0o755)
		if r.write == nil {
			if err := unix.Rmdir(p); err != nil {
				fail("remove "+p, err)
			}
		}
	}()
	r := <-done
	require.NoError(t, r.setup)
	return r.write
}
