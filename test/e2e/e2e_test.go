// Package e2e runs Tern's programs as a user does: the real tern and ternd binaries,
// real runc, talking over ternd's socket.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var bin string // directory of the built binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tern-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	for _, b := range [][2]string{
		{"tern", "./cmd/tern"}, {"ternd", "./cmd/ternd"}, {"tern-monitor", "./cmd/tern-monitor"}, {"hello", "./examples/hello"},
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version=1.0.0", "-o", filepath.Join(dir, b[0]), b[1])
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b[0], err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRunc(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("e2e tests need root and runc (make setup)")
		}
		t.Skip("needs root and runc")
	}
}

// device is one running ternd with its own data dir and socket.
type device struct {
	t      *testing.T
	dir    string
	socket string
	cmd    *exec.Cmd
	log    *bytes.Buffer
}

func startDevice(t *testing.T, dir string, extra ...string) *device {
	t.Helper()
	d := &device{t: t, dir: dir, socket: filepath.Join(dir, "ternd.sock"), log: &bytes.Buffer{}}
	d.cmd = exec.Command(filepath.Join(bin, "ternd"), "--data", filepath.Join(dir, "data"), "--socket", d.socket,
		"--trust", filepath.Join(dir, "trust"), "--runtime-root", filepath.Join(dir, "runc"),
		"--cgroup-parent", "/tern-e2e-"+filepath.Base(filepath.Dir(dir)))
	d.cmd.Args = append(d.cmd.Args, extra...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(d.socket); err == nil {
			if _, err := d.tern("device", "ps"); err == nil {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ternd did not come up:\n%s", d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops ternd the hard way (SIGKILL): its containers keep running.
func (d *device) kill() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
}

func (d *device) tern(args ...string) (string, error) {
	if len(args) > 0 && args[0] == "device" {
		args = append([]string{"device", "--device", "unix://" + d.socket}, args[1:]...)
	}
	return tern(args...)
}

func tern(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "tern"), args...).CombinedOutput()
	return string(out), err
}

func (d *device) mustTern(args ...string) string {
	d.t.Helper()
	out, err := d.tern(args...)
	if err != nil {
		d.t.Fatalf("tern %s: %v\n%s\nternd log:\n%s", strings.Join(args, " "), err, out, d.log)
	}
	return out
}

type appStatus struct {
	Name, Version, State, Health, Previous, Update string
	Pid, Restarts                                  int
}

func (d *device) ps() map[string]appStatus {
	d.t.Helper()
	var list []appStatus
	if err := json.Unmarshal([]byte(d.mustTern("device", "ps", "--json")), &list); err != nil {
		d.t.Fatal(err)
	}
	m := map[string]appStatus{}
	for _, s := range list {
		m[s.Name] = s
	}
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDeviceVerbsThroughTheCLI(t *testing.T) {
	requireRunc(t)
	dir := t.TempDir()
	// An app developer's steps: a key, a rootfs, a package.
	if out, err := tern("keys", "generate", "--out", filepath.Join(dir, "keys", "release")); err != nil {
		t.Fatal(err, out)
	}
	os.MkdirAll(filepath.Join(dir, "trust"), 0o755)
	pub, _ := os.ReadFile(filepath.Join(dir, "keys", "release.pub"))
	os.WriteFile(filepath.Join(dir, "trust", "release.pub"), pub, 0o644)
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(rootfs, 0o755)
	hello, _ := os.ReadFile(filepath.Join(bin, "hello"))
	os.WriteFile(filepath.Join(rootfs, "hello"), hello, 0o755)
	pkg := filepath.Join(dir, "hello.tern")
	if out, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", "../../examples/hello/tern.yaml",
		"--key", filepath.Join(dir, "keys", "release.key"), "-o", pkg); err != nil {
		t.Fatal(err, out)
	}

	d := startDevice(t, dir)
	t.Cleanup(func() {
		d.tern("device", "remove", "hello")
		d.kill()
	})
	// A tampered package is refused with the reason, and leaves nothing installed.
	tampered := filepath.Join(dir, "tampered.tern")
	data, _ := os.ReadFile(pkg)
	data[len(data)/2] ^= 1
	os.WriteFile(tampered, data, 0o644)
	if out, err := d.tern("device", "install", tampered); err == nil || !strings.Contains(out, "digest mismatch") {
		t.Fatalf("tampered install: %v %s", err, out)
	}
	if len(d.ps()) != 0 {
		t.Fatal("a refused package left an app behind")
	}
	out := d.mustTern("device", "install", pkg)
	if !strings.Contains(out, "installed hello 1.0.0") {
		t.Fatalf("install said %q", out)
	}
	waitFor(t, "hello healthy", func() bool { return d.ps()["hello"].Health == "healthy" })
	if out := d.mustTern("device", "ps"); !strings.Contains(out, "hello") || !strings.Contains(out, "running") {
		t.Fatalf("ps:\n%s", out)
	}
	if out := d.mustTern("device", "inspect", "hello"); !strings.Contains(out, "/hello --listen :8080") {
		t.Fatalf("inspect:\n%s", out)
	}
	if out := d.mustTern("device", "logs", "hello", "--tail", "5"); !strings.Contains(out, "listening on :8080") {
		t.Fatalf("logs:\n%s", out)
	}

	// Installing it again, or an unknown app's verbs, fail with a clear message.
	if out, err := d.tern("device", "install", pkg); err == nil || !strings.Contains(out, "already installed") {
		t.Fatalf("second install: %v %s", err, out)
	}
	if out, err := d.tern("device", "stop", "nosuch"); err == nil || !strings.Contains(out, "not installed") {
		t.Fatalf("stop nosuch: %v %s", err, out)
	}

	// ternd dies hard; the app keeps running and the next ternd adopts it.
	pid := d.ps()["hello"].Pid
	d.kill()
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("hello died with ternd: %v", err)
	}
	d = startDevice(t, dir)
	if st := d.ps()["hello"]; st.State != "running" || st.Pid != pid {
		t.Fatalf("after ternd restart: %+v, want pid %d", st, pid)
	}

	d.mustTern("device", "stop", "hello")
	if st := d.ps()["hello"]; st.State != "stopped" {
		t.Fatalf("after stop: %+v", st)
	}
	d.mustTern("device", "start", "hello")
	waitFor(t, "running after start", func() bool { return d.ps()["hello"].State == "running" })
	old := d.ps()["hello"].Pid
	d.mustTern("device", "restart", "hello")
	if st := d.ps()["hello"]; st.State != "running" || st.Pid == old {
		t.Fatalf("after restart: %+v (old pid %d)", st, old)
	}
	d.mustTern("device", "remove", "hello")
	if _, ok := d.ps()["hello"]; ok {
		t.Fatal("hello still listed after remove")
	}
}
