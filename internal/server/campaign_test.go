package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
)

// campaignOut is GET /api/v1/campaigns/{id}.
type campaignOut struct {
	store.Campaign
	Phases  []store.PhaseProgress  `json:"phases"`
	Totals  store.PhaseProgress    `json:"totals"`
	Devices []store.CampaignDevice `json:"devices"`
}

func (e *env) campaign(id string) campaignOut {
	e.t.Helper()
	var c campaignOut
	e.must(e.admin, "GET", "/api/v1/campaigns/"+id, nil, &c)
	return c
}

func (e *env) waitCampaign(id, what string, cond func(c campaignOut) bool) campaignOut {
	e.t.Helper()
	var c campaignOut
	waitFor(e.t, what, func() bool { c = e.campaign(id); return cond(c) })
	return c
}

// fleet enrolls n simulated devices labelled fleet=<label>.
func (e *env) fleet(n int, label string) []*sim {
	e.t.Helper()
	tok := e.token(e.admin, map[string]any{"max_uses": n, "labels": map[string]string{"fleet": label}})
	var out []*sim
	for range n {
		out = append(out, e.sim(tok, ""))
	}
	return out
}

func (e *env) releases(names ...string) {
	e.t.Helper()
	key := e.releaseKey(e.admin)
	for _, n := range names {
		e.mustUpload(e.admin, n, buildPackage(e.t, key, "alpha", strings.TrimPrefix(n, "v")+".0.0"))
	}
}

func byID(devs []*sim) map[string]*sim {
	out := map[string]*sim{}
	for _, d := range devs {
		out[d.ID()] = d
	}
	return out
}

func TestDesiredStateIsSignedVersionedRenewedAndRepublishedAfterRestart(t *testing.T) {
	e := &env{t: t, dir: t.TempDir()}
	e.bootWith(func(c *server.Config) { c.DesiredTTL = 3 * time.Second })
	t.Cleanup(func() { e.srv.Close() })
	e.releases("v1", "v2")
	dir := t.TempDir()
	dev := e.sim(e.token(e.admin, nil), dir)

	var d store.DesiredState
	e.must(e.admin, "PUT", "/api/v1/devices/"+dev.ID()+"/desired", map[string]any{"release": "v1"}, &d)
	if d.Version != 1 || d.Target.ReleaseName != "v1" || len(d.Target.Apps) != 1 || d.Target.Apps[0].Version != "1.0.0" {
		t.Fatalf("desired: %+v", d)
	}
	waitFor(t, "v1 applied", func() bool { return e.desired(e.admin, dev.ID()).Status == link.DesiredApplied })
	if dev.Running()["alpha"] != "1.0.0" {
		t.Fatalf("running %v", dev.Running())
	}
	e.must(e.admin, "PUT", "/api/v1/devices/"+dev.ID()+"/desired", map[string]any{"release": "v2"}, &d)
	if d.Version != 2 || d.TargetSince != 2 || d.Target.ReleaseName != "v2" {
		t.Fatalf("second document: %+v", d)
	}
	waitFor(t, "v2 applied", func() bool { return dev.Running()["alpha"] == "2.0.0" })

	// The document is renewed (next version, same target) before it expires, and
	// the device keeps accepting it.
	waitFor(t, "a renewal", func() bool { d = e.desired(e.admin, dev.ID()); return d.Version > 2 && dev.LastVersion() == d.Version })
	if d.Target.ReleaseName != "v2" || d.TargetSince != 2 || !d.ExpiresAt.After(time.Now()) {
		t.Fatalf("renewed: %+v", d)
	}
	var evs []store.DeviceEvent
	e.must(e.admin, "GET", "/api/v1/devices/"+dev.ID()+"/events", nil, &evs)
	if len(evs) < 6 || evs[0].Event.Kind != link.EventDesired {
		t.Fatalf("device events: %+v", evs)
	}
	types := e.eventTypes()
	for _, want := range []string{"desired.set", "desired.accepted", "desired.applying", "desired.applied"} {
		if !types[want] {
			t.Errorf("no %s event", want)
		}
	}

	// After a restart, versions go on from the stored one, and the embedded broker
	// (which lost its retained messages) has the document again for a device that
	// comes back with no memory of it.
	dev.stop()
	last := e.desired(e.admin, dev.ID()).Version
	e.restart()
	os.Remove(filepath.Join(dir, "sim-state.json"))
	again := e.sim("", dir)
	waitFor(t, "the retained document after restart", func() bool { return again.Running()["alpha"] == "2.0.0" })
	e.must(e.admin, "PUT", "/api/v1/devices/"+again.ID()+"/desired", map[string]any{"release": "v1"}, &d)
	if d.Version <= last {
		t.Fatalf("version %d after restart, last was %d: reused", d.Version, last)
	}
	waitFor(t, "rollback to v1 without download", func() bool { return again.Running()["alpha"] == "1.0.0" })
}

