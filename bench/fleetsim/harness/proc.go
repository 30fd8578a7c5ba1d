package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ: 100 on
// every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// procSample is what /proc says about a process (or a process tree) at one time.
type procSample struct {
	At  time.Time
	CPU time.Duration // utime + stime (and, for a tree, what its ended children used)
	RSS int64         // bytes (for a tree: the sum of PSS, which counts shared memory once)
	FDs int
}

// statCPU reads utime+stime (and cutime+cstime if children) of pid, and its parent.
func statCPU(pid int, children bool) (cpu time.Duration, ppid int, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+2:]
	}
	f := strings.Fields(rest) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	num := func(i int) int64 { n, _ := strconv.ParseInt(f[i-3], 10, 64); return n }
	ticks := num(14) + num(15)
	if children {
		ticks += num(16) + num(17)
	}
	return time.Duration(ticks) * clockTick, int(num(4)), nil
}

// statusKiB reads a "Key:   N kB" line of /proc/PID/status (or smaps_rollup).
func statusKiB(path, key string) int64 {
	data, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func countFDs(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	for {
		names, err := f.Readdirnames(4096)
		n += len(names)
		if err != nil {
			return n
		}
	}
}

// sampleProc samples one process: CPU, RSS, open descriptors.
func sampleProc(pid int) procSample {
	cpu, _, _ := statCPU(pid, false)
	return procSample{At: time.Now(), CPU: cpu, RSS: statusKiB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS") << 10, FDs: countFDs(pid)}
}

// sampleTree samples root and every live descendant (PostgreSQL's backends):
// their CPU plus what ended children used, and their summed PSS.
func sampleTree(root int) procSample {
	s := procSample{At: time.Now()}
	parent := map[int]int{}
	cpus := map[int]time.Duration{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		cpu, ppid, err := statCPU(pid, false)
		if err != nil {
			continue
		}
		parent[pid], cpus[pid] = ppid, cpu
	}
	inTree := func(pid int) bool {
		for i := 0; i < 64 && pid > 1; i++ {
			if pid == root {
				return true
			}
			pid = parent[pid]
		}
		return false
	}
	for pid := range parent {
		if !inTree(pid) {
			continue
		}
		cpu := cpus[pid]
		if pid == root {
			cpu, _, _ = statCPU(pid, true)
		}
		s.CPU += cpu
		s.RSS += statusKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss") << 10
		s.FDs += countFDs(pid)
	}
	return s
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
