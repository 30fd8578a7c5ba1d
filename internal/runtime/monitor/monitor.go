// Package monitor is tern-monitor, the small process that supervises one
// container for ternd (in the manner of conmon or containerd-shim), and the
// records it leaves in the container's state directory for ternd to read.
//
// The monitor runs in a session of its own and is a child subreaper: it
// runs `runc run --detach` with the container's stdout and stderr on pipes
// it holds, writes Record and reports the init's pid to
// ternd on a descriptor; then it timestamps each output line into the
// app's log (see LogConfig), reaps the init, reads the cgroup's OOM kill
// count, runs `runc delete`, writes ExitStatus and exits. ternd may restart
// meanwhile: the monitor needs nothing from it after the report.
package monitor

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config is what one monitor needs. Runtime.Start fills it in, Args turns
// it into the monitor's command line, and Run reads it back.
type Config struct {
	Runc     string // runc binary
	RuncRoot string // runc --root
	ID       string // container id
	Bundle   string // bundle directory (config.json)
	StateDir string // the container's state directory: records and diagnostics
	Cgroup   string // the container's cgroupsPath, to read its OOM kills
	Log      LogConfig
}

// Args encodes c as "-name value" pairs for Run; the monitor reports on
// descriptor syncFD.
func (c Config) Args(syncFD int) []string {
	return []string{
		"-runc", c.Runc, "-root", c.RuncRoot, "-id", c.ID, "-bundle", c.Bundle,
		"-state", c.StateDir, "-cgroup", c.Cgroup, "-log-dir", c.Log.Dir,
		"-app", c.Log.App, "-version", c.Log.Version,
		"-log-max-size", strconv.FormatInt(c.Log.MaxSize, 10),
		"-log-max-files", strconv.Itoa(c.Log.MaxFiles),
		"-sync-fd", strconv.Itoa(syncFD),
	}
}

// monitor is one tern-monitor process: it runs one container under runc and
// stays its parent for its whole life, so that the container outlives ternd.
// It holds the container's stdout and stderr (pipes, no terminal) and writes
// them to the app's log, reaps the container's init, reads the OOM kill
// count before runc deletes the cgroup, records exit.json, and exits.
type monitor struct {
	Config
	syncFD int
	sync   *os.File // tells ternd the container runs (or why it does not)
}

// Run is the tern-monitor program (cmd/tern-monitor): it reads args (see
// Config.Args) and runs one container to its end, returning the process's
// exit code. One monitor runs per container, so it stays small: this
// package does without fmt, flag, encoding/json and regexp.
func Run(args []string) int {
	m := monitor{Config: Config{Runc: "runc"}, syncFD: 3}
	strs := map[string]*string{
		"-runc": &m.Runc, "-root": &m.RuncRoot, "-id": &m.ID, "-bundle": &m.Bundle,
		"-state": &m.StateDir, "-cgroup": &m.Cgroup, "-log-dir": &m.Log.Dir,
		"-app": &m.Log.App, "-version": &m.Log.Version,
	}
	ints := map[string]*int{"-log-max-files": &m.Log.MaxFiles, "-sync-fd": &m.syncFD}
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			return usage("flag " + args[i] + " needs a value")
		}
		name, val := args[i], args[i+1]
		var err error
		switch {
		case strs[name] != nil:
			*strs[name] = val
		case ints[name] != nil:
			*ints[name], err = strconv.Atoi(val)
		case name == "-log-max-size":
			m.Log.MaxSize, err = strconv.ParseInt(val, 10, 64)
		default:
			return usage("unknown flag " + name)
		}
		if err != nil {
			return usage("flag " + name + ": " + err.Error())
		}
	}
	if m.RuncRoot == "" || m.ID == "" || m.Bundle == "" || m.StateDir == "" {
		return usage("-root, -id, -bundle and -state are required")
	}
	return m.run()
}

func usage(msg string) int {
	logf("usage: ", msg)
	return 2
}

