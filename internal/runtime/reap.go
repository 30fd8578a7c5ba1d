package runtime

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The monitors this process starts are its children and must be reaped when
// they exit. exec.Cmd.Wait would do it by blocking an OS thread in waitid for
// as long as each monitor lives - an app's whole life: with ten apps, ten
// threads and ~1 MiB of ternd's memory spent waiting. Instead one goroutine
// reaps them when SIGCHLD says a child exited, with WNOHANG, by pid. Only
// these pids are waited for: other children (runc commands run with
// exec.Cmd) are left to their own Wait. A pid cannot be reused before it is
// reaped, so waiting by pid is safe.
var monitors struct {
	once sync.Once
	mu   sync.Mutex
	pids map[int]struct{}
}

// reapWhenExited takes over the reaping of child pid (its os.Process must be
// released).
func reapWhenExited(pid int) {
	monitors.once.Do(func() {
		monitors.pids = map[int]struct{}{}
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGCHLD)
		go func() {
			for range ch {
				reapExited()
			}
		}()
	})
	monitors.mu.Lock()
	monitors.pids[pid] = struct{}{}
	monitors.mu.Unlock()
	reapExited() // it may have exited before it was registered
}

// reapExited reaps the registered children that have exited.
func reapExited() {
	monitors.mu.Lock()
	defer monitors.mu.Unlock()
	for pid := range monitors.pids {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if wpid == pid || errors.Is(err, unix.ECHILD) {
			delete(monitors.pids, pid)
		}
	}
}
