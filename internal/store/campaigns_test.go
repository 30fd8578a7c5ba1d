package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// signer signs with a fixed director key and checks each document it signs.
func signer(t *testing.T) (store.Signing, trust.PublicKey) {
	k, err := trust.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return store.Signing{TTL: time.Hour, Sign: func(account string, d *link.Desired) ([]byte, error) {
		return link.SignDesired(d, k)
	}}, k.Public()
}

// release stores a release of one package per name@version.
func release(t *testing.T, s *store.Store, account, name string, apps ...string) store.Release {
	t.Helper()
	r := store.Release{ID: "r-" + name, AccountID: account, Name: name, CreatedAt: t0}
	for _, a := range apps {
		n, v, _ := strings.Cut(a, "@")
		digest := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(a)))
		r.Packages = append(r.Packages, store.Package{AccountID: account, Digest: digest, Kind: store.KindApp, Name: n, Version: v, Size: 10,
			Manifest: []byte(`{"format":1}`), Sig: []byte(`{}`), Blobs: []store.PackageBlob{{Digest: "sha256:" + strings.Repeat("b", 64), Size: 10}}, CreatedAt: t0})
	}
	out, err := s.CreateRelease(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// report records a desired-state report from a device.
func report(t *testing.T, s *store.Store, dev string, version uint64, state string) store.ReportResult {
	t.Helper()
	res, err := s.RecordDeviceEvent(context.Background(), dev, link.EventMessage{Kind: link.EventDesired, DesiredVersion: version, State: state, Time: t0}, t0)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func devicesOf(t *testing.T, s *store.Store, campaign string) map[string]store.CampaignDevice {
	ds, err := s.CampaignDevices(context.Background(), campaign)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]store.CampaignDevice{}
	for _, d := range ds {
		out[d.DeviceID] = d
	}
	return out
}

// TestCampaignRunsFromStoredStateAcrossRestarts drives a campaign with the store
// alone, closing and reopening the database between steps: each step continues
// exactly from what is stored (a server killed and restarted mid-campaign).
func TestCampaignRunsFromStoredStateAcrossRestarts(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, dsn string) {
		ctx := context.Background()
		reopen := func() {
			s.Close()
			var err error
			if s, err = store.Open(ctx, dsn); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { s.Close() })
		sg, director := signer(t)
		seed(t, s, "a1")
		token(t, s, "a1", "tok", func(tk *store.Token) { tk.MaxUses = 10 })
		var ids []string
		for i := range 4 {
			d, err := enroll(s, "tok", fmt.Sprintf("dev%d", i), t0)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, d.ID)
		}
		v1 := release(t, s, "a1", "v1", "alpha@1.0.0")
		v2 := release(t, s, "a1", "v2", "alpha@2.0.0", "beta@1.0.0")
		// Every device runs v1 first, set by an operator.
		for _, id := range ids {
			pub, err := s.SetDesired(ctx, store.DesiredChange{Account: "a1", Device: id, Target: store.TargetOf(v1, ""), Now: t0, TTL: sg.TTL, Sign: sg.Sign})
			if err != nil || pub.Version != 1 {
				t.Fatal(pub, err)
			}
			report(t, s, id, 1, link.DesiredApplied)
		}
		spec := store.CampaignSpec{Phases: amounts(t, "1", "100%"), Success: amounts(t, "100%")[0], MaxFailures: amounts(t, "1")[0]}
		c, err := s.CreateCampaign(ctx, store.Campaign{ID: "c1", AccountID: "a1", Name: "to-v2", ReleaseID: v2.ID, Target: "selector:", Spec: spec, CreatedAt: t0}, ids)
		if err != nil || c.State != store.CampaignRunning || c.ReleaseName != "v2" {
			t.Fatal(c, err)
		}
		now := t0.Add(time.Minute)
		pl, pubs, err := s.StepCampaign(ctx, "c1", now, sg)
		if err != nil || len(pubs) != 1 || pl.Assign[0] != ids[0] {
			t.Fatalf("first step: %+v %v %v", pl, pubs, err)
		}
		doc, err := link.VerifyDesired(pubs[0].Envelope, director, ids[0], 1, now)
		if err != nil || doc.Version != 2 || doc.Campaign != "c1" || doc.Release != "v2" || len(doc.Apps) != 2 || doc.Apps[1].Name != "beta" {
			t.Fatalf("document: %+v %v", doc, err)
		}
		// A second step with nothing new does nothing, even after a restart.
		reopen()
		if pl, pubs, err := s.StepCampaign(ctx, "c1", now, sg); err != nil || len(pubs) != 0 || pl.Changed(pl.Campaign) {
			t.Fatalf("idle step: %+v %v", pubs, err)
		}
		if res := report(t, s, ids[0], 2, link.DesiredApplied); res.Campaign != "c1" {
			t.Fatalf("report: %+v", res)
		}
		reopen()
		pl, pubs, err = s.StepCampaign(ctx, "c1", now, sg)
		if err != nil || len(pubs) != 3 || pl.Campaign.Phase != 1 {
			t.Fatalf("phase 2: %+v %v", pl, err)
		}
		// Two failures exceed max 1: paused, by itself.
		report(t, s, ids[1], 2, link.DesiredRolledBack)
		report(t, s, ids[2], 2, link.DesiredRejected)
		reopen()
		pl, _, err = s.StepCampaign(ctx, "c1", now, sg)
		if err != nil || pl.Campaign.State != store.CampaignPaused || !strings.Contains(pl.Campaign.Reason, "2 devices failed") {
			t.Fatalf("threshold: %+v %v", pl.Campaign, err)
		}
		if _, err := s.CampaignAction(ctx, "a1", "c1", store.ActionPause, now); !errors.Is(err, store.ErrCampaignState) {
			t.Fatalf("pause a paused campaign: %v", err)
		}
		if _, err := s.CampaignAction(ctx, "other", "c1", store.ActionResume, now); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("resume from another account: %v", err)
		}
		c, err = s.CampaignAction(ctx, "a1", "to-v2", store.ActionResume, now)
		if err != nil || c.State != store.CampaignRunning || c.AckFailures != 2 || c.AckPhaseFailures != 2 {
			t.Fatalf("resume: %+v %v", c, err)
		}
		report(t, s, ids[3], 2, link.DesiredApplying)
		report(t, s, ids[3], 2, link.DesiredApplied)
		report(t, s, ids[3], 2, link.DesiredApplying) // a late redelivery moves nothing back
		if pl, _, _ = s.StepCampaign(ctx, "c1", now, sg); pl.Campaign.State != store.CampaignRunning {
			t.Fatalf("after resume: %+v", pl.Campaign) // 2 of 3 in phase 2 failed: not 100% applied
		}

		// Roll back: every assigned device gets its v1 packages again.
		c, pubs, err = s.RollbackCampaign(ctx, "a1", "c1", now, sg)
		if err != nil || c.State != store.CampaignRolledBack || len(pubs) != 4 {
			t.Fatalf("rollback: %+v %d %v", c, len(pubs), err)
		}
		for _, p := range pubs {
			d, err := link.VerifyDesired(p.Envelope, director, p.DeviceID, 2, now)
			if err != nil || d.Release != "v1" || len(d.Apps) != 1 || d.Apps[0].Version != "1.0.0" || d.Campaign != "c1" {
				t.Fatalf("rollback document: %+v %v", d, err)
			}
			report(t, s, p.DeviceID, p.Version, link.DesiredApplied)
		}
		for id, d := range devicesOf(t, s, "c1") {
			if d.State != store.DevReverted {
				t.Fatalf("%s: %s after rollback", id, d.State)
			}
		}
		if _, _, err := s.RollbackCampaign(ctx, "a1", "c1", now, sg); !errors.Is(err, store.ErrCampaignState) {
			t.Fatalf("second rollback: %v", err)
		}
		evs, _ := s.Events(ctx, "a1", 0, 1000)
		seen := map[string]bool{}
		for _, e := range evs {
			seen[e.Type] = true
		}
		for _, want := range []string{"campaign.created", "campaign.phase_started", "campaign.phase_completed", "campaign.paused",
			"campaign.resumed", "campaign.rolled_back", "desired.applied", "desired.rolled_back", "desired.rejected", "desired.set"} {
			if !seen[want] {
				t.Errorf("no %s event", want)
			}
		}
	})
}

