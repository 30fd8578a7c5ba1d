package update

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// fakeActions records which actions ran and fails those named in fail.
type fakeActions struct {
	ran  []string
	fail map[string]error
}

func (f *fakeActions) do(name string) error {
	f.ran = append(f.ran, name)
	return f.fail[name]
}
func (f *fakeActions) Swap(context.Context, *Txn) error     { return f.do("swap") }
func (f *fakeActions) Watch(context.Context, *Txn) error    { return f.do("watch") }
func (f *fakeActions) Commit(context.Context, *Txn) error   { return f.do("commit") }
func (f *fakeActions) Rollback(context.Context, *Txn) error { return f.do("rollback") }
func (f *fakeActions) Discard(context.Context, *Txn) error  { return f.do("discard") }

type memJournal struct {
	saved  []State
	events [][2]State
}

func (j *memJournal) Save(t *Txn) error { j.saved = append(j.saved, t.State); return nil }
func (j *memJournal) Event(t *Txn, from, to State, err error) {
	j.events = append(j.events, [2]State{from, to})
}

func TestMachinePaths(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name      string
		fail      map[string]error
		wantSaved []State
		wantRan   []string
		rolled    bool
	}{
		{"success", nil, []State{Staged, Swapping, Probation, Committed}, []string{"swap", "watch", "commit"}, false},
		{"probation fails", map[string]error{"watch": boom}, []State{Staged, Swapping, Probation, RollingBack, RolledBack}, []string{"swap", "watch", "rollback", "discard"}, true},
		{"swap fails", map[string]error{"swap": boom}, []State{Staged, Swapping, RollingBack, RolledBack}, []string{"swap", "rollback", "discard"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			act, j := &fakeActions{fail: tc.fail}, &memJournal{}
			m := &Machine{Actions: act, Journal: j}
			err := m.Start(context.Background(), &Txn{ID: "t"})
			var rb *RolledBackError
			if tc.rolled != errors.As(err, &rb) {
				t.Fatalf("Start = %v, rolled back %v", err, tc.rolled)
			}
			if !tc.rolled && err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(j.saved, tc.wantSaved) {
				t.Fatalf("saved %v, want %v", j.saved, tc.wantSaved)
			}
			if !slices.Equal(act.ran, tc.wantRan) {
				t.Fatalf("ran %v, want %v", act.ran, tc.wantRan)
			}
		})
	}
}

func TestRecoverDecidesEachInterruptedState(t *testing.T) {
	want := map[State]State{
		Staged: Swapping, Swapping: RollingBack, Probation: Probation,
		Committed: Committed, RollingBack: RollingBack, RolledBack: RolledBack, "from-the-future": RollingBack,
	}
	for from, to := range want {
		if got := Recover(&Txn{State: from}); got != to {
			t.Errorf("Recover(%s) = %s, want %s", from, got, to)
		}
	}
}

func TestProbationCutTooOftenRollsBack(t *testing.T) {
	act, j := &fakeActions{}, &memJournal{}
	m := &Machine{Actions: act, Journal: j}
	tx := &Txn{ID: "t", State: Probation, Entries: map[State]int{Probation: MaxEntries}}
	err := m.Resume(context.Background(), tx)
	var rb *RolledBackError
	if !errors.As(err, &rb) {
		t.Fatalf("Resume = %v, want a rollback", err)
	}
	if tx.State != RolledBack || !slices.Contains(act.ran, "rollback") || slices.Contains(act.ran, "watch") {
		t.Fatalf("state %s, ran %v", tx.State, act.ran)
	}
}

func TestRollbackThatKeepsFailingGivesUp(t *testing.T) {
	act := &fakeActions{fail: map[string]error{"rollback": errors.New("disk on fire")}}
	m := &Machine{Actions: act, Journal: &memJournal{}}
	tx := &Txn{ID: "t", State: Swapping, Entries: map[State]int{}}
	err := m.Resume(context.Background(), tx)
	if !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Resume = %v, want ErrGaveUp", err)
	}
	if n := tx.Entries[RollingBack]; n != MaxEntries {
		t.Fatalf("rolling_back entered %d times, want the cap %d", n, MaxEntries)
	}
}

func TestCrashHookFiresAfterPersisting(t *testing.T) {
	j := &memJournal{}
	var crashedAt State
	ctx, cancel := context.WithCancel(context.Background())
	m := &Machine{Actions: &fakeActions{}, Journal: j, CrashAt: Probation, Crash: func(s State) { crashedAt = s; cancel() }}
	err := m.Start(ctx, &Txn{ID: "t"})
	if !errors.Is(err, ErrInterrupted) || crashedAt != Probation || j.saved[len(j.saved)-1] != Probation {
		t.Fatalf("err %v crashed at %s saved %v", err, crashedAt, j.saved)
	}
}
