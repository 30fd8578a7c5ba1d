package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/store/storetest"
)

var pg *storetest.Postgres

func TestMain(m *testing.M) { os.Exit(storetest.Main(m, &pg)) }

// each runs fn once per backend, each time on a fresh, empty database.
func each(t *testing.T, fn func(t *testing.T, s *store.Store, dsn string)) {
	for name, dsn := range storetest.Backends(t, pg) {
		t.Run(name, func(t *testing.T) {
			u := dsn(t)
			s, err := store.Open(context.Background(), u)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			fn(t, s, u)
		})
	}
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func seed(t *testing.T, s *store.Store, id string) {
	t.Helper()
	if err := s.CreateAccount(context.Background(), store.Account{ID: id, Name: "name-" + id, CACert: "c", CAKey: "k", DirectorKey: "d", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
}

func token(t *testing.T, s *store.Store, account, id string, mut func(*store.Token)) store.Token {
	t.Helper()
	tok := store.Token{ID: id, AccountID: account, Hash: "h-" + id, Labels: map[string]string{"env": "prod"},
		Approval: store.ApprovalAuto, MaxUses: 2, ExpiresAt: t0.Add(time.Hour), CreatedAt: t0}
	if mut != nil {
		mut(&tok)
	}
	if err := s.CreateToken(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

func enroll(s *store.Store, tok, dev string, now time.Time) (store.Device, error) {
	return s.Enroll(context.Background(), store.Enrollment{TokenID: tok, TokenHash: "h-" + tok, DeviceID: dev,
		KeyFingerprint: "kf-" + dev, Now: now,
		Issue: func() (store.Cert, error) {
			return store.Cert{Serial: "s-" + dev, Fingerprint: "f-" + dev + now.String(), NotAfter: now.Add(24 * time.Hour)}, nil
		}})
}

func TestAccountsAndKeys(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		if err := s.CreateAccount(ctx, store.Account{ID: "a2", Name: "name-a1", CreatedAt: t0}); !errors.Is(err, store.ErrExists) {
			t.Fatalf("duplicate name: %v", err)
		}
		if _, err := s.Account(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing account: %v", err)
		}
		k := store.APIKey{ID: "k1", AccountID: "a1", Name: "ci", Role: store.RoleOperator, Hash: "x", CreatedAt: t0}
		if err := s.CreateAPIKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		got, err := s.APIKey(ctx, "k1")
		if err != nil || got.Role != store.RoleOperator || got.AccountID != "a1" || !got.RevokedAt.IsZero() {
			t.Fatalf("got %+v, %v", got, err)
		}
		if err := s.RevokeAPIKey(ctx, "other", "k1", t0); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("revoke from another account: %v", err)
		}
		if err := s.RevokeAPIKey(ctx, "a1", "k1", t0); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeAPIKey(ctx, "a1", "k1", t0); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second revoke: %v", err)
		}
		if v, err := s.InitSetting(ctx, "ca", "first"); err != nil || v != "first" {
			t.Fatal(v, err)
		}
		if v, err := s.InitSetting(ctx, "ca", "second"); err != nil || v != "first" {
			t.Fatalf("InitSetting overwrote: %q %v", v, err)
		}
	})
}

func TestEnrollConsumesTokenOnceAndRefusesBadTokens(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		token(t, s, "a1", "old", func(tk *store.Token) { tk.ExpiresAt = t0.Add(-time.Second) })
		token(t, s, "a1", "gone", nil)
		if err := s.RevokeToken(ctx, "a1", "gone", t0); err != nil {
			t.Fatal(err)
		}
		d, err := enroll(s, "tok", "dev1", t0)
		if err != nil || d.Status != store.StatusActive || d.Labels["env"] != "prod" || d.CertSerial != "s-dev1" {
			t.Fatalf("enroll: %+v %v", d, err)
		}
		// Asking again with the same key and token is idempotent: no use consumed.
		if _, err := enroll(s, "tok", "dev1", t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if tk, _ := s.Token(ctx, "tok"); tk.Uses != 1 {
			t.Fatalf("uses = %d, want 1", tk.Uses)
		}
		if _, err := enroll(s, "tok", "dev2", t0); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			tok, dev string
			hash     string
			want     error
		}{
			{"tok", "dev3", "h-tok", store.ErrTokenExhausted},
			{"old", "dev3", "h-old", store.ErrTokenExpired},
			{"gone", "dev3", "h-gone", store.ErrTokenRevoked},
			{"tok", "dev3", "wrong", store.ErrTokenInvalid},
			{"nope", "dev3", "h-nope", store.ErrTokenInvalid},
		}
		for _, c := range cases {
			_, err := s.Enroll(ctx, store.Enrollment{TokenID: c.tok, TokenHash: c.hash, DeviceID: c.dev, Now: t0,
				Issue: func() (store.Cert, error) { return store.Cert{Serial: "x"}, nil }})
			if !errors.Is(err, c.want) {
				t.Errorf("%s: got %v, want %v", c.tok, err, c.want)
			}
		}
		if _, err := s.Device(ctx, "", "dev3"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("refused enrolment left a device: %v", err)
		}
		if tk, _ := s.Token(ctx, "tok"); tk.Uses != 2 {
			t.Fatalf("refused enrolment consumed a use: %d", tk.Uses)
		}
	})
}

