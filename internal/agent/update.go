package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/runtime"
	"github.com/tern-iot/tern/internal/update"
)

// Errors of updates.
var (
	ErrBusy        = errors.New("an update is in progress")
	ErrDowngrade   = errors.New("downgrade refused")
	ErrNoPrevious  = errors.New("no previous version to roll back to")
	ErrNoSpace     = errors.New("not enough free space")
	ErrUpdateAbort = errors.New("update rolled back")
)

// Install verifies packages against the trusted keys, stores them, and runs them.
// One new app is simply installed and started. Anything else (a newer version of
// an installed app, or several packages together) is one update transaction: all
// of them are committed, or all return to their previous versions. Nothing is
// stored before a package's signature is verified and the device's policy admits
// it; a failed install leaves the device as it was.
func (a *Agent) Install(ctx context.Context, pkgs ...io.Reader) ([]AppStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Decompressing layers takes megabytes of buffers a device needs back: return
	// them to the kernel once the install is over, not whenever the GC gets to it.
	defer debug.FreeOSMemory()
	if t, err := a.store.Txn(); err != nil || t != nil {
		return nil, errors.Join(err, ErrBusy)
	}
	var staged []*app.PackageManifest
	seen := map[string]bool{}
	for i, r := range pkgs {
		admit := func(pm *app.PackageManifest) error {
			if seen[pm.App.Name] {
				return fmt.Errorf("%w: %s appears twice in one install", ErrRefused, pm.App.Name)
			}
			seen[pm.App.Name] = true
			return a.admit(pm, staged)
		}
		p, err := app.Read(r, app.ReadOptions{Keys: a.trustedKeys(), Admit: admit}, a.content)
		if err == nil {
			err = a.unpack(ctx, p.Manifest)
		}
		if err != nil {
			a.gcLocked() // all or nothing: drop what this install stored
			if len(pkgs) > 1 {
				err = fmt.Errorf("package %d: %w", i+1, err)
			}
			return nil, fmt.Errorf("install: %w", err)
		}
		staged = append(staged, p.Manifest)
	}
	if len(staged) == 1 {
		if _, err := a.store.App(staged[0].App.Name); errors.Is(err, ErrNotInstalled) {
			return a.installFresh(ctx, staged[0])
		}
	}
	t := &update.Txn{ID: newTxnID()}
	for _, pm := range staged {
		data, err := json.Marshal(pm)
		if err != nil {
			return nil, err
		}
		c := update.Change{Name: pm.App.Name, To: pm.App.Version, Data: data}
		if r, err := a.store.App(pm.App.Name); err == nil {
			c.From = r.Version()
		}
		t.Changes = append(t.Changes, c)
		t.Probation = max(t.Probation, pm.App.Probation.D())
	}
	err := a.runTxn(t, false)
	return a.statusOf(staged), err
}

func (a *Agent) installFresh(ctx context.Context, pm *app.PackageManifest) ([]AppStatus, error) {
	rec := &AppRecord{Package: *pm, Desired: DesiredRunning, InstalledAt: time.Now()}
	if err := a.store.Put(rec); err != nil {
		return nil, err
	}
	a.log.Info("installed", "app", rec.Name(), "version", rec.Version())
	a.event(Event{Kind: "install", App: rec.Name(), Version: rec.Version()})
	waitStarted(ctx, a.supervise(rec, false))
	return a.statusOf([]*app.PackageManifest{pm}), nil
}

func (a *Agent) statusOf(pms []*app.PackageManifest) []AppStatus {
	var out []AppStatus
	for _, pm := range pms {
		if r, err := a.store.App(pm.App.Name); err == nil {
			out = append(out, a.status(r))
		}
	}
	return out
}

// Rollback returns an app to its previous committed version (N-1), as an update
// transaction with the same probation.
func (a *Agent) Rollback(ctx context.Context, name string) ([]AppStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, err := a.store.Txn(); err != nil || t != nil {
		return nil, errors.Join(err, ErrBusy)
	}
	r, err := a.store.App(name)
	if err != nil {
		return nil, err
	}
	if r.Previous == nil {
		return nil, fmt.Errorf("%w: %s %s", ErrNoPrevious, name, r.Version())
	}
	data, err := json.Marshal(r.Previous)
	if err != nil {
		return nil, err
	}
	t := &update.Txn{ID: newTxnID(), Manual: true, Probation: r.Previous.App.Probation.D(),
		Changes: []update.Change{{Name: name, From: r.Version(), To: r.Previous.App.Version, Data: data}}}
	err = a.runTxn(t, false)
	return a.statusOf([]*app.PackageManifest{r.Previous}), err
}

