package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/runtime"
	"github.com/tern-iot/tern/internal/trust"
	"github.com/tern-iot/tern/internal/update"
	"golang.org/x/sys/unix"
)

// Errors a client of the agent acts on.
var (
	ErrAlreadyInstalled = errors.New("app already installed")
	ErrRefused          = errors.New("refused by device policy")
)

// Config is ternd's configuration.
type Config struct {
	DataDir          string            // state.db, blobs, layers, apps, volumes, logs
	Keys             []trust.PublicKey // trusted release keys
	AllowHostNetwork bool              // let apps ask for network: host
	RuncPath         string            // "" finds runc in PATH
	RuncRoot         string            // runc --root; "" is /run/tern/runc
	MonitorPath      string            // "" finds tern-monitor beside ternd or in PATH
	CgroupParent     string            // "" is /tern
	Logger           *slog.Logger

	// OS configures OS updates (A/B slots, bootloader); nil disables them.
	OS *OSConfig

	// CrashAt and Crash are for tests of power loss: right after an update
	// transaction persists state CrashAt, Crash is called (ternd kills itself).
	CrashAt update.State
	Crash   func(update.State)
}

// Agent is ternd's core: it owns the store, the content, the runtime and one
// supervisor per app that should run.
type Agent struct {
	cfg     Config
	store   *Store
	content *Content
	rt      *runtime.Runtime
	log     *slog.Logger

	ctx    context.Context // lives until Close; supervisors run under it
	cancel context.CancelFunc

	mu sync.Mutex // serializes install, remove, GC and lifecycle verbs

	supsMu sync.Mutex // guards sups, so ps never waits for an install
	sups   map[string]*supervisor

	backoffBase time.Duration // first restart delay; tests shorten it

	keysMu sync.Mutex    // guards cfg.Keys, which enrollment extends
	mgr    *manager      // set by Manage once enrolled (guarded by supsMu)
	events chan struct{} // signalled when an event is recorded

	// rebootIssued, set by InstallOS while its transaction runs (under mu), is
	// closed once the reboot command has run: the moment to answer the caller.
	rebootIssued chan struct{}
}

// New opens the agent's state in cfg.DataDir. Call Boot to adopt or start apps.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	store, err := OpenStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	content, err := NewContent(cfg.DataDir)
	if err != nil {
		store.Close()
		return nil, err
	}
	rt, err := runtime.New(runtime.Config{
		StateDir: filepath.Join(cfg.DataDir, "containers"), RuncPath: cfg.RuncPath,
		RuncRoot: cfg.RuncRoot, MonitorPath: cfg.MonitorPath,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Agent{cfg: cfg, store: store, content: content, rt: rt, log: cfg.Logger,
		ctx: ctx, cancel: cancel, sups: map[string]*supervisor{}, backoffBase: backoffBase, events: make(chan struct{}, 1)}, nil
}

// Close stops supervising and closes the store. Containers keep running: the next
// ternd adopts them.
func (a *Agent) Close() error {
	a.cancel()
	a.supsMu.Lock()
	sups := maps.Clone(a.sups)
	a.supsMu.Unlock()
	for _, s := range sups {
		<-s.done
	}
	return a.store.Close()
}

// Boot brings the device's apps to their desired state when ternd starts. A
// container that still runs (ternd restarted) is adopted, never restarted. After a
// reboot, boot apps are started in their declared order (after:). After a restart
// of ternd alone, an app whose container ended meanwhile is started again if its
// restart policy says so.
func (a *Agent) Boot(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	recs, err := a.store.Apps()
	if err != nil {
		return err
	}
	rebooted, err := a.store.NoteBoot(currentBootID())
	if err != nil {
		return err
	}
	txn, err := a.store.Txn()
	if err != nil {
		return err
	}
	inTxn := map[string]bool{}
	if txn != nil {
		for _, c := range txn.Changes {
			inTxn[c.Name] = true
		}
	}
	var toStart []*AppRecord
	for _, r := range recs {
		if r.Desired != DesiredRunning || r.Broken || inTxn[r.Name()] {
			continue // an update in progress decides for its apps
		}
		id := containerID(r.Name(), r.Version())
		st, err := a.rt.State(ctx, id)
		if err == nil && st.Status != runtime.StatusStopped {
			waitStarted(ctx, a.supervise(r, true))
			continue
		}
		if err == nil {
			a.rt.Remove(ctx, id)
		}
		start := r.Package.App.Boot
		if !rebooted {
			failed := st.Exit == nil || st.Exit.Lost || st.Exit.Code != 0 || st.Exit.Signal != 0
			switch r.Package.App.Restart {
			case app.RestartAlways:
				start = true
			case app.RestartOnFailure:
				start = failed
			}
		}
		if start {
			toStart = append(toStart, r)
		}
	}
	for _, r := range bootOrder(toStart) {
		// In order: each app runs (or has failed to start) before the next starts.
		waitStarted(ctx, a.supervise(r, false))
	}
	if txn != nil {
		// Finish the interrupted update in the background: its probation may take
		// a while, and the local API must answer meanwhile.
		a.log.Info("resuming update", "txn", txn.ID, "state", txn.State)
		go func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			if err := a.runTxn(txn, true); err != nil {
				a.log.Warn("resumed update ended", "txn", txn.ID, "err", err)
			}
		}()
		return nil
	}
	a.gcLocked()
	return nil
}

