//go:build linux

package cgroup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fileIDKernfs is the file handle type of kernfs (include/linux/exportfs.h
// FILEID_KERNFS, Linux 5.5+): 8 bytes, the node's 64-bit id, which for a
// cgroup is the id the kernel program records.
const fileIDKernfs = 0xfe

// handles resolves one cgroup id at a time with open_by_handle_at(2) on
// the cgroup2 mount: no walk of the hierarchy. It needs
// CAP_DAC_READ_SEARCH (root has it).
type handles struct {
	mountFD int
	root    string
}

// openHandles opens the mount at root and checks that the id of the
// mount's own directory opens it again by handle; the error says why not
// (EPERM without CAP_DAC_READ_SEARCH; another file system than cgroup2).
func openHandles(root string) (*handles, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", root, err)
	}
	h := &handles{mountFD: fd, root: strings.TrimSuffix(root, "/")}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		h.close()
		return nil, fmt.Errorf("stat %s: %w", root, err)
	}
	p, err := h.path(st.Ino)
	if err == nil && p != "/" {
		err = fmt.Errorf("the handle of its own id %d opened %q", st.Ino, p)
	}
	if err != nil {
		h.close()
		return nil, fmt.Errorf("open cgroups by handle on %s: %w", root, err)
	}
	return h, nil
}

// errGone: no cgroup with that id below the mount (removed, or outside
// this mount's view).
var errGone = errors.New("no such cgroup")

// path returns the path of cgroup id below the mount ("/" for its root).
func (h *handles) path(id uint64) (string, error) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(h.mountFD, unix.NewFileHandle(fileIDKernfs, b[:]), unix.O_PATH|unix.O_CLOEXEC)
	if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
		return "", errGone
	}
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	abs, err := readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(abs, " (deleted)") {
		return "", errGone
	}
	switch {
	case abs == h.root || (h.root == "" && abs == "/"):
		return "/", nil
	case strings.HasPrefix(abs, h.root+"/"):
		return abs[len(h.root):], nil
	}
	return "", fmt.Errorf("cgroup %d opened as %q, outside the mount %s", id, abs, h.root)
}

func readlink(p string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlink(p, buf)
		if err != nil {
			return "", fmt.Errorf("readlink %s: %w", p, err)
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

func (h *handles) close() {
	if h.mountFD >= 0 {
		unix.Close(h.mountFD)
		h.mountFD = -1
	}
}
