package peers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Containerd is a private containerd daemon (Debian's) with its root, state and
// socket under one directory and the CRI plugin disabled: what `ctr run` needs and
// nothing of Kubernetes.
type Containerd struct {
	Dir  string
	Sock string
	cmd  *exec.Cmd
}

// StartContainerd starts containerd under dir and waits until it answers.
func StartContainerd(ctx context.Context, dir string) (*Containerd, error) {
	c := &Containerd{Dir: dir, Sock: filepath.Join(dir, "containerd.sock")}
	for _, d := range []string{"root", "state", "fifo", "runc", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Sock, c.Sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	c.cmd = exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if _, err := c.Ctr(ctx, "version"); err == nil {
			return c, nil
		}
		if i > 200 {
			c.Close()
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			return nil, fmt.Errorf("containerd did not start: %s", lastLines(string(b), 5))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Pid is the containerd daemon's pid.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }

// Ctr runs ctr against this daemon, in namespace tern-bench.
func (c *Containerd) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, nil, "ctr", append([]string{"--address", c.Sock, "--namespace", "tern-bench"}, args...)...)
}

// Import imports an OCI archive (and unpacks it for the default snapshotter).
func (c *Containerd) Import(ctx context.Context, img *Image) error {
	_, err := c.Ctr(ctx, "images", "import", img.Archive)
	return err
}

// Close stops the daemon. Containers still running keep their shims: call
// Ctr.Stop for each first.
func (c *Containerd) Close() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	return nil
}

// Ctr starts instances with `ctr run -d` of an imported image.
type Ctr struct {
	C       *Containerd
	Image   *Image
	Args    []string // extra ctr run options (limits, mounts, seccomp)
	AppPort int
}

func (r *Ctr) Name() string    { return "ctr run -d" }
func (r *Ctr) Port(string) int { return r.AppPort }

// Start runs `ctr run -d --fifo-dir F --runc-root R --log-uri file://L [Args] REF id`.
func (r *Ctr) Start(ctx context.Context, id string) error {
	args := []string{"run", "-d", "--fifo-dir", filepath.Join(r.C.Dir, "fifo"), "--runc-root", filepath.Join(r.C.Dir, "runc"),
		"--log-uri", "file://" + filepath.Join(r.C.Dir, "logs", id+".log")}
	args = append(append(args, r.Args...), r.Image.Ref, id)
	_, err := r.C.Ctr(ctx, args...)
	return err
}

// Stop kills the task, deletes it, and deletes the container with its snapshot.
func (r *Ctr) Stop(ctx context.Context, id string) error {
	r.C.Ctr(ctx, "task", "kill", "--signal", "SIGKILL", id)
	var err error
	for i := 0; i < 300; i++ {
		if _, err = r.C.Ctr(ctx, "task", "delete", id); err == nil || strings.Contains(err.Error(), "not found") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := r.C.Ctr(ctx, "containers", "delete", id); err != nil {
		return err
	}
	os.Remove(filepath.Join(r.C.Dir, "logs", id+".log"))
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
