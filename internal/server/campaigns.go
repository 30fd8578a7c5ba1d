package server

import (
	"context"
	"crypto/sha256"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/store"
)

// runner drives campaigns: it steps a campaign (store.StepCampaign, which plans
// with the pure store.PlanCampaign) when a report about it arrives, when an
// operator acts on it, at the time its plan said it would change (a wait or a
// timeout ends), and every tick for all running campaigns. Because each step is a
// function of stored state, a restarted server simply steps again and the
// campaign continues where it was.
type runner struct {
	s         *Server
	mu        sync.Mutex
	kicked    map[string]bool
	wake      chan struct{}
	republish chan struct{}
	policy    chan struct{} // developer-mode policy documents to re-issue
	next      time.Time     // earliest time a plan asked to be woken
}

// kickEvery is the shortest time between two steps of kicked campaigns.
const kickEvery = 250 * time.Millisecond

func newRunner(s *Server) *runner {
	r := &runner{s: s, kicked: map[string]bool{}, wake: make(chan struct{}, 1), republish: make(chan struct{}, 1), policy: make(chan struct{}, 1)}
	r.requestRepublish()  // at start: the embedded broker keeps retained messages in memory only
	r.requestPolicySync() // at start: finish what a crash may have interrupted
	return r
}

// requestRepublish asks for every stored document to be published again: at
// start, and whenever the server (re)connects to an external broker, which may
// have lost its retained messages.
func (r *runner) requestRepublish() {
	select {
	case r.republish <- struct{}{}:
	default:
	}
}

// requestPolicySync asks for the documents of devices that do not carry their
// account's developer-mode policy to be re-issued: after a policy change and an
// enrollment; housekeeping catches anything else.
func (r *runner) requestPolicySync() {
	select {
	case r.policy <- struct{}{}:
	default:
	}
}

// syncPolicy re-issues and publishes, in batches, every document that does not
// carry its account's developer-mode policy.
func (r *runner) syncPolicy(ctx context.Context) {
	const batch = 500
	for ctx.Err() == nil {
		now := r.s.now()
		pubs, err := r.s.store.SyncDevModePolicy(ctx, now, r.s.cfg.DesiredTTL, r.s.signing(ctx).Sign, batch)
		r.s.pub.publish(ctx, pubs)
		if len(pubs) > 0 {
			r.s.log.Info("desired states re-issued for the developer-mode policy", "devices", len(pubs))
		}
		if err != nil {
			// The devices that failed are tried again at the next housekeeping;
			// the others of the batch got their documents.
			if ctx.Err() == nil {
				r.s.log.Warn("developer-mode policy", "err", err)
			}
			return
		}
		if len(pubs) < batch {
			return
		}
	}
}

// kick asks for a step of campaign id soon; kicks coalesce.
func (r *runner) kick(id string) {
	r.mu.Lock()
	r.kicked[id] = true
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *runner) run(ctx context.Context) {
	tick := time.NewTicker(r.s.cfg.CampaignTick)
	defer tick.Stop()
	r.stepRunning(ctx)
	var lastKick time.Time
	for n := 1; ; n++ {
		var timer <-chan time.Time
		r.mu.Lock()
		if !r.next.IsZero() {
			timer = time.After(time.Until(r.next))
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-r.policy:
			r.syncPolicy(ctx)
		case <-r.republish:
			if err := r.s.pub.publishStored(ctx, true); err != nil && ctx.Err() == nil {
				r.s.log.Warn("publish desired states", "err", err)
			}
		case <-r.wake:
			// Reports kick their campaign; a step reads all of the campaign's
			// devices, so stepping once per report costs O(devices) per report:
			// at 10,000 devices reporting at once that kept the write lock busy
			// and the CPU saturated. Kicks that arrive meanwhile are stepped
			// together, at most every kickEvery.
			if wait := kickEvery - time.Since(lastKick); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			lastKick = time.Now()
			r.mu.Lock()
			ids := make([]string, 0, len(r.kicked))
			for id := range r.kicked {
				ids = append(ids, id)
			}
			clear(r.kicked)
			r.mu.Unlock()
			for _, id := range ids {
				r.step(ctx, id)
			}
		case <-timer:
			r.mu.Lock()
			r.next = time.Time{}
			r.mu.Unlock()
			r.stepRunning(ctx)
		case <-tick.C:
			r.stepRunning(ctx)
			if n%15 == 0 {
				r.housekeep(ctx)
			}
		}
	}
}

// stepRunning steps every running campaign.
func (r *runner) stepRunning(ctx context.Context) {
	ids, err := r.s.store.RunningCampaigns(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.s.log.Warn("campaigns", "err", err)
		}
		return
	}
	for _, id := range ids {
		r.step(ctx, id)
	}
}

