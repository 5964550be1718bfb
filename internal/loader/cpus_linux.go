//go:build linux

package loader

import (
	"runtime"

	"github.com/cilium/ebpf"
)

// PossibleCPUs is the number of CPUs the kernel sizes per-CPU maps for
// (/sys/devices/system/cpu/possible), which may exceed the online ones.
func PossibleCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return runtime.NumCPU()
	}
	return n
}
