package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrCampaignState reports an action a campaign's state does not allow (resume a
// running campaign, roll back twice, ...).
var ErrCampaignState = errors.New("campaign is not in a state that allows this")

const campaignCols = `c.id, c.account_id, c.name, c.release_id, r.name, c.target, c.spec, c.state, c.reason, c.phase,
	c.phase_started, c.phase_done, c.ack_failures, c.ack_phase_failures, c.created_at, c.updated_at`

func scanCampaign(row interface{ Scan(...any) error }) (Campaign, error) {
	var c Campaign
	var spec string
	var started, done, created, updated int64
	if err := row.Scan(&c.ID, &c.AccountID, &c.Name, &c.ReleaseID, &c.ReleaseName, &c.Target, &spec, &c.State, &c.Reason, &c.Phase,
		&started, &done, &c.AckFailures, &c.AckPhaseFailures, &created, &updated); err != nil {
		return c, err
	}
	c.PhaseStarted, c.PhaseDone, c.CreatedAt, c.UpdatedAt = fromMicros(started), fromMicros(done), fromMicros(created), fromMicros(updated)
	return c, json.Unmarshal([]byte(spec), &c.Spec)
}

// CreateCampaign records a campaign over devices, in the given order: the first
// devices form the first phase. It starts running; the runner's first step
// assigns the first phase.
func (s *Store) CreateCampaign(ctx context.Context, c Campaign, devices []string) (Campaign, error) {
	var out Campaign
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		if _, err := s.release(ctx, tx, c.AccountID, c.ReleaseID); err != nil {
			return false, err
		}
		spec, err := json.Marshal(c.Spec)
		if err != nil {
			return false, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO campaigns (id, account_id, name, release_id, target, spec, state, reason, phase,
			phase_started, phase_done, ack_failures, ack_phase_failures, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, '', 0, 0, 0, 0, 0, ?, ?)`),
			c.ID, c.AccountID, c.Name, c.ReleaseID, c.Target, string(spec), CampaignRunning, micros(c.CreatedAt), micros(c.CreatedAt)); err != nil {
			if isUniqueViolation(err) {
				return false, fmt.Errorf("campaign %q: %w", c.Name, ErrExists)
			}
			return false, err
		}
		for i, id := range devices {
			if _, err := s.device(ctx, tx, c.AccountID, id); err != nil {
				return false, err
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO campaign_devices (campaign_id, device_id, phase, position, state, message,
				desired_version, prev_release, prev_packages, updated_at) VALUES (?, ?, ?, ?, ?, '', 0, '', 'null', ?)`),
				c.ID, id, PhaseOf(c.Spec, i, len(devices)), i, DevWaiting, micros(c.CreatedAt)); err != nil {
				return false, err
			}
		}
		if out, err = s.campaign(ctx, tx, c.AccountID, c.ID, false); err != nil {
			return false, err
		}
		return true, s.campaignEvent(ctx, tx, out, "campaign.created", map[string]any{"devices": len(devices), "release": out.ReleaseName}, c.CreatedAt)
	})
	return out, err
}

func (s *Store) campaignEvent(ctx context.Context, tx *sql.Tx, c Campaign, typ string, data map[string]any, now time.Time) error {
	data["campaign"], data["name"], data["state"] = c.ID, c.Name, c.State
	return s.addEvent(ctx, tx, Event{AccountID: c.AccountID, Type: typ, Data: jsonObject(data), At: now})
}

// Campaign returns one of an account's campaigns by id or name (account "": any).
func (s *Store) Campaign(ctx context.Context, account, idOrName string) (Campaign, error) {
	return s.campaign(ctx, s.db, account, idOrName, false)
}

func (s *Store) campaign(ctx context.Context, q querier, account, idOrName string, lock bool) (Campaign, error) {
	query := `SELECT ` + campaignCols + ` FROM campaigns c JOIN releases r ON r.id = c.release_id WHERE (c.id = ? OR c.name = ?)`
	args := []any{idOrName, idOrName}
	if account != "" {
		query += ` AND c.account_id = ?`
		args = append(args, account)
	}
	if lock {
		query += s.forUpdate()
		if s.dialect == Postgres {
			query += ` OF c`
		}
	}
	c, err := scanCampaign(q.QueryRowContext(ctx, s.q(query), args...))
	return c, notFound(err, "campaign", idOrName)
}

