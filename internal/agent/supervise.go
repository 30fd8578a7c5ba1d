package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/runtime"
)

// Supervision limits.
const (
	backoffBase = time.Second
	backoffCap  = 5 * time.Minute
	// An app that crashed brokenCrashes times within brokenWindow is broken: the
	// supervisor stops restarting it until someone starts it again.
	brokenCrashes = 5
	brokenWindow  = 10 * time.Minute
	// A run longer than stableRun resets the backoff.
	stableRun = time.Minute
	// firstProbe is when a health check first runs after a start.
	firstProbe = 300 * time.Millisecond
)

// App states shown by ps.
const (
	StateRunning = "running"
	StateStopped = "stopped"  // by request, or never started (not a boot app after a reboot)
	StateExited  = "exited"   // ended and its restart policy says stay down
	StateBackoff = "backoff"  // crashed; waiting to restart
	StateBroken  = "broken"   // crashed too often; not restarted
	StateFailed  = "starting" // being started
)

// containerID names an app version's container.
func containerID(name, version string) string {
	return name + "-" + strings.NewReplacer("+", "_").Replace(version)
}

// supervisor keeps one app's container running according to its restart policy,
// and runs its health check. One goroutine (run) owns the container's life; the
// fields under mu are what ps reports.
type supervisor struct {
	a    *Agent
	rec  *AppRecord
	id   string
	log  *slog.Logger
	stop chan struct{} // closed to ask run to stop the container and return
	done chan struct{} // closed when run returns

	mu sync.Mutex
	// probation is set while the version is on probation in an update: an exit
	// is then recorded in probationErr instead of restarting.
	probation    bool
	probationErr error
	state        string
	pid          int
	startedAt    time.Time
	health       healthTracker
	nextStart    time.Time
	// changed is closed, and replaced, whenever state changes: waitStarted
	// answers the moment the container is up instead of polling.
	changed chan struct{}
}

func newSupervisor(a *Agent, rec *AppRecord) *supervisor {
	s := &supervisor{
		a: a, rec: rec, id: containerID(rec.Name(), rec.Version()),
		log:  a.log.With("app", rec.Name(), "version", rec.Version()),
		stop: make(chan struct{}), done: make(chan struct{}),
		state: StateFailed, changed: make(chan struct{}),
	}
	if h := rec.Package.App.Health; h != nil {
		s.health.retries = h.Retries
		s.health.state = HealthStarting
	}
	return s
}

// status is a snapshot for ps.
func (s *supervisor) status() (state string, pid int, started time.Time, health healthTracker, next time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.pid, s.startedAt, s.health, s.nextStart
}

func (s *supervisor) set(state string, pid int, started time.Time) {
	s.mu.Lock()
	s.state, s.pid, s.startedAt = state, pid, started
	s.changedLocked()
	s.mu.Unlock()
}

// changedLocked wakes whoever waits for a change of state. Callers hold s.mu.
func (s *supervisor) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// stateChange returns the state and a channel closed at its next change.
func (s *supervisor) stateChange() (string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.changed
}

// halt asks the supervisor to stop the container (SIGTERM, the app's grace period,
// SIGKILL) and waits until it has.
func (s *supervisor) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// run is the supervision loop. With adopt, the container is already running
// (started by an earlier ternd) and is followed rather than started.
func (s *supervisor) run(ctx context.Context, adopt bool) {
	defer close(s.done)
	m := s.rec.Package.App
	var crashes []time.Time
	consecutive := 0
	for {
		st, err := s.startOrAdopt(ctx, adopt)
		adopt = false
		var exit runtime.ExitStatus
		if err != nil {
			s.log.Error("start failed", "err", err)
			exit = runtime.ExitStatus{Code: -1, Error: err.Error(), ExitedAt: time.Now()}
		} else {
			s.set(StateRunning, st.Pid, st.StartedAt)
			exit = s.follow(ctx, st)
		}
		if stopped := s.stopped(); stopped || ctx.Err() != nil {
			if stopped {
				s.recordExit(exit, false)
				s.set(StateStopped, 0, time.Time{})
			}
			return
		}
		s.log.Info("app exited", "code", exit.Code, "signal", exit.Signal, "oom", exit.OOMKilled, "error", exit.Error)
		failed := exit.Code != 0 || exit.Signal != 0 || exit.OOMKilled || exit.Error != "" || exit.Lost
		if s.failProbation(exit) {
			// On probation any exit fails the update: no restart, the update
			// machine rolls back.
			s.recordExit(exit, false)
			s.set(StateExited, 0, time.Time{})
			return
		}
		if m.Restart == app.RestartNever || (m.Restart == app.RestartOnFailure && !failed) {
			s.recordExit(exit, false)
			s.set(StateExited, 0, time.Time{})
			return
		}
		now := time.Now()
		if !st.StartedAt.IsZero() && now.Sub(st.StartedAt) > stableRun {
			consecutive = 0
		}
		consecutive++
		crashes = append(crashes, now)
		for len(crashes) > 0 && now.Sub(crashes[0]) > brokenWindow {
			crashes = crashes[1:]
		}
		if len(crashes) >= brokenCrashes {
			s.log.Error("app is broken: too many crashes", "crashes", len(crashes), "window", brokenWindow)
			s.recordExit(exit, true)
			s.set(StateBroken, 0, time.Time{})
			return
		}
		s.recordExit(exit, false)
		delay := min(s.a.backoffBase<<min(consecutive-1, 20), backoffCap)
		s.mu.Lock()
		s.state, s.pid, s.nextStart = StateBackoff, 0, now.Add(delay)
		s.changedLocked()
		s.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-s.stop:
			s.set(StateStopped, 0, time.Time{})
			return
		case <-ctx.Done():
			return
		}
		if _, err := s.a.store.Update(s.rec.Name(), func(r *AppRecord) error { r.Restarts++; return nil }); err != nil {
			s.log.Error("record restart", "err", err)
		}
	}
}

