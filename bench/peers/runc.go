package peers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Runc starts instances with `runc run -d` of a bundle: the config given (ternd's own
// config.json of the app, so the comparison is of the same container) with only the
// cgroup path made unique per instance. The root file system is shared read-only.
type Runc struct {
	Root    string     // runc --root
	Dir     string     // one bundle directory per instance
	Config  specs.Spec // the template; Root.Path must be absolute
	AppPort int
}

// NewRunc prepares runc's state under dir for instances of config.
func NewRunc(dir string, config specs.Spec, port int) (*Runc, error) {
	r := &Runc{Root: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "bundles"), Config: config, AppPort: port}
	for _, d := range []string{r.Root, r.Dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if !filepath.IsAbs(config.Root.Path) {
		return nil, fmt.Errorf("runc: root path %q is not absolute", config.Root.Path)
	}
	return r, nil
}

func (r *Runc) Name() string            { return "runc run -d" }
func (r *Runc) Port(string) int         { return r.AppPort }
func (r *Runc) bundle(id string) string { return filepath.Join(r.Dir, id) }

// Start writes the instance's config.json (as ternd writes one at each start; a
// fraction of a millisecond) and runs `runc --root R run -d --bundle B id` with
// stdio on /dev/null.
func (r *Runc) Start(ctx context.Context, id string) error {
	if err := r.Prepare(id); err != nil {
		return err
	}
	return r.Run(ctx, id)
}

// Prepare writes the bundle of instance id.
func (r *Runc) Prepare(id string) error {
	cfg := r.Config
	linux := *cfg.Linux
	if linux.CgroupsPath != "" {
		linux.CgroupsPath = path.Join(path.Dir(linux.CgroupsPath), "peer-"+id)
	}
	cfg.Linux = &linux
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(r.bundle(id), 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.bundle(id), "config.json"), b, 0o600)
}

// Run runs the prepared instance id.
func (r *Runc) Run(ctx context.Context, id string) error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	cmd := exec.CommandContext(ctx, "runc", "--root", r.Root, "run", "-d", "--bundle", r.bundle(id), id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runc run %s: %w", id, err)
	}
	return nil
}

// Stop kills the container (SIGKILL: `runc delete -f` of a running container
// sleeps ~100 ms inside runc), waits until runc sees it stopped, and deletes it.
func (r *Runc) Stop(ctx context.Context, id string) error {
	run(ctx, nil, "runc", "--root", r.Root, "kill", id, "KILL")
	for i := 0; ; i++ {
		out, err := run(ctx, nil, "runc", "--root", r.Root, "state", id)
		var st struct{ Status string }
		if err != nil || json.Unmarshal(out, &st) != nil || st.Status == "stopped" {
			break
		}
		if i > 500 {
			return fmt.Errorf("runc: %s did not stop", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err := run(ctx, nil, "runc", "--root", r.Root, "delete", id)
	os.RemoveAll(r.bundle(id))
	return err
}
