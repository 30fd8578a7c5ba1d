package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// Campaign states.
const (
	CampaignRunning    = "running"     // assigning phase by phase
	CampaignPaused     = "paused"      // by an operator, a failure threshold or a phase timeout: nothing new is assigned
	CampaignCompleted  = "completed"   // the last phase met its success condition
	CampaignCancelled  = "cancelled"   // stopped by an operator: devices not yet assigned never will be
	CampaignRolledBack = "rolled_back" // its devices were given back what they ran before
)

// States of a device in a campaign.
const (
	DevWaiting      = "waiting"              // its phase has not started
	DevPending      = "pending"              // its desired state was published; no report yet (offline devices stay here)
	DevAccepted     = link.DesiredAccepted   // verified the document, downloading
	DevApplying     = link.DesiredApplying   // the update transaction runs
	DevApplied      = link.DesiredApplied    // success
	DevRolledBack   = link.DesiredRolledBack // failure: the device rolled itself back
	DevRejected     = link.DesiredRejected   // failure: refused before changing anything
	DevTimedOut     = "timed_out"            // failure: no outcome before the phase timeout (a late outcome replaces it)
	DevSkipped      = "skipped"              // never assigned: cancelled, or no longer an active device
	DevSuperseded   = "superseded"           // left the campaign: another campaign or an operator gave it another target
	DevReverting    = "reverting"            // rollback published: back to what it ran before
	DevReverted     = "reverted"             // rollback applied
	DevRevertFailed = "revert_failed"        // rollback refused or failed on the device
)

// failed reports the device states that count against a campaign's thresholds.
func failed(state string) bool {
	return state == DevRolledBack || state == DevRejected || state == DevTimedOut
}

// ErrBadCampaign reports a campaign specification that does not parse.
var ErrBadCampaign = errors.New("invalid campaign")

// Amount is a share of a set of devices: a percentage ("10%") or a count ("5").
type Amount struct {
	Value   float64
	Percent bool
}

// ParseAmount parses "10%", "2.5%" or "5".
func ParseAmount(s string) (Amount, error) {
	s = strings.TrimSpace(s)
	if v, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 100 || math.IsNaN(f) {
			return Amount{}, fmt.Errorf("%w: %q is not a percentage from 0%% to 100%%", ErrBadCampaign, s)
		}
		return Amount{Value: f, Percent: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return Amount{}, fmt.Errorf("%w: %q is neither a percentage (10%%) nor a device count", ErrBadCampaign, s)
	}
	return Amount{Value: float64(n)}, nil
}

