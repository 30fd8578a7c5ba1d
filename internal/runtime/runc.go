package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tern-iot/tern/internal/runtime/monitor"
	"golang.org/x/sys/unix"
)

// Start runs a container described by s. It writes the generated config to
// bundleDir/config.json (write to a temporary file, rename), spawns a
// tern-monitor in its own session to run the container, and returns once
// the container's process runs, or with runc's error if it could not start.
// The leftovers of a stopped container with the same id are removed first.
// If ctx ends first Start returns its error, but the container may still
// come up: Stop or Remove it.
func (r *Runtime) Start(ctx context.Context, s Spec, bundleDir string, log LogConfig) (State, error) {
	id := s.ID
	if err := validID(id); err != nil {
		return State{}, err
	}
	defer r.lock(id)()
	switch err := r.remove(ctx, id); {
	case errors.Is(err, ErrAlreadyRunning):
		return State{}, fmt.Errorf("start %s: %w", id, ErrAlreadyRunning)
	case err != nil && !errors.Is(err, ErrNotFound):
		return State{}, fmt.Errorf("start %s: %w", id, err)
	}
	cfg, err := Generate(s)
	if err != nil {
		return State{}, fmt.Errorf("start %s: %w", id, err)
	}
	if r.swap && cfg.Linux.Resources.Memory != nil {
		cfg.Linux.Resources.Memory.Swap = cfg.Linux.Resources.Memory.Limit
	}
	b, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return State{}, err
	}
	// config.json is derived, and rewritten by every Start: it needs to be
	// whole when runc reads it, not to survive power loss.
	if err := monitor.WriteFileAtomic(filepath.Join(bundleDir, "config.json"), b, 0o600, false); err != nil {
		return State{}, fmt.Errorf("start %s: write config: %w", id, err)
	}
	dir := r.dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return State{}, fmt.Errorf("start %s: %w", id, err)
	}
	if log.Dir == "" {
		log.Dir = filepath.Join(dir, "log")
	}
	pid, err := r.spawnMonitor(ctx, id, bundleDir, cfg.Linux.CgroupsPath, log)
	if err != nil {
		return State{}, fmt.Errorf("start %s: %w", id, err)
	}
	st, err := r.State(ctx, id)
	if err == nil && st.Pid != pid {
		err = fmt.Errorf("start %s: monitor reported pid %d, recorded %d", id, pid, st.Pid)
	}
	return st, err
}