func TestCampaignCompletesPhaseByPhase(t *testing.T) {
	e := start(t)
	e.releases("v1")
	devs := e.fleet(4, "a")
	var c campaignOut
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "roll-v1", "release": "v1", "selector": "fleet=a",
		"phases": []string{"25%", "100%"}, "wait": "200ms"}, &c)
	if len(c.Devices) != 4 || c.Phases[0].Devices != 1 || c.Phases[1].Devices != 3 || c.Target != "selector:fleet=a" {
		t.Fatalf("created: %+v", c)
	}
	c = e.waitCampaign(c.ID, "completed", func(c campaignOut) bool { return c.State == store.CampaignCompleted })
	if c.Totals.Applied != 4 || c.Phase != 1 {
		t.Fatalf("completed: %+v", c)
	}
	for _, d := range devs {
		if d.Running()["alpha"] != "1.0.0" {
			t.Fatalf("%s runs %v", d.ID(), d.Running())
		}
	}
	types := e.eventTypes()
	for _, want := range []string{"campaign.created", "campaign.phase_started", "campaign.phase_completed", "campaign.completed"} {
		if !types[want] {
			t.Errorf("no %s event", want)
		}
	}
	var list []campaignOut
	e.must(e.admin, "GET", "/api/v1/campaigns", nil, &list)
	if len(list) != 1 || list[0].Totals.Applied != 4 {
		t.Fatalf("list: %+v", list)
	}
}

// TestCampaignPausesByItselfAtThresholdAndRollsBack: a release that fails on
// every device stops after its first phase; rolling back returns the phase's
// devices to v1 and the rest never get v2.
func TestCampaignPausesByItselfAtThresholdAndRollsBack(t *testing.T) {
	e := start(t)
	e.releases("v1", "v2")
	devs := e.fleet(4, "a")
	var c campaignOut
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "v1", "release": "v1", "selector": "fleet=a"}, &c)
	e.waitCampaign(c.ID, "v1 everywhere", func(c campaignOut) bool { return c.State == store.CampaignCompleted })
	for _, d := range devs {
		d.SetFail(func(doc *link.Desired) string {
			if doc.Release == "v2" {
				return "health check failed: exit status 1"
			}
			return ""
		})
	}
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "v2", "release": "v2", "selector": "fleet=a",
		"phases": []string{"50%", "100%"}, "max_failures": "1"}, &c)
	c = e.waitCampaign(c.ID, "paused at the threshold", func(c campaignOut) bool { return c.State == store.CampaignPaused })
	if !strings.Contains(c.Reason, "2 devices failed (max 1)") || c.Phases[0].Failed != 2 || c.Phases[1].Waiting != 2 {
		t.Fatalf("paused: %s %+v", c.Reason, c.Phases)
	}
	for _, d := range c.Devices {
		if d.Phase == 0 && (d.State != store.DevRolledBack || !strings.Contains(d.Message, "health check")) {
			t.Fatalf("phase 1 device: %+v", d)
		}
	}
	// Nothing more happens while it is paused.
	time.Sleep(300 * time.Millisecond)
	if again := e.campaign(c.ID); again.Phases[1].Waiting != 2 {
		t.Fatalf("assigned while paused: %+v", again.Phases)
	}

	e.must(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/rollback", nil, &c)
	c = e.waitCampaign(c.ID, "phase 1 reverted", func(c campaignOut) bool { return c.Totals.Reverted == 2 })
	if c.State != store.CampaignRolledBack || c.Totals.Skipped != 2 {
		t.Fatalf("rolled back: %+v", c)
	}
	sims := byID(devs)
	for _, d := range c.Devices {
		if got := sims[d.DeviceID].Running()["alpha"]; got != "1.0.0" {
			t.Fatalf("%s runs %s after rollback", d.DeviceID, got)
		}
		if ds := e.desired(e.admin, d.DeviceID); ds.Target.ReleaseName != "v1" {
			t.Fatalf("%s desired %+v", d.DeviceID, ds.Target)
		}
	}
	if code := e.do(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/rollback", nil, nil); code != 409 {
		t.Fatalf("second rollback: %d", code)
	}
	if code := e.do(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/resume", nil, nil); code != 409 {
		t.Fatalf("resume a rolled back campaign: %d", code)
	}
}

