package runtime

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Network selects the network namespace of a container.
type Network int

const (
	// NetworkNone gives the container its own network namespace holding only
	// the loopback interface (up). It is the default: an app reaches no
	// network unless it is granted one.
	NetworkNone Network = iota
	// NetworkHost shares the host's network namespace. The agent allows it
	// only when the operator opted in.
	NetworkHost
)

// Mount is a bind mount of a host path (a volume) into the container. It is
// mounted nosuid,nodev: a volume holds data, never device nodes or setuid
// programs.
type Mount struct {
	Source      string // absolute host path
	Destination string // absolute path in the container, not under /proc or /sys
	ReadOnly    bool
}

// Spec describes one container independently of the app package format; the
// agent maps an app manifest onto it and Generate turns it into a
// runtime-spec config. Zero values select the safe defaults documented on
// each field.
type Spec struct {
	ID             string   // container id: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 bytes
	RootFS         string   // absolute path of the prepared root file system, mounted read-only
	Args           []string // process arguments, Args[0] resolved in the container's PATH
	Env            []string // KEY=VALUE; PATH defaults to DefaultPath
	Cwd            string   // working directory in the container; "" is /
	UID, GID       uint32   // the process's user and group (0:0 is root)
	AdditionalGIDs []uint32 // supplementary groups
	Hostname       string   // "" is the ID

	// Capabilities is the allowlist of Linux capabilities ("NET_BIND_SERVICE"
	// or "CAP_NET_BIND_SERVICE"); none is granted by default. They fill the
	// bounding, effective and permitted sets, and for a non-root UID also
	// the inheritable and ambient ones, without which a non-root process
	// loses them at execve. Generate refuses those in
	// ForbiddenCapabilities with ErrForbiddenCapability.
	Capabilities []string
	// Devices are host device nodes (by path) the container may open: each is
	// created at the same path in the container, owned by UID:GID so a
	// non-root app can open what it declared, and allowed (rwm) in the
	// device cgroup. Opening any other device but the standard nodes is
	// denied (EPERM). runc itself adds "mknod any device" to the rules, as
	// Docker does: with CAP_MKNOD an app may create a node, not open it.
	Devices []string
	Network Network
	Volumes []Mount

	Memory  int64   // memory limit in bytes, swap included where the host accounts it; 0 is unlimited
	CPU     float64 // CPU limit in cores (0.5 = half a core); 0 is unlimited
	Pids    int64   // maximum number of tasks; 0 is DefaultPids
	TmpSize int64   // size of the /tmp tmpfs in bytes; 0 is DefaultTmpSize

	// CgroupParent is the absolute cgroup under which the container's cgroup
	// <CgroupParent>/<ID> is created (cgroupfs driver); "" is "/tern".
	CgroupParent string
	// OOMScoreAdj is the container's oom_score_adj; nil is
	// DefaultOOMScoreAdj, so that apps are killed before the agent.
	OOMScoreAdj *int
	// Seccomp replaces the default syscall filter; nil is DefaultSeccomp().
	Seccomp *specs.LinuxSeccomp
}

// Defaults applied by Generate to zero fields of a Spec.
const (
	DefaultPath        = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	DefaultPids        = 1024
	DefaultTmpSize     = 64 << 20
	DefaultOOMScoreAdj = 500
	DefaultNoFile      = 1024
	cpuPeriod          = 100000 // µs, the kernel's default CFS period
)

// ForbiddenCapabilities are the capabilities no app is ever granted: each one
// hands over the kernel (module loading, raw I/O, ptrace of other processes,
// mount and the rest of SYS_ADMIN, reboot).
var ForbiddenCapabilities = []string{"SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "SYS_BOOT"}

// knownCapabilities lists the Linux capabilities by name without the CAP_
// prefix, so that a typo in a manifest is an error and not a silent no-op.
var knownCapabilities = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
	"SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
	"NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
	"SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
	"SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
	"BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// maskedPaths are hidden from the container (a file is covered by /dev/null,
// a directory by an empty read-only tmpfs): they leak host kernel state or
// give a handle on the host's hardware.
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
	"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
	"/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
}

