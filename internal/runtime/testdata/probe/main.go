// Command probe runs inside test containers (built static, CGO_ENABLED=0)
// and reports what the container lets it do.
//
//	probe syscalls   one "name errno" line per probed syscall (0: allowed)
//	probe alloc      allocate and touch memory until killed
package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe syscalls|alloc")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "syscalls":
		syscalls()
	case "alloc":
		alloc()
	default:
		os.Exit(2)
	}
}

func errno(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return int(e)
	}
	return -1
}

func report(name string, e syscall.Errno) { fmt.Printf("%s %d\n", name, int(e)) }

func raw(name string, trap uintptr, a ...uintptr) {
	var args [6]uintptr
	copy(args[:], a)
	_, _, e := unix.RawSyscall6(trap, args[0], args[1], args[2], args[3], args[4], args[5])
	report(name, e)
}

func syscalls() {
	runtime.LockOSThread()
	buf := make([]byte, 64)
	local := []unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
	remote := []unix.RemoteIovec{{Base: uintptr(unsafe.Pointer(&buf[0])), Len: len(buf)}}

	// Denied by the filter even though the kernel would allow them here.
	_, err := unix.ProcessVMReadv(os.Getpid(), local, remote, 0)
	report("process_vm_readv", syscall.Errno(errno(err)))
	raw("ptrace", unix.SYS_PTRACE, unix.PTRACE_TRACEME)
	raw("keyctl", unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, uintptr(0xfffffffd) /* session */, 0)
	// Without the filter: EINVAL in a threaded process. With it: EPERM.
	raw("unshare_newuser", unix.SYS_UNSHARE, unix.CLONE_NEWUSER)
	// Flags the kernel rejects (EINVAL), so no child is ever created; the
	// filter answers first, from the flags alone.
	raw("clone_newuser", unix.SYS_CLONE, unix.CLONE_NEWUSER|unix.CLONE_FS)
	// A size the kernel rejects (EINVAL); the filter answers ENOSYS first.
	raw("clone3", unix.SYS_CLONE3, 0, 0)
	raw("setns", unix.SYS_SETNS, ^uintptr(0), 0)
	raw("name_to_handle_at", unix.SYS_NAME_TO_HANDLE_AT, ^uintptr(99), 0, 0, 0, 0)
	// Denied by the filter, and without the capability anyway.
	raw("mount", unix.SYS_MOUNT, 0, 0, 0, 0, 0)
	raw("umount2", unix.SYS_UMOUNT2, 0, 0)
	raw("kexec_load", unix.SYS_KEXEC_LOAD, 0, 0, 0, 0)
	raw("bpf", unix.SYS_BPF, 0, 0, 0)
	raw("init_module", unix.SYS_INIT_MODULE, 0, 0, 0)
	raw("finit_module", unix.SYS_FINIT_MODULE, ^uintptr(0), 0, 0)
	raw("open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT, ^uintptr(99), 0, 0)
	raw("perf_event_open", unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), ^uintptr(0), 0)
	raw("userfaultfd", unix.SYS_USERFAULTFD, 0)
	raw("pivot_root", unix.SYS_PIVOT_ROOT, 0, 0)
	raw("reboot", unix.SYS_REBOOT, 0, 0, 0, 0)
	raw("clock_settime", unix.SYS_CLOCK_SETTIME, 0, 0)

	// Allowed: an ordinary syscall, and fork+exec (clone without
	// namespace flags).
	raw("getpid", unix.SYS_GETPID)
	err = exec.Command("/bin/true").Run()
	fmt.Printf("fork_exec %d\n", errno(unwrap(err)))
}

func unwrap(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		if next := u.Unwrap(); next != nil {
			err = next
		} else {
			return err
		}
	}
}

// alloc touches 1 MiB after 1 MiB until the OOM killer ends it.
func alloc() {
	var keep [][]byte
	for {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
		if len(keep)%64 == 0 {
			fmt.Printf("allocated %d MiB\n", len(keep))
		}
	}
}