// TestDesiredVersionsAreNeverReusedAndReportsAreDeduplicated covers the desired
// state's invariants on both engines.
func TestDesiredVersionsAreNeverReusedAndReportsAreDeduplicated(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, dsn string) {
		ctx := context.Background()
		sg, _ := signer(t)
		seed(t, s, "a1")
		token(t, s, "a1", "tok", nil)
		d, _ := enroll(s, "tok", "dev", t0)
		v1 := release(t, s, "a1", "v1", "alpha@1.0.0")
		set := func() store.Publication {
			pub, err := s.SetDesired(ctx, store.DesiredChange{Account: "a1", Device: d.ID, Target: store.TargetOf(v1, ""), Now: t0, TTL: sg.TTL, Sign: sg.Sign})
			if err != nil {
				t.Fatal(err)
			}
			return pub
		}
		if set().Version != 1 || set().Version != 2 {
			t.Fatal("versions")
		}
		s.Close()
		s2, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		s = s2
		if v := set().Version; v != 3 {
			t.Fatalf("after reopening: version %d", v)
		}
		if _, err := s.SetDesired(ctx, store.DesiredChange{Account: "other", Device: d.ID, Target: store.TargetOf(v1, ""), Now: t0, TTL: sg.TTL, Sign: sg.Sign}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("another account: %v", err)
		}
		// Reports: a redelivered seq changes nothing; an older document's report does
		// not touch the current one's status.
		ev := link.EventMessage{Seq: 7, Kind: link.EventDesired, DesiredVersion: 3, State: link.DesiredApplied}
		if res, err := s.RecordDeviceEvent(ctx, d.ID, ev, t0); err != nil || res.Duplicate {
			t.Fatal(res, err)
		}
		if res, err := s.RecordDeviceEvent(ctx, d.ID, ev, t0); err != nil || !res.Duplicate {
			t.Fatalf("redelivery: %+v %v", res, err)
		}
		report(t, s, d.ID, 2, link.DesiredRejected)
		if ds, _ := s.Desired(ctx, "a1", d.ID); ds.Status != link.DesiredApplied || ds.StatusVersion != 3 {
			t.Fatalf("status %+v", ds)
		}
		// Unpublished documents until the broker took them.
		pubs, _ := s.Unpublished(ctx, false, "", 10)
		if len(pubs) != 1 || pubs[0].Version != 3 {
			t.Fatalf("unpublished: %+v", pubs)
		}
		s.MarkPublished(ctx, store.Publication{DeviceID: d.ID, Version: 2}) // an older version: no effect
		if pubs, _ := s.Unpublished(ctx, false, "", 10); len(pubs) != 1 {
			t.Fatal("marked by an older version")
		}
		s.MarkPublished(ctx, store.Publication{DeviceID: d.ID, Version: 3})
		if pubs, _ := s.Unpublished(ctx, false, "", 10); len(pubs) != 0 {
			t.Fatal("still unpublished")
		}
		if all, _ := s.Unpublished(ctx, true, "", 10); len(all) != 1 {
			t.Fatal("all documents")
		}
		if err := s.MarkAllUnpublished(ctx); err != nil {
			t.Fatal(err)
		}
		if pubs, _ := s.Unpublished(ctx, false, "", 10); len(pubs) != 1 {
			t.Fatal("not unpublished again")
		}
		s.MarkPublished(ctx, pubs[0])
		// Renewal: next version, same target and status.
		renewed, err := s.RenewDesired(ctx, t0.Add(2*time.Hour), t0.Add(50*time.Minute), time.Hour, sg.Sign, 10)
		if err != nil || len(renewed) != 1 || renewed[0].Version != 4 {
			t.Fatalf("renew: %+v %v", renewed, err)
		}
		if ds, _ := s.Desired(ctx, "a1", d.ID); ds.TargetSince != 3 || ds.Status != link.DesiredApplied || !ds.ExpiresAt.Equal(t0.Add(110*time.Minute)) {
			t.Fatalf("renewed %+v", ds)
		}
		// The device keeps its latest events only.
		for i := range store.DeviceEventsKept + 20 {
			if _, err := s.RecordDeviceEvent(ctx, d.ID, link.EventMessage{Seq: uint64(100 + i), Kind: "exit", App: "alpha"}, t0); err != nil {
				t.Fatal(err)
			}
		}
		evs, err := s.DeviceEvents(ctx, "a1", d.ID, 1000)
		if err != nil || len(evs) != store.DeviceEventsKept || evs[0].Event.Seq != uint64(100+store.DeviceEventsKept+19) {
			t.Fatalf("events: %d %v", len(evs), err)
		}
		if _, err := s.DeviceEvents(ctx, "other", d.ID, 10); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("another account's device events: %v", err)
		}
		// Hostile text from a device is stored safely on either engine.
		if _, err := s.RecordDeviceEvent(ctx, d.ID, link.EventMessage{Kind: link.EventDesired, DesiredVersion: 4, State: link.DesiredRolledBack,
			Message: "bad \x00 bytes \xff\xfe"}, t0); err != nil {
			t.Fatal(err)
		}
	})
}

