package peers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Podman runs Debian's podman (as root) with a private containers.conf and its
// storage under one directory. The settings are those podman needs on this kind of
// machine: runc (crun fails on hybrid cgroups), the cgroupfs manager (no systemd),
// file events (no journald), explicit ulimits.
type Podman struct {
	Dir     string
	RunRoot string // podman refuses a runroot path longer than 50 characters: under /tmp
	Image   *Image
	Args    []string // extra podman run options (limits, mounts, network)
	AppPort int
	env     []string
}

// NewPodman writes the configuration under dir.
func NewPodman(dir string) (*Podman, error) {
	p := &Podman{Dir: dir}
	for _, d := range []string{"storage", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	var err error
	if p.RunRoot, err = os.MkdirTemp("", "podman-run-"); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
`, filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp"))
	if err := os.WriteFile(filepath.Join(dir, "containers.conf"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	p.env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"))
	return p, nil
}

// Podman runs podman with this configuration and storage.
func (p *Podman) Podman(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, p.env, "podman", append(p.GlobalArgs(), args...)...)
}

// GlobalArgs are the options that point podman at this storage.
func (p *Podman) GlobalArgs() []string {
	return []string{"--root", filepath.Join(p.Dir, "storage"), "--runroot", p.RunRoot, "--storage-driver", "overlay"}
}

// Env is the environment podman runs in (CONTAINERS_CONF set).
func (p *Podman) Env() []string { return p.env }

// Load loads an OCI archive into podman's storage.
func (p *Podman) Load(ctx context.Context, img *Image) error {
	p.Image = img
	_, err := p.Podman(ctx, "load", "-q", "-i", img.Archive)
	return err
}

// Close removes every container and image from podman's private storage, then the
// storage itself.
func (p *Podman) Close() error {
	ctx := context.Background()
	p.Podman(ctx, "rm", "-a", "-f", "-t", "0")
	_, err := p.Podman(ctx, "rmi", "-a", "-f")
	return errors.Join(err, os.RemoveAll(p.Dir), os.RemoveAll(p.RunRoot))
}

func (p *Podman) Name() string    { return "podman run -d" }
func (p *Podman) Port(string) int { return p.AppPort }

// Start runs `podman run -d --name id [Args] REF`.
func (p *Podman) Start(ctx context.Context, id string) error {
	args := append(append([]string{"run", "-d", "--name", id}, p.Args...), p.Image.Ref)
	_, err := p.Podman(ctx, args...)
	return err
}

// Stop removes the container, killing it at once.
func (p *Podman) Stop(ctx context.Context, id string) error {
	_, err := p.Podman(ctx, "rm", "-f", "-t", "0", id)
	return err
}
