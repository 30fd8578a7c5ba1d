// Package update is the one update state machine for apps (and, later, the OS): a
// transaction moves staged -> swapping -> probation -> committed, or from any failure
// to rolling_back -> rolled_back. The state is persisted before each transition, and
// after a restart at any point Recover decides in one switch what the interrupted
// state leads to.
package update

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// State is a transaction's state.
type State string

// The states. A transaction is created in Staged, once every new version is stored
// and verified on the device; Committed and RolledBack are terminal.
const (
	Staged      State = "staged"       // new versions stored beside the running ones
	Swapping    State = "swapping"     // stopping old versions, starting new ones
	Probation   State = "probation"    // new versions must stay up and healthy for the window
	Committed   State = "committed"    // new versions are current; the old ones kept as N-1
	RollingBack State = "rolling_back" // stopping new versions, starting the old ones again
	RolledBack  State = "rolled_back"  // old versions run again; new ones discarded
)

// Terminal reports whether s ends a transaction.
func (s State) Terminal() bool { return s == Committed || s == RolledBack }

// MaxEntries caps how often a transaction may enter one state: a state whose work
// keeps being interrupted (a crash loop, power cut on every attempt) must not hold
// the device forever.
const MaxEntries = 3

// Transaction kinds.
const (
	KindApps = ""   // app versions swapped by the agent
	KindOS   = "os" // a root file system slot switched by the bootloader
)

// Change is one app (or the OS) in a transaction.
type Change struct {
	Name string `json:"name"`
	From string `json:"from,omitempty"` // version being replaced; "" for a new app
	To   string `json:"to"`
	// Data is what the actions need to apply the change (for apps, the new signed
	// package manifest).
	Data json.RawMessage `json:"data,omitempty"`
}

// Txn is a persisted transaction.
//
// Invariant after a crash at any point: the stored Txn names the last state whose
// work had started; its work is idempotent, so Recover may run it again.
type Txn struct {
	ID string `json:"id"`
	// Kind says which actions apply: KindApps or KindOS.
	Kind      string          `json:"kind,omitempty"`
	State     State           `json:"state"`
	Changes   []Change        `json:"changes"`
	Entries   map[State]int   `json:"entries"`
	Probation time.Duration   `json:"probation"`                // the longest window among the changes
	Until     time.Time       `json:"probation_until,omitzero"` // end of the current probation window
	Error     string          `json:"error,omitempty"`          // why it is rolling back
	Started   time.Time       `json:"started"`
	Updated   time.Time       `json:"updated"`
	Manual    bool            `json:"manual,omitempty"` // an operator's rollback to N-1
	Meta      json.RawMessage `json:"meta,omitempty"`
}

// Actions do the work of each state for one kind of update. Each must be
// idempotent: after a crash it may run again on a half-done state.
type Actions interface {
	// Swap stops the old versions and starts the new ones.
	Swap(ctx context.Context, t *Txn) error
	// Watch returns nil if every new version stays up (and healthy, if it has a
	// health check) until t.Until, else the reason it failed.
	Watch(ctx context.Context, t *Txn) error
	// Commit makes the new versions current and keeps the old ones as N-1.
	Commit(ctx context.Context, t *Txn) error
	// Rollback stops the new versions and starts the old ones.
	Rollback(ctx context.Context, t *Txn) error
	// Discard deletes what the new versions left (bundles, blobs no one uses).
	Discard(ctx context.Context, t *Txn) error
}

// Journal persists transactions and records their transitions as events.
type Journal interface {
	// Save writes t durably (fsync) before the machine acts on its state.
	Save(t *Txn) error
	// Event records one transition, kept on the device and later sent to the server.
	Event(t *Txn, from, to State, err error)
}

// Machine drives transactions.
type Machine struct {
	Actions Actions
	Journal Journal
	// CrashAt, for tests, kills the process right after a state is persisted:
	// Crash is called with the state (the ternd binary sends itself SIGKILL).
	CrashAt State
	Crash   func(State)
	Now     func() time.Time
}

// ErrGaveUp reports a transaction stopped by the entry cap in a state it cannot
// leave (committing or rolling back keeps being cut): the agent marks its apps
// broken for an operator.
var ErrGaveUp = errors.New("update gave up")

// ErrInterrupted reports a transaction whose context ended before it finished; it
// resumes with Recover.
var ErrInterrupted = errors.New("update interrupted")