// TestCampaignResumeAcknowledgesFailuresAndCancelStopsAssigning covers the
// operator's actions.
func TestCampaignResumeAcknowledgesFailuresAndCancelStopsAssigning(t *testing.T) {
	e := start(t)
	e.releases("v1")
	devs := e.fleet(4, "a")
	var once sync.Once
	fail := func(*link.Desired) (msg string) { // the first device to apply fails; the others take their time
		once.Do(func() { msg = "probe failed" })
		if msg == "" {
			time.Sleep(300 * time.Millisecond)
		}
		return msg
	}
	for _, d := range devs {
		d.SetFail(fail)
	}
	var c campaignOut
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "c1", "release": "v1", "group": "", "selector": "fleet=a",
		"phases": []string{"2", "100%"}, "success": "50%", "max_failures": "0"}, &c)
	c = e.waitCampaign(c.ID, "paused at the first failure", func(c campaignOut) bool {
		return c.State == store.CampaignPaused && c.Phases[0].Applied+c.Phases[0].Failed == 2
	})
	if c.Phases[1].Waiting != 2 || !strings.Contains(c.Reason, "1 devices failed (max 0)") {
		t.Fatalf("paused: %s %+v", c.Reason, c.Phases)
	}
	e.must(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/resume", nil, &c)
	c = e.waitCampaign(c.ID, "completed after resume", func(c campaignOut) bool {
		return c.State == store.CampaignCompleted && c.Totals.Applied == 3 // completion needs half of phase 2; the other follows
	})
	if c.Totals.Applied != 3 || c.Totals.Failed != 1 || c.AckFailures != 1 {
		t.Fatalf("after resume: %+v", c)
	}

	// Pause, resume, cancel by hand; a cancelled campaign assigns nobody more.
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "c2", "release": "v1", "selector": "fleet=a",
		"phases": []string{"1", "100%"}, "wait": "1h"}, &c)
	c = e.waitCampaign(c.ID, "phase 1 done", func(c campaignOut) bool { return !c.PhaseDone.IsZero() })
	e.must(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/pause", nil, &c)
	if c.State != store.CampaignPaused || c.Reason != "paused by an operator" {
		t.Fatalf("pause: %+v", c)
	}
	if code := e.do(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/pause", nil, nil); code != 409 {
		t.Fatalf("second pause: %d", code)
	}
	e.must(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/resume", nil, &c)
	e.must(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/cancel", nil, &c)
	if c.State != store.CampaignCancelled || c.Totals.Skipped != 3 || c.Totals.Applied != 1 {
		t.Fatalf("cancel: %+v", c.Totals)
	}
	types := e.eventTypes()
	for _, want := range []string{"campaign.paused", "campaign.resumed", "campaign.cancelled", "desired.rolled_back"} {
		if !types[want] {
			t.Errorf("no %s event", want)
		}
	}
}

// TestCampaignSurvivesRestartAndWaitsForOfflineDevices: a device offline during
// its phase stays pending (the campaign waits), the server restarts meanwhile, and
// the campaign completes once the device is back.
func TestCampaignSurvivesRestartAndWaitsForOfflineDevices(t *testing.T) {
	e := start(t)
	e.releases("v1")
	devs := e.fleet(3, "a")
	var c campaignOut
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "c", "release": "v1", "selector": "fleet=a",
		"phases": []string{"1", "100%"}, "wait": "300ms"}, &c)
	// Take the second phase's devices offline before it starts.
	sims := byID(devs)
	var offline []*sim
	for _, d := range c.Devices {
		if d.Phase == 1 {
			sims[d.DeviceID].stop()
			offline = append(offline, sims[d.DeviceID])
		}
	}
	c = e.waitCampaign(c.ID, "phase 2 assigned", func(c campaignOut) bool { return c.Phase == 1 && c.Phases[1].Pending == 2 })
	e.restart()
	time.Sleep(200 * time.Millisecond)
	if c = e.campaign(c.ID); c.State != store.CampaignRunning || c.Phases[1].Pending != 2 {
		t.Fatalf("after restart: %+v", c)
	}
	for _, d := range offline {
		d.start()
	}
	c = e.waitCampaign(c.ID, "completed after the devices came back", func(c campaignOut) bool { return c.State == store.CampaignCompleted })
	for _, d := range offline {
		if d.Running()["alpha"] != "1.0.0" {
			t.Fatalf("%s runs %v", d.ID(), d.Running())
		}
	}
}

