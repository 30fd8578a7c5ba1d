package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The tests in this file check each isolation property from inside a real
// container started by runc.

func TestContainerHasOwnNamespaces(t *testing.T) {
	rt, _ := newRuntime(t)
	kinds := []string{"pid", "ipc", "uts", "mnt", "net", "cgroup"}
	out := output(t, rt, baseSpec(t),
		`for n in `+strings.Join(kinds, " ")+`; do echo "$n $(readlink /proc/self/ns/$n)"; done`)
	inside := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(line, " ")
		inside[k] = v
	}
	for _, k := range kinds {
		host, err := os.Readlink("/proc/self/ns/" + k)
		if err != nil {
			t.Fatal(err)
		}
		if inside[k] == "" || inside[k] == host {
			t.Errorf("%s namespace: container %q, host %q: want a namespace of its own", k, inside[k], host)
		}
	}
}

func TestRootFSIsReadOnly(t *testing.T) {
	rt, _ := newRuntime(t)
	data, ro := t.TempDir(), t.TempDir()
	s := baseSpec(t)
	s.Volumes = []Mount{{Source: data, Destination: "/data"}, {Source: ro, Destination: "/ro", ReadOnly: true}}
	out := output(t, rt, s, `
		touch /newfile 2>&1 || echo root-refused
		touch /bin/busybox 2>&1 || echo binary-refused
		echo x > /tmp/f && echo tmp-writable
		echo hello > /data/f && echo volume-writable
		touch /ro/f 2>&1 || echo ro-volume-refused`)
	for _, want := range []string{"root-refused", "binary-refused", "tmp-writable", "volume-writable", "ro-volume-refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "Read-only file system") {
		t.Errorf("writes to the root did not fail with EROFS:\n%s", out)
	}
	if b, err := os.ReadFile(filepath.Join(data, "f")); err != nil || string(b) != "hello\n" {
		t.Errorf("volume file on the host: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(requireEnv(t).rootfs, "newfile")); err == nil {
		t.Error("the container wrote into its root file system")
	}
}

func TestNoNewPrivileges(t *testing.T) {
	rt, _ := newRuntime(t)
	out := output(t, rt, baseSpec(t), `grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status`)
	for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

func TestOnlyAllowlistedCapabilities(t *testing.T) {
	const netBindService = 1 << 10
	for _, tc := range []struct {
		name     string
		uid      uint32
		caps     []string
		eff, amb uint64
	}{
		{"root without capabilities", 0, nil, 0, 0},
		{"root with NET_BIND_SERVICE", 0, []string{"NET_BIND_SERVICE"}, netBindService, 0},
		{"non-root with NET_BIND_SERVICE", 1000, []string{"CAP_NET_BIND_SERVICE"}, netBindService, netBindService},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, _ := newRuntime(t)
			s := baseSpec(t)
			s.UID, s.GID, s.Capabilities = tc.uid, tc.uid, tc.caps
			out := output(t, rt, s, `grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/self/status`)
			got := map[string]uint64{}
			for _, line := range strings.Split(out, "\n") {
				k, v, _ := strings.Cut(line, ":")
				n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				got[k] = n
			}
			want := map[string]uint64{"CapEff": tc.eff, "CapPrm": tc.eff, "CapBnd": tc.eff, "CapAmb": tc.amb}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %#x, want %#x", k, got[k], v)
				}
			}
		})
	}
}

func TestForbiddenCapabilitiesRefused(t *testing.T) {
	rt, _ := newRuntime(t)
	for _, c := range append(slices.Clone(ForbiddenCapabilities), "cap_sys_admin") {
		s := baseSpec(t, "true")
		s.Capabilities = []string{"NET_BIND_SERVICE", c}
		if _, err := Generate(s); !errors.Is(err, ErrForbiddenCapability) {
			t.Errorf("Generate with %s: %v, want ErrForbiddenCapability", c, err)
		}
		if _, err := rt.Start(testContext(t), s, t.TempDir(), LogConfig{}); !errors.Is(err, ErrForbiddenCapability) {
			t.Errorf("Start with %s: %v, want ErrForbiddenCapability", c, err)
		}
	}
	if list, err := rt.List(testContext(t)); err != nil || len(list) != 0 {
		t.Errorf("containers after refused starts: %v, %v", list, err)
	}
}

func TestSeccompDeniesDangerousSyscalls(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "/probe", "syscalls")
	es, stdout, stderr := run(t, rt, s)
	if es.Code != 0 {
		t.Fatalf("probe: %+v\n%s", es, strings.Join(stderr, "\n"))
	}
	got := map[string]int{}
	for _, line := range stdout {
		name, errno, _ := strings.Cut(line, " ")
		got[name], _ = strconv.Atoi(errno)
	}
	const eperm, enosys = 1, 38
	want := map[string]int{
		"mount": eperm, "umount2": eperm, "ptrace": eperm, "process_vm_readv": eperm,
		"kexec_load": eperm, "bpf": eperm, "keyctl": eperm, "init_module": eperm,
		"finit_module": eperm, "unshare_newuser": eperm, "clone_newuser": eperm,
		"setns": eperm, "open_by_handle_at": eperm, "name_to_handle_at": eperm,
		"perf_event_open": eperm, "userfaultfd": eperm, "pivot_root": eperm,
		"reboot": eperm, "clock_settime": eperm,
		"clone3":    enosys, // so that libc falls back to clone
		"getpid":    0,
		"fork_exec": 0, // clone without namespace flags
	}
	for name, errno := range want {
		if e, ok := got[name]; !ok || e != errno {
			t.Errorf("%s: errno %d (reported %v), want %d", name, e, ok, errno)
		}
	}
}