// spawnMonitor starts tern-monitor for one container and waits for its
// report on a pipe: the pid of the container's init, or an error.
func (r *Runtime) spawnMonitor(ctx context.Context, id, bundle, cgroup string, log LogConfig) (int, error) {
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer syncR.Close()
	monLog, err := os.OpenFile(filepath.Join(r.dir(id), monitor.LogFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		syncW.Close()
		return 0, err
	}
	defer monLog.Close()
	cfg := monitor.Config{Runc: r.runc, RuncRoot: r.runcRoot, ID: id, Bundle: bundle, StateDir: r.dir(id), Cgroup: cgroup, Log: log}
	cmd := exec.Command(r.monitor, cfg.Args(3)...) // ExtraFiles[0] is descriptor 3
	cmd.Stdout, cmd.Stderr = monLog, monLog
	cmd.ExtraFiles = []*os.File{syncW}
	// A session of its own: no signal aimed at ternd's process group or
	// terminal reaches the monitor. One P and a low GC target keep it small.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = []string{"PATH=" + DefaultPath, "GOMAXPROCS=1", "GOGC=20"}
	err = cmd.Start()
	syncW.Close()
	if err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	// ternd reaps the monitor when it exits (reap.go); a successor ternd does
	// not need to (the monitor is then init's child) and follows it by pidfd.
	pid := cmd.Process.Pid
	cmd.Process.Release()
	reapWhenExited(pid)

	stop := context.AfterFunc(ctx, func() { syncR.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(syncR).ReadBytes('\n')
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	var msg monitor.Report
	if err != nil || json.Unmarshal(line, &msg) != nil {
		b, _ := os.ReadFile(filepath.Join(r.dir(id), monitor.LogFile))
		return 0, fmt.Errorf("monitor exited without a report: %s", strings.TrimSpace(string(b)))
	}
	if msg.Error != "" {
		return 0, errors.New(msg.Error)
	}
	return msg.Pid, nil
}

// Wait blocks until the container has exited and returns how. It works as
// well for containers started by an earlier ternd: it waits on the
// monitor's pid through a pidfd (or on the init, if the monitor died), then
// reads the exit status the monitor recorded.
func (r *Runtime) Wait(ctx context.Context, id string) (ExitStatus, error) {
	for {
		in, err := r.inspect(id)
		if err != nil {
			return ExitStatus{}, err
		}
		st := in.state(id)
		switch {
		case st.Status == StatusStopped:
			return *st.Exit, nil
		case in.monitorAlive:
			err = waitGone(ctx, in.rec.MonitorPid, in.rec.MonitorStart)
		default:
			err = waitGone(ctx, in.rec.InitPid, in.rec.InitStart)
		}
		if err != nil {
			return ExitStatus{}, fmt.Errorf("wait %s: %w", id, err)
		}
	}
}

// Stop asks the container to stop with SIGTERM, waits up to grace, then
// kills it with SIGKILL, and returns its exit status. Only SIGKILL reaches
// an init that has no handler for SIGTERM: such a container takes grace to
// stop.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) (ExitStatus, error) {
	if err := r.Kill(ctx, id, unix.SIGTERM); err != nil && !errors.Is(err, ErrNotRunning) {
		return ExitStatus{}, fmt.Errorf("stop %s: %w", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, grace)
	es, err := r.Wait(wctx, id)
	cancel()
	if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return es, err
	}
	if err := r.Kill(ctx, id, unix.SIGKILL); err != nil && !errors.Is(err, ErrNotRunning) {
		return ExitStatus{}, fmt.Errorf("stop %s: %w", id, err)
	}
	return r.Wait(ctx, id)
}

// Kill sends sig to the container's init. Killing the init ends the
// container: the kernel kills the rest of its pid namespace.
func (r *Runtime) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	for {
		in, err := r.inspect(id)
		if err != nil {
			return err
		}
		if in.monitorAlive && in.rec.InitPid == 0 { // starting: wait for the pid
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
				continue
			}
		}
		if !in.initAlive || in.exit != nil {
			return fmt.Errorf("kill %s: %w", id, ErrNotRunning)
		}
		sent, err := signalProcess(in.rec.InitPid, in.rec.InitStart, sig)
		if err != nil {
			return fmt.Errorf("kill %s: %w", id, err)
		}
		if !sent {
			return fmt.Errorf("kill %s: %w", id, ErrNotRunning)
		}
		return nil
	}
}

// Exec runs args in the running container (runc exec: same namespaces,
// cgroup, user, capabilities and seccomp filter as the container's process)
// and returns its exit code, 128+signal if it was killed. When ctx ends, the
// process is killed. It serves exec health checks. A failure of runc itself
// also shows as a non-zero code, with runc's message on stderr.
func (r *Runtime) Exec(ctx context.Context, id string, args []string, stdout, stderr io.Writer) (int, error) {
	if len(args) == 0 {
		return -1, errors.New("exec: no arguments")
	}
	st, err := r.State(ctx, id)
	if err != nil {
		return -1, err
	}
	if st.Status != StatusRunning {
		return -1, fmt.Errorf("exec %s: %w", id, ErrNotRunning)
	}
	pidFile, err := os.CreateTemp(r.dir(id), "exec-*.pid")
	if err != nil {
		return -1, err
	}
	pidFile.Close()
	defer os.Remove(pidFile.Name())
	cmd := exec.CommandContext(ctx, r.runc,
		append([]string{"--root", r.runcRoot, "exec", "--pid-file", pidFile.Name(), id}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Killing runc would leave the process running in the container: kill
	// the process (its pid cannot be reused meanwhile: runc has not reaped
	// it), and runc exits with its status.
	cmd.Cancel = func() error {
		if b, err := os.ReadFile(pidFile.Name()); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return unix.Kill(pid, unix.SIGKILL)
			}
		}
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), ctx.Err()
		}
		return exitErr.ExitCode(), ctx.Err()
	default:
		return -1, fmt.Errorf("exec %s: %w", id, err)
	}
}
