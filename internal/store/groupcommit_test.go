package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// TestDeviceMessagesCommittedTogetherStayIndependent: many devices' messages
// arrive at once on SQLite (so they share transactions); messages of a
// decommissioned device fail alone, with their own error, and leave nothing;
// every other message is stored exactly once and survives a reopen; a caller
// whose context is already done gets its error and writes nothing.
func TestDeviceMessagesCommittedTogetherStayIndependent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tern.db")
	s, err := store.Open(ctx, "sqlite://"+path)
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s, "a1")
	token(t, s, "a1", "tok", func(tk *store.Token) { tk.MaxUses = 50 })
	var ids []string
	for i := range 20 {
		d, err := enroll(s, "tok", fmt.Sprintf("d%02d", i), t0)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	gone := ids[0]
	if _, err := s.Transition(ctx, "a1", gone, []store.DeviceStatus{store.StatusActive}, store.StatusDecommissioned, store.EventDecommissioned, t0); err != nil {
		t.Fatal(err)
	}
	evsBefore, _ := s.Events(ctx, "a1", 0, 10000)

	const perDevice = 30
	var wg sync.WaitGroup
	errs := make(chan error, len(ids)*perDevice)
	for _, id := range ids {
		for k := range perDevice {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if k%2 == 0 {
					_, err = s.Report(ctx, id, []byte(fmt.Sprintf(`{"k":%d}`, k)), t0)
				} else {
					_, err = s.RecordDeviceEvent(ctx, id, link.EventMessage{Seq: uint64(k), Kind: "exit", Time: t0}, t0)
				}
				if id == gone {
					if !errors.Is(err, store.ErrWrongState) {
						errs <- fmt.Errorf("decommissioned device: %v", err)
					}
					return
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s.LargestGroup() < 2 {
		t.Fatalf("no messages were committed together (largest group %d): the test did not exercise groups", s.LargestGroup())
	}
	t.Logf("largest group: %d messages", s.LargestGroup())
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Report(cancelled, ids[1], []byte(`{"cancelled":true}`), t0); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled report: %v", err)
	}
	s.Close()

	s, err = store.Open(ctx, "sqlite://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.Events(ctx, "a1", 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	reported := map[string]int{}
	for _, e := range evs[len(evsBefore):] {
		if e.Type == store.EventReported {
			reported[e.DeviceID]++
		}
	}
	for _, id := range ids[1:] {
		if reported[id] != perDevice/2 {
			t.Errorf("%s: %d reported events, want %d", id, reported[id], perDevice/2)
		}
		kept, err := s.DeviceEvents(ctx, "a1", id, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(kept) != perDevice/2 {
			t.Errorf("%s: %d device events kept, want %d", id, len(kept), perDevice/2)
		}
		if d, _ := s.Device(ctx, "a1", id); string(d.Reported) == `{"cancelled":true}` {
			t.Errorf("%s: the cancelled report was stored", id)
		}
	}
	if reported[gone] != 0 {
		t.Errorf("decommissioned device: %d reported events", reported[gone])
	}
}

// TestDeviceMessagesDuringCloseAllReturn: messages that arrive while the store
// closes get an answer (stored, or an error), none waits for ever.
func TestDeviceMessagesDuringCloseAllReturn(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "tern.db"))
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s, "a1")
	token(t, s, "a1", "tok", nil)
	d, err := enroll(s, "tok", "d1", t0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	closed := make(chan struct{})
	for k := range 400 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Report(ctx, d.ID, []byte(fmt.Sprintf(`{"k":%d}`, k)), t0) // context.Background: no deadline to save it
			<-closed
			for j := range 5 { // and after Close
				s.Report(ctx, d.ID, []byte(fmt.Sprintf(`{"k":%d,"j":%d}`, k, j)), t0)
			}
		}()
	}
	s.Close()
	close(closed)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("device messages still waiting 20 s after Close")
	}
}
