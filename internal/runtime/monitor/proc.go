package monitor

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ProcStat reads a process's start time (clock ticks after boot) and state
// letter from /proc/PID/stat. Start time and pid together name a process
// for the life of a boot: a pid alone may be reused.
func ProcStat(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	var fields []string
	if i >= 0 {
		fields = strings.Fields(string(b[i+1:]))
	}
	if len(fields) < 20 {
		return 0, 0, errors.New("/proc/" + strconv.Itoa(pid) + "/stat: malformed")
	}
	start, err = strconv.ParseUint(fields[19], 10, 64) // field 22
	if err != nil {
		return 0, 0, err
	}
	return start, fields[0][0], nil
}

// BootID names the current boot; records from another boot name processes
// that are all gone.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// CgroupRoot is where the host mounts its cgroup file systems: the v1
// controllers in subdirectories (memory/, pids/, ...), and the unified
// hierarchy either at the root (v2) or in unified/ (hybrid).
const CgroupRoot = "/sys/fs/cgroup"

// OOMKillCount returns how many processes the OOM killer killed in the
// cgroup at path (runc's cgroupsPath), whichever hierarchy holds the memory
// controller: v1 (memory.oom_control) on v1 and hybrid hosts, v2
// (memory.events) on unified ones. ok is false when neither file exists,
// for example after the cgroup was removed.
func OOMKillCount(path string) (n int, ok bool) {
	for _, f := range []string{
		filepath.Join(CgroupRoot, "memory", path, "memory.oom_control"),
		filepath.Join(CgroupRoot, path, "memory.events"),
		filepath.Join(CgroupRoot, "unified", path, "memory.events"),
	} {
		if n, ok := readKey(f, "oom_kill"); ok {
			return n, true
		}
	}
	return 0, false
}

// readKey reads the value of a "key value" line of a cgroup file.
func readKey(file, key string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, found := strings.Cut(sc.Text(), " ")
		if found && k == key {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}