func TestMaskedProcPaths(t *testing.T) {
	rt, _ := newRuntime(t)
	out := output(t, rt, baseSpec(t), `
		for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do echo "$f $(head -c 64 $f 2>/dev/null | wc -c)"; done
		echo "/sys/firmware $(ls -A /sys/firmware | wc -l)"
		echo 1 2>/dev/null > /proc/sysrq-trigger || echo sysrq-refused
		echo x 2>/dev/null > /proc/sys/kernel/hostname || echo proc-sys-refused
		touch /proc/irq/x 2>/dev/null || echo proc-irq-refused`)
	for _, want := range []string{
		"/proc/kcore 0", "/proc/keys 0", "/proc/timer_list 0", "/proc/sched_debug 0", "/sys/firmware 0",
		"sysrq-refused", "proc-sys-refused", "proc-irq-refused",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDeviceCgroupDeniesUndeclaredDevices(t *testing.T) {
	rt, _ := newRuntime(t)
	const declared, undeclared = "/dev/loop-control", "/dev/kmsg" // 10:237, 1:11
	for _, d := range []string{declared, undeclared} {
		if _, err := os.Stat(d); err != nil {
			t.Skipf("host lacks %s", d)
		}
	}
	s := baseSpec(t)
	s.Devices = []string{declared}
	s.Capabilities = []string{"MKNOD"} // so that only the device cgroup stands in the way
	s.Volumes = []Mount{{Source: undeclared, Destination: "/dev/bound-kmsg"}}
	// runc lets mknod through (as Docker does); opening is what the device
	// cgroup refuses. The subshells keep a failed redirection from ending
	// the script.
	out := output(t, rt, s, `
		( exec 3<`+declared+` ) && echo declared-opened
		mknod /dev/kmsg2 c 1 11 2>&1
		( exec 3</dev/kmsg2 ) 2>&1 || echo created-node-refused
		( exec 3</dev/bound-kmsg ) 2>&1 || echo bound-node-refused`)
	for _, want := range []string{"declared-opened", "created-node-refused", "bound-node-refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// EPERM is the device cgroup's answer (nodev, on the bound node, is EACCES).
	if !strings.Contains(out, "/dev/kmsg2: Operation not permitted") {
		t.Errorf("opening an undeclared device was not refused by the device cgroup:\n%s", out)
	}
}

func TestMemoryLimitOOMRecorded(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "/probe", "alloc")
	s.Memory = 48 << 20
	es, _, _ := run(t, rt, s)
	if !es.OOMKilled || es.Signal != 9 || es.Code != 137 {
		t.Errorf("exit %+v: want killed by SIGKILL with oom_killed", es)
	}
}

func TestPidsLimit(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t)
	s.Pids = 8
	// Each background sleep takes a task; the shell is one. The failed
	// fork ends the (non-interactive) shell, so count from the log.
	s.Args = []string{"/bin/sh", "-c", `i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo $i; sleep 30 & done`}
	es, stdout, stderr := run(t, rt, s)
	if es.Code == 0 {
		t.Errorf("all 20 processes started under a limit of 8: %+v", es)
	}
	if n := len(stdout); n < 2 || n > 8 {
		t.Errorf("%d forks attempted before one failed, want between 2 and 8: %v", n, stdout)
	}
	if !strings.Contains(strings.Join(stderr, "\n"), "fork") {
		t.Errorf("no fork failure reported: %q", stderr)
	}
}

func TestRunsAsImageUser(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t)
	s.UID, s.GID, s.AdditionalGIDs = 1000, 1001, []uint32{2000, 2001}
	out := output(t, rt, s, `grep -E '^(Uid|Gid|Groups):' /proc/self/status; touch /tmp/f; stat -c '%u:%g' /tmp/f`)
	for _, want := range []string{"Uid:\t1000\t1000\t1000\t1000", "Gid:\t1001\t1001\t1001\t1001", "Groups:\t2000 2001", "1000:1001"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestNetworkNoneHasOnlyLoopback(t *testing.T) {
	rt, _ := newRuntime(t)
	out := output(t, rt, baseSpec(t), `ls /sys/class/net; echo flags $(cat /sys/class/net/lo/flags)`)
	lines := strings.Split(out, "\n")
	if len(lines) != 2 || lines[0] != "lo" {
		t.Fatalf("interfaces: %q, want only lo", out)
	}
	flags, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "flags 0x"), 16, 32)
	if err != nil || flags&1 == 0 {
		t.Errorf("lo is not up: %q", lines[1])
	}
}