// step runs one step of a campaign and publishes what it assigned.
func (r *runner) step(ctx context.Context, id string) {
	pl, pubs, err := r.s.store.StepCampaign(ctx, id, r.s.now(), r.s.signing(ctx))
	if err != nil {
		if ctx.Err() == nil {
			r.s.log.Warn("campaign step", "campaign", id, "err", err)
		}
		return
	}
	for _, e := range pl.Events {
		r.s.log.Info(e.Type, "campaign", id, "name", pl.Campaign.Name, "phase", e.Data["phase"], "reason", e.Data["reason"])
	}
	if len(pl.Assign) > 0 {
		r.s.log.Info("campaign assigned devices", "campaign", id, "phase", pl.Campaign.Phase+1, "devices", len(pl.Assign))
	}
	r.s.pub.publish(ctx, pubs)
	if !pl.Wake.IsZero() {
		r.mu.Lock()
		if r.next.IsZero() || pl.Wake.Before(r.next) {
			r.next = pl.Wake
		}
		r.mu.Unlock()
	}
}

// housekeep publishes documents the broker did not take, and renews documents
// that would expire within half their lifetime.
func (r *runner) housekeep(ctx context.Context) {
	if err := r.s.pub.publishStored(ctx, false); err != nil && ctx.Err() == nil {
		r.s.log.Warn("publish desired states", "err", err)
	}
	now := r.s.now()
	pubs, err := r.s.store.RenewDesired(ctx, now.Add(r.s.cfg.DesiredTTL/2), now, r.s.cfg.DesiredTTL, r.s.signing(ctx).Sign, 1000)
	if err != nil && ctx.Err() == nil {
		r.s.log.Warn("renew desired states", "err", err)
	}
	if len(pubs) > 0 {
		r.s.log.Info("desired states renewed", "devices", len(pubs))
	}
	r.s.pub.publish(ctx, pubs)
	r.syncPolicy(ctx)
}

// campaignReq creates a campaign.
type campaignReq struct {
	Name         string   `json:"name"`
	Release      string   `json:"release"`            // id or name
	Group        string   `json:"group,omitempty"`    // id or name; or
	Selector     string   `json:"selector,omitempty"` // a label selector
	Phases       []string `json:"phases,omitempty"`   // cumulative: ["10%","50%","100%"] or counts; default ["100%"]
	Wait         string   `json:"wait,omitempty"`     // between phases, e.g. "10m"
	Success      string   `json:"success,omitempty"`  // of a phase's devices applied to move on; default "100%"
	MaxFailures  string   `json:"max_failures,omitempty"`
	PhaseTimeout string   `json:"phase_timeout,omitempty"`
}

// CampaignView is a campaign with its progress per phase and in total, and (when
// shown alone) its devices.
type CampaignView struct {
	store.Campaign
	Phases  []store.PhaseProgress  `json:"phases"`
	Totals  store.PhaseProgress    `json:"totals"`
	Devices []store.CampaignDevice `json:"devices,omitempty"`
}

func (s *Server) viewCampaign(ctx context.Context, c store.Campaign, withDevices bool) (CampaignView, error) {
	devs, err := s.store.CampaignDevices(ctx, c.ID)
	if err != nil {
		return CampaignView{}, err
	}
	v := CampaignView{Campaign: c, Phases: store.Progress(c, devs)}
	for _, p := range v.Phases {
		v.Totals.Devices += p.Devices
		v.Totals.Waiting += p.Waiting
		v.Totals.Pending += p.Pending
		v.Totals.InProgress += p.InProgress
		v.Totals.Applied += p.Applied
		v.Totals.Failed += p.Failed
		v.Totals.Skipped += p.Skipped
		v.Totals.Reverting += p.Reverting
		v.Totals.Reverted += p.Reverted
		v.Totals.RevertFail += p.RevertFail
	}
	if withDevices {
		v.Devices = devs
	}
	return v, nil
}

func (r campaignReq) spec() (store.CampaignSpec, error) {
	var spec store.CampaignSpec
	phases := r.Phases
	if len(phases) == 0 {
		phases = []string{"100%"}
	}
	if len(phases) > 20 {
		return spec, badRequest("at most 20 phases")
	}
	for i, p := range phases {
		a, err := store.ParseAmount(p)
		if err != nil {
			return spec, err
		}
		if a.Value == 0 {
			return spec, badRequest("phase %d is empty", i+1)
		}
		spec.Phases = append(spec.Phases, a)
	}
	var err error
	if spec.Success, err = amountOr(r.Success, "100%"); err != nil {
		return spec, err
	}
	if spec.MaxFailures, err = amountOr(r.MaxFailures, "0"); err != nil {
		return spec, err
	}
	for _, d := range []struct {
		v   string
		dst *store.Duration
	}{{r.Wait, &spec.Wait}, {r.PhaseTimeout, &spec.PhaseTimeout}} {
		if d.v == "" {
			continue
		}
		v, err := parseDuration(d.v)
		if err != nil || v < 0 {
			return spec, badRequest("bad duration %q", d.v)
		}
		*d.dst = store.Duration(v)
	}
	return spec, nil
}

func amountOr(s, def string) (store.Amount, error) {
	if s == "" {
		s = def
	}
	return store.ParseAmount(s)
}