// logf writes a line to the monitor's stderr (monitor.log).
func logf(parts ...string) {
	os.Stderr.WriteString("tern-monitor: " + strings.Join(parts, "") + "\n")
}

func (m *monitor) run() int {
	// The monitor is idle but for log lines: collect garbage early rather
	// than grow, since one monitor runs per container.
	debug.SetGCPercent(20)
	// Only SIGKILL ends a monitor before its container: a stray signal must
	// not cut the container's stdout (it would die of SIGPIPE) or lose its
	// exit status.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE)
	closeInherited(m.syncFD)
	if _, err := unix.FcntlInt(uintptr(m.syncFD), unix.F_SETFD, unix.FD_CLOEXEC); err == nil {
		m.sync = os.NewFile(uintptr(m.syncFD), "sync")
	}

	// Orphans of runc run, the container's init among them, become our
	// children: we can reap the init and read its exit status.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return m.fail(errors.New("set child subreaper: " + err.Error()))
	}
	self := os.Getpid()
	selfStart, _, err := ProcStat(self)
	if err != nil {
		return m.fail(err)
	}
	rec := Record{MonitorPid: self, MonitorStart: selfStart, BootID: BootID(), Bundle: m.Bundle}
	if err := WriteRecord(m.path(RecordFile), rec, false); err != nil {
		return m.fail(err)
	}
	lw, err := openLogWriter(m.Log)
	if err != nil {
		return m.fail(errors.New("open log: " + err.Error()))
	}
	defer lw.Close()

	// OOM kills are counted from before the container runs (its cgroup is
	// usually new: none).
	oomBefore, _ := OOMKillCount(m.Cgroup)
	outR, errR, initPid, err := m.create()
	if err != nil {
		return m.fail(err)
	}
	status := ExitStatus{StartedAt: time.Now().UTC()}
	initStart, _, err := ProcStat(initPid)
	if err != nil {
		unix.Kill(initPid, unix.SIGKILL)
		m.reap(initPid)
		m.runcCmd("delete", "--force", m.ID)
		return m.fail(errors.New("container init: " + err.Error()))
	}
	rec.InitPid, rec.InitStart, rec.StartedAt = initPid, initStart, status.StartedAt
	if err := WriteRecord(m.path(RecordFile), rec, false); err != nil {
		logf("record start: ", err.Error()) // the container runs: keep it
	}
	m.report(Report{Pid: initPid})

	var copiers sync.WaitGroup
	var logFailed atomic.Bool
	for _, s := range []struct {
		r    *os.File
		name string
	}{{outR, "stdout"}, {errR, "stderr"}} {
		copiers.Go(func() {
			copyLines(s.r, func(line []byte, partial bool) {
				// Lines that cannot be written (disk full) are dropped:
				// the container must not block on its stdout. Say so
				// once, not once per line.
				if err := lw.writeLine(s.name, line, partial); err != nil && logFailed.CompareAndSwap(false, true) {
					logf("log: ", err.Error(), " (dropping lines that cannot be written)")
				}
			})
		})
	}

	ws, reaped := m.reap(initPid)
	status.ExitedAt = time.Now().UTC()
	switch {
	case !reaped:
		status.Code = -1
	case ws.Signaled():
		status.Signal = int(ws.Signal())
		status.Code = 128 + status.Signal
	default:
		status.Code = ws.ExitStatus()
	}
	if n, ok := OOMKillCount(m.Cgroup); ok && n > oomBefore {
		status.OOMKilled = true
	}

	// The pid namespace died with its init, and with it every writer of the
	// pipes: the copiers reach EOF. Bound the wait all the same.
	drained := make(chan struct{})
	go func() { copiers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(2 * time.Second):
		outR.Close()
		errR.Close()
		<-drained
	}

	if out, err := m.runcCmd("delete", m.ID); err != nil {
		logf("runc delete: ", err.Error(), ": ", string(out))
		m.runcCmd("delete", "--force", m.ID)
	}
	if err := WriteRecord(m.path(ExitFile), status, true); err != nil {
		logf("record exit: ", err.Error())
		return 1
	}
	return 0
}