// Campaigns lists an account's campaigns, newest first.
func (s *Store) Campaigns(ctx context.Context, account string) ([]Campaign, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+campaignCols+` FROM campaigns c JOIN releases r ON r.id = c.release_id
		WHERE c.account_id = ? ORDER BY c.created_at DESC, c.id`), account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Campaign{}
	for rows.Next() {
		c, err := scanCampaign(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// RunningCampaigns returns the ids of every running campaign of every account.
func (s *Store) RunningCampaigns(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id FROM campaigns WHERE state = ? ORDER BY created_at`), CampaignRunning)
	if err != nil {
		return nil, err
	}
	return scanStrings(rows)
}

// CampaignDevices returns a campaign's devices in phase order.
func (s *Store) CampaignDevices(ctx context.Context, campaign string) ([]CampaignDevice, error) {
	return s.campaignDevices(ctx, s.db, campaign)
}

const campaignDeviceCols = `cd.campaign_id, cd.device_id, cd.phase, cd.position, cd.state, cd.message, cd.desired_version,
	cd.prev_release, cd.prev_packages, cd.updated_at, d.status`

func scanCampaignDevice(row interface{ Scan(...any) error }) (CampaignDevice, error) {
	var d CampaignDevice
	var version, updated int64
	var prev, status string
	if err := row.Scan(&d.CampaignID, &d.DeviceID, &d.Phase, &d.Position, &d.State, &d.Message, &version, &d.PrevRelease, &prev,
		&updated, &status); err != nil {
		return d, err
	}
	d.DesiredVersion, d.UpdatedAt, d.Active = uint64(version), fromMicros(updated), DeviceStatus(status) == StatusActive
	return d, json.Unmarshal([]byte(prev), &d.PrevTarget)
}

func (s *Store) campaignDevices(ctx context.Context, q querier, campaign string) ([]CampaignDevice, error) {
	rows, err := q.QueryContext(ctx, s.q(`SELECT `+campaignDeviceCols+` FROM campaign_devices cd JOIN devices d ON d.id = cd.device_id
		WHERE cd.campaign_id = ? ORDER BY cd.position`), campaign)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []CampaignDevice{}
	for rows.Next() {
		d, err := scanCampaignDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *Store) campaignDevice(ctx context.Context, q querier, campaign, device string) (CampaignDevice, error) {
	d, err := scanCampaignDevice(q.QueryRowContext(ctx, s.q(`SELECT `+campaignDeviceCols+` FROM campaign_devices cd
		JOIN devices d ON d.id = cd.device_id WHERE cd.campaign_id = ? AND cd.device_id = ?`), campaign, device))
	return d, notFound(err, "campaign device", device)
}

// Signing is what a step that publishes desired state needs.
type Signing struct {
	TTL  time.Duration
	Sign SignFunc
}

// StepCampaign runs one step of a campaign (PlanCampaign) and stores its effects
// in one transaction: new desired documents of the devices it assigns, their
// campaign states, the campaign's row and its events. The campaign row is locked
// for the step, so replicas stepping at once take turns, and the second sees the
// first's result. The returned documents are the caller's to publish.
//
// Most steps change nothing (devices are still updating): the step is planned first
// from reads outside a transaction, and takes the write transaction only if that plan
// changes something. Holding the database's one writer while reading every device
// of a large campaign (20,000 here) held up every device message behind it.
func (s *Store) StepCampaign(ctx context.Context, id string, now time.Time, sg Signing) (Plan, []Publication, error) {
	if pl, err := s.planCampaign(ctx, id, now); err != nil || !pl.changed {
		return pl.Plan, nil, err
	}
	var pl Plan
	var pubs []Publication
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		pubs = nil
		c, err := s.campaign(ctx, tx, "", id, true)
		if err != nil {
			return false, err
		}
		devs, err := s.campaignDevices(ctx, tx, c.ID)
		if err != nil {
			return false, err
		}
		pl = PlanCampaign(c, devs, now)
		if !pl.Changed(c) {
			return false, nil
		}
		if len(pl.Assign) > 0 {
			r, err := s.release(ctx, tx, c.AccountID, c.ReleaseID)
			if err != nil {
				return false, err
			}
			target := TargetOf(r, c.ID)
			for _, dev := range pl.Assign {
				pub, prev, err := s.setDesired(ctx, tx, DesiredChange{Account: c.AccountID, Device: dev, Target: target, Now: now, TTL: sg.TTL, Sign: sg.Sign})
				if err != nil {
					return false, err
				}
				pubs = append(pubs, pub)
				var prevTarget *Target
				if prev.Version > 0 {
					prevTarget = &prev.Target
				}
				pj, _ := json.Marshal(prevTarget)
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, desired_version = ?, prev_release = ?,
					prev_packages = ?, updated_at = ? WHERE campaign_id = ? AND device_id = ?`),
					DevPending, int64(pub.Version), prev.Target.ReleaseName, string(pj), micros(now), c.ID, dev); err != nil {
					return false, err
				}
			}
		}
		for state, ids := range map[string][]string{DevSkipped: pl.Skip, DevTimedOut: pl.TimedOut} {
			for _, dev := range ids {
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, updated_at = ? WHERE campaign_id = ? AND device_id = ?`),
					state, micros(now), c.ID, dev); err != nil {
					return false, err
				}
			}
		}
		if err := s.saveCampaign(ctx, tx, pl.Campaign, now); err != nil {
			return false, err
		}
		for _, e := range pl.Events {
			if err := s.campaignEvent(ctx, tx, pl.Campaign, e.Type, e.Data, now); err != nil {
				return false, err
			}
		}
		return len(pl.Events) > 0, nil
	})
	return pl, pubs, err
}

// plannedStep is a step planned from reads outside any write transaction.
type plannedStep struct {
	Plan
	changed bool
}

// planCampaign plans a step without taking the writer. Its two reads are not one
// snapshot (on SQLite every transaction here takes the writer), which is enough
// for what it decides: if it misses a change made between them, the next step
// sees it; if it sees one, StepCampaign plans again under the lock.
func (s *Store) planCampaign(ctx context.Context, id string, now time.Time) (plannedStep, error) {
	c, err := s.campaign(ctx, s.db, "", id, false)
	if err != nil {
		return plannedStep{}, err
	}
	devs, err := s.campaignDevices(ctx, s.db, c.ID)
	if err != nil {
		return plannedStep{}, err
	}
	pl := PlanCampaign(c, devs, now)
	return plannedStep{Plan: pl, changed: pl.Changed(c)}, nil
}

func (s *Store) saveCampaign(ctx context.Context, tx *sql.Tx, c Campaign, now time.Time) error {
	_, err := tx.ExecContext(ctx, s.q(`UPDATE campaigns SET state = ?, reason = ?, phase = ?, phase_started = ?, phase_done = ?,
		ack_failures = ?, ack_phase_failures = ?, updated_at = ? WHERE id = ?`),
		c.State, c.Reason, c.Phase, micros(c.PhaseStarted), micros(c.PhaseDone), c.AckFailures, c.AckPhaseFailures, micros(now), c.ID)
	return err
}

// Campaign actions an operator takes.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionCancel = "cancel"
)

// CampaignAction pauses, resumes or cancels a campaign.
//
// Resuming acknowledges the failures so far (the thresholds then count only new
// ones) and restarts the current phase's timeout. Cancelling stops assigning:
// devices not yet assigned are skipped; assigned ones keep their desired state.
func (s *Store) CampaignAction(ctx context.Context, account, id, action string, now time.Time) (Campaign, error) {
	var out Campaign
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		c, err := s.campaign(ctx, tx, account, id, true)
		if err != nil {
			return false, err
		}
		data := map[string]any{"phase": c.Phase + 1}
		switch {
		case action == ActionPause && c.State == CampaignRunning:
			c.State, c.Reason = CampaignPaused, "paused by an operator"
			data["reason"] = c.Reason
		case action == ActionResume && c.State == CampaignPaused:
			devs, err := s.campaignDevices(ctx, tx, c.ID)
			if err != nil {
				return false, err
			}
			c.AckFailures, c.AckPhaseFailures = 0, 0
			for _, d := range devs {
				if failed(d.State) {
					c.AckFailures++
					if d.Phase == c.Phase {
						c.AckPhaseFailures++
					}
				}
			}
			c.State, c.Reason = CampaignRunning, ""
			if !c.PhaseStarted.IsZero() {
				c.PhaseStarted = now
			}
		case action == ActionCancel && (c.State == CampaignRunning || c.State == CampaignPaused):
			c.State, c.Reason = CampaignCancelled, ""
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, updated_at = ? WHERE campaign_id = ? AND state = ?`),
				DevSkipped, micros(now), c.ID, DevWaiting); err != nil {
				return false, err
			}
		default:
			return false, fmt.Errorf("cannot %s campaign %s: it is %s: %w", action, c.Name, c.State, ErrCampaignState)
		}
		if err := s.saveCampaign(ctx, tx, c, now); err != nil {
			return false, err
		}
		typ := map[string]string{ActionPause: "campaign.paused", ActionResume: "campaign.resumed", ActionCancel: "campaign.cancelled"}[action]
		if err := s.campaignEvent(ctx, tx, c, typ, data, now); err != nil {
			return false, err
		}
		out, err = s.campaign(ctx, tx, account, c.ID, false)
		return true, err
	})
	return out, err
}

