// Package runtime runs containers under runc, each supervised by its own
// tern-monitor process so that containers outlive ternd: ternd restarts,
// finds them with List, and follows them with State and Wait.
//
// It knows nothing of app packages: the agent maps an app manifest onto a
// Spec, and Generate turns a Spec into a runtime-spec config that isolates
// the container by default.
//
// Start spawns the monitor (package monitor, binary cmd/tern-monitor) in a
// session of its own. The monitor is a child subreaper: it runs `runc run
// --detach`, becomes the parent of the container's init, holds its
// stdout and stderr, and on exit records exit.json in the container's state
// directory (Config.StateDir/<id>/) before it exits itself. This package
// only reads what monitors record, and judges liveness by pid, process
// start time and boot id, so a ternd that restarted (or a device that
// rebooted) sees running containers as running and dead ones as stopped.
package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/runtime/monitor"
)

// Errors a caller acts on; test them with errors.Is.
var (
	// ErrNotFound means no container has this id.
	ErrNotFound = errors.New("container not found")
	// ErrForbiddenCapability means a Spec asks for one of
	// ForbiddenCapabilities.
	ErrForbiddenCapability = errors.New("forbidden capability")
	// ErrAlreadyRunning means the container runs, and the operation (Start,
	// Remove) needs it stopped.
	ErrAlreadyRunning = errors.New("container is running")
	// ErrNotRunning means the container is stopped, and the operation
	// (Kill, Exec) needs it running.
	ErrNotRunning = errors.New("container is not running")
)

// Status is the life stage of a container.
type Status string

const (
	// StatusStarting means the monitor runs but the container's process
	// does not yet.
	StatusStarting Status = "starting"
	// StatusRunning means the container's init runs (or has just exited
	// and its monitor is recording the exit).
	StatusRunning Status = "running"
	// StatusStopped means the container has exited; State.Exit says how.
	StatusStopped Status = "stopped"
)

// ExitStatus is how a container ended (recorded by its monitor in
// exit.json; see monitor.ExitStatus for what holds after a crash).
type ExitStatus = monitor.ExitStatus

// LogConfig says where a container's stdout and stderr go: timestamped
// JSON lines in size-bounded rotating files (see monitor.LogConfig).
type LogConfig = monitor.LogConfig

// State is what is known of a container.
type State struct {
	ID         string
	Status     Status
	Pid        int // the container's init in the host's pid namespace, 0 if unknown
	MonitorPid int // 0 if unknown
	Bundle     string
	StartedAt  time.Time
	Exit       *ExitStatus // set when Status is StatusStopped
}

// Config locates runc, the monitor and the state of a Runtime.
type Config struct {
	// StateDir holds one directory per container (required). Keep it on
	// persistent storage: exit statuses survive a reboot.
	StateDir string
	// RuncPath is the runc binary; "" looks up "runc" in PATH.
	RuncPath string
	// RuncRoot is runc's --root; "" is /run/tern/runc. On a tmpfs, a reboot
	// empties it; the Runtime copes with either.
	RuncRoot string
	// MonitorPath is the tern-monitor binary; "" looks for it beside the
	// running executable, then in PATH.
	MonitorPath string
}

// Runtime starts and follows containers. Its methods are safe for
// concurrent use; several Runtimes (a ternd and its successor) may share a
// Config.
type Runtime struct {
	runc, runcRoot, stateDir, monitor string
	swap                              bool // bound swap by the memory limit (see swapLimitable)

	mu    sync.Mutex
	locks map[string]*idLock // serialize Start and Remove of one id
}

type idLock struct {
	sync.Mutex
	users int
}

// lock serializes Start and Remove of one container; others proceed.
func (r *Runtime) lock(id string) (unlock func()) {
	r.mu.Lock()
	l := r.locks[id]
	if l == nil {
		l = &idLock{}
		r.locks[id] = l
	}
	l.users++
	r.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		r.mu.Lock()
		if l.users--; l.users == 0 {
			delete(r.locks, id)
		}
		r.mu.Unlock()
	}
}

// New checks cfg and creates the state and runc directories.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("runtime: no state directory")
	}
	r := &Runtime{runc: cfg.RuncPath, runcRoot: cfg.RuncRoot, stateDir: cfg.StateDir, monitor: cfg.MonitorPath, locks: map[string]*idLock{}}
	var err error
	if r.runc == "" {
		r.runc = "runc"
	}
	if r.runc, err = exec.LookPath(r.runc); err != nil {
		return nil, fmt.Errorf("runtime: runc: %w", err)
	}
	if r.monitor == "" {
		r.monitor = "tern-monitor"
		if self, err := os.Executable(); err == nil {
			if p := filepath.Join(filepath.Dir(self), "tern-monitor"); fileExists(p) {
				r.monitor = p
			}
		}
	}
	if r.monitor, err = exec.LookPath(r.monitor); err != nil {
		return nil, fmt.Errorf("runtime: monitor: %w", err)
	}
	if r.runcRoot == "" {
		r.runcRoot = "/run/tern/runc"
	}
	for _, d := range []string{r.stateDir, r.runcRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
	}
	r.swap = swapLimitable()
	return r, nil
}

