package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// TestDevModePolicyReachesEveryDeviceOfTheAccount: a deny policy gives every
// active device of the account a document that says so (a first one, listing
// no app, to a device without a release; the same target, renewed, to one with
// a release), leaves other accounts alone, converges (a second sync has nothing
// to do), follows later enrollments, and allow lifts it the same way.
func TestDevModePolicyReachesEveryDeviceOfTheAccount(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, dsn string) {
		ctx := context.Background()
		sg, pub := signer(t)
		seed(t, s, "a1")
		seed(t, s, "a2")
		token(t, s, "a1", "tok", func(tk *store.Token) { tk.MaxUses = 5 })
		token(t, s, "a2", "tok2", nil)
		bare, _ := enroll(s, "tok", "bare", t0)
		withApp, _ := enroll(s, "tok", "with-app", t0)
		other, _ := enroll(s, "tok2", "other", t0)
		v1 := release(t, s, "a1", "v1", "alpha@1.0.0")
		if _, err := s.SetDesired(ctx, store.DesiredChange{Account: "a1", Device: withApp.ID, Target: store.TargetOf(v1, ""), Now: t0, TTL: sg.TTL, Sign: sg.Sign}); err != nil {
			t.Fatal(err)
		}
		sync := func() map[string]*link.Desired {
			t.Helper()
			pubs, err := s.SyncDevModePolicy(ctx, t0, sg.TTL, sg.Sign, 100)
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]*link.Desired{}
			for _, p := range pubs {
				d, err := link.VerifyDesired(p.Envelope, pub, p.DeviceID, p.Version-1, t0)
				if err != nil {
					t.Fatalf("%s: %v", p.DeviceID, err)
				}
				out[p.DeviceID] = d
			}
			return out
		}
		if got := sync(); len(got) != 0 {
			t.Fatalf("allow (the default) re-issued %d documents", len(got))
		}

		if _, err := s.SetDevModePolicy(ctx, "a1", "maybe", t0); !errors.Is(err, store.ErrBadPolicy) {
			t.Fatalf("bad policy: %v", err)
		}
		a, err := s.SetDevModePolicy(ctx, "a1", store.DevModeDeny, t0)
		if err != nil || a.DevMode != store.DevModeDeny {
			t.Fatalf("%+v %v", a, err)
		}
		got := sync()
		if len(got) != 2 || got[bare.ID] == nil || got[withApp.ID] == nil || got[other.ID] != nil {
			t.Fatalf("deny re-issued for %v", keys(got))
		}
		if d := got[bare.ID]; d.DevMode != link.DevModeDeny || len(d.Apps) != 0 || d.Version != 1 || d.Since != 1 {
			t.Fatalf("device without a release: %+v", d)
		}
		// Re-issued, the same target: Since still names the version that set it.
		if d := got[withApp.ID]; d.DevMode != link.DevModeDeny || len(d.Apps) != 1 || d.Apps[0].Name != "alpha" || d.Version != 2 || d.Since != 1 {
			t.Fatalf("device with a release: %+v", d)
		}
		if got := sync(); len(got) != 0 {
			t.Fatalf("second sync re-issued %v", keys(got))
		}
		// The target of the device with a release is unchanged, its status kept.
		if ds, _ := s.Desired(ctx, "a1", withApp.ID); ds.TargetSince != 1 || ds.Target.ReleaseName != "v1" {
			t.Fatalf("target %+v", ds)
		}
		// A document for a new target carries the policy too.
		p, err := s.SetDesired(ctx, store.DesiredChange{Account: "a1", Device: withApp.ID, Target: store.TargetOf(v1, ""), Now: t0, TTL: sg.TTL, Sign: sg.Sign})
		if err != nil {
			t.Fatal(err)
		}
		if d, err := link.VerifyDesired(p.Envelope, pub, withApp.ID, 0, t0); err != nil || d.DevMode != link.DevModeDeny || d.Since != d.Version {
			t.Fatalf("new target under deny: %+v %v", d, err)
		}
		// A device enrolled under the policy.
		late, _ := enroll(s, "tok", "late", t0)
		if got := sync(); len(got) != 1 || got[late.ID] == nil || got[late.ID].DevMode != link.DevModeDeny {
			t.Fatalf("late enrollment: %v", keys(got))
		}
		// Events: the change is recorded once; setting the same policy again is no change.
		if _, err := s.SetDevModePolicy(ctx, "a1", store.DevModeDeny, t0); err != nil {
			t.Fatal(err)
		}
		evs, err := s.Events(ctx, "a1", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Type == store.EventPolicy {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d policy events", n)
		}

		if _, err := s.SetDevModePolicy(ctx, "a1", store.DevModeAllow, t0); err != nil {
			t.Fatal(err)
		}
		got = sync()
		if len(got) != 3 || got[other.ID] != nil {
			t.Fatalf("allow re-issued for %v", keys(got))
		}
		for id, d := range got {
			if d.DevMode != "" {
				t.Fatalf("%s still told %q", id, d.DevMode)
			}
		}
		if got := sync(); len(got) != 0 {
			t.Fatalf("second sync after allow re-issued %v", keys(got))
		}
		if a, _ := s.Account(ctx, "a2"); a.DevMode != store.DevModeAllow {
			t.Fatalf("other account: %q", a.DevMode)
		}
	})
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
