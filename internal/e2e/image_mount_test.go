//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkCgroupMountReadOnly shows, in the container the image runs in (the
// DaemonSet's security context), which host cgroup mounts are read-only
// below their top (issue 21, item 2). A `readOnly: true` hostPath is a
// recursive bind whose top alone is remounted read-only: on a hybrid host
// (v1 controllers and the cgroup2 hierarchy `unified` are submounts of the
// /sys/fs/cgroup tmpfs) everything under a submount stays writable, and
// uid 0 owns those files: mkdir makes a cgroup, a write to cgroup.procs
// moves a process. Mounting the cgroup2 hierarchy alone (one mount, no
// submounts) is read-only all the way: both fail with EROFS. (podman 4.3
// refuses the recursive `rro` option: "invalid option type".)
//
// The image has no shell, so the probe is the host's static busybox,
// mounted in and run as the entrypoint.
func checkCgroupMountReadOnly(t *testing.T, podman, image, cgroupRoot string) {
	t.Helper()
	busybox := requireTool(t, "busybox")
	probe := "tcprtt-e2e-ro-" + randomHexString(t, 8)
	probeDir := filepath.Join(cgroupRoot, probe)
	require.NoError(t, os.Mkdir(probeDir, 0o755))
	t.Cleanup(func() {
		_ = os.Remove(filepath.Join(probeDir, "child"))
		if err := os.Remove(probeDir); err != nil {
			t.Logf("remove %s: %v", probeDir, err)
		}
	})
	// The probe cgroup as the container sees it, under each mount.
	sub, err := filepath.Rel("/sys/fs/cgroup", cgroupRoot)
	require.NoError(t, err)
	hybrid := sub != "."

	run := func(mount, dir string) string {
		script := `busybox mkdir ` + dir + `/child; echo "mkdir=$?"
echo 0 > ` + dir + `/cgroup.procs; echo "procs=$?"
busybox mkdir /host/sys/fs/cgroup/tcprtt-top; echo "top=$?"`
		args := []string{"--runtime", "runc", "run", "--rm", "--pull=never",
			"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096", "--network", "host",
			"--user", "0:0", "--cap-drop", "all", "--cap-add", "BPF,PERFMON",
			"--security-opt", "no-new-privileges", "--read-only",
			"--volume", mount + ":/host/sys/fs/cgroup:ro",
			"--volume", busybox + ":/probe/busybox:ro", "--entrypoint", "/probe/busybox",
			image, "sh", "-c", script}
		out, err := exec.Command(podman, args...).CombinedOutput()
		require.NoError(t, err, "podman %s\n%s", strings.Join(args, " "), out)
		t.Logf("host %s mounted ro at /host/sys/fs/cgroup:\n%s", mount, out)
		return string(out)
	}

	// The DaemonSet's mount (deploy/kubernetes/workloads/daemonset-cgroup.yaml).
	whole := run("/sys/fs/cgroup", filepath.Join("/host/sys/fs/cgroup", sub, probe))
	assert.Contains(t, whole, "top=1", "the top of the bind is read-only")
	assert.Contains(t, whole, "tcprtt-top': Read-only file system")
	if hybrid {
		// The hole, asserted so that the test notices when it closes.
		assert.Contains(t, whole, "mkdir=0", "plain ro bind: a cgroup can be created under the %s submount", sub)
		assert.Contains(t, whole, "procs=0", "plain ro bind: cgroup.procs under the %s submount is writable", sub)
		_, err := os.Stat(filepath.Join(probeDir, "child"))
		assert.NoError(t, err, "the container created %s/child on the host", probeDir)
		_ = os.Remove(filepath.Join(probeDir, "child"))
	} else {
		t.Logf("cgroup2 is mounted at /sys/fs/cgroup itself: no submounts, the plain ro bind is read-only throughout")
	}

	// The cgroup2 hierarchy alone.
	alone := run(cgroupRoot, filepath.Join("/host/sys/fs/cgroup", probe))
	assert.Contains(t, alone, "mkdir=1")
	assert.Contains(t, alone, "child': Read-only file system", "mkdir under the cgroup2-only mount")
	assert.Contains(t, alone, "procs=1")
	assert.Contains(t, alone, "cgroup.procs: Read-only file system", "write to cgroup.procs under the cgroup2-only mount")
	_, err = os.Stat(filepath.Join(probeDir, "child"))
	assert.True(t, os.IsNotExist(err), "nothing created on the host")
}