func TestEnrollConcurrentUsesNeverExceedMax(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		seed(t, s, "a1")
		token(t, s, "a1", "tok", func(tk *store.Token) { tk.MaxUses = 5 })
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := enroll(s, "tok", "dev"+string(rune('a'+i)), t0); err == nil {
					mu.Lock()
					ok++
					mu.Unlock()
				} else if !errors.Is(err, store.ErrTokenExhausted) {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if ok != 5 {
			t.Fatalf("%d enrolments succeeded, want 5", ok)
		}
	})
}

func TestManualApprovalFlow(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		token(t, s, "a1", "man", func(tk *store.Token) { tk.Approval = store.ApprovalManual; tk.MaxUses = 5 })
		d, err := enroll(s, "man", "dev1", t0)
		if err != nil || d.Status != store.StatusPending || d.CertSerial != "" {
			t.Fatalf("%+v %v", d, err)
		}
		if d, _ := enroll(s, "man", "dev1", t0); d.Status != store.StatusPending {
			t.Fatalf("poll: %s", d.Status)
		}
		if _, err := s.Transition(ctx, "a1", "dev1", []store.DeviceStatus{store.StatusPending}, store.StatusAccepted, store.EventAccepted, t0); err != nil {
			t.Fatal(err)
		}
		if d, err := enroll(s, "man", "dev1", t0); err != nil || d.Status != store.StatusActive || d.CertSerial == "" {
			t.Fatalf("after accept: %+v %v", d, err)
		}
		enroll(s, "man", "dev2", t0)
		if _, err := s.Transition(ctx, "a1", "dev2", []store.DeviceStatus{store.StatusPending}, store.StatusRejected, store.EventRejected, t0); err != nil {
			t.Fatal(err)
		}
		if _, err := enroll(s, "man", "dev2", t0); !errors.Is(err, store.ErrRejected) {
			t.Fatalf("rejected device: %v", err)
		}
		if _, err := s.Transition(ctx, "a1", "dev2", []store.DeviceStatus{store.StatusPending}, store.StatusAccepted, store.EventAccepted, t0); !errors.Is(err, store.ErrWrongState) {
			t.Fatalf("accept a rejected device: %v", err)
		}
	})
}

func TestPresenceIgnoresStaleOffline(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		enroll(s, "tok", "dev1", t0)
		if ch, err := s.Online(ctx, "dev1", "s1", "127.0.0.1:1", t0); !ch || err != nil {
			t.Fatal(ch, err)
		}
		// The device reconnects (s2) before the broker delivers s1's will.
		if ch, err := s.Online(ctx, "dev1", "s2", "127.0.0.1:2", t0.Add(time.Second)); !ch || err != nil {
			t.Fatal(ch, err)
		}
		if ch, err := s.Offline(ctx, "dev1", "s1", t0.Add(2*time.Second)); ch || err != nil {
			t.Fatalf("stale offline applied: %v %v", ch, err)
		}
		d, _ := s.Device(ctx, "a1", "dev1")
		if !d.Online || d.RemoteAddr != "127.0.0.1:2" {
			t.Fatalf("device %+v", d)
		}
		if ch, _ := s.Offline(ctx, "dev1", "s2", t0.Add(3*time.Second)); !ch {
			t.Fatal("offline not applied")
		}
		conns, err := s.Connections(ctx, "dev1", 10)
		if err != nil || len(conns) != 2 || conns[0].Session != "s2" || conns[0].DisconnectedAt.IsZero() || conns[1].DisconnectedAt.IsZero() {
			t.Fatalf("connections %+v %v", conns, err)
		}
		evs, _ := s.Events(ctx, "a1", 0, 100)
		var types []string
		for _, e := range evs {
			types = append(types, e.Type)
		}
		if got := strings.Join(types, ","); got != "enrolled,online,online,offline" {
			t.Fatalf("events %s", got)
		}
		if evs, _ := s.Events(ctx, "other", 0, 100); len(evs) != 0 {
			t.Fatalf("events leak across accounts: %v", evs)
		}
	})
}

