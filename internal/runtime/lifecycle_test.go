package runtime

import (
	"bytes"
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
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/runtime/monitor"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a short-lived ternd: it starts
// the container described in the environment and exits, leaving the
// container to a later process.
const helperEnv = "TERN_RUNTIME_TEST_HELPER"

type helperRequest struct {
	Config Config
	Spec   Spec
	Bundle string
	Log    LogConfig
}

func runHelper() int {
	var req helperRequest
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rt, err := New(req.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st, err := rt.Start(context.Background(), req.Spec, req.Bundle, req.Log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(st)
	return 0
}

func TestContainerOutlivesTernd(t *testing.T) {
	_, cfg := newRuntime(t)
	s := baseSpec(t, "/bin/sh", "-c", `trap 'echo stopping; exit 0' TERM; echo up; sleep 1000 & wait`)
	logDir := t.TempDir()
	req, _ := json.Marshal(helperRequest{Config: cfg, Spec: s, Bundle: t.TempDir(), Log: LogConfig{Dir: logDir, App: "a", Version: "1"}})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+string(req))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("first ternd: %v: %s", err, out)
	}
	var first State
	if err := json.Unmarshal(out, &first); err != nil || first.Status != StatusRunning {
		t.Fatalf("first ternd started %s: %+v", out, err)
	}

	// The first ternd is gone; its container and monitor are not.
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Stop(context.Background(), s.ID, 0); rt.Remove(context.Background(), s.ID) })
	list, err := rt.List(testContext(t))
	if err != nil || len(list) != 1 || list[0].ID != s.ID || list[0].Status != StatusRunning || list[0].Pid != first.Pid {
		t.Fatalf("List after restart: %+v, %v; want %s running as %d", list, err, s.ID, first.Pid)
	}
	if ppid := parentOf(t, first.MonitorPid); ppid == os.Getpid() || ppid == cmd.Process.Pid {
		t.Fatalf("monitor %d is still the child of a ternd (%d)", first.MonitorPid, ppid)
	}
	eventually(t, "the container's first line", func() bool {
		return len(readLogs(t, logDir)) > 0
	})
	var hostname bytes.Buffer
	if code, err := rt.Exec(testContext(t), s.ID, []string{"hostname"}, &hostname, nil); err != nil || code != 0 || hostname.String() != s.ID+"\n" {
		t.Errorf("Exec in the adopted container: %d, %v, %q", code, err, &hostname)
	}

	waited := make(chan ExitStatus, 1)
	go func() {
		es, err := rt.Wait(testContext(t), s.ID)
		if err != nil {
			t.Error(err)
		}
		waited <- es
	}()
	es, err := rt.Stop(testContext(t), s.ID, 20*time.Second)
	if err != nil || es.Code != 0 || es.Signal != 0 {
		t.Fatalf("Stop: %+v, %v; want a clean exit on SIGTERM", es, err)
	}
	if w := <-waited; w != es {
		t.Errorf("Wait returned %+v, Stop %+v", w, es)
	}
	var lines []string
	for _, r := range readLogs(t, logDir) {
		lines = append(lines, r.Line)
	}
	if strings.Join(lines, ",") != "up,stopping" {
		t.Errorf("log lines %q, want up, stopping", lines)
	}
}

func parentOf(t *testing.T, pid int) int {
	st, err := procStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	var ppid int
	fmt.Sscan(st["PPid"], &ppid)
	return ppid
}