func (a Amount) String() string {
	if a.Percent {
		return strconv.FormatFloat(a.Value, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(int(a.Value))
}

// Of is how many of n devices the amount names: a percentage rounded up, a count
// capped at n.
func (a Amount) Of(n int) int {
	if a.Percent {
		return min(n, int(math.Ceil(a.Value*float64(n)/100-1e-9)))
	}
	return min(n, int(a.Value))
}

// Exceeded reports whether failures of n devices are over the threshold a.
func (a Amount) Exceeded(failures, n int) bool {
	if a.Percent {
		return float64(failures)*100 > a.Value*float64(n)+1e-9
	}
	return failures > int(a.Value)
}

func (a Amount) MarshalJSON() ([]byte, error) { return json.Marshal(a.String()) }

func (a *Amount) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseAmount(s)
	*a = v
	return err
}

// Duration is a time.Duration written as "1m30s" in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// CampaignSpec is how a campaign rolls out.
type CampaignSpec struct {
	// Phases are cumulative: "10%,50%,100%" gives the release to 10% of the
	// devices, then to half of them, then to all. Counts work too ("1,10,100%").
	Phases []Amount `json:"phases"`
	// Wait is the pause between a phase meeting its success condition and the
	// next phase starting.
	Wait Duration `json:"wait"`
	// Success is how many of a phase's devices must have applied the release for
	// the campaign to move on (default 100%).
	Success Amount `json:"success"`
	// MaxFailures pauses the campaign once failures exceed it: a percentage of the
	// current phase's devices, or a count over the whole campaign. The default, 0,
	// pauses at the first failure. Failures are rolled_back, rejected and
	// timed_out devices.
	MaxFailures Amount `json:"max_failures"`
	// PhaseTimeout, if set, ends a phase that has not met its success condition
	// in time: its devices without an outcome become timed_out (failures) and the
	// campaign pauses.
	PhaseTimeout Duration `json:"phase_timeout,omitempty"`
}

// Campaign is a release rolled out to a set of devices in phases. Every field the
// runner reads is stored, so what it does next is a function of this row, its
// devices' rows and the clock.
type Campaign struct {
	ID          string       `json:"id"`
	AccountID   string       `json:"-"`
	Name        string       `json:"name"`
	ReleaseID   string       `json:"release_id"`
	ReleaseName string       `json:"release"`
	Target      string       `json:"target"` // "group:NAME" or "selector:SEL", as created
	Spec        CampaignSpec `json:"spec"`
	State       string       `json:"state"`
	Reason      string       `json:"reason,omitempty"` // why it paused
	Phase       int          `json:"phase"`            // index of the current phase
	// PhaseStarted is when the current phase's devices were assigned (zero: not
	// yet); PhaseDone when it met its success condition (zero: not yet).
	PhaseStarted time.Time `json:"phase_started,omitzero"`
	PhaseDone    time.Time `json:"phase_done,omitzero"`
	// AckFailures and AckPhaseFailures are the failures an operator acknowledged
	// by resuming: the thresholds count only failures beyond them.
	AckFailures      int       `json:"ack_failures,omitempty"`
	AckPhaseFailures int       `json:"ack_phase_failures,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

// CampaignDevice is one device of a campaign.
type CampaignDevice struct {
	CampaignID     string    `json:"-"`
	DeviceID       string    `json:"device"`
	Phase          int       `json:"phase"`
	Position       int       `json:"-"`
	State          string    `json:"state"`
	Message        string    `json:"message,omitempty"`
	DesiredVersion uint64    `json:"desired_version,omitempty"`
	PrevRelease    string    `json:"previous_release,omitempty"`
	PrevTarget     *Target   `json:"-"` // what it ran before the campaign assigned it (nil: nothing)
	UpdatedAt      time.Time `json:"updated_at"`
	Active         bool      `json:"-"` // the device is active in the directory
}

// PhaseProgress counts a phase's devices by state.
type PhaseProgress struct {
	Phase      int    `json:"phase"` // 1-based, for people
	Amount     string `json:"amount"`
	Devices    int    `json:"devices"` // in the phase, not counting skipped and superseded
	Waiting    int    `json:"waiting"`
	Pending    int    `json:"pending"`
	InProgress int    `json:"in_progress"`
	Applied    int    `json:"applied"`
	Failed     int    `json:"failed"`
	Skipped    int    `json:"skipped"`
	Reverting  int    `json:"reverting"`
	Reverted   int    `json:"reverted"`
	RevertFail int    `json:"revert_failed"`
}

// Progress counts each phase's devices.
func Progress(c Campaign, devs []CampaignDevice) []PhaseProgress {
	out := make([]PhaseProgress, len(c.Spec.Phases))
	for i := range out {
		out[i] = PhaseProgress{Phase: i + 1, Amount: c.Spec.Phases[i].String()}
	}
	for _, d := range devs {
		if d.Phase < 0 || d.Phase >= len(out) {
			continue
		}
		countState(&out[d.Phase], d.State)
	}
	return out
}

func countState(p *PhaseProgress, state string) {
	p.Devices++
	switch {
	case state == DevWaiting:
		p.Waiting++
	case state == DevPending:
		p.Pending++
	case state == DevAccepted || state == DevApplying:
		p.InProgress++
	case state == DevApplied:
		p.Applied++
	case failed(state):
		p.Failed++
	case state == DevSkipped || state == DevSuperseded:
		p.Skipped++
		p.Devices--
	case state == DevReverting:
		p.Reverting++
	case state == DevReverted:
		p.Reverted++
	case state == DevRevertFailed:
		p.RevertFail++
	}
}

// PhaseOf assigns the device at position i (0-based, of n) to the first phase
// whose cumulative amount covers it; devices beyond the last phase get -1.
func PhaseOf(spec CampaignSpec, i, n int) int {
	for p, a := range spec.Phases {
		if i < a.Of(n) {
			return p
		}
	}
	return -1
}

// PlanEvent is an event a step records in the account's log.
type PlanEvent struct {
	Type string
	Data map[string]any
}

// Plan is what one step of a campaign does: the campaign as it must be stored
// after the step, and the device changes that go with it.
type Plan struct {
	Campaign Campaign
	Assign   []string // give these devices the release now (they become pending)
	Skip     []string // no longer active devices: never assigned
	TimedOut []string // devices whose phase timed out without an outcome
	Events   []PlanEvent
	Wake     time.Time // when the plan would change with time alone (zero: only on a report or an action)
}

// Changed reports whether the plan changes anything.
func (p Plan) Changed(before Campaign) bool {
	c := p.Campaign
	return len(p.Assign)+len(p.Skip)+len(p.TimedOut)+len(p.Events) > 0 || c.State != before.State || c.Phase != before.Phase ||
		!c.PhaseStarted.Equal(before.PhaseStarted) || !c.PhaseDone.Equal(before.PhaseDone) || c.Reason != before.Reason
}

// PlanCampaign is the campaign runner: given a campaign, its devices and the time,
// it decides the next step. It is a pure function of stored state, so the server
// may run it on a ticker, after each report, on several replicas, and again after
// a crash, and the campaign goes on exactly where it was.
//
// A running campaign, phase by phase: assign the phase's waiting devices (skip those
// no longer active); then, in this order, pause when failures exceed MaxFailures;
// time the phase out when PhaseTimeout passed (its devices without an outcome
// become timed_out, which may exceed the threshold; else the campaign pauses for
// the timeout); when enough devices applied, mark the phase done and, after Wait,
// start the next one (or complete the campaign after the last).
func PlanCampaign(c Campaign, devs []CampaignDevice, now time.Time) Plan {
	pl := Plan{Campaign: c}
	if c.State != CampaignRunning || len(c.Spec.Phases) == 0 {
		return pl
	}
	state := make([]string, len(devs))
	for i, d := range devs {
		state[i] = d.State
	}
	cp := &pl.Campaign
	event := func(typ string, data map[string]any) {
		data["phase"] = cp.Phase + 1
		pl.Events = append(pl.Events, PlanEvent{Type: typ, Data: data})
	}
	last := len(c.Spec.Phases) - 1
	for {
		p := cp.Phase
		for i, d := range devs {
			if d.Phase < 0 || d.Phase > p {
				continue
			}
			switch {
			case !d.Active && (state[i] == DevWaiting || state[i] == DevPending):
				pl.Skip, state[i] = append(pl.Skip, d.DeviceID), DevSkipped
			case state[i] == DevWaiting:
				pl.Assign, state[i] = append(pl.Assign, d.DeviceID), DevPending
			}
		}
		if cp.PhaseStarted.IsZero() {
			cp.PhaseStarted = now
			event("campaign.phase_started", map[string]any{})
		}
		prog, total := progressOf(devs, state, p)
		need := c.Spec.Success.Of(prog.Devices)
		success := prog.Applied >= need
		timedOut := c.Spec.PhaseTimeout > 0 && !now.Before(cp.PhaseStarted.Add(time.Duration(c.Spec.PhaseTimeout)))
		if timedOut && !success && cp.PhaseDone.IsZero() {
			for i, d := range devs {
				if d.Phase == p && (state[i] == DevPending || state[i] == DevAccepted || state[i] == DevApplying) {
					pl.TimedOut, state[i] = append(pl.TimedOut, d.DeviceID), DevTimedOut
				}
			}
			prog, total = progressOf(devs, state, p)
		}
		if reason := overThreshold(c.Spec.MaxFailures, cp, prog, total); reason != "" {
			cp.State, cp.Reason = CampaignPaused, reason
			event("campaign.paused", map[string]any{"reason": reason})
			return pl
		}
		if !success {
			if timedOut && cp.PhaseDone.IsZero() {
				cp.State = CampaignPaused
				cp.Reason = fmt.Sprintf("phase %d timed out after %s: %d of %d devices applied, %d needed",
					p+1, time.Duration(c.Spec.PhaseTimeout), prog.Applied, prog.Devices, need)
				event("campaign.paused", map[string]any{"reason": cp.Reason})
			} else if c.Spec.PhaseTimeout > 0 {
				pl.Wake = cp.PhaseStarted.Add(time.Duration(c.Spec.PhaseTimeout))
			}
			return pl
		}
		if cp.PhaseDone.IsZero() {
			cp.PhaseDone = now
			event("campaign.phase_completed", map[string]any{"applied": prog.Applied, "devices": prog.Devices})
		}
		if p == last {
			for i, d := range devs {
				if d.Phase < 0 && state[i] == DevWaiting { // beyond a last phase under 100%
					pl.Skip, state[i] = append(pl.Skip, d.DeviceID), DevSkipped
				}
			}
			cp.State, cp.Reason = CampaignCompleted, ""
			event("campaign.completed", map[string]any{})
			return pl
		}
		if next := cp.PhaseDone.Add(time.Duration(c.Spec.Wait)); now.Before(next) {
			pl.Wake = next
			return pl
		}
		cp.Phase, cp.PhaseStarted, cp.PhaseDone, cp.AckPhaseFailures = p+1, time.Time{}, time.Time{}, 0
	}
}

// progressOf counts phase p with the states as planned so far, and the failures
// of the whole campaign.
func progressOf(devs []CampaignDevice, state []string, p int) (PhaseProgress, int) {
	var prog PhaseProgress
	total := 0
	for i, d := range devs {
		if failed(state[i]) {
			total++
		}
		if d.Phase == p {
			countState(&prog, state[i])
		}
	}
	return prog, total
}

// overThreshold says why failures exceed the threshold ("" if they do not): a
// percentage is of the current phase's devices, a count is over the campaign.
func overThreshold(max Amount, c *Campaign, prog PhaseProgress, total int) string {
	if max.Percent {
		if f := prog.Failed - c.AckPhaseFailures; f > 0 && max.Exceeded(f, prog.Devices) {
			return fmt.Sprintf("failures over threshold: %d of %d devices in phase %d failed (max %s)", f, prog.Devices, c.Phase+1, max)
		}
		return ""
	}
	if f := total - c.AckFailures; f > 0 && max.Exceeded(f, 0) {
		return fmt.Sprintf("failures over threshold: %d devices failed (max %s)", f, max)
	}
	return ""
}