// Recover decides what a transaction interrupted in state t.State (by a crash, a
// power loss, a restart of ternd) does next. This switch is the whole of the
// machine's power-loss behaviour:
func Recover(t *Txn) State {
	switch t.State {
	case Staged:
		// Every new version is stored and verified; nothing was swapped yet. The
		// update was accepted: carry on with it.
		return Swapping
	case Swapping:
		// Half a swap: some old versions may be stopped, some new ones started.
		// Nothing tells which new ones would have come up: return to the known-good
		// versions.
		return RollingBack
	case Probation:
		// The window was not watched to its end. Watch a whole window again
		// (starting the new versions if the power loss took them); the entry cap
		// turns a probation that is cut again and again into a rollback.
		return Probation
	case Committed:
		// Committing is idempotent: finish it (records, N-2 clean-up).
		return Committed
	case RollingBack:
		// Finish returning to the old versions.
		return RollingBack
	case RolledBack:
		// Finish discarding the new versions.
		return RolledBack
	}
	// An unknown state (a newer ternd's, then a downgrade of ternd): the only
	// safe direction is back to what ran before.
	return RollingBack
}

// Resume continues an interrupted transaction from the state Recover picks.
func (m *Machine) Resume(ctx context.Context, t *Txn) error {
	return m.run(ctx, t, Recover(t))
}

// Start runs a new transaction whose new versions are staged.
func (m *Machine) Start(ctx context.Context, t *Txn) error {
	if t.Entries == nil {
		t.Entries = map[State]int{}
	}
	t.Started = m.now()
	return m.run(ctx, t, Staged)
}

func (m *Machine) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// run moves t through states until a terminal one is done. Each step: persist the
// state (counting the entry), then do its work, which names the next state.
func (m *Machine) run(ctx context.Context, t *Txn, next State) error {
	var cause error
	for {
		from := t.State
		if t.Entries[next] >= MaxEntries {
			over := fmt.Errorf("%w: %s entered %d times", ErrGaveUp, next, t.Entries[next])
			if next == RollingBack || next == RolledBack || next == Committed {
				// No state left to escape to: stop here and let the agent mark
				// the apps broken rather than loop.
				t.Error = over.Error()
				m.Journal.Save(t)
				return over
			}
			next, cause = RollingBack, over
		}
		if next == RollingBack && t.Error == "" && cause != nil {
			t.Error = cause.Error()
		}
		t.State = next
		t.Entries[next]++
		t.Updated = m.now()
		if next == Probation {
			t.Until = t.Updated.Add(t.Probation)
		}
		if err := m.Journal.Save(t); err != nil {
			return fmt.Errorf("persist %s: %w", next, err)
		}
		m.Journal.Event(t, from, next, cause)
		if m.CrashAt == next && m.Crash != nil {
			m.Crash(next)
		}
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		var err error
		next, err = m.step(ctx, t)
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		cause = err
		if err != nil && t.Error == "" && next == RollingBack {
			t.Error = err.Error()
		}
		if next == "" {
			if err != nil {
				return err
			}
			if t.State == RolledBack && t.Error != "" {
				return &RolledBackError{Reason: t.Error}
			}
			return nil
		}
	}
}

// step does the work of t.State and names the next state ("" when done).
func (m *Machine) step(ctx context.Context, t *Txn) (State, error) {
	switch t.State {
	case Staged:
		return Swapping, nil
	case Swapping:
		if err := m.Actions.Swap(ctx, t); err != nil {
			return RollingBack, fmt.Errorf("swap: %w", err)
		}
		return Probation, nil
	case Probation:
		if err := m.Actions.Watch(ctx, t); err != nil {
			return RollingBack, fmt.Errorf("probation: %w", err)
		}
		return Committed, nil
	case Committed:
		if err := m.Actions.Commit(ctx, t); err != nil {
			// A commit that cannot be written is retried by the next start (the
			// state stays committed, with the entry cap).
			return "", fmt.Errorf("commit: %w", err)
		}
		return "", nil
	case RollingBack:
		if err := m.Actions.Rollback(ctx, t); err != nil {
			return RollingBack, fmt.Errorf("roll back: %w", err)
		}
		return RolledBack, nil
	case RolledBack:
		if err := m.Actions.Discard(ctx, t); err != nil {
			return "", fmt.Errorf("discard: %w", err)
		}
		return "", nil
	}
	return RollingBack, fmt.Errorf("unknown state %q", t.State)
}

// RolledBackError is the result of a transaction that rolled back: the device runs
// the old versions again.
type RolledBackError struct{ Reason string }

func (e *RolledBackError) Error() string { return "rolled back: " + e.Reason }