// RollbackCampaign stops a campaign and gives each device it assigned, whose
// target is still the campaign's, a new document with the packages it had before
// the campaign (an empty list when it had none: nothing is then managed, so its
// apps are left alone). Those devices become reverting, and reverted or
// revert_failed as they report. Devices not yet assigned are skipped.
func (s *Store) RollbackCampaign(ctx context.Context, account, id string, now time.Time, sg Signing) (Campaign, []Publication, error) {
	var out Campaign
	var pubs []Publication
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		pubs = nil
		c, err := s.campaign(ctx, tx, account, id, true)
		if err != nil {
			return false, err
		}
		if c.State == CampaignRolledBack {
			return false, fmt.Errorf("campaign %s is already rolled back: %w", c.Name, ErrCampaignState)
		}
		devs, err := s.campaignDevices(ctx, tx, c.ID)
		if err != nil {
			return false, err
		}
		reverted := 0
		for _, d := range devs {
			switch d.State {
			case DevWaiting:
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, updated_at = ? WHERE campaign_id = ? AND device_id = ?`),
					DevSkipped, micros(now), c.ID, d.DeviceID); err != nil {
					return false, err
				}
				continue
			case DevPending, DevAccepted, DevApplying, DevApplied, DevRolledBack, DevRejected, DevTimedOut:
			default:
				continue
			}
			if !d.Active {
				continue
			}
			cur, err := s.lockDesired(ctx, tx, c.AccountID, d.DeviceID, now)
			if err != nil {
				return false, err
			}
			if cur.Target.Campaign != c.ID {
				continue // it left the campaign meanwhile
			}
			target := Target{Campaign: c.ID, Apps: nil}
			if d.PrevTarget != nil {
				target = *d.PrevTarget
				target.Campaign = c.ID
			}
			pub, err := s.writeDesired(ctx, tx, cur, DesiredChange{Account: c.AccountID, Device: d.DeviceID, Target: target, Now: now, TTL: sg.TTL, Sign: sg.Sign}, true)
			if err != nil {
				return false, err
			}
			pubs = append(pubs, pub)
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, message = '', desired_version = ?, updated_at = ?
				WHERE campaign_id = ? AND device_id = ?`), DevReverting, int64(pub.Version), micros(now), c.ID, d.DeviceID); err != nil {
				return false, err
			}
			reverted++
		}
		c.State, c.Reason = CampaignRolledBack, ""
		if err := s.saveCampaign(ctx, tx, c, now); err != nil {
			return false, err
		}
		if err := s.campaignEvent(ctx, tx, c, "campaign.rolled_back", map[string]any{"devices": reverted}, now); err != nil {
			return false, err
		}
		out, err = s.campaign(ctx, tx, account, c.ID, false)
		return true, err
	})
	return out, pubs, err
}
