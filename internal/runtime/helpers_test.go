package runtime

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/runtime/monitor"
)

// testEnv holds what the runc tests share: binaries built once per test
// run and a root file system (busybox and the probe), mounted read-only by
// every container.
type testEnv struct {
	dir     string
	runc    string
	monitor string
	rootfs  string
}

var (
	envOnce  sync.Once
	env      *testEnv
	envErr   error
	envSkip  string
	tempDirs []string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	code := m.Run()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// requireEnv returns the shared environment. Without root, runc, busybox or
// go, a test is skipped, or fails when CI=true.
func requireEnv(t testing.TB) *testEnv {
	t.Helper()
	envOnce.Do(setupEnv)
	if envSkip != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(envSkip)
		}
		t.Skip(envSkip)
	}
	if envErr != nil {
		t.Fatal(envErr)
	}
	return env
}

func setupEnv() {
	if os.Geteuid() != 0 {
		envSkip = "needs root"
		return
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		envSkip = "runc not installed"
		return
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		envSkip = "busybox not installed (apt-get install busybox-static)"
		return
	}
	goBin := filepath.Join(goruntime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			envSkip = "go not found to build tern-monitor"
			return
		}
	}
	dir, err := os.MkdirTemp("", "tern-runtime-test-")
	if err != nil {
		envErr = err
		return
	}
	tempDirs = append(tempDirs, dir)
	e := &testEnv{dir: dir, runc: runc, monitor: filepath.Join(dir, "tern-monitor"), rootfs: filepath.Join(dir, "rootfs")}
	envErr = e.build(goBin, busybox)
	env = e
}

func (e *testEnv) build(goBin, busybox string) error {
	gobuild := func(out, pkg string) error {
		cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}
	if err := gobuild(e.monitor, "github.com/tern-iot/tern/cmd/tern-monitor"); err != nil {
		return err
	}
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "data", "ro", "etc"} {
		if err := os.MkdirAll(filepath.Join(e.rootfs, d), 0o755); err != nil {
			return err
		}
	}
	// runc mounts /tmp with the mode of the image's /tmp, which is 1777 in
	// images as it is on hosts.
	if err := os.Chmod(filepath.Join(e.rootfs, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := gobuild(filepath.Join(e.rootfs, "probe"), "./testdata/probe"); err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.rootfs, "bin", "busybox"), bb, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(e.rootfs, "bin", applet)); err != nil {
			return err
		}
	}
	return nil
}

func newRuntime(t testing.TB) (*Runtime, Config) {
	e := requireEnv(t)
	cfg := Config{StateDir: t.TempDir(), RuncRoot: t.TempDir(), RuncPath: e.runc, MonitorPath: e.monitor}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rt, cfg
}

// newID returns a container id unique across concurrent test runs: the
// cgroup /tern/<id> is shared by the whole host.
func newID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "tt-" + hex.EncodeToString(b)
}

func baseSpec(t testing.TB, args ...string) Spec {
	return Spec{ID: newID(), RootFS: requireEnv(t).rootfs, Args: args, Memory: 256 << 20, Pids: 128}
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// start starts s and makes sure the container is gone when the test ends.
func start(t testing.TB, rt *Runtime, s Spec, log LogConfig) State {
	t.Helper()
	if log.Dir == "" {
		log.Dir = t.TempDir()
	}
	st, err := rt.Start(testContext(t), s, t.TempDir(), log)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rt.Stop(ctx, s.ID, 0)
		if err := rt.Remove(ctx, s.ID); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return st
}

// run runs s to its end and returns its exit status and its stdout and
// stderr lines.
func run(t testing.TB, rt *Runtime, s Spec) (es ExitStatus, stdout, stderr []string) {
	t.Helper()
	logDir := t.TempDir()
	start(t, rt, s, LogConfig{Dir: logDir, App: "test", Version: "1"})
	es, err := rt.Wait(testContext(t), s.ID)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	for _, r := range readLogs(t, logDir) {
		if r.Stream == "stdout" {
			stdout = append(stdout, r.Line)
		} else {
			stderr = append(stderr, r.Line)
		}
	}
	return es, stdout, stderr
}

// output runs a busybox shell script in a container made from s and
// returns its stdout; the script must exit 0.
func output(t testing.TB, rt *Runtime, s Spec, script string) string {
	t.Helper()
	s.Args = []string{"/bin/sh", "-c", script}
	es, stdout, stderr := run(t, rt, s)
	if es.Code != 0 {
		t.Fatalf("script exited %+v\nstdout:\n%s\nstderr:\n%s", es, strings.Join(stdout, "\n"), strings.Join(stderr, "\n"))
	}
	return strings.Join(stdout, "\n")
}

type logRecord struct {
	Time    time.Time `json:"time"`
	App     string    `json:"app"`
	Version string    `json:"version"`
	Stream  string    `json:"stream"`
	Line    string    `json:"line"`
	Partial bool      `json:"partial"`
}

// readLogs reads an app's log files, oldest first.
func readLogs(t testing.TB, dir string) []logRecord {
	t.Helper()
	var files []string
	for i := 100; i >= 1; i-- {
		files = append(files, filepath.Join(dir, monitor.CurrentLog+"."+strconv.Itoa(i)))
	}
	files = append(files, filepath.Join(dir, monitor.CurrentLog))
	var out []logRecord
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r logRecord
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s: %v: %q", f, err, sc.Text())
			}
			out = append(out, r)
		}
	}
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStatus reads fields of /proc/PID/status.
func procStatus(pid int, keys ...string) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, nil
}
