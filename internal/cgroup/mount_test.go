package cgroup

import (
	"errors"
	"strings"
	"testing"
)

func TestMounts(t *testing.T) {
	for _, tc := range []struct {
		name, table, want string
		err               error
	}{
		{"hybrid (this machine)", `22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 30 0:38 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
`, "/sys/fs/cgroup/unified", nil},
		{"unified", `35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`, "/sys/fs/cgroup", nil},
		{"container's own view, and the host's bind-mounted", `812 800 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw
813 800 0:30 /.. /host/sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
`, "/sys/fs/cgroup /host/sys/fs/cgroup", nil},
		{"escaped mount point", `40 30 0:37 / /mnt/cgroup\040v2 rw,relatime - cgroup2 cgroup2 rw
`, "/mnt/cgroup v2", nil},
		{"v1 only", `41 30 0:38 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
`, "", ErrNoCgroup2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Mounts(strings.NewReader(tc.table))
			if got := strings.Join(m, " "); !errors.Is(err, tc.err) || got != tc.want {
				t.Errorf("Mounts = %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`a\040b`: "a b", `a\011b\134`: "a\tb\\", `end\04`: `end\04`, "plain": "plain"} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