func TestReportStoresInventoryAndDedupes(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		enroll(s, "tok", "dev1", t0)
		doc := json.RawMessage(`{"agent": "1.0", "apps": [{"name":"hello","state":"running"}]}`)
		if ch, err := s.Report(ctx, "dev1", doc, t0); !ch || err != nil {
			t.Fatal(ch, err)
		}
		if ch, _ := s.Report(ctx, "dev1", doc, t0.Add(time.Second)); ch {
			t.Fatal("identical report counted as a change")
		}
		if _, err := s.Report(ctx, "dev1", json.RawMessage(`{not json`), t0); err == nil {
			t.Fatal("malformed report accepted")
		}
		d, _ := s.Device(ctx, "a1", "dev1")
		if string(d.Reported) != `{"agent":"1.0","apps":[{"name":"hello","state":"running"}]}` || !d.LastSeen.Equal(t0.Add(time.Second)) {
			t.Fatalf("%s %v", d.Reported, d.LastSeen)
		}
	})
}

func TestDeviceFiltersAndLabels(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		seed(t, s, "a2")
		token(t, s, "a1", "tok", func(tk *store.Token) { tk.MaxUses = 10 })
		token(t, s, "a2", "tok2", nil)
		for _, id := range []string{"dev1", "dev2", "dev3"} {
			if _, err := enroll(s, "tok", id, t0); err != nil {
				t.Fatal(err)
			}
		}
		enroll(s, "tok2", "other1", t0)
		if _, err := s.SetLabels(ctx, "a1", "dev2", map[string]string{"region": "eu", "env": ""}, t0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetLabels(ctx, "a2", "dev2", map[string]string{"x": "y"}, t0); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("labels across accounts: %v", err)
		}
		s.Online(ctx, "dev3", "s", "r", t0)
		ids := func(f store.DeviceFilter) string {
			ds, err := s.Devices(ctx, "a1", f)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, d := range ds {
				out = append(out, d.ID)
			}
			return strings.Join(out, ",")
		}
		sel := func(s string) store.Selector {
			v, err := store.ParseSelector(s)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		cases := []struct {
			f    store.DeviceFilter
			want string
		}{
			{store.DeviceFilter{}, "dev1,dev2,dev3"},
			{store.DeviceFilter{Selector: sel("env=prod")}, "dev1,dev3"},
			{store.DeviceFilter{Selector: sel("env!=prod")}, "dev2"},
			{store.DeviceFilter{Selector: sel("region")}, "dev2"},
			{store.DeviceFilter{Selector: sel("!region,env=prod")}, "dev1,dev3"},
			{store.DeviceFilter{Status: "online"}, "dev3"},
			{store.DeviceFilter{Status: "offline", Selector: sel("env=prod")}, "dev1"},
			{store.DeviceFilter{Text: "EU"}, "dev2"},
			{store.DeviceFilter{Text: "dev1"}, "dev1"},
			{store.DeviceFilter{After: "dev1", Limit: 1}, "dev2"},
		}
		for _, c := range cases {
			if got := ids(c.f); got != c.want {
				t.Errorf("%+v: got %s, want %s", c.f, got, c.want)
			}
		}
	})
}

func TestDecommissionForgetsCertificate(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		enroll(s, "tok", "dev1", t0)
		s.Online(ctx, "dev1", "s", "r", t0)
		d, err := s.Transition(ctx, "a1", "dev1", []store.DeviceStatus{store.StatusActive, store.StatusAccepted, store.StatusPending},
			store.StatusDecommissioned, store.EventDecommissioned, t0)
		if err != nil || d.CertFingerprint != "" || d.Online || d.DecommissionedAt.IsZero() {
			t.Fatalf("%+v %v", d, err)
		}
		if _, err := enroll(s, "tok", "dev1", t0); !errors.Is(err, store.ErrDecommissioned) {
			t.Fatalf("re-enrol decommissioned: %v", err)
		}
		if _, err := s.Online(ctx, "dev1", "s2", "r", t0); !errors.Is(err, store.ErrWrongState) {
			t.Fatalf("decommissioned device went online: %v", err)
		}
	})
}

// TestCommittedChangesSurviveReopen: what a method reported done is there after the
// database is closed and opened again (the server restarting).
func TestCommittedChangesSurviveReopen(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, dsn string) {
		ctx := context.Background()
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		enroll(s, "tok", "dev1", t0)
		s.Report(ctx, "dev1", json.RawMessage(`{"a":1}`), t0)
		s.Close()
		s2, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		d, err := s2.Device(ctx, "a1", "dev1")
		if err != nil || string(d.Reported) != `{"a":1}` {
			t.Fatalf("%+v %v", d, err)
		}
	})
}

func TestChangedWakesWaiters(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		ch := s.Changed()
		enroll(s, "tok", "dev1", t0)
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("Changed not closed after an event")
		}
	})
}
