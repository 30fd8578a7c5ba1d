package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/trust"
)

// requireTool skips a test when a prerequisite is missing, except under CI=true,
// where a missing prerequisite fails the run.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("tests must run as root under CI")
		}
		t.Skip("needs root")
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (make setup)", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

var (
	buildOnce  sync.Once
	binDir     string
	buildError error
)

// binaries builds tern-monitor and the hello example once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildError = os.MkdirTemp("", "tern-agent-test-bin-")
		if buildError != nil {
			return
		}
		for _, b := range [][2]string{
			{"tern-monitor", "github.com/tern-iot/tern/cmd/tern-monitor"},
			{"hello", "github.com/tern-iot/tern/examples/hello"},
		} {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version=1.0.0", "-o", filepath.Join(binDir, b[0]), b[1])
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildError = fmt.Errorf("build %s: %v\n%s", b[0], err, out)
				return
			}
		}
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return binDir
}

// testEnv is one device: a data dir, a trusted key, and an agent.
type testEnv struct {
	t      *testing.T
	dir    string
	key    trust.PrivateKey
	cfg    Config
	agent  *Agent
	ctx    context.Context
	cancel context.CancelFunc
	onNew  func(*Agent) // if set, called on each new agent before it boots
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	requireTool(t, "runc")
	bins := binaries(t)
	dir := t.TempDir()
	key, err := trust.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, dir: dir, key: key}
	e.cfg = Config{
		DataDir: filepath.Join(dir, "data"), Keys: []trust.PublicKey{key.Public()},
		RuncRoot: filepath.Join(dir, "runc"), MonitorPath: filepath.Join(bins, "tern-monitor"),
		CgroupParent: "/tern-test-" + filepath.Base(filepath.Dir(dir)),
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	e.ctx, e.cancel = context.WithTimeout(context.Background(), 3*time.Minute)
	e.start()
	t.Cleanup(func() {
		e.cleanup()
		e.cancel()
	})
	return e
}

// start opens the agent (again) on the env's data dir and boots it.
func (e *testEnv) start() {
	e.t.Helper()
	a, err := New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	a.backoffBase = 50 * time.Millisecond
	if e.onNew != nil {
		e.onNew(a)
	}
	if err := a.Boot(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.agent = a
}

// cleanup removes every app (stopping containers) so no container outlives a test.
func (e *testEnv) cleanup() {
	if e.agent == nil {
		return
	}
	if list, err := e.agent.List(context.Background()); err == nil {
		for _, s := range list {
			e.agent.Remove(context.Background(), s.Name)
		}
	}
	e.agent.Close()
	e.agent = nil
	os.Remove(filepath.Join("/sys/fs/cgroup/memory", e.cfg.CgroupParent))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// busyboxRoot makes a rootfs with Debian's static busybox and its applets.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		requireTool(t, "busybox")
		bb, _ = exec.LookPath("busybox")
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "sleep", "echo", "cat", "id", "trap", "ls", "date", "wget", "touch"} {
		os.Symlink("busybox", filepath.Join(root, "bin", applet))
	}
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nappuser:x:1234:2345::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte("root:x:0:\napps:x:2345:\n"), 0o644)
	return root
}

// helloRoot makes a rootfs holding the example app.
func helloRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	data, err := os.ReadFile(filepath.Join(binaries(t), "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "hello"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// pkg builds a package from rootfs and a tern.yaml text, signed by key.
func pkg(t *testing.T, key trust.PrivateKey, rootfs, manifestYAML string) []byte {
	t.Helper()
	m, err := app.ParseYAML([]byte(manifestYAML))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := app.Build(context.Background(), app.BuildOptions{
		Source: app.Source{Kind: app.SourceRootFS, Path: rootfs}, Manifest: m, Keys: []trust.PrivateKey{key},
		TempDir: t.TempDir(),
	}, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// resignWith rewrites a package's manifest.json through edit, re-signed by key:
// the way to make packages that are validly signed but ask for what policy forbids.
func resignWith(t *testing.T, pkgBytes []byte, key trust.PrivateKey, edit func(map[string]any)) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(pkgBytes))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	var manifest []byte
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		switch hdr.Name {
		case app.EntryManifest:
			var m map[string]any
			json.Unmarshal(data, &m)
			edit(m)
			data, _ = json.Marshal(m)
			manifest = data
		case app.EntrySig:
			env, err := trust.Sign(app.PayloadType, manifest, key)
			if err != nil {
				t.Fatal(err)
			}
			data, _ = env.Marshal()
		}
		hdr.Size = int64(len(data))
		tw.WriteHeader(hdr)
		tw.Write(data)
	}
	tw.Close()
	return out.Bytes()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *testEnv) status(name string) AppStatus {
	e.t.Helper()
	st, err := e.agent.Inspect(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *testEnv) install(p []byte) AppStatus {
	e.t.Helper()
	list, err := e.agent.Install(e.ctx, bytes.NewReader(p))
	if err != nil {
		e.t.Fatal(err)
	}
	return list[0]
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

type netConn = net.Conn

func itoa(n int) string { return strconv.Itoa(n) }
