package runtime

import (
	"errors"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// These tests read the generated config; the tests in isolation_test.go
// check from inside real containers that runc enforces it.

func TestGenerateIsolatesByDefault(t *testing.T) {
	cfg, err := Generate(Spec{ID: "app-1", RootFS: "/var/lib/tern/apps/a/rootfs", Args: []string{"/app"}})
	if err != nil {
		t.Fatal(err)
	}
	var ns []specs.LinuxNamespaceType
	for _, n := range cfg.Linux.Namespaces {
		if n.Path != "" {
			t.Errorf("namespace %s joins %s", n.Type, n.Path)
		}
		ns = append(ns, n.Type)
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace, specs.CgroupNamespace} {
		if !slices.Contains(ns, want) {
			t.Errorf("no new %s namespace", want)
		}
	}
	p := cfg.Process
	switch {
	case !cfg.Root.Readonly:
		t.Error("root is writable")
	case !p.NoNewPrivileges:
		t.Error("no-new-privileges is off")
	case len(p.Capabilities.Bounding)+len(p.Capabilities.Effective)+len(p.Capabilities.Permitted)+len(p.Capabilities.Ambient)+len(p.Capabilities.Inheritable) != 0:
		t.Errorf("capabilities granted by default: %+v", p.Capabilities)
	case cfg.Linux.Seccomp == nil || cfg.Linux.Seccomp.DefaultAction != specs.ActErrno:
		t.Error("no deny-by-default seccomp filter")
	case *p.OOMScoreAdj != DefaultOOMScoreAdj:
		t.Errorf("oom_score_adj %d", *p.OOMScoreAdj)
	case cfg.Linux.CgroupsPath != "/tern/app-1":
		t.Errorf("cgroups path %q", cfg.Linux.CgroupsPath)
	case *cfg.Linux.Resources.Pids.Limit != DefaultPids:
		t.Errorf("pids limit %d", *cfg.Linux.Resources.Pids.Limit)
	case cfg.Hostname != "app-1":
		t.Errorf("hostname %q", cfg.Hostname)
	}
	if !slices.Contains(p.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 1024}) {
		t.Errorf("rlimits %+v", p.Rlimits)
	}
	if first := cfg.Linux.Resources.Devices[0]; first.Allow || first.Access != "rwm" || first.Type != "" {
		t.Errorf("device rules do not start by denying all: %+v", first)
	}
	for _, path := range []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi", "/proc/acpi"} {
		if !slices.Contains(cfg.Linux.MaskedPaths, path) {
			t.Errorf("%s is not masked", path)
		}
	}
	for _, path := range []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"} {
		if !slices.Contains(cfg.Linux.ReadonlyPaths, path) {
			t.Errorf("%s is not read-only", path)
		}
	}
	mounts := map[string]specs.Mount{}
	for _, m := range cfg.Mounts {
		mounts[m.Destination] = m
	}
	for dst, opts := range map[string][]string{
		"/tmp": {"nosuid", "nodev", "size=67108864"}, "/sys": {"ro"}, "/proc": {"nosuid", "noexec", "nodev"},
		"/dev": {"nosuid"}, "/dev/pts": {"newinstance"}, "/dev/shm": {"nodev"}, "/dev/mqueue": {"nodev"},
	} {
		for _, o := range opts {
			if !slices.Contains(mounts[dst].Options, o) {
				t.Errorf("%s mounted without %s: %+v", dst, o, mounts[dst])
			}
		}
	}
}