func TestReleasesAreIsolatedPerAccount(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, _ string) {
		ctx := context.Background()
		seed(t, s, "a1")
		seed(t, s, "a2")
		r := release(t, s, "a1", "v1", "alpha@1.0.0")
		digest := r.Packages[0].Digest
		if _, _, err := s.ReleasedManifest(ctx, "a1", digest); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ReleasedManifest(ctx, "a2", digest); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("another account's manifest: %v", err)
		}
		if _, err := s.ReleasedBlob(ctx, "a1", "sha256:"+strings.Repeat("b", 64)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ReleasedBlob(ctx, "a2", "sha256:"+strings.Repeat("b", 64)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("another account's blob: %v", err)
		}
		if _, err := s.CreateRelease(ctx, store.Release{ID: "r-x", AccountID: "a1", Name: "v1", CreatedAt: t0,
			Packages: []store.Package{{Digest: digest}}}); !errors.Is(err, store.ErrExists) {
			t.Fatalf("same name: %v", err)
		}
		if _, err := s.CreateRelease(ctx, store.Release{ID: "r-y", AccountID: "a2", Name: "v1", CreatedAt: t0,
			Packages: []store.Package{{Digest: digest}}}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("another account's package by digest: %v", err)
		}
		if rs, _ := s.Releases(ctx, "a2"); len(rs) != 0 {
			t.Fatalf("a2 sees %v", rs)
		}
	})
}