// runTxn runs (or, with resume, resumes) a transaction to its end, under a.mu. It
// runs under the agent's context, not a request's: a client that hangs up does not
// stop an update half way.
func (a *Agent) runTxn(t *update.Txn, resume bool) error {
	var actions update.Actions = appActions{a}
	if t.Kind == update.KindOS {
		actions = osActions{a}
	}
	m := &update.Machine{Actions: actions, Journal: journal{a}, CrashAt: a.cfg.CrashAt, Crash: a.cfg.Crash}
	var err error
	if resume {
		err = m.Resume(a.ctx, t)
	} else {
		err = m.Start(a.ctx, t)
	}
	switch {
	case errors.Is(err, update.ErrInterrupted):
		return err // ternd is stopping: the next start resumes it
	case errors.Is(err, update.ErrGaveUp):
		for _, c := range t.Changes {
			a.store.Update(c.Name, func(r *AppRecord) error { r.Broken = true; return nil })
		}
	}
	if err != nil {
		a.event(Event{Kind: "update", Txn: t.ID, To: string(t.State), Message: "ended: " + err.Error()})
	}
	if serr := a.store.SaveTxn(nil); serr != nil {
		return errors.Join(err, serr)
	}
	var rb *update.RolledBackError
	if errors.As(err, &rb) {
		return fmt.Errorf("%w: %s", ErrUpdateAbort, rb.Reason)
	}
	return err
}

func newTxnID() string {
	var b [6]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// journal persists transactions in state.db and turns transitions into events.
type journal struct{ a *Agent }

func (j journal) Save(t *update.Txn) error { return j.a.store.SaveTxn(t) }

func (j journal) Event(t *update.Txn, from, to update.State, err error) {
	var names []string
	for _, c := range t.Changes {
		names = append(names, c.Name+" "+c.From+"->"+c.To)
	}
	e := Event{Kind: "update", Txn: t.ID, From: string(from), To: string(to), App: strings.Join(names, ", ")}
	switch {
	case err != nil:
		e.Message = err.Error()
	case to == update.RollingBack || to == update.RolledBack:
		e.Message = t.Error // why, again: a rollback resumed after a reboot says so too
	}
	j.a.log.Info("update", "txn", t.ID, "from", from, "to", to, "apps", e.App, "err", err)
	j.a.event(e)
}

func (a *Agent) event(e Event) {
	if err := a.store.AddEvent(e); err != nil {
		a.log.Error("record event", "err", err)
		return
	}
	select {
	case a.events <- struct{}{}:
	default:
	}
}

// EventsReady receives when a new event is recorded, for the link to the server.
func (a *Agent) EventsReady() <-chan struct{} { return a.events }

// Events returns the device's events after sequence number since.
func (a *Agent) Events(since uint64) ([]Event, error) { return a.store.Events(since) }

// appActions does the work of each update state for apps. Every method is
// idempotent: after a crash, the machine may run it again on a half-done state.
type appActions struct{ a *Agent }

// newRecord is the record a change's new version will have.
func newRecord(c update.Change) (*AppRecord, error) {
	var pm app.PackageManifest
	if err := json.Unmarshal(c.Data, &pm); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	return &AppRecord{Package: pm, Desired: DesiredRunning}, nil
}

// ensureRunning makes sure rec's version runs under a supervisor (adopting its
// container if it runs), on probation or not, and stops any other version of it.
func (a *Agent) ensureRunning(ctx context.Context, rec *AppRecord, probation bool) *supervisor {
	if s, ok := a.supervisorOf(rec.Name()); ok {
		if s.rec.Version() == rec.Version() && !s.finished() {
			s.mu.Lock()
			s.probation = probation
			s.mu.Unlock()
			return s
		}
		a.haltSupervisor(rec.Name())
	}
	s := a.superviseMode(rec, true, probation)
	waitStarted(ctx, s)
	return s
}

// haltSupervisor stops an app's supervised container and forgets the supervisor.
func (a *Agent) haltSupervisor(name string) {
	if s, ok := a.supervisorOf(name); ok {
		s.halt()
		a.supsMu.Lock()
		if a.sups[name] == s {
			delete(a.sups, name)
		}
		a.supsMu.Unlock()
	}
}

// stopContainer stops a version's container even if no supervisor follows it (a
// crash of ternd left it running), and clears its runtime state.
func (a *Agent) stopContainer(ctx context.Context, name, version string, grace time.Duration) {
	id := containerID(name, version)
	if st, err := a.rt.State(ctx, id); err == nil && st.Status != runtime.StatusStopped {
		a.rt.Stop(ctx, id, grace)
	}
	a.rt.Remove(ctx, id)
	if err := a.bundle(name, version).unmount(); err != nil {
		a.log.Warn("unmount", "app", name, "version", version, "err", err)
	}
}

func (x appActions) Swap(ctx context.Context, t *update.Txn) error {
	a := x.a
	for _, c := range t.Changes {
		rec, err := newRecord(c)
		if err != nil {
			return err
		}
		if c.From != "" {
			a.haltSupervisor(c.Name)
			a.stopContainer(ctx, c.Name, c.From, rec.Package.App.StopTimeout.D())
		}
		s := a.ensureRunning(ctx, rec, true)
		if perr, _, _ := s.probationState(); perr != nil {
			return perr
		}
	}
	return nil
}

func (x appActions) Watch(ctx context.Context, t *update.Txn) error {
	a := x.a
	var sups []*supervisor
	for _, c := range t.Changes {
		rec, err := newRecord(c)
		if err != nil {
			return err
		}
		sups = append(sups, a.ensureRunning(ctx, rec, true))
	}
	for {
		for _, s := range sups {
			if perr, _, _ := s.probationState(); perr != nil {
				return perr
			}
		}
		if !time.Now().Before(t.Until) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(100*time.Millisecond, time.Until(t.Until)+time.Millisecond)):
		}
	}
	for _, s := range sups {
		if s.rec.Package.App.Health == nil {
			continue
		}
		if _, health, herr := s.probationState(); health != HealthHealthy {
			return fmt.Errorf("%s %s not healthy by the end of probation (%s %s)", s.rec.Name(), s.rec.Version(), health, herr)
		}
	}
	return nil
}