func TestGenerateMapsSpec(t *testing.T) {
	adj := -100
	s := Spec{
		ID: "a", RootFS: "/r", Args: []string{"/app"}, Env: []string{"PATH=/bin", "A=b"}, Cwd: "/work",
		UID: 1000, GID: 1000, AdditionalGIDs: []uint32{20}, Hostname: "h",
		Capabilities: []string{"net_bind_service", "CAP_NET_RAW", "NET_RAW"}, Devices: []string{"/dev/null"},
		Network: NetworkHost, Memory: 32 << 20, CPU: 0.5, Pids: 64, TmpSize: 1 << 20,
		Volumes:      []Mount{{Source: "/var/data", Destination: "/data/", ReadOnly: true}},
		CgroupParent: "/apps", OOMScoreAdj: &adj,
	}
	cfg, err := Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	caps := []string{"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
	pc := cfg.Process.Capabilities
	for name, set := range map[string][]string{"bounding": pc.Bounding, "effective": pc.Effective, "permitted": pc.Permitted, "ambient (non-root)": pc.Ambient, "inheritable (non-root)": pc.Inheritable} {
		if !slices.Equal(set, caps) {
			t.Errorf("%s capabilities %v, want %v", name, set, caps)
		}
	}
	for _, n := range cfg.Linux.Namespaces {
		if n.Type == specs.NetworkNamespace {
			t.Error("host network, yet a network namespace")
		}
	}
	r := cfg.Linux.Resources
	if *r.Memory.Limit != 32<<20 || *r.CPU.Quota != 50000 || *r.CPU.Period != 100000 || *r.Pids.Limit != 64 {
		t.Errorf("resources %+v %+v %+v", *r.Memory, *r.CPU, *r.Pids)
	}
	if len(cfg.Linux.Devices) != 1 || cfg.Linux.Devices[0].Path != "/dev/null" || cfg.Linux.Devices[0].Major != 1 || cfg.Linux.Devices[0].Minor != 3 || *cfg.Linux.Devices[0].UID != 1000 {
		t.Errorf("devices %+v", cfg.Linux.Devices)
	}
	last := r.Devices[len(r.Devices)-1]
	if !last.Allow || last.Type != "c" || *last.Major != 1 || *last.Minor != 3 {
		t.Errorf("declared device not allowed last: %+v", last)
	}
	vol := cfg.Mounts[len(cfg.Mounts)-1]
	if vol.Destination != "/data" || vol.Source != "/var/data" || !slices.Contains(vol.Options, "ro") || !slices.Contains(vol.Options, "nodev") {
		t.Errorf("volume %+v", vol)
	}
	if cfg.Linux.CgroupsPath != "/apps/a" || *cfg.Process.OOMScoreAdj != -100 || cfg.Process.Cwd != "/work" || cfg.Hostname != "h" {
		t.Errorf("cgroup %q oom %d cwd %q hostname %q", cfg.Linux.CgroupsPath, *cfg.Process.OOMScoreAdj, cfg.Process.Cwd, cfg.Hostname)
	}
	if !slices.Equal(cfg.Process.Env, s.Env) || cfg.Process.User.AdditionalGids[0] != 20 {
		t.Errorf("env %v user %+v", cfg.Process.Env, cfg.Process.User)
	}
}

func TestGenerateRefusesBadSpecs(t *testing.T) {
	ok := Spec{ID: "a", RootFS: "/r", Args: []string{"/app"}}
	for _, tc := range []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"bad id", func(s *Spec) { s.ID = "../etc" }, "invalid container id"},
		{"empty id", func(s *Spec) { s.ID = "" }, "invalid container id"},
		{"relative rootfs", func(s *Spec) { s.RootFS = "rootfs" }, "not an absolute path"},
		{"no args", func(s *Spec) { s.Args = nil }, "no process arguments"},
		{"unknown capability", func(s *Spec) { s.Capabilities = []string{"NET_BIND"} }, "unknown capability"},
		{"forbidden capability", func(s *Spec) { s.Capabilities = []string{"CAP_SYS_MODULE"} }, "forbidden capability"},
		{"device not a device", func(s *Spec) { s.Devices = []string{"/etc/passwd"} }, "not a device node"},
		{"missing device", func(s *Spec) { s.Devices = []string{"/dev/no-such-device"} }, "no such file"},
		{"relative device", func(s *Spec) { s.Devices = []string{"dev/null"} }, "not a clean absolute path"},
		{"volume over /proc", func(s *Spec) { s.Volumes = []Mount{{Source: "/x", Destination: "/proc/sys"}} }, "reserved"},
		{"volume over root", func(s *Spec) { s.Volumes = []Mount{{Source: "/x", Destination: "/"}} }, "reserved"},
		{"relative volume", func(s *Spec) { s.Volumes = []Mount{{Source: "x", Destination: "/x"}} }, "absolute"},
		{"negative memory", func(s *Spec) { s.Memory = -1 }, "negative"},
		{"relative cgroup parent", func(s *Spec) { s.CgroupParent = "tern" }, "cgroup parent"},
	} {
		s := ok
		tc.change(&s)
		_, err := Generate(s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.want)
		}
		if tc.name == "forbidden capability" && !errors.Is(err, ErrForbiddenCapability) {
			t.Errorf("%s: %v is not ErrForbiddenCapability", tc.name, err)
		}
	}
}

func TestDefaultSeccompIsAnAllowlist(t *testing.T) {
	denied := []string{
		"mount", "umount2", "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load",
		"kexec_file_load", "bpf", "keyctl", "add_key", "request_key", "init_module", "finit_module",
		"delete_module", "unshare", "setns", "open_by_handle_at", "name_to_handle_at", "pivot_root",
		"swapon", "swapoff", "reboot", "perf_event_open", "userfaultfd", "acct", "quotactl",
		"lookup_dcookie", "iopl", "ioperm", "clock_settime", "settimeofday", "chroot", "fsopen",
		"move_mount", "open_tree", "io_uring_setup", "pidfd_getfd",
	}
	for goarch, arches := range map[string][]specs.Arch{
		"amd64": {specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		"arm64": {specs.ArchAARCH64, specs.ArchARM},
	} {
		sc := seccompFor(goarch)
		if sc.DefaultAction != specs.ActErrno || sc.DefaultErrnoRet != nil {
			t.Errorf("%s: default %s: want EPERM", goarch, sc.DefaultAction)
		}
		if !slices.Equal(sc.Architectures, arches) {
			t.Errorf("%s: architectures %v, want %v", goarch, sc.Architectures, arches)
		}
		rules := map[string][]specs.LinuxSyscall{}
		for _, r := range sc.Syscalls {
			for _, n := range r.Names {
				rules[n] = append(rules[n], r)
			}
		}
		for _, n := range denied {
			if len(rules[n]) != 0 {
				t.Errorf("%s: %s is allowed", goarch, n)
			}
		}
		clone := rules["clone"]
		if len(clone) != 1 || len(clone[0].Args) != 1 || clone[0].Args[0] != (specs.LinuxSeccompArg{Index: 0, Value: 0x7E020000, Op: specs.OpMaskedEqual}) {
			t.Errorf("%s: clone rule %+v: want allowed only without namespace flags", goarch, clone)
		}
		clone3 := rules["clone3"]
		if len(clone3) != 1 || clone3[0].Action != specs.ActErrno || *clone3[0].ErrnoRet != 38 {
			t.Errorf("%s: clone3 rule %+v: want ENOSYS", goarch, clone3)
		}
		for _, n := range []string{"read", "write", "openat", "execve", "exit_group", "futex", "epoll_pwait", "socket", "rt_sigreturn"} {
			if len(rules[n]) != 1 || rules[n][0].Action != specs.ActAllow || len(rules[n][0].Args) != 0 {
				t.Errorf("%s: %s not allowed outright: %+v", goarch, n, rules[n])
			}
		}
	}
}
