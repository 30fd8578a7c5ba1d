package runtime

import (
	"bytes"
	"os"
	"path/filepath"

	"github.com/tern-iot/tern/internal/runtime/monitor"
)

// swapLimitable reports whether a memory limit should also bound swap, and
// can: the host has swap, and its memory controller accounts it (v1
// memory.memsw.*, v2 memory.swap.max). runc fails to start a container whose
// swap limit the host cannot enforce, and without swap there is nothing to
// limit.
func swapLimitable() bool {
	swaps, err := os.ReadFile("/proc/swaps")
	if err != nil || bytes.Count(swaps, []byte("\n")) < 2 { // header only: no swap
		return false
	}
	root := monitor.CgroupRoot
	if fileExists(filepath.Join(root, "memory", "memory.limit_in_bytes")) { // v1 or hybrid
		return fileExists(filepath.Join(root, "memory", "memory.memsw.limit_in_bytes"))
	}
	// v2: memory.swap.max exists in every non-root cgroup where the memory
	// controller is enabled, if the kernel accounts swap.
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.IsDir() && fileExists(filepath.Join(root, e.Name(), "memory.swap.max")) {
			return true
		}
	}
	return false
}