// inspection is a container's records and which of its processes live.
type inspection struct {
	rec                     monitor.Record
	hasRec                  bool
	exit                    *ExitStatus
	monitorAlive, initAlive bool
}

// inspect reads a container's state directory. It only reads: what it
// concludes from dead processes (see State) is never written back, so that
// an inspection racing the monitor cannot lose its record.
func (r *Runtime) inspect(id string) (inspection, error) {
	var in inspection
	if err := validID(id); err != nil {
		return in, err
	}
	dir := r.dir(id)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return in, fmt.Errorf("%s: %w", id, ErrNotFound)
	} else if err != nil {
		return in, err
	}
	// An unreadable monitor.json is one cut by power loss: as good as absent.
	var err error
	in.hasRec, err = readJSON(filepath.Join(dir, monitor.RecordFile), &in.rec)
	if errors.Is(err, errUnreadable) {
		in.hasRec, in.rec = false, monitor.Record{}
	} else if err != nil {
		return in, fmt.Errorf("%s: %w", id, err)
	}
	if in.hasRec && in.rec.BootID == monitor.BootID() {
		in.monitorAlive = alive(in.rec.MonitorPid, in.rec.MonitorStart)
		in.initAlive = alive(in.rec.InitPid, in.rec.InitStart)
	}
	// Read the exit status after judging the processes: a monitor found
	// dead has written exit.json, if it ever will, before it died.
	var exit ExitStatus
	ok, err := readJSON(filepath.Join(dir, monitor.ExitFile), &exit)
	if errors.Is(err, errUnreadable) {
		// Fsynced, so only a damaged file system gets here: the status is
		// lost, and the container must still be removable.
		exit, ok = ExitStatus{Code: -1, Lost: true, Error: err.Error()}, true
	} else if err != nil {
		return in, fmt.Errorf("%s: %w", id, err)
	}
	if ok {
		in.exit = &exit
	}
	return in, nil
}

func (in inspection) state(id string) State {
	st := State{ID: id, MonitorPid: in.rec.MonitorPid, Pid: in.rec.InitPid, Bundle: in.rec.Bundle, StartedAt: in.rec.StartedAt}
	switch {
	case in.exit != nil:
		st.Status, st.Exit = StatusStopped, in.exit
	case in.initAlive:
		st.Status = StatusRunning
	case in.monitorAlive && in.rec.InitPid == 0:
		st.Status = StatusStarting
	case in.monitorAlive:
		st.Status = StatusRunning // exited; the monitor is recording it
	default:
		// The monitor died without recording an exit (killed, power
		// loss, reboot), and the container's init is gone too.
		st.Status = StatusStopped
		st.Exit = &ExitStatus{Code: -1, Lost: true, StartedAt: in.rec.StartedAt}
	}
	return st
}

// State reports a container's status. A container whose monitor and init
// are gone (power loss, a reboot, a killed monitor) is stopped, with a Lost
// exit status if none was recorded.
func (r *Runtime) State(ctx context.Context, id string) (State, error) {
	in, err := r.inspect(id)
	if err != nil {
		return State{}, err
	}
	return in.state(id), nil
}

// List reports every container in the state directory, for a ternd that
// restarted and adopts what its predecessor started.
func (r *Runtime) List(ctx context.Context) ([]State, error) {
	entries, err := os.ReadDir(r.stateDir)
	if err != nil {
		return nil, err
	}
	var out []State
	for _, e := range entries {
		if !e.IsDir() || validID(e.Name()) != nil {
			continue
		}
		st, err := r.State(ctx, e.Name())
		if errors.Is(err, ErrNotFound) { // removed meanwhile
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Remove deletes a stopped container: runc's state (if any is left) and
// the state directory, exit status included.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	defer r.lock(id)()
	return r.remove(ctx, id)
}

func (r *Runtime) remove(ctx context.Context, id string) error {
	in, err := r.inspect(id)
	if err != nil {
		return err
	}
	if st := in.state(id); st.Status != StatusStopped || in.initAlive {
		return fmt.Errorf("remove %s: %w", id, ErrAlreadyRunning)
	}
	// The monitor deletes runc's state when it records the exit; it is
	// left over only when the monitor died. Its processes are gone (the
	// init is not alive, and the pid namespace died with it) - or, for a
	// monitor that died between runc run and recording the init, still
	// running, which delete --force ends: if runc cannot make sense of its
	// state (a reboot, a lost cgroup), the state is only files.
	if runcState := filepath.Join(r.runcRoot, id); fileExists(runcState) {
		if _, err := r.runcOutput(ctx, "delete", "--force", id); err != nil && fileExists(runcState) {
			if err := os.RemoveAll(runcState); err != nil {
				return fmt.Errorf("remove %s: runc state: %w", id, err)
			}
		}
	}
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

func (r *Runtime) runcOutput(ctx context.Context, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, r.runc, append([]string{"--root", r.runcRoot}, args...)...).CombinedOutput()
}

func (r *Runtime) dir(id string) string { return filepath.Join(r.stateDir, id) }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// errUnreadable marks a record that exists but does not parse.
var errUnreadable = errors.New("unreadable record")

// readJSON reads a record; ok is false when it does not exist.
func readJSON(path string, v any) (ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s: %w: %v", filepath.Base(path), errUnreadable, err)
	}
	return true, nil
}