// bootOrder sorts apps so each comes after those it names in after: (a cycle or
// an unknown name is ignored, keeping name order).
func bootOrder(recs []*AppRecord) []*AppRecord {
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name() < recs[j].Name() })
	byName := map[string]*AppRecord{}
	for _, r := range recs {
		byName[r.Name()] = r
	}
	var out []*AppRecord
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(r *AppRecord)
	visit = func(r *AppRecord) {
		if state[r.Name()] != 0 {
			return
		}
		state[r.Name()] = 1
		for _, dep := range r.Package.App.After {
			if d, ok := byName[dep]; ok {
				visit(d)
			}
		}
		state[r.Name()] = 2
		out = append(out, r)
	}
	for _, r := range recs {
		visit(r)
	}
	return out
}

// waitStarted returns once s has left its starting state (the container runs,
// or its start failed), or s ended, or ctx did.
func waitStarted(ctx context.Context, s *supervisor) {
	for {
		state, changed := s.stateChange()
		if state != StateFailed {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-changed:
		}
	}
}

// supervise starts a supervisor for r. Callers hold a.mu.
func (a *Agent) supervise(r *AppRecord, adopt bool) *supervisor {
	return a.superviseMode(r, adopt, false)
}

// superviseMode starts a supervisor, on probation if asked (an update's new version).
func (a *Agent) superviseMode(r *AppRecord, adopt, probation bool) *supervisor {
	s := newSupervisor(a, r)
	s.probation = probation
	a.supsMu.Lock()
	a.sups[r.Name()] = s
	a.supsMu.Unlock()
	go s.run(a.ctx, adopt)
	return s
}

