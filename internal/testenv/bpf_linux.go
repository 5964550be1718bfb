//go:build linux

package testenv

import (
	"errors"
	"os"
	"strings"

	"github.com/cilium/ebpf"
)

// LoadedPrograms counts the BPF programs loaded in the kernel whose name
// starts with prefix (kernel names are cut to 15 characters).
func LoadedPrograms(prefix string) (int, error) {
	n := 0
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err == nil && strings.HasPrefix(info.Name, prefix) {
			n++
		}
	}
}