func TestMonitorRecordsExitCode(t *testing.T) {
	for _, tc := range []struct {
		name      string
		script    string
		kill      bool
		code, sig int
	}{
		{"success", "exit 0", false, 0, 0},
		{"failure", "exit 7", false, 7, 0},
		{"killed", "sleep 1000", true, 137, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, cfg := newRuntime(t)
			s := baseSpec(t, "/bin/sh", "-c", tc.script)
			st := start(t, rt, s, LogConfig{})
			if tc.kill {
				if err := rt.Kill(testContext(t), s.ID, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			es, err := rt.Wait(testContext(t), s.ID)
			if err != nil || es.Code != tc.code || es.Signal != tc.sig || es.OOMKilled || es.Lost {
				t.Fatalf("exit %+v, %v; want code %d signal %d", es, err, tc.code, tc.sig)
			}
			if es.StartedAt.IsZero() || es.ExitedAt.Before(es.StartedAt) || !es.StartedAt.Equal(st.StartedAt) {
				t.Errorf("times: started %v (State said %v), exited %v", es.StartedAt, st.StartedAt, es.ExitedAt)
			}
			// The record outlives the monitor and the Runtime.
			rt2, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := rt2.State(testContext(t), s.ID)
			if err != nil || got.Status != StatusStopped || *got.Exit != es {
				t.Errorf("State from a new Runtime: %+v, %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(cfg.RuncRoot, s.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("runc state left behind: %v", err)
			}
		})
	}
}

func TestStopEscalatesToSIGKILLAfterGrace(t *testing.T) {
	rt, _ := newRuntime(t)
	logDir := t.TempDir()
	s := baseSpec(t, "/bin/sh", "-c", `trap 'echo ignoring TERM' TERM; echo up; while true; do sleep 0.05; done`)
	start(t, rt, s, LogConfig{Dir: logDir})
	eventually(t, "the trap to be set", func() bool { return len(readLogs(t, logDir)) > 0 })
	const grace = 300 * time.Millisecond
	begin := time.Now()
	es, err := rt.Stop(testContext(t), s.ID, grace)
	if err != nil || es.Signal != int(syscall.SIGKILL) {
		t.Fatalf("Stop: %+v, %v; want killed by SIGKILL", es, err)
	}
	if d := time.Since(begin); d < grace {
		t.Errorf("SIGKILL after %v, before the grace period of %v", d, grace)
	}
	if logs := readLogs(t, logDir); len(logs) < 2 || logs[1].Line != "ignoring TERM" {
		t.Errorf("the container did not see SIGTERM first: %+v", logs)
	}
}

func TestStopReturnsGracefulExit(t *testing.T) {
	rt, _ := newRuntime(t)
	logDir := t.TempDir()
	s := baseSpec(t, "/bin/sh", "-c", `trap 'exit 3' TERM; echo up; sleep 1000 & wait`)
	start(t, rt, s, LogConfig{Dir: logDir})
	eventually(t, "the trap to be set", func() bool { return len(readLogs(t, logDir)) > 0 })
	es, err := rt.Stop(testContext(t), s.ID, time.Minute)
	if err != nil || es.Code != 3 || es.Signal != 0 {
		t.Fatalf("Stop: %+v, %v; want exit code 3", es, err)
	}
}

func TestStartFailureReportsRuncError(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "/no/such/program")
	_, err := rt.Start(testContext(t), s, t.TempDir(), LogConfig{})
	if err == nil || !strings.Contains(err.Error(), "/no/such/program") {
		t.Fatalf("Start: %v; want runc's error naming the program", err)
	}
	st, err := rt.State(testContext(t), s.ID)
	if err != nil || st.Status != StatusStopped || st.Exit.Error == "" {
		t.Errorf("State after a failed start: %+v, %v", st, err)
	}
	if err := rt.Remove(testContext(t), s.ID); err != nil {
		t.Error(err)
	}
	if _, err := rt.State(testContext(t), s.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("State after Remove: %v, want ErrNotFound", err)
	}
}

func TestStartRefusesRunningContainer(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "sleep", "1000")
	start(t, rt, s, LogConfig{})
	if _, err := rt.Start(testContext(t), s, t.TempDir(), LogConfig{}); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Start: %v, want ErrAlreadyRunning", err)
	}
	if err := rt.Remove(testContext(t), s.ID); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("Remove while running: %v, want ErrAlreadyRunning", err)
	}
}

func TestStartReplacesStoppedContainer(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "/bin/sh", "-c", "exit 4")
	start(t, rt, s, LogConfig{})
	if es, err := rt.Wait(testContext(t), s.ID); err != nil || es.Code != 4 {
		t.Fatalf("first run: %+v, %v", es, err)
	}
	s.Args = []string{"sleep", "1000"}
	st := start(t, rt, s, LogConfig{})
	if st.Status != StatusRunning || st.Exit != nil {
		t.Errorf("second run: %+v", st)
	}
}

func TestExecRunsInContainer(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "sleep", "1000")
	s.UID, s.GID = 1000, 1000
	start(t, rt, s, LogConfig{})
	var stdout, stderr bytes.Buffer
	code, err := rt.Exec(testContext(t), s.ID, []string{"/bin/sh", "-c", "id -u; hostname; echo oops >&2; exit 5"}, &stdout, &stderr)
	if err != nil || code != 5 {
		t.Fatalf("Exec: %d, %v; stderr %s", code, err, &stderr)
	}
	if got := stdout.String(); got != "1000\n"+s.ID+"\n" || stderr.String() != "oops\n" {
		t.Errorf("stdout %q, stderr %q", got, &stderr)
	}

	// A health check that hangs is killed when its context ends.
	ctx, cancel := context.WithTimeout(testContext(t), 200*time.Millisecond)
	defer cancel()
	code, err = rt.Exec(ctx, s.ID, []string{"sleep", "1000"}, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || code != 137 {
		t.Errorf("hung Exec: %d, %v; want 137 and the deadline", code, err)
	}
}

