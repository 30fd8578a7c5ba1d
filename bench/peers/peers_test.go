package peers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestPeersAnswer checks the harness itself: each peer starts the example app from
// the same image, the probe sees it answer, and its monitor is found. It needs
// root and the peer tools, and runs only with TERN_BENCH=1 (make test does not
// install the peers):
//
//	TERN_BENCH=1 go test -v -run TestPeersAnswer ./bench/peers/
func TestPeersAnswer(t *testing.T) {
	if os.Getenv("TERN_BENCH") != "1" {
		t.Skip("TERN_BENCH=1 runs the peers harness test")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if err := Require(); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(rootfs, 0o755)
	hello := filepath.Join(rootfs, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", hello, "../../examples/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	img, err := BuildImage(filepath.Join(dir, "image"), "localhost/tern-bench/hello:test",
		v1.Config{Entrypoint: []string{"/hello"}, Cmd: []string{"--listen", ":8080"}, Env: []string{"GREETING=hi"}}, rootfs)
	if err != nil {
		t.Fatal(err)
	}

	c, err := StartContainerd(ctx, filepath.Join(dir, "containerd"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Import(ctx, img); err != nil {
		t.Fatal(err)
	}
	p, err := NewPodman(filepath.Join(dir, "podman"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Load(ctx, img); err != nil {
		t.Fatal(err)
	}
	p.Args, p.AppPort = []string{"--network", "none"}, 8080
	rc, err := NewRunc(filepath.Join(dir, "runc"), minimalSpec(rootfs), 8080)
	if err != nil {
		t.Fatal(err)
	}
	runners := []Runner{rc, &Ctr{C: c, Image: img, AppPort: 8080}, p, &Process{Binary: hello, Env: []string{"GREETING=hi"}}}
	probe := Probe{Comm: "hello", Want: "hi from hello"}
	res, err := MeasureStart(ctx, runners, probe, 2, 0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		t.Logf("%-16s returned %v, answered %v", r.Name, Median(r.Returned()), Median(r.Answered()))
	}
	for _, r := range runners[1:3] { // runc run -d and a plain process have no monitor
		m, err := MeasureMonitors(ctx, r, "mon", 2, probe, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%-16s monitor %s: %+v", r.Name(), m.Comm, m.Mean())
	}
}

// minimalSpec is a runc config for the app: new namespaces (network included), the
// root file system read-only.
func minimalSpec(rootfs string) specs.Spec {
	return specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: rootfs, Readonly: true},
		Process: &specs.Process{Args: []string{"/hello", "--listen", ":8080"}, Env: []string{"GREETING=hi"}, Cwd: "/"},
		Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}}},
		Linux: &specs.Linux{CgroupsPath: "/tern-bench/peers-test",
			Namespaces: []specs.LinuxNamespace{{Type: "pid"}, {Type: "network"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}}},
	}
}

func TestNewPidWraps(t *testing.T) {
	for _, c := range []struct {
		pid, before, now int
		want             bool
	}{
		{101, 100, 200, true}, {100, 100, 200, false}, {201, 100, 200, false}, {50, 100, 200, false},
		{32000, 31000, 400, true}, {350, 31000, 400, true}, {500, 31000, 400, false}, {30000, 31000, 400, false},
		{100, 100, 100, false},
	} {
		if got := newPid(c.pid, c.before, c.now); got != c.want {
			t.Errorf("newPid(%d, %d, %d) = %v", c.pid, c.before, c.now, got)
		}
	}
}
