package device

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/trust"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bins != "" {
		os.RemoveAll(bins)
	}
	os.Exit(code)
}

// ternd is the real ternd binary running as a device runs it, with its own data
// directory, socket, trusted key and runc root, and its apps under the cgroup
// /tern-bench. Its log is ternd.log in dir.
type ternd struct {
	cmd  *exec.Cmd
	c    *agent.Client
	key  trust.PrivateKey
	dir  string // scratch: trust/, data/, runc/, ternd.sock, ternd.log
	data string
}

// startTernd starts ternd and waits until its API answers.
func startTernd(b *testing.B, bins string) *ternd {
	b.Helper()
	dir := b.TempDir()
	key, _ := trust.GenerateKey()
	os.MkdirAll(filepath.Join(dir, "trust"), 0o755)
	os.WriteFile(filepath.Join(dir, "trust", "k.pub"), trust.MarshalPublicKey(key.Public()), 0o644)
	log, err := os.Create(filepath.Join(dir, "ternd.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	sock := filepath.Join(dir, "ternd.sock")
	t := &ternd{key: key, dir: dir, data: filepath.Join(dir, "data")}
	t.cmd = exec.Command(filepath.Join(bins, "ternd"), "--data", t.data, "--socket", sock,
		"--trust", filepath.Join(dir, "trust"), "--runtime-root", filepath.Join(dir, "runc"), "--cgroup-parent", "/tern-bench")
	t.cmd.Stdout, t.cmd.Stderr = log, log
	if err := t.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	t.c, _ = agent.NewClient("unix://" + sock)
	for i := 0; ; i++ {
		if _, err := t.c.List(context.Background()); err == nil {
			break
		}
		if i > 200 {
			t.close()
			b.Fatalf("ternd did not start: %s", t.log())
		}
		time.Sleep(25 * time.Millisecond)
	}
	return t
}

// install installs a package and fails the benchmark if ternd refuses it.
func (t *ternd) install(b *testing.B, pkg []byte) {
	b.Helper()
	if _, err := t.c.Install(context.Background(), bytes.NewReader(pkg)); err != nil {
		b.Fatalf("install: %v\n%s", err, t.log())
	}
}

// close removes every app (their containers, overlay mounts, cgroups) and stops
// ternd.
func (t *ternd) close() {
	ctx := context.Background()
	list, _ := t.c.List(ctx)
	for _, s := range list {
		t.c.Remove(ctx, s.Name)
	}
	t.cmd.Process.Kill()
	t.cmd.Wait()
}

// log is the tail of ternd's log, for failure messages.
func (t *ternd) log() string {
	b, _ := os.ReadFile(filepath.Join(t.dir, "ternd.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}