// readonlyPaths stay visible but cannot be written: writing them would tune
// or trigger the host kernel.
var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// standardDevices are the nodes every container may use (runc creates them):
// null, zero, full, random, urandom, tty, and ptmx with the pts slaves.
var standardDevices = []struct {
	major, minor int64 // minor -1: any
}{
	{1, 3}, {1, 5}, {1, 7}, {1, 8}, {1, 9}, {5, 0}, {5, 2}, {136, -1},
}

// validID checks a container id, which names files, a cgroup and runc's
// state: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 bytes. (No regexp: the
// monitor links this package and stays small.)
func validID(id string) error {
	ok := len(id) > 0 && len(id) <= 128
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		ok = alnum || i > 0 && (c == '_' || c == '.' || c == '-')
	}
	if !ok {
		return errors.New("invalid container id " + strconv.Quote(id) + ": want [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 bytes")
	}
	return nil
}

// Generate turns s into a runtime-spec config that isolates the container by
// default: new pid, ipc, uts, mount, cgroup and (unless NetworkHost) network
// namespaces, a read-only root, no-new-privileges, only the allowlisted
// capabilities, DefaultSeccomp, deny-all devices, masked /proc and /sys
// paths, and the resource limits of s. It reads the host only to resolve
// s.Devices to device numbers.
func Generate(s Spec) (*specs.Spec, error) {
	if err := validID(s.ID); err != nil {
		return nil, err
	}
	if !path.IsAbs(s.RootFS) {
		return nil, fmt.Errorf("rootfs %q: not an absolute path", s.RootFS)
	}
	if len(s.Args) == 0 {
		return nil, errors.New("no process arguments")
	}
	if s.Memory < 0 || s.CPU < 0 || s.Pids < 0 || s.TmpSize < 0 {
		return nil, errors.New("negative resource limit")
	}
	caps, err := capabilitySet(s.Capabilities)
	if err != nil {
		return nil, err
	}
	devices, rules, err := deviceNodes(s.Devices, s.UID, s.GID)
	if err != nil {
		return nil, err
	}
	mounts, err := mounts(s)
	if err != nil {
		return nil, err
	}
	parent := s.CgroupParent
	if parent == "" {
		parent = "/tern"
	}
	if !path.IsAbs(parent) {
		return nil, fmt.Errorf("cgroup parent %q: not an absolute path", parent)
	}

	proc := &specs.Process{
		User:            specs.User{UID: s.UID, GID: s.GID, AdditionalGids: s.AdditionalGIDs},
		Args:            s.Args,
		Env:             withDefaultPath(s.Env),
		Cwd:             cmp.Or(s.Cwd, "/"),
		NoNewPrivileges: true,
		Rlimits: []specs.POSIXRlimit{
			{Type: "RLIMIT_NOFILE", Soft: DefaultNoFile, Hard: DefaultNoFile},
			{Type: "RLIMIT_CORE", Soft: 0, Hard: 0}, // no core dumps filling flash
		},
		OOMScoreAdj: s.OOMScoreAdj,
		// Bounding, effective and permitted hold exactly the allowlist. A
		// root process keeps them across execve; a non-root one would lose
		// them there, so it also gets them as inheritable and ambient (the
		// only way for an unprivileged process to hold a capability without
		// file capabilities, which no-new-privileges disables anyway).
		Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
	}
	if s.UID != 0 && len(caps) > 0 {
		proc.Capabilities.Inheritable = caps
		proc.Capabilities.Ambient = caps
	}
	if proc.OOMScoreAdj == nil {
		adj := DefaultOOMScoreAdj
		proc.OOMScoreAdj = &adj
	}
	if !path.IsAbs(proc.Cwd) {
		return nil, fmt.Errorf("cwd %q: not an absolute path", proc.Cwd)
	}

	namespaces := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
		{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
	}
	if s.Network != NetworkHost {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	seccomp := s.Seccomp
	if seccomp == nil {
		seccomp = DefaultSeccomp()
	}
	pids := cmp.Or(s.Pids, DefaultPids)
	res := &specs.LinuxResources{Devices: rules, Pids: &specs.LinuxPids{Limit: &pids}}
	if s.Memory > 0 {
		res.Memory = &specs.LinuxMemory{Limit: &s.Memory}
	}
	if s.CPU > 0 {
		quota, period := int64(s.CPU*cpuPeriod), uint64(cpuPeriod)
		quota = max(quota, 1000) // the kernel's minimum quota is 1 ms
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	return &specs.Spec{
		Version:  specs.Version,
		Process:  proc,
		Root:     &specs.Root{Path: s.RootFS, Readonly: true},
		Hostname: cmp.Or(s.Hostname, s.ID),
		Mounts:   mounts,
		Linux: &specs.Linux{
			Namespaces:    namespaces,
			Devices:       devices,
			Resources:     res,
			CgroupsPath:   path.Join(parent, s.ID),
			Seccomp:       seccomp,
			MaskedPaths:   slices.Clone(maskedPaths),
			ReadonlyPaths: slices.Clone(readonlyPaths),
		},
	}, nil
}

// capabilitySet normalizes names to the CAP_ form runc expects, refusing
// unknown and forbidden ones.
func capabilitySet(names []string) ([]string, error) {
	var out []string
	for _, n := range names {
		c := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(n)), "CAP_")
		if slices.Contains(ForbiddenCapabilities, c) {
			return nil, fmt.Errorf("capability %s: %w", c, ErrForbiddenCapability)
		}
		if !slices.Contains(knownCapabilities, c) {
			return nil, fmt.Errorf("unknown capability %q", n)
		}
		if !slices.Contains(out, "CAP_"+c) {
			out = append(out, "CAP_"+c)
		}
	}
	return out, nil
}

