package store_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/store"
)

func amounts(t *testing.T, ss ...string) []store.Amount {
	var out []store.Amount
	for _, s := range ss {
		a, err := store.ParseAmount(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// fleet makes n campaign devices placed in phases by spec, with the given states
// by index; the others are pending up to phase upTo (assigned already), waiting
// after it.
func fleet(spec store.CampaignSpec, n, upTo int, states map[int]string) []store.CampaignDevice {
	var out []store.CampaignDevice
	for i := range n {
		p := store.PhaseOf(spec, i, n)
		st := states[i]
		switch {
		case st != "":
		case p >= 0 && p <= upTo:
			st = store.DevPending
		default:
			st = store.DevWaiting
		}
		out = append(out, store.CampaignDevice{DeviceID: fmt.Sprintf("d%02d", i), Phase: p, Position: i, State: st, Active: true})
	}
	return out
}

// TestPlanCampaign is the runner's behaviour as a table: each case is a stored
// campaign, its devices and the time; the plan is what the runner does next.
func TestPlanCampaign(t *testing.T) {
	now := t0.Add(time.Hour)
	spec := func(phases ...string) store.CampaignSpec {
		return store.CampaignSpec{Phases: amounts(t, phases...), Success: amounts(t, "100%")[0], MaxFailures: amounts(t, "0")[0]}
	}
	running := func(s store.CampaignSpec, phase int, started time.Time) store.Campaign {
		return store.Campaign{ID: "c", State: store.CampaignRunning, Spec: s, Phase: phase, PhaseStarted: started}
	}
	s3 := spec("10%", "50%", "100%") // of 10 devices: phases of 1, 4 and 5
	waitSpec := s3
	waitSpec.Wait = store.Duration(time.Minute)
	pct := spec("50%", "100%")
	pct.MaxFailures = amounts(t, "20%")[0]
	count := spec("2", "100%")
	count.MaxFailures = amounts(t, "1")[0]
	timeout := spec("100%")
	timeout.PhaseTimeout = store.Duration(10 * time.Minute)
	timeout.MaxFailures = amounts(t, "100%")[0]
	lenient := spec("50%", "100%")
	lenient.Success = amounts(t, "60%")[0]
	canary := spec("1", "20%")
	applied, failed := store.DevApplied, store.DevRolledBack

	cases := []struct {
		name     string
		c        store.Campaign
		devs     []store.CampaignDevice
		state    string
		phase    int
		assign   int
		timedOut int
		skip     int
		reason   string
		events   []string
		wake     time.Time
	}{
		{name: "first step assigns the first phase", c: running(s3, 0, time.Time{}), devs: fleet(s3, 10, -1, nil),
			state: store.CampaignRunning, assign: 1, events: []string{"campaign.phase_started"}},
		{name: "nothing new while the phase runs", c: running(s3, 0, t0), devs: fleet(s3, 10, 0, map[int]string{0: store.DevApplying}),
			state: store.CampaignRunning},
		{name: "a phase applied starts the next at once", c: running(s3, 0, t0), devs: fleet(s3, 10, 0, map[int]string{0: applied}),
			state: store.CampaignRunning, phase: 1, assign: 4, events: []string{"campaign.phase_completed", "campaign.phase_started"}},
		{name: "wait holds the next phase", c: running(waitSpec, 0, t0), devs: fleet(waitSpec, 10, 0, map[int]string{0: applied}),
			state: store.CampaignRunning, events: []string{"campaign.phase_completed"}, wake: now.Add(time.Minute)},
		{name: "the wait over, the next phase starts", c: func() store.Campaign { c := running(waitSpec, 0, t0); c.PhaseDone = now.Add(-time.Minute); return c }(),
			devs: fleet(waitSpec, 10, 0, map[int]string{0: applied}), state: store.CampaignRunning, phase: 1, assign: 4, events: []string{"campaign.phase_started"}},
		{name: "the last phase applied completes", c: running(s3, 2, t0), devs: fleet(s3, 10, 2, map[int]string{0: applied, 1: applied, 2: applied, 3: applied, 4: applied,
			5: applied, 6: applied, 7: applied, 8: applied, 9: applied}), state: store.CampaignCompleted, phase: 2,
			events: []string{"campaign.phase_completed", "campaign.completed"}},
		{name: "failures at the percentage threshold continue", c: running(pct, 0, t0), devs: fleet(pct, 10, 0, map[int]string{0: failed, 1: store.DevPending}),
			state: store.CampaignRunning},
		{name: "failures over the percentage threshold pause", c: running(pct, 0, t0), devs: fleet(pct, 10, 0, map[int]string{0: failed, 1: store.DevRejected}),
			state: store.CampaignPaused, reason: "2 of 5 devices in phase 1 failed (max 20%)", events: []string{"campaign.paused"}},
		{name: "a failure pauses before success is judged", c: running(spec("100%"), 0, t0), devs: fleet(spec("100%"), 3, 0, map[int]string{0: applied, 1: applied, 2: failed}),
			state: store.CampaignPaused, reason: "1 devices failed (max 0)"},
		{name: "a count threshold counts the whole campaign", c: running(count, 1, t0), devs: fleet(count, 6, 1, map[int]string{0: failed, 1: applied, 2: store.DevTimedOut}),
			state: store.CampaignPaused, phase: 1, reason: "2 devices failed (max 1)"},
		{name: "acknowledged failures do not pause again", c: func() store.Campaign { c := running(count, 1, t0); c.AckFailures = 2; return c }(),
			devs: fleet(count, 6, 1, map[int]string{0: failed, 1: applied, 2: store.DevTimedOut}), state: store.CampaignRunning, phase: 1},
		{name: "a paused campaign does nothing", c: func() store.Campaign { c := running(s3, 0, t0); c.State = store.CampaignPaused; return c }(),
			devs: fleet(s3, 10, 0, map[int]string{0: applied}), state: store.CampaignPaused},
		{name: "a cancelled campaign does nothing", c: func() store.Campaign { c := running(s3, 0, t0); c.State = store.CampaignCancelled; return c }(),
			devs: fleet(s3, 10, 0, nil), state: store.CampaignCancelled},
		{name: "before the timeout, the runner asks to wake at it", c: running(timeout, 0, now.Add(-time.Minute)), devs: fleet(timeout, 2, 0, map[int]string{0: store.DevPending, 1: applied}),
			state: store.CampaignRunning, wake: now.Add(9 * time.Minute)},
		{name: "at the timeout silent devices time out and the campaign pauses", c: running(timeout, 0, now.Add(-10*time.Minute)),
			devs: fleet(timeout, 3, 0, map[int]string{0: store.DevPending, 1: store.DevAccepted, 2: applied}), state: store.CampaignPaused, timedOut: 2,
			reason: "phase 1 timed out after 10m0s: 1 of 3 devices applied, 3 needed"},
		{name: "success below 100% moves on with devices pending", c: running(lenient, 0, t0), devs: fleet(lenient, 10, 0, map[int]string{0: applied, 1: applied, 2: applied, 3: store.DevPending, 4: store.DevPending}),
			state: store.CampaignRunning, phase: 1, assign: 5},
		{name: "inactive devices are skipped, not assigned", c: running(s3, 0, time.Time{}), devs: func() []store.CampaignDevice {
			d := fleet(s3, 10, -1, nil)
			d[0].Active = false
			return d
		}(), state: store.CampaignRunning, phase: 1, skip: 1, assign: 4},
		{name: "a last phase under 100% completes and skips the rest", c: running(canary, 1, t0), devs: fleet(canary, 10, 1, map[int]string{0: applied, 1: applied}),
			state: store.CampaignCompleted, phase: 1, skip: 8},
		{name: "superseded devices leave the phase's count", c: running(spec("100%"), 0, t0), devs: fleet(spec("100%"), 2, 0, map[int]string{0: applied, 1: store.DevSuperseded}),
			state: store.CampaignCompleted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pl := store.PlanCampaign(c.c, c.devs, now)
			got := pl.Campaign
			if got.State != c.state || got.Phase != c.phase || len(pl.Assign) != c.assign || len(pl.TimedOut) != c.timedOut || len(pl.Skip) != c.skip {
				t.Fatalf("state %s phase %d assign %d timed out %d skip %d; want %s %d %d %d %d (reason %q)", got.State, got.Phase, len(pl.Assign),
					len(pl.TimedOut), len(pl.Skip), c.state, c.phase, c.assign, c.timedOut, c.skip, got.Reason)
			}
			if !strings.Contains(got.Reason, c.reason) || (c.reason == "" && got.Reason != "") {
				t.Fatalf("reason %q, want %q", got.Reason, c.reason)
			}
			var types []string
			for _, e := range pl.Events {
				types = append(types, e.Type)
			}
			if c.events != nil && !slices.Equal(types, c.events) {
				t.Fatalf("events %v, want %v", types, c.events)
			}
			if !pl.Wake.Equal(c.wake) {
				t.Fatalf("wake %v, want %v", pl.Wake, c.wake)
			}
			// Planning again on the planned result changes nothing: the runner may
			// run any number of times on the same stored state.
			after := slices.Clone(c.devs)
			for i := range after {
				switch {
				case slices.Contains(pl.Assign, after[i].DeviceID):
					after[i].State = store.DevPending
				case slices.Contains(pl.TimedOut, after[i].DeviceID):
					after[i].State = store.DevTimedOut
				case slices.Contains(pl.Skip, after[i].DeviceID):
					after[i].State = store.DevSkipped
				}
			}
			if again := store.PlanCampaign(got, after, now); again.Changed(got) {
				t.Fatalf("a second step changes things: %+v", again)
			}
		})
	}
}

func TestAmounts(t *testing.T) {
	for _, c := range []struct {
		s       string
		of10    int
		bad     bool
		exceeds [2]int // failures, n that exceed
	}{
		{s: "10%", of10: 1, exceeds: [2]int{2, 10}},
		{s: "15%", of10: 2, exceeds: [2]int{2, 10}},
		{s: "100%", of10: 10, exceeds: [2]int{11, 10}},
		{s: "3", of10: 3, exceeds: [2]int{4, 0}},
		{s: "30", of10: 10, exceeds: [2]int{31, 0}},
		{s: "0", of10: 0, exceeds: [2]int{1, 0}},
		{s: "101%", bad: true}, {s: "-1", bad: true}, {s: "x%", bad: true}, {s: "", bad: true}, {s: "NaN%", bad: true},
	} {
		a, err := store.ParseAmount(c.s)
		if c.bad {
			if err == nil {
				t.Errorf("%q parsed", c.s)
			}
			continue
		}
		if err != nil || a.Of(10) != c.of10 || a.String() != c.s {
			t.Errorf("%q: %+v %v of 10 = %d", c.s, a, err, a.Of(10))
		}
		if !a.Exceeded(c.exceeds[0], c.exceeds[1]) || a.Exceeded(c.exceeds[0]-1, c.exceeds[1]) {
			t.Errorf("%q: threshold at %d of %d wrong", c.s, c.exceeds[0], c.exceeds[1])
		}
	}
}

func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"10%", "0", "100%", "2.5%", "-1", "1e3%", "NaN%", "Inf", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := store.ParseAmount(s)
		if err != nil {
			return
		}
		if n := a.Of(1000); n < 0 || n > 1000 {
			t.Fatalf("%q of 1000 = %d", s, n)
		}
		if b, err := store.ParseAmount(a.String()); err != nil || b != a {
			t.Fatalf("%q: %q does not parse back (%v)", s, a.String(), err)
		}
	})
}

