package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/runtime"
)

func (a *Agent) bundle(name, version string) bundle {
	return bundle{dir: filepath.Join(a.cfg.DataDir, "apps", name, version)}
}

func (a *Agent) logDir(name string) string { return filepath.Join(a.cfg.DataDir, "logs", name) }

// startContainer mounts the app's root file system and starts its container.
func (a *Agent) startContainer(ctx context.Context, r *AppRecord) (runtime.State, error) {
	m := r.Package.App
	b := a.bundle(m.Name, m.Version)
	var lowers []string
	for _, l := range r.Package.Image.Layers {
		lowers = append(lowers, a.content.LayerPath(l.Digest))
	}
	if err := b.mount(lowers); err != nil {
		return runtime.State{}, err
	}
	uid, gid, err := resolveUser(b.rootfs(), m.User)
	if err != nil {
		return runtime.State{}, err
	}
	spec := runtime.Spec{
		ID: containerID(m.Name, m.Version), RootFS: b.rootfs(), Args: m.Command,
		Cwd: m.WorkDir, UID: uid, GID: gid, Hostname: m.Name,
		Capabilities: m.Capabilities.Linux, Devices: m.Capabilities.Devices,
		Memory: int64(m.Resources.Memory), CPU: m.Resources.CPU, Pids: m.Resources.Pids,
		CgroupParent: a.cfg.CgroupParent,
	}
	keys := make([]string, 0, len(m.Env))
	for k := range m.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		spec.Env = append(spec.Env, k+"="+m.Env[k])
	}
	// An allowlist is enforced by a later release; until then the app gets what
	// "none" gives (loopback only), which is never more than it asked for.
	if m.Capabilities.Network.EffectiveMode() == app.NetworkHost {
		spec.Network = runtime.NetworkHost
	}
	for _, v := range m.Volumes {
		dir := filepath.Join(a.cfg.DataDir, "volumes", m.Name, v.Name)
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return runtime.State{}, err
			}
			if err := os.Chown(dir, int(uid), int(gid)); err != nil {
				return runtime.State{}, err
			}
		}
		spec.Volumes = append(spec.Volumes, runtime.Mount{Source: dir, Destination: v.Path})
	}
	return a.rt.Start(ctx, spec, b.dir, runtime.LogConfig{Dir: a.logDir(m.Name), App: m.Name, Version: m.Version})
}

// Start starts a stopped app (and clears a broken mark).
func (a *Agent) Start(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.startLocked(ctx, name)
}

func (a *Agent) startLocked(ctx context.Context, name string) error {
	rec, err := a.store.Update(name, func(r *AppRecord) error {
		r.Desired, r.Broken, r.Restarts = DesiredRunning, false, 0
		return nil
	})
	if err != nil {
		return err
	}
	if s, ok := a.supervisorOf(name); ok {
		select {
		case <-s.done:
		default:
			return nil // already supervised: running or about to restart
		}
	}
	waitStarted(ctx, a.supervise(rec, false))
	return nil
}

// Stop stops an app: SIGTERM, its grace period, SIGKILL. It stays stopped, across
// reboots too, until started.
func (a *Agent) Stop(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopLocked(name)
}

func (a *Agent) stopLocked(name string) error {
	if _, err := a.store.Update(name, func(r *AppRecord) error { r.Desired = DesiredStopped; return nil }); err != nil {
		return err
	}
	if s, ok := a.supervisorOf(name); ok {
		s.halt()
		a.supsMu.Lock()
		delete(a.sups, name)
		a.supsMu.Unlock()
	}
	return nil
}

// Restart stops and starts an app.
func (a *Agent) Restart(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.stopLocked(name); err != nil {
		return err
	}
	return a.startLocked(ctx, name)
}

// Remove stops an app and deletes it with its bundle, logs and volumes; blobs and
// layers no other app uses are collected.
func (a *Agent) Remove(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec, err := a.store.App(name)
	if err != nil {
		return err
	}
	if err := a.stopLocked(name); err != nil {
		return err
	}
	a.rt.Remove(ctx, containerID(name, rec.Version()))
	versions, _ := os.ReadDir(filepath.Join(a.cfg.DataDir, "apps", name))
	for _, v := range versions {
		if err := a.bundle(name, v.Name()).remove(); err != nil {
			return fmt.Errorf("remove %s: %w", name, err)
		}
	}
	if err := a.store.Delete(name); err != nil {
		return err
	}
	os.RemoveAll(filepath.Join(a.cfg.DataDir, "apps", name))
	os.RemoveAll(filepath.Join(a.cfg.DataDir, "volumes", name))
	os.RemoveAll(a.logDir(name))
	a.gcLocked()
	a.log.Info("removed", "app", name)
	return nil
}

// AppStatus is one app as ps and inspect show it.
type AppStatus struct {
	Name        string    `json:"name"`
	Version     string    `json:"version"`
	State       string    `json:"state"`
	Desired     string    `json:"desired"`
	Pid         int       `json:"pid,omitempty"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	Health      string    `json:"health,omitempty"`
	HealthError string    `json:"health_error,omitempty"`
	Restarts    int       `json:"restarts"`
	NextStart   time.Time `json:"next_start,omitzero"`
	LastExit    *ExitInfo `json:"last_exit,omitempty"`
	InstalledAt time.Time `json:"installed_at"`
	// Previous is the N-1 version kept for rollback.
	Previous string `json:"previous,omitempty"`
	// Update is the state of an update of this app in progress, e.g. "probation
	// 1.0.0->1.1.0"; empty when none.
	Update string `json:"update,omitempty"`
	// Manifest is the signed manifest, shown by inspect.
	Manifest *app.PackageManifest `json:"manifest,omitempty"`
}

// List returns every app's status, by name.
func (a *Agent) List(ctx context.Context) ([]AppStatus, error) {
	recs, err := a.store.Apps()
	if err != nil {
		return nil, err
	}
	out := make([]AppStatus, 0, len(recs))
	for _, r := range recs {
		out = append(out, a.status(r))
	}
	return out, nil
}

// Inspect returns one app's status with its manifest.
func (a *Agent) Inspect(ctx context.Context, name string) (AppStatus, error) {
	r, err := a.store.App(name)
	if err != nil {
		return AppStatus{}, err
	}
	st := a.status(r)
	st.Manifest = &r.Package
	return st, nil
}

func (a *Agent) status(r *AppRecord) AppStatus {
	st := AppStatus{Name: r.Name(), Version: r.Version(), Desired: r.Desired, Restarts: r.Restarts,
		LastExit: r.LastExit, InstalledAt: r.InstalledAt, State: StateStopped}
	if r.Previous != nil {
		st.Previous = r.Previous.App.Version
	}
	if t, err := a.store.Txn(); err == nil && t != nil {
		for _, c := range t.Changes {
			if c.Name == r.Name() {
				st.Update = fmt.Sprintf("%s %s->%s", t.State, c.From, c.To)
			}
		}
	}
	if s, ok := a.supervisorOf(r.Name()); ok {
		st.Version = s.rec.Version() // during an update, the version that runs
		var h healthTracker
		st.State, st.Pid, st.StartedAt, h, st.NextStart = s.status()
		if st.State == StateRunning {
			st.Health, st.HealthError = h.state, h.lastErr
		}
		if st.State != StateBackoff {
			st.NextStart = time.Time{}
		}
	}
	if r.Broken {
		st.State = StateBroken
	}
	return st
}