func (s *supervisor) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// startOrAdopt starts the app's container, or returns the running one.
func (s *supervisor) startOrAdopt(ctx context.Context, adopt bool) (runtime.State, error) {
	if adopt {
		st, err := s.a.rt.State(ctx, s.id)
		if err == nil && st.Status != runtime.StatusStopped {
			s.log.Info("adopted running container", "pid", st.Pid)
			return st, nil
		}
	}
	return s.a.startContainer(ctx, s.rec)
}

// follow waits for the container to exit, running health checks meanwhile; a stop
// request or an unhealthy verdict stops it with the app's grace period.
func (s *supervisor) follow(ctx context.Context, st runtime.State) runtime.ExitStatus {
	waitCtx, cancelWait := context.WithCancel(context.Background())
	defer cancelWait()
	exited := make(chan runtime.ExitStatus, 1)
	go func() {
		ex, err := s.a.rt.Wait(waitCtx, s.id)
		if err != nil {
			ex = runtime.ExitStatus{Code: -1, Error: err.Error(), Lost: true, ExitedAt: time.Now()}
		}
		exited <- ex
	}()
	var ticker <-chan time.Time
	h := s.rec.Package.App.Health
	var timer *time.Timer
	if h != nil {
		// The first probe comes soon after the start (an app that answers at once
		// is healthy at once: push-to-healthy, probation), then every interval.
		timer = time.NewTimer(min(h.Interval.D(), firstProbe))
		defer timer.Stop()
		ticker = timer.C
	}
	grace := s.rec.Package.App.StopTimeout.D()
	for {
		select {
		case ex := <-exited:
			return ex
		case <-ctx.Done():
			return runtime.ExitStatus{} // ternd shuts down; the container lives on
		case <-s.stop:
			ex, err := s.a.rt.Stop(context.Background(), s.id, grace)
			if err != nil && !errors.Is(err, runtime.ErrNotFound) {
				s.log.Error("stop", "err", err)
			}
			return ex
		case <-ticker:
			err := probe(ctx, h, st.Pid, func(ctx context.Context, args []string) (int, error) {
				return s.a.rt.Exec(ctx, s.id, args, io.Discard, io.Discard)
			})
			timer.Reset(h.Interval.D())
			s.mu.Lock()
			changed := s.health.record(err, time.Now())
			state := s.health.state
			s.mu.Unlock()
			if changed {
				s.log.Info("health changed", "health", state, "err", err)
			}
			if state == HealthUnhealthy {
				// An unhealthy app is restarted like a crashed one (its restart
				// policy and backoff apply), as a liveness check would.
				s.log.Warn("app unhealthy: stopping it", "err", err)
				ex, serr := s.a.rt.Stop(context.Background(), s.id, grace)
				if serr != nil {
					s.log.Error("stop unhealthy app", "err", serr)
				}
				ex.Error = "unhealthy: " + fmt.Sprint(err)
				if ex.Code == 0 {
					ex.Code = -1
				}
				s.mu.Lock()
				s.health = healthTracker{retries: h.Retries, state: HealthStarting}
				s.mu.Unlock()
				return ex
			}
		}
	}
}

// recordExit stores how the container ended and removes its runtime state.
func (s *supervisor) recordExit(ex runtime.ExitStatus, broken bool) {
	at := ex.ExitedAt
	if at.IsZero() {
		at = time.Now()
	}
	_, err := s.a.store.Update(s.rec.Name(), func(r *AppRecord) error {
		r.LastExit = &ExitInfo{Code: ex.Code, Signal: ex.Signal, OOMKilled: ex.OOMKilled, Lost: ex.Lost, Error: ex.Error, At: at}
		r.Broken = r.Broken || broken
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotInstalled) {
		s.log.Error("record exit", "err", err)
	}
	if err := s.a.rt.Remove(context.Background(), s.id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		s.log.Warn("remove container state", "err", err)
	}
}

// failProbation records exit as a probation failure if the app is on probation.
func (s *supervisor) failProbation(exit runtime.ExitStatus) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.probation {
		return false
	}
	switch {
	case exit.Error != "":
		s.probationErr = fmt.Errorf("%s %s: %s", s.rec.Name(), s.rec.Version(), exit.Error)
	case exit.OOMKilled:
		s.probationErr = fmt.Errorf("%s %s was OOM-killed", s.rec.Name(), s.rec.Version())
	case exit.Signal != 0:
		s.probationErr = fmt.Errorf("%s %s was killed by signal %d", s.rec.Name(), s.rec.Version(), exit.Signal)
	default:
		s.probationErr = fmt.Errorf("%s %s exited with code %d", s.rec.Name(), s.rec.Version(), exit.Code)
	}
	return true
}

// probationState reports how the version fares on probation.
func (s *supervisor) probationState() (err error, health string, healthErr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.probationErr, s.health.state, s.health.lastErr
}

// endProbation returns the supervisor to its restart policy.
func (s *supervisor) endProbation() {
	s.mu.Lock()
	s.probation = false
	s.mu.Unlock()
}

// finished reports whether the supervision loop has returned.
func (s *supervisor) finished() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
