package runtime

import (
	goruntime "runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Namespace flags of clone(2). A container may create processes and threads
// but no new namespace: together with the denial of unshare and setns this
// keeps it out of new user namespaces, the usual first step of a kernel
// exploit.
const (
	cloneNewNS     = 0x00020000
	cloneNewCgroup = 0x02000000
	cloneNewUTS    = 0x04000000
	cloneNewIPC    = 0x08000000
	cloneNewUser   = 0x10000000
	cloneNewPID    = 0x20000000
	cloneNewNet    = 0x40000000
	cloneNamespace = cloneNewNS | cloneNewCgroup | cloneNewUTS | cloneNewIPC | cloneNewUser | cloneNewPID | cloneNewNet

	errnoENOSYS = 38
)

// allowedSyscalls is the allowlist of DefaultSeccomp: what ordinary programs
// (libc, Go, busybox, language runtimes, servers) need, and nothing that
// reaches beyond the container. Names unknown on an architecture are
// skipped by libseccomp, so one list serves amd64, arm64 and their 32-bit
// compat modes.
//
// Left out on purpose, so they fail with EPERM: mounting and the new mount
// API (mount, umount2, pivot_root, chroot, fsopen, fsmount, move_mount,
// open_tree, mount_setattr), namespaces (unshare, setns), tracing and
// reading other processes (ptrace, process_vm_readv/writev, kcmp,
// pidfd_getfd, process_madvise), the kernel itself (init_module,
// finit_module, delete_module, kexec_load, kexec_file_load, reboot, bpf,
// perf_event_open, iopl, ioperm, modify_ldt, swapon, swapoff, acct,
// quotactl, lookup_dcookie, nfsservctl, _sysctl, syslog), keyrings (add_key,
// keyctl, request_key), file handles (name_to_handle_at, open_by_handle_at),
// the clock (settimeofday, stime, clock_settime, clock_adjtime, adjtimex),
// userfaultfd, io_uring (denied by Docker since 25.0), fanotify, vhangup,
// sethostname and setdomainname.
var allowedSyscalls = []string{
	// Files and descriptors.
	"access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
	"creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
	"fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
	"fcntl", "fcntl64", "fdatasync", "flock", "fstat", "fstat64", "fstatat64", "fstatfs",
	"fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents",
	"getdents64", "ioctl", "lchown", "lchown32", "link", "linkat", "_llseek", "lseek", "lstat",
	"lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "oldfstat", "oldlstat",
	"oldstat", "open", "openat", "openat2", "pipe", "pipe2", "pread64", "preadv", "preadv2",
	"pwrite64", "pwritev", "pwritev2", "read", "readahead", "readdir", "readlink", "readlinkat",
	"readv", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "splice",
	"stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
	"sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat",
	"utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
	// Extended attributes.
	"fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "getxattrat",
	"lgetxattr", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lsetxattr",
	"removexattr", "removexattrat", "setxattr", "setxattrat",
	"inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
	// Memory.
	"brk", "cachestat", "get_mempolicy", "madvise", "map_shadow_stack", "membarrier",
	"memfd_create", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
	"mremap", "mseal", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
	"pkey_mprotect", "remap_file_pages",
	// Processes and threads (clone is below, with its argument filter).
	"capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "get_robust_list",
	"getcpu", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrlimit",
	"getrusage", "getsid", "gettid", "ioprio_get", "ioprio_set", "kill", "nice", "pidfd_open",
	"pidfd_send_signal", "prctl", "prlimit64", "rseq", "sched_get_priority_max",
	"sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
	"sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
	"sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
	"set_robust_list", "set_tid_address", "setpgid", "setpriority", "setrlimit", "setsid",
	"tgkill", "times", "tkill", "ugetrlimit", "vfork", "wait4", "waitid", "waitpid",
	// Credentials: changing them still needs CAP_SETUID / CAP_SETGID.
	"getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
	"getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
	"getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
	"setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32",
	"setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
	// Signals.
	"alarm", "pause", "restart_syscall", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
	"rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
	"rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaction", "sigaltstack", "signal",
	"signalfd", "signalfd4", "sigpending", "sigprocmask", "sigreturn", "sigsuspend",
	// Clocks, timers, sleeping (reading the clock only).
	"clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
	"clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep",
	"setitimer", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
	"timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
	"timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
	// Waiting for events, futexes, asynchronous I/O.
	"_newselect", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
	"epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "futex",
	"futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "io_cancel",
	"io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
	"io_submit", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select",
	// System V and POSIX IPC, private to the container's ipc namespace.
	"ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
	"mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
	"msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
	"semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
	// Sockets.
	"accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
	"listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
	"sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall", "socketpair",
	// System information, randomness, and sandboxing oneself further.
	"getrandom", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
	"olduname", "seccomp", "sysinfo", "uname",
	// Architecture specific: x86, then 32-bit arm.
	"arch_prctl", "get_thread_area", "set_thread_area",
	"arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls",
	"sync_file_range2",
}

// allowedPersonalities are the personality(2) arguments a program may pass:
// Linux, 32-bit Linux, UNAME26 (with and without 32-bit), and the query.
// Others (such as READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE) weaken the
// process's own hardening.
var allowedPersonalities = []uint64{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}

// DefaultSeccomp returns the syscall filter every container gets unless its
// Spec says otherwise: an allowlist in the manner of Docker's default
// profile. Any syscall not listed fails with EPERM; clone is allowed only
// without namespace flags; clone3, whose flags live in memory a filter
// cannot read, fails with ENOSYS so that libc falls back to clone. The
// filter does not depend on the capabilities granted: the kernel checks
// those itself on the syscalls that are allowed.
func DefaultSeccomp() *specs.LinuxSeccomp {
	return seccompFor(goruntime.GOARCH)
}

// seccompFor builds the profile for a ternd built for goarch: the native
// architecture plus its 32-bit compat modes.
func seccompFor(goarch string) *specs.LinuxSeccomp {
	enosys := uint(errnoENOSYS)
	sc := &specs.LinuxSeccomp{
		DefaultAction: specs.ActErrno, // EPERM
		Architectures: seccompArchitectures(goarch),
		Syscalls: []specs.LinuxSyscall{
			{Names: append([]string(nil), allowedSyscalls...), Action: specs.ActAllow},
			{Names: []string{"clone"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{
				// (flags & cloneNamespace) == 0; flags are argument 0
				// everywhere but s390, which tern does not run on.
				{Index: 0, Value: cloneNamespace, ValueTwo: 0, Op: specs.OpMaskedEqual},
			}},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
	for _, p := range allowedPersonalities {
		sc.Syscalls = append(sc.Syscalls, specs.LinuxSyscall{
			Names: []string{"personality"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: p, Op: specs.OpEqualTo}},
		})
	}
	return sc
}

func seccompArchitectures(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "386":
		return []specs.Arch{specs.ArchX86}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	case "arm":
		return []specs.Arch{specs.ArchARM}
	}
	return nil // the native architecture only
}