func (x appActions) Commit(ctx context.Context, t *update.Txn) error {
	a := x.a
	if err := a.store.Commit(t); err != nil {
		return err
	}
	for _, c := range t.Changes {
		rec, err := a.store.App(c.Name)
		if err != nil {
			return err
		}
		a.ensureRunning(ctx, rec, false)
		a.pruneBundles(rec)
	}
	a.gcLocked()
	return nil
}

func (x appActions) Rollback(ctx context.Context, t *update.Txn) error {
	a := x.a
	var errs []error
	for i := len(t.Changes) - 1; i >= 0; i-- {
		c := t.Changes[i]
		if s, ok := a.supervisorOf(c.Name); ok && s.rec.Version() == c.To {
			a.haltSupervisor(c.Name)
		}
		rec, err := newRecord(c)
		if err != nil {
			return err
		}
		a.stopContainer(ctx, c.Name, c.To, rec.Package.App.StopTimeout.D())
		if c.From == "" {
			continue // a new app: nothing to return to
		}
		old, err := a.store.App(c.Name)
		if err != nil {
			return err
		}
		if old.Desired != DesiredRunning {
			continue
		}
		s := a.ensureRunning(ctx, old, false)
		if st, _, _, _, _ := s.status(); st != StateRunning {
			errs = append(errs, fmt.Errorf("%s %s did not start again (%s)", c.Name, c.From, st))
		}
	}
	return errors.Join(errs...)
}

func (x appActions) Discard(ctx context.Context, t *update.Txn) error {
	a := x.a
	for _, c := range t.Changes {
		rec, err := a.store.App(c.Name)
		switch {
		case errors.Is(err, ErrNotInstalled):
			// A new app that never committed: nothing of it stays.
			a.bundle(c.Name, c.To).remove()
			os.RemoveAll(filepath.Join(a.cfg.DataDir, "apps", c.Name))
			os.RemoveAll(filepath.Join(a.cfg.DataDir, "volumes", c.Name))
			os.RemoveAll(a.logDir(c.Name))
		case err != nil:
			return err
		default:
			if rec.Desired == DesiredRunning {
				a.ensureRunning(ctx, rec, false)
			}
			a.pruneBundles(rec)
		}
	}
	a.gcLocked()
	return nil
}

// pruneBundles removes an app's bundles other than its current and N-1 versions.
func (a *Agent) pruneBundles(rec *AppRecord) {
	keep := map[string]bool{rec.Version(): true}
	if rec.Previous != nil {
		keep[rec.Previous.App.Version] = true
	}
	entries, _ := os.ReadDir(filepath.Join(a.cfg.DataDir, "apps", rec.Name()))
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := a.bundle(rec.Name(), e.Name()).remove(); err != nil {
				a.log.Warn("remove old bundle", "app", rec.Name(), "version", e.Name(), "err", err)
			}
		}
	}
}