// TestConcurrentStepsAssignEachDeviceOnce: two stores on one database (two server
// replicas) stepping the same campaign at once assign each device exactly once,
// with one document version each.
func TestConcurrentStepsAssignEachDeviceOnce(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, dsn string) {
		ctx := context.Background()
		other, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		sg, _ := signer(t)
		seed(t, s, "a1")
		token(t, s, "a1", "tok", func(tk *store.Token) { tk.MaxUses = 50 })
		var ids []string
		for i := range 30 {
			d, err := enroll(s, "tok", fmt.Sprintf("dev%02d", i), t0)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, d.ID)
		}
		v1 := release(t, s, "a1", "v1", "alpha@1.0.0")
		spec := store.CampaignSpec{Phases: amounts(t, "100%"), Success: amounts(t, "100%")[0]}
		if _, err := s.CreateCampaign(ctx, store.Campaign{ID: "c1", AccountID: "a1", Name: "c", ReleaseID: v1.ID, Spec: spec, CreatedAt: t0}, ids); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		assigned := map[string]int{}
		var wg sync.WaitGroup
		for _, st := range []*store.Store{s, other, s, other} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 5 {
					_, pubs, err := st.StepCampaign(ctx, "c1", t0, sg)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, p := range pubs {
						assigned[p.DeviceID]++
						if p.Version != 1 {
							t.Errorf("%s: version %d", p.DeviceID, p.Version)
						}
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(assigned) != 30 {
			t.Fatalf("%d devices assigned, want 30", len(assigned))
		}
		for id, n := range assigned {
			if n != 1 {
				t.Fatalf("%s assigned %d times", id, n)
			}
		}
	})
}
