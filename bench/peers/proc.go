package peers

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Mem is a process's memory in KiB: VmRSS, RssAnon and RssFile from
// /proc/PID/status, Pss from /proc/PID/smaps_rollup (each page shared by n
// processes counts 1/n: the sum over processes is what they really use).
type Mem struct {
	VmRSS, RssAnon, RssFile, Pss float64
}

// ReadMem reads pid's memory.
func ReadMem(pid int) (Mem, error) {
	var m Mem
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch k {
		case "VmRSS":
			m.VmRSS = kib(v)
		case "RssAnon":
			m.RssAnon = kib(v)
		case "RssFile":
			m.RssFile = kib(v)
		}
	}
	sr, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, err
	}
	for _, l := range strings.Split(string(sr), "\n") {
		if k, v, _ := strings.Cut(l, ":"); k == "Pss" {
			m.Pss = kib(v)
		}
	}
	return m, nil
}

func kib(v string) float64 {
	n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
	return n
}

// ParentPid is pid's parent, 0 if unknown.
func ParentPid(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// CPUTicks is pid's user+system CPU time in clock ticks (100 per second).
func CPUTicks(pid int) int {
	f := statFields(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// statFields are the fields of /proc/PID/stat after the command name.
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
}

// Comm is pid's process name.
func Comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// MonitorMem is the memory of the monitors of n running instances: the process
// that is the parent of each app process (tern-monitor, conmon,
// containerd-shim-runc-v2).
type MonitorMem struct {
	Name     string
	N        int
	Comm     string // the monitors' process name
	Monitors []Mem
}

// Mean averages the monitors' memory.
func (m MonitorMem) Mean() Mem {
	var s Mem
	for _, x := range m.Monitors {
		s.VmRSS += x.VmRSS
		s.RssAnon += x.RssAnon
		s.RssFile += x.RssFile
		s.Pss += x.Pss
	}
	n := float64(len(m.Monitors))
	return Mem{s.VmRSS / n, s.RssAnon / n, s.RssFile / n, s.Pss / n}
}

// MeasureMonitors starts n instances with r (each until it answers), lets them idle
// for settle, reads the memory of each app's parent process, and stops them all.
// Instances are named prefix0..prefixN-1 (ternd's runner needs those apps
// installed).
func MeasureMonitors(ctx context.Context, r Runner, prefix string, n int, probe Probe, settle time.Duration) (MonitorMem, error) {
	out := MonitorMem{Name: r.Name(), N: n}
	var ids []string
	defer func() {
		for _, id := range ids {
			r.Stop(context.Background(), id)
		}
	}()
	var apps []int
	running := map[int]bool{}
	for i := range n {
		id := prefix + strconv.Itoa(i)
		mark := NewMark()
		ids = append(ids, id) // stopped on the way out, even if Start fails half way
		if err := r.Start(ctx, id); err != nil {
			return out, err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		pid, err := probe.Wait(wctx, mark, r.Port(id), running)
		cancel()
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", r.Name(), id, err)
		}
		apps = append(apps, pid)
		running[pid] = true
	}
	time.Sleep(settle)
	for _, pid := range apps {
		mon := ParentPid(pid)
		m, err := ReadMem(mon)
		if err != nil {
			return out, fmt.Errorf("monitor of %d: %w", pid, err)
		}
		out.Comm = Comm(mon)
		out.Monitors = append(out.Monitors, m)
	}
	return out, nil
}
