package runtime

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"

	"github.com/tern-iot/tern/internal/runtime/monitor"
	"golang.org/x/sys/unix"
)

// alive reports whether the process pid started at start still runs. A
// zombie has exited: its exit status is all that is left of it.
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	s, state, err := monitor.ProcStat(pid)
	return err == nil && s == start && state != 'Z' && state != 'X'
}

// openPidfd returns a pidfd for the process pid started at start, or -1 with
// a nil error when that process is gone. Checking the start time after
// opening closes the race with pid reuse: the pidfd then refers to the
// process we mean for as long as it is open.
func openPidfd(pid int, start uint64) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, nil
	}
	if err != nil {
		return -1, err
	}
	if !alive(pid, start) {
		unix.Close(fd)
		return -1, nil
	}
	return fd, nil
}

// waitGone blocks until the process pid started at start has exited, for
// any process (not only children): it polls a pidfd, which becomes readable
// when the process exits, through the runtime's poller so that ctx can
// interrupt it. Kernels without pidfd_open (before 5.3) fall back to
// checking /proc every 50 ms.
func waitGone(ctx context.Context, pid int, start uint64) error {
	fd, err := openPidfd(pid, start)
	if errors.Is(err, unix.ENOSYS) {
		return pollGone(ctx, pid, start)
	}
	if err != nil || fd < 0 {
		return err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return err
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	err = rc.Read(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		return err == nil && n > 0 // readable: the process has exited
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func pollGone(ctx context.Context, pid int, start uint64) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for alive(pid, start) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// signalProcess sends sig to the process pid started at start, through a
// pidfd so that a reused pid is never signalled. It reports false when that
// process is gone.
func signalProcess(pid int, start uint64, sig syscall.Signal) (bool, error) {
	fd, err := openPidfd(pid, start)
	if errors.Is(err, unix.ENOSYS) {
		if !alive(pid, start) {
			return false, nil
		}
		err = unix.Kill(pid, sig)
		return !errors.Is(err, unix.ESRCH), ignoreESRCH(err)
	}
	if err != nil || fd < 0 {
		return false, err
	}
	defer unix.Close(fd)
	err = unix.PidfdSendSignal(fd, sig, nil, 0)
	return !errors.Is(err, unix.ESRCH), ignoreESRCH(err)
}

func ignoreESRCH(err error) error {
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