func (s *Server) postCampaign(w http.ResponseWriter, r *http.Request, c *caller) error {
	ctx := r.Context()
	var req campaignReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if !releaseNameRE.MatchString(req.Name) {
		return badRequest("campaign name must be 1 to 128 letters, digits and ._+- (starting with a letter or digit)")
	}
	spec, err := req.spec()
	if err != nil {
		return err
	}
	rel, err := s.store.Release(ctx, c.Account, req.Release)
	if err != nil {
		return err
	}
	var filter store.DeviceFilter
	var target string
	switch {
	case (req.Group == "") == (req.Selector == ""):
		return badRequest("a campaign targets a group or a label selector (one of them)")
	case req.Group != "":
		g, err := s.store.Group(ctx, c.Account, req.Group)
		if err != nil {
			return err
		}
		target = "group:" + g.Name
		if g.Selector != "" {
			if filter.Selector, err = store.ParseSelector(g.Selector); err != nil {
				return err
			}
		} else {
			filter.Members = g.ID
		}
	default:
		if filter.Selector, err = store.ParseSelector(req.Selector); err != nil {
			return err
		}
		target = "selector:" + filter.Selector.String()
	}
	filter.Status = string(store.StatusActive)
	devs, err := s.allDevices(ctx, c.Account, filter)
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		return badRequest("no active device in %s", target)
	}
	now := s.now()
	camp := store.Campaign{ID: "c-" + randomID(6), AccountID: c.Account, Name: req.Name, ReleaseID: rel.ID, Target: target, Spec: spec,
		CreatedAt: now}
	spread(camp.ID, devs)
	created, err := s.store.CreateCampaign(ctx, camp, devs)
	if err != nil {
		return err
	}
	s.log.Info("campaign created", "campaign", created.ID, "name", created.Name, "release", rel.Name, "devices", len(devs), "target", target)
	s.runner.step(ctx, created.ID)
	return s.writeCampaign(w, r, c, created.ID, 201)
}

// spread orders devices by a hash of the campaign and device ids: each campaign's
// first phase is a different, stable sample of the fleet, not the same
// alphabetically first devices every time.
func spread(campaign string, ids []string) {
	key := func(id string) string {
		sum := sha256.Sum256([]byte(campaign + "/" + id))
		return string(sum[:])
	}
	slices.SortFunc(ids, func(a, b string) int { return strings.Compare(key(a), key(b)) })
}

// allDevices pages through every device matching f.
func (s *Server) allDevices(ctx context.Context, account string, f store.DeviceFilter) ([]string, error) {
	var ids []string
	for {
		ds, err := s.store.Devices(ctx, account, f)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			ids = append(ids, d.ID)
		}
		if len(ds) < 1000 {
			return ids, nil
		}
		f.After = ds[len(ds)-1].ID
	}
}

func (s *Server) writeCampaign(w http.ResponseWriter, r *http.Request, c *caller, id string, status int) error {
	camp, err := s.store.Campaign(r.Context(), c.Account, id)
	if err != nil {
		return err
	}
	v, err := s.viewCampaign(r.Context(), camp, true)
	if err != nil {
		return err
	}
	return writeJSON(w, status, v)
}

func (s *Server) listCampaigns(w http.ResponseWriter, r *http.Request, c *caller) error {
	cs, err := s.store.Campaigns(r.Context(), c.Account)
	if err != nil {
		return err
	}
	out := []CampaignView{}
	for _, camp := range cs {
		v, err := s.viewCampaign(r.Context(), camp, false)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	return writeJSON(w, 200, out)
}

func (s *Server) getCampaign(w http.ResponseWriter, r *http.Request, c *caller) error {
	return s.writeCampaign(w, r, c, r.PathValue("id"), 200)
}

// campaignAction is the handler of POST /api/v1/campaigns/{id}/<action>.
func campaignAction(action string) func(*Server, http.ResponseWriter, *http.Request, *caller) error {
	return func(s *Server, w http.ResponseWriter, r *http.Request, c *caller) error {
		camp, err := s.store.CampaignAction(r.Context(), c.Account, r.PathValue("id"), action, s.now())
		if err != nil {
			return err
		}
		s.log.Info("campaign "+action, "campaign", camp.ID, "name", camp.Name)
		if camp.State == store.CampaignRunning {
			s.runner.step(r.Context(), camp.ID)
		}
		return s.writeCampaign(w, r, c, camp.ID, 200)
	}
}

func (s *Server) postCampaignRollback(w http.ResponseWriter, r *http.Request, c *caller) error {
	camp, pubs, err := s.store.RollbackCampaign(r.Context(), c.Account, r.PathValue("id"), s.now(), s.signing(r.Context()))
	if err != nil {
		return err
	}
	s.log.Info("campaign rolled back", "campaign", camp.ID, "name", camp.Name, "devices", len(pubs))
	s.pub.publish(r.Context(), pubs)
	return s.writeCampaign(w, r, c, camp.ID, 200)
}