// closeInherited closes the descriptors the monitor inherited by mistake
// (those of ternd's own parent, say), except stdio and keep: the monitor
// lives as long as its container, and an inherited pipe it held open would
// keep its reader waiting for EOF as long. Inherited descriptors are those
// without close-on-exec; Go opens all of its own with it.
func closeInherited(keep int) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 || fd == keep {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			unix.Close(fd)
		}
	}
}

// create runs the container - `runc run --detach`, one runc process where
// create and start took two (~15 ms less to start an app) - with its stdio on
// pipes, and returns their read ends and the pid of the container's init. As a
// child subreaper the monitor inherits the init when runc exits; an init that
// has already exited stays a zombie until reap, so its /proc entry is there.
func (m *monitor) create() (stdout, stderr *os.File, pid int, err error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, 0, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, 0, err
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, nil, 0, err
	}
	defer devNull.Close()
	pidFile := m.path(initPidFile)
	cmd := m.runcCommand("run", "--detach", "--bundle", m.Bundle, "--pid-file", pidFile, m.ID)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devNull, outW, errW
	err = cmd.Run()
	outW.Close() // the container holds its own copies
	errW.Close()
	if err != nil {
		// runc prints its error on the stderr it would have given the
		// container; nothing else wrote there. A leftover runc init could
		// hold the pipe open: do not wait for EOF long.
		errR.SetReadDeadline(time.Now().Add(time.Second))
		msg, _ := io.ReadAll(io.LimitReader(errR, 4096))
		outR.Close()
		errR.Close()
		m.runcCmd("delete", "--force", m.ID) // whatever runc left (it cleans up after itself, normally)
		return nil, nil, 0, errors.New("runc run: " + err.Error() + ": " + string(bytes.TrimSpace(msg)))
	}
	b, err := os.ReadFile(pidFile)
	if err == nil {
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if err != nil {
		outR.Close()
		errR.Close()
		m.runcCmd("delete", "--force", m.ID)
		return nil, nil, 0, errors.New("runc run: pid file: " + err.Error())
	}
	return outR, errR, pid, nil
}

// reap waits for the container's init, reaping any other orphan on the way.
// reaped is false if the init turned out not to be our child (it was then
// waited for, but its status is unknown).
func (m *monitor) reap(pid int) (ws unix.WaitStatus, reaped bool) {
	for {
		wpid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			logf("wait for init ", strconv.Itoa(pid), ": ", err.Error())
			for unix.Kill(pid, 0) == nil {
				time.Sleep(100 * time.Millisecond)
			}
			return ws, false
		case wpid == pid:
			return ws, true
		}
	}
}

// runcCommand prepares a runc command. runc gets only PATH from the
// monitor's environment, not its GOMAXPROCS and GOGC settings.
func (m *monitor) runcCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(m.Runc, append([]string{"--root", m.RuncRoot, "--log", m.path(RuncLogFile), "--log-format", "json"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	return cmd
}

// runcCmd runs a short runc command and returns its combined output.
func (m *monitor) runcCmd(args ...string) ([]byte, error) {
	out, err := m.runcCommand(args...).CombinedOutput()
	return bytes.TrimSpace(out), err
}

// fail records why the container could not run, tells ternd, and returns
// the monitor's exit code.
func (m *monitor) fail(err error) int {
	logf(err.Error())
	if werr := WriteRecord(m.path(ExitFile), ExitStatus{Code: -1, Error: err.Error(), ExitedAt: time.Now().UTC()}, true); werr != nil {
		logf("record failure: ", werr.Error())
	}
	m.report(Report{Error: err.Error()})
	return 1
}

func (m *monitor) report(msg Report) {
	if m.sync == nil {
		return
	}
	m.sync.Write(append(msg.AppendJSON(nil), '\n')) // ternd may be gone: nobody to tell
	m.sync.Close()
	m.sync = nil
}

func (m *monitor) path(name string) string { return filepath.Join(m.StateDir, name) }