// deviceNodes resolves declared device paths to nodes for the container and
// builds the device cgroup: deny everything, then allow the standard nodes
// and the declared ones.
func deviceNodes(paths []string, uid, gid uint32) ([]specs.LinuxDevice, []specs.LinuxDeviceCgroup, error) {
	rules := []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}
	for _, d := range standardDevices {
		rules = append(rules, deviceRule("c", d.major, d.minor))
	}
	var nodes []specs.LinuxDevice
	for _, p := range paths {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return nil, nil, fmt.Errorf("device %q: not a clean absolute path", p)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return nil, nil, fmt.Errorf("device %s: %w", p, err)
		}
		var typ string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			typ = "c"
		case unix.S_IFBLK:
			typ = "b"
		default:
			return nil, nil, fmt.Errorf("device %s: not a device node", p)
		}
		if slices.ContainsFunc(nodes, func(n specs.LinuxDevice) bool { return n.Path == p }) {
			continue
		}
		major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		mode := os.FileMode(st.Mode & 0o777)
		nodes = append(nodes, specs.LinuxDevice{
			Path: p, Type: typ, Major: major, Minor: minor, FileMode: &mode, UID: &uid, GID: &gid,
		})
		rules = append(rules, deviceRule(typ, major, minor))
	}
	return nodes, rules, nil
}

func deviceRule(typ string, major, minor int64) specs.LinuxDeviceCgroup {
	r := specs.LinuxDeviceCgroup{Allow: true, Type: typ, Major: &major, Access: "rwm"}
	if minor >= 0 {
		r.Minor = &minor
	}
	return r
}

// mounts lists the container's file systems: the kernel ones, a size-limited
// /tmp, and the volumes. Everything but /dev is nodev, everything nosuid.
func mounts(s Spec) ([]specs.Mount, error) {
	tmpSize := cmp.Or(s.TmpSize, DefaultTmpSize)
	ms := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", tmpSize)}},
	}
	for _, v := range s.Volumes {
		if !path.IsAbs(v.Source) || !path.IsAbs(v.Destination) {
			return nil, fmt.Errorf("volume %s:%s: paths must be absolute", v.Source, v.Destination)
		}
		dst := path.Clean(v.Destination)
		for _, reserved := range []string{"/", "/proc", "/sys"} {
			if dst == reserved || (reserved != "/" && strings.HasPrefix(dst, reserved+"/")) {
				return nil, fmt.Errorf("volume %s: destination %s is reserved", v.Source, dst)
			}
		}
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if v.ReadOnly {
			opts = append(opts, "ro")
		}
		ms = append(ms, specs.Mount{Destination: dst, Type: "bind", Source: path.Clean(v.Source), Options: opts})
	}
	return ms, nil
}

func withDefaultPath(env []string) []string {
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			return env
		}
	}
	return append(slices.Clone(env), "PATH="+DefaultPath)
}
