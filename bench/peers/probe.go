package peers

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mark is a moment before a start: the processes Probe.Wait considers are those
// created after it. The kernel hands out pids in increasing order, wrapping at
// pid_max, so the new ones are those between the last pid at the mark and the
// last pid now (cyclically); their start time, in clock ticks since boot, must
// not precede the mark either, which rules out an older process (another test's
// "hello") whose pid lies in that range after a wrap.
type Mark struct {
	lastPid int
	ticks   uint64
}

// NewMark marks now.
func NewMark() Mark { return Mark{lastPid: LastPid(), ticks: bootTicks()} }

// LastPid is the last pid the kernel handed out (/proc/sys/kernel/ns_last_pid).
func LastPid() int {
	b, _ := os.ReadFile("/proc/sys/kernel/ns_last_pid")
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// bootTicks is the time since boot in clock ticks (USER_HZ, 100 per second), the
// unit of a process's start time in /proc/PID/stat.
func bootTicks() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano() / 1e7)
}

// Probe finds the app's process and waits for its answer, the same way whatever
// started it: every Interval, it looks for a process named Comm created after the
// mark taken before the start, then connects to 127.0.0.1:port inside that
// process's network namespace and sends GET /; the app answers when the reply
// holds Want.
type Probe struct {
	Comm     string        // the app's process name (/proc/PID/comm), e.g. "hello"
	Want     string        // a substring of a good answer to GET /
	Interval time.Duration // between attempts; 0 is 1 ms
}

// Wait returns the app's pid once it answered on port. Only processes created
// after mark and not in skip are considered.
func (p Probe) Wait(ctx context.Context, mark Mark, port int, skip map[int]bool) (int, error) {
	interval := p.Interval
	if interval == 0 {
		interval = time.Millisecond
	}
	pid := 0
	var last error
	for {
		if pid == 0 {
			pid = findProcess(p.Comm, mark, skip)
		}
		if pid != 0 {
			if last = p.ask(ctx, pid, port); last == nil {
				return pid, nil
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				pid = 0 // it died: look again
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no answer from %s on port %d (pid %d): %v", p.Comm, port, pid, last)
		case <-time.After(interval):
		}
	}
}

// findProcess returns a process named comm created after mark, or 0.
func findProcess(comm string, mark Mark, skip map[int]bool) int {
	now := LastPid()
	d, err := os.Open("/proc")
	if err != nil {
		return 0
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || skip[pid] || !newPid(pid, mark.lastPid, now) {
			continue
		}
		b, err := os.ReadFile("/proc/" + n + "/comm")
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		if f := statFields(pid); len(f) > 19 {
			if start, _ := strconv.ParseUint(f[19], 10, 64); start+1 >= mark.ticks {
				return pid
			}
		}
	}
	return 0
}

// newPid reports whether pid lies in the cyclic range (before, now].
func newPid(pid, before, now int) bool {
	if now >= before {
		return pid > before && pid <= now
	}
	return pid > before || pid <= now // wrapped
}

// ask sends GET / to 127.0.0.1:port in pid's network namespace.
func (p Probe) ask(ctx context.Context, pid, port int) error {
	c, err := DialInNetns(ctx, pid, port)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: app\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(c, 64<<10))
	if !strings.Contains(string(b), p.Want) {
		return fmt.Errorf("answer %q: %v", b, err)
	}
	return nil
}

// DialInNetns connects to 127.0.0.1:port inside pid's network namespace, from an
// OS thread that enters it for the connect and leaves it afterwards.
func DialInNetns(ctx context.Context, pid, port int) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) != nil {
			ch <- result{c, err} // stuck in the namespace: the thread dies with the goroutine
			return
		}
		goruntime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