func (a *Agent) unpack(ctx context.Context, pm *app.PackageManifest) error {
	for _, l := range pm.Image.Layers {
		if err := a.content.Unpack(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// admit is the device's policy, applied to a verified manifest before any blob is
// stored. staged are the packages already admitted in the same install.
func (a *Agent) admit(pm *app.PackageManifest, staged []*app.PackageManifest) error {
	m := pm.App
	if pm.Kind != app.KindApp {
		return fmt.Errorf("%w: this is an OS package; use tern device os install", ErrRefused)
	}
	if want := "linux/" + goruntime.GOARCH; pm.Image.Platform != want {
		return fmt.Errorf("%w: %s %s is built for %s, this device is %s", ErrRefused, m.Name, m.Version, pm.Image.Platform, want)
	}
	recs, err := a.store.Apps()
	if err != nil {
		return err
	}
	holders := map[string]string{} // device -> app holding it, after this install
	for _, r := range recs {
		for _, d := range r.Package.App.Capabilities.Devices {
			holders[d] = r.Name()
		}
	}
	for _, s := range staged {
		for _, d := range s.App.Capabilities.Devices {
			holders[d] = s.App.Name
		}
	}
	for _, r := range recs {
		if r.Name() != m.Name {
			continue
		}
		cur, _ := app.ParseVersion(r.Version())
		next, _ := app.ParseVersion(m.Version)
		switch c := next.Compare(cur); {
		case c == 0:
			return fmt.Errorf("%w: %s %s is already installed", ErrAlreadyInstalled, m.Name, m.Version)
		case c < 0 && !m.AllowDowngrade:
			return fmt.Errorf("%w: %s %s is below the committed %s, and its signed manifest does not allow_downgrade", ErrDowngrade, m.Name, m.Version, r.Version())
		}
	}
	for _, d := range m.Capabilities.Devices {
		if h, ok := holders[d]; ok && h != m.Name {
			return fmt.Errorf("%w: %s asks for %s, which %s holds", ErrRefused, m.Name, d, h)
		}
		if _, err := os.Stat(d); err != nil {
			return fmt.Errorf("%w: %s asks for %s, which this device does not have", ErrRefused, m.Name, d)
		}
	}
	if m.Capabilities.Network.EffectiveMode() == app.NetworkHost && !a.cfg.AllowHostNetwork {
		return fmt.Errorf("%w: %s asks for the host network; this device does not allow it (ternd --allow-host-network)", ErrRefused, m.Name)
	}
	for _, c := range m.Capabilities.Linux {
		if slices.Contains(app.ForbiddenCapabilities, c) {
			return fmt.Errorf("%w: %s asks for capability %s", ErrRefused, m.Name, c)
		}
	}
	return a.checkSpace(pm)
}

// unpackFactor estimates a layer's unpacked size from its compressed size, for the
// free-space check: generous, since running out half way is worse than refusing.
const (
	unpackFactor = 4
	spaceReserve = 16 << 20 // left free for state.db, logs and the running apps
)

// checkSpace refuses a package whose blobs and unpacked layers would not fit.
func (a *Agent) checkSpace(pm *app.PackageManifest) error {
	var need int64
	for _, d := range pm.Blobs() {
		if a.content.HasBlob(d.Digest) {
			continue
		}
		need += d.Size
		if d.MediaType != app.MediaTypeConfig {
			need += d.Size * unpackFactor
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(a.cfg.DataDir, &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if need+spaceReserve > free {
		return fmt.Errorf("%w: %s %s needs about %d MiB, %d MiB are free in %s", ErrNoSpace, pm.App.Name, pm.App.Version,
			(need+spaceReserve)>>20, free>>20, a.cfg.DataDir)
	}
	return nil
}

// gcLocked removes blobs and layers that no installed app (current or N-1
// version), no update in progress, and none of keep uses. Callers hold a.mu.
func (a *Agent) gcLocked(keep ...*app.PackageManifest) {
	recs, err := a.store.Apps()
	if err != nil {
		a.log.Error("gc", "err", err)
		return
	}
	inUse := map[string]bool{}
	use := func(pm *app.PackageManifest) {
		for _, d := range pm.Blobs() {
			inUse[d.Digest] = true
		}
	}
	for _, r := range recs {
		use(&r.Package)
		if r.Previous != nil {
			use(r.Previous)
		}
	}
	for _, pm := range keep {
		use(pm)
	}
	if t, err := a.store.Txn(); err == nil && t != nil && t.State != update.RolledBack {
		for _, c := range t.Changes {
			if rec, err := newRecord(c); err == nil {
				use(&rec.Package)
			}
		}
	}
	if err := a.content.GC(inUse); err != nil {
		a.log.Error("gc", "err", err)
	}
}

// supervisorOf returns the app's supervisor, if one was started.
func (a *Agent) supervisorOf(name string) (*supervisor, bool) {
	a.supsMu.Lock()
	defer a.supsMu.Unlock()
	s, ok := a.sups[name]
	return s, ok
}