// TestCampaignPhaseTimeoutCountsSilentDevicesAsFailures documents the timeout
// rule: devices without an outcome when the phase times out become timed_out,
// which counts against the threshold; a late success still lands.
func TestCampaignPhaseTimeoutCountsSilentDevicesAsFailures(t *testing.T) {
	e := start(t)
	e.releases("v1")
	devs := e.fleet(2, "a")
	devs[0].stop()
	devs[1].stop()
	var c campaignOut
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "c", "release": "v1", "selector": "fleet=a",
		"phase_timeout": "300ms", "max_failures": "100%"}, &c)
	c = e.waitCampaign(c.ID, "paused by the timeout", func(c campaignOut) bool { return c.State == store.CampaignPaused })
	if !strings.Contains(c.Reason, "timed out") || c.Totals.Failed != 2 {
		t.Fatalf("timeout: %s %+v", c.Reason, c.Totals)
	}
	devs[0].start()
	devs[1].start()
	c = e.waitCampaign(c.ID, "late outcomes", func(c campaignOut) bool { return c.Totals.Applied == 2 })
	e.must(e.admin, "POST", "/api/v1/campaigns/"+c.ID+"/resume", nil, &c)
	e.waitCampaign(c.ID, "completed", func(c campaignOut) bool { return c.State == store.CampaignCompleted })
}

func TestCampaignRefusesBadInput(t *testing.T) {
	e := start(t)
	e.releases("v1")
	e.fleet(1, "a")
	for _, body := range []map[string]any{
		{"name": "x", "release": "v1"},
		{"name": "x", "release": "v1", "selector": "fleet=a", "group": "g"},
		{"name": "x", "release": "v1", "selector": "fleet=a", "phases": []string{"10"}, "max_failures": "lots"},
		{"name": "x", "release": "v1", "selector": "fleet=a", "phases": []string{"150%"}},
		{"name": "x", "release": "v1", "selector": "fleet=a", "wait": "soon"},
		{"name": "x", "release": "v1", "selector": "fleet=nobody"},
		{"name": "bad name", "release": "v1", "selector": "fleet=a"},
	} {
		if code := e.do(e.admin, "POST", "/api/v1/campaigns", body, nil); code != 400 {
			t.Errorf("%v: %d, want 400", body, code)
		}
	}
	if code := e.do(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "x", "release": "nope", "selector": "fleet=a"}, nil); code != 404 {
		t.Errorf("unknown release: %d", code)
	}
}