// FuzzPlanCampaign plans campaigns over arbitrary device states and checks the
// runner's invariants: it never assigns a device outside the started phases or
// twice, and a second step on its own result changes nothing.
func FuzzPlanCampaign(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7}, uint8(1), uint8(0))
	f.Add([]byte{5, 5, 5, 0, 0, 0}, uint8(0), uint8(2))
	states := []string{store.DevWaiting, store.DevPending, store.DevAccepted, store.DevApplying, store.DevApplied, store.DevRolledBack,
		store.DevRejected, store.DevTimedOut, store.DevSkipped, store.DevSuperseded}
	f.Fuzz(func(t *testing.T, raw []byte, phase, maxFail uint8) {
		if len(raw) == 0 || len(raw) > 200 {
			return
		}
		spec := store.CampaignSpec{Phases: amounts(t, "10%", "50%", "100%"), Success: amounts(t, "80%")[0],
			MaxFailures: store.Amount{Value: float64(maxFail % 4)}, PhaseTimeout: store.Duration(time.Hour)}
		c := store.Campaign{ID: "c", State: store.CampaignRunning, Spec: spec, Phase: int(phase % 3), PhaseStarted: t0}
		var devs []store.CampaignDevice
		for i, b := range raw {
			p := store.PhaseOf(spec, i, len(raw))
			st := states[int(b)%len(states)]
			if p > c.Phase {
				st = store.DevWaiting
			}
			devs = append(devs, store.CampaignDevice{DeviceID: fmt.Sprint(i), Phase: p, State: st, Active: b < 250})
		}
		now := t0.Add(time.Duration(raw[0]) * time.Minute)
		pl := store.PlanCampaign(c, devs, now)
		seen := map[string]bool{}
		for _, id := range pl.Assign {
			var d store.CampaignDevice
			for _, x := range devs {
				if x.DeviceID == id {
					d = x
				}
			}
			if seen[id] || d.State != store.DevWaiting || d.Phase > pl.Campaign.Phase || d.Phase < 0 {
				t.Fatalf("assigned %s (%+v) at phase %d", id, d, pl.Campaign.Phase)
			}
			seen[id] = true
		}
		after := slices.Clone(devs)
		for i := range after {
			switch {
			case slices.Contains(pl.Assign, after[i].DeviceID):
				after[i].State = store.DevPending
			case slices.Contains(pl.TimedOut, after[i].DeviceID):
				after[i].State = store.DevTimedOut
			case slices.Contains(pl.Skip, after[i].DeviceID):
				after[i].State = store.DevSkipped
			}
		}
		if again := store.PlanCampaign(pl.Campaign, after, now); again.Changed(pl.Campaign) {
			t.Fatalf("not idempotent: %+v then %+v", pl.Campaign, again)
		}
	})
}