func TestKilledMonitorLeavesContainerStoppable(t *testing.T) {
	rt, _ := newRuntime(t)
	s := baseSpec(t, "sleep", "1000")
	st := start(t, rt, s, LogConfig{})
	if err := syscall.Kill(st.MonitorPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(testContext(t), st.MonitorPid, mustStart(t, st.MonitorPid)); err != nil {
		t.Fatal(err)
	}
	if got, err := rt.State(testContext(t), s.ID); err != nil || got.Status != StatusRunning {
		t.Fatalf("State with the monitor dead and the container alive: %+v, %v", got, err)
	}
	es, err := rt.Stop(testContext(t), s.ID, 0)
	if err != nil || !es.Lost {
		t.Fatalf("Stop: %+v, %v; want a lost exit status", es, err)
	}
	if err := rt.Remove(testContext(t), s.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
}

func mustStart(t *testing.T, pid int) uint64 {
	start, _, err := monitor.ProcStat(pid)
	if err != nil {
		t.Skipf("process %d already gone", pid)
	}
	return start
}

// TestStaleRecordsReadAsStopped simulates what power loss and reboots leave:
// state directories whose records name dead processes, or live processes
// of another boot, and runc state that is gone or stale.
func TestStaleRecordsReadAsStopped(t *testing.T) {
	rt, cfg := newRuntime(t)
	self, _, _ := monitor.ProcStat(os.Getpid())
	for _, tc := range []struct {
		name      string
		rec       *monitor.Record
		raw       map[string]string // files written as they are
		staleRunc bool              // runc's state dir is left too, unreadable to runc
	}{
		{name: "monitor never wrote its record"},
		{name: "dead monitor and init", rec: &monitor.Record{MonitorPid: 1 << 22, MonitorStart: 1, BootID: monitor.BootID(), InitPid: 1<<22 - 1, InitStart: 1}, staleRunc: true},
		{name: "pid reused by another process", rec: &monitor.Record{MonitorPid: os.Getpid(), MonitorStart: self + 1, BootID: monitor.BootID(), InitPid: os.Getpid(), InitStart: self + 1}},
		{name: "records from another boot", rec: &monitor.Record{MonitorPid: os.Getpid(), MonitorStart: self, BootID: "another-boot", InitPid: os.Getpid(), InitStart: self}, staleRunc: true},
		{name: "record cut by power loss", raw: map[string]string{monitor.RecordFile: `{"monitor_pid":1`}},
		{name: "damaged exit status", raw: map[string]string{monitor.ExitFile: "\x00\x00"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := newID()
			dir := filepath.Join(cfg.StateDir, id)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if tc.rec != nil {
				if err := monitor.WriteRecord(filepath.Join(dir, monitor.RecordFile), *tc.rec, false); err != nil {
					t.Fatal(err)
				}
			}
			for name, content := range tc.raw {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.staleRunc {
				runcState := filepath.Join(cfg.RuncRoot, id)
				if err := os.MkdirAll(runcState, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(runcState, "state.json"), []byte("{not json"), 0o600); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if _, err := os.Stat(runcState); err == nil {
						t.Error("runc state left after Remove")
					}
				})
			}
			st, err := rt.State(testContext(t), id)
			if err != nil || st.Status != StatusStopped || !st.Exit.Lost {
				t.Fatalf("State: %+v, %v; want stopped, lost", st, err)
			}
			ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
			defer cancel()
			if es, err := rt.Wait(ctx, id); err != nil || !es.Lost {
				t.Errorf("Wait: %+v, %v", es, err)
			}
			if err := rt.Kill(ctx, id, syscall.SIGKILL); !errors.Is(err, ErrNotRunning) {
				t.Errorf("Kill: %v, want ErrNotRunning", err)
			}
			if err := rt.Remove(ctx, id); err != nil {
				t.Errorf("Remove: %v", err)
			}
		})
	}
}

// TestMonitorDropsInheritedDescriptors: a descriptor ternd leaked to the
// monitor (one without close-on-exec, from ternd's own parent) is not held
// for the container's life, nor passed to the container.
func TestMonitorDropsInheritedDescriptors(t *testing.T) {
	rt, _ := newRuntime(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETFD, 0); err != nil { // inheritable
		t.Fatal(err)
	}
	start(t, rt, baseSpec(t, "sleep", "1000"), LogConfig{})
	w.Close()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read %d, %v: want EOF, the monitor or container still holds the pipe", n, err)
	}
}

// TestExitedMonitorsAreReapedWithoutAThreadEach: monitors are reaped when they
// exit (no zombie stays behind), and waiting for them does not hold an OS
// thread per running container.
func TestExitedMonitorsAreReapedWithoutAThreadEach(t *testing.T) {
	rt, _ := newRuntime(t)
	// Threads of this process blocked in waitid (what exec.Cmd.Wait and
	// os.Process.Wait do, for as long as the child lives).
	inWaitid := func() int {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, task := range tasks {
			data, err := os.ReadFile("/proc/self/task/" + task.Name() + "/syscall")
			if err == nil && strings.HasPrefix(string(data), strconv.Itoa(unix.SYS_WAITID)+" ") {
				n++
			}
		}
		return n
	}
	var monitors []int
	var ids []string
	before := inWaitid()
	for range 8 {
		s := baseSpec(t, "/bin/sh", "-c", "sleep 1000")
		st := start(t, rt, s, LogConfig{})
		monitors, ids = append(monitors, st.MonitorPid), append(ids, s.ID)
	}
	if after := inWaitid(); after > before {
		t.Errorf("threads blocked in waitid: %d -> %d with 8 containers running", before, after)
	}
	for _, id := range ids {
		if err := rt.Kill(testContext(t), id, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Wait(testContext(t), id); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range monitors {
		for {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil { // exited and reaped
				break
			}
			if time.Now().After(deadline) {
				// "Z": exited and not reaped; anything else: still running.
				t.Fatalf("monitor %d not gone 10 s after its container exited: %s", pid, data)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
