package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// Target is what a device is told to run: a release's packages, or (for a
// rollback) the packages it ran before, and the campaign that decided it.
type Target struct {
	ReleaseID   string                `json:"release_id,omitempty"`
	ReleaseName string                `json:"release,omitempty"`
	Campaign    string                `json:"campaign,omitempty"`
	Apps        []link.DesiredPackage `json:"apps"`
	OS          *link.DesiredPackage  `json:"os,omitempty"`
}

// TargetOf is the target that runs every package of r.
func TargetOf(r Release, campaign string) Target {
	t := Target{ReleaseID: r.ID, ReleaseName: r.Name, Campaign: campaign, Apps: []link.DesiredPackage{}}
	for _, p := range r.Packages {
		dp := link.DesiredPackage{Name: p.Name, Version: p.Version, Manifest: p.Digest, Size: p.Size}
		if p.Kind == KindOS {
			t.OS = &dp
		} else {
			t.Apps = append(t.Apps, dp)
		}
	}
	return t
}

// SignFunc signs a desired-state document with the director key of account and
// returns the envelope the device receives.
type SignFunc func(account string, d *link.Desired) ([]byte, error)

// Publication is a signed document to publish, retained, on a device's desired
// topic. The store hands them out after the transaction that made them commits.
type Publication struct {
	DeviceID string
	Version  uint64
	Envelope []byte
}

// DesiredState is a device's current desired-state document and what the device
// reported about it.
//
// Invariant: Version only grows, by one per document, in the transaction that
// stores the signed document; so no version is ever signed twice, even across a
// crash or several replicas. Published is false from that commit until the broker
// took the document; the server publishes every unpublished document again (and
// every document at start, the embedded broker keeping retained messages in memory).
type DesiredState struct {
	DeviceID  string `json:"device"`
	AccountID string `json:"-"`
	Version   uint64 `json:"version"`
	// TargetSince is the version that set the current target; later versions of
	// the same target only renewed its expiry. Reports on versions from
	// TargetSince to Version are about this target.
	TargetSince   uint64    `json:"target_since"`
	Target        Target    `json:"target"`
	Envelope      []byte    `json:"-"`
	ExpiresAt     time.Time `json:"expires_at"`
	Published     bool      `json:"published"`
	Status        string    `json:"status"` // "" (pending) or a link.Desired* state
	StatusVersion uint64    `json:"status_version,omitempty"`
	Message       string    `json:"message,omitempty"`
	UpdatedAt     time.Time `json:"updated_at"`
}

const desiredCols = `device_id, account_id, version, target_since, release_id, release_name, campaign_id, packages, envelope,
	expires_at, published, status, status_version, message, updated_at`

func scanDesired(row interface{ Scan(...any) error }) (DesiredState, error) {
	var d DesiredState
	var pkgs, env string
	var version, since, statusVersion, expires, updated int64
	var published int
	if err := row.Scan(&d.DeviceID, &d.AccountID, &version, &since, &d.Target.ReleaseID, &d.Target.ReleaseName, &d.Target.Campaign,
		&pkgs, &env, &expires, &published, &d.Status, &statusVersion, &d.Message, &updated); err != nil {
		return d, err
	}
	d.Version, d.TargetSince, d.StatusVersion = uint64(version), uint64(since), uint64(statusVersion)
	d.Envelope, d.ExpiresAt, d.Published, d.UpdatedAt = []byte(env), fromMicros(expires), published != 0, fromMicros(updated)
	var p struct {
		Apps []link.DesiredPackage `json:"apps"`
		OS   *link.DesiredPackage  `json:"os"`
	}
	if err := json.Unmarshal([]byte(pkgs), &p); err != nil {
		return d, fmt.Errorf("desired packages of %s: %w", d.DeviceID, err)
	}
	d.Target.Apps, d.Target.OS = p.Apps, p.OS
	if d.Target.Apps == nil {
		d.Target.Apps = []link.DesiredPackage{}
	}
	return d, nil
}

// Desired returns a device's desired state (ErrNotFound if it never had one).
func (s *Store) Desired(ctx context.Context, account, device string) (DesiredState, error) {
	query, args := `SELECT `+desiredCols+` FROM desired WHERE device_id = ? AND version > 0`, []any{device}
	if account != "" {
		query += ` AND account_id = ?`
		args = append(args, account)
	}
	d, err := scanDesired(s.db.QueryRowContext(ctx, s.q(query), args...))
	return d, notFound(err, "desired state of device", device)
}

// lockDesired returns the device's desired row for update, creating an empty one
// (version 0) so that the row exists to be locked.
func (s *Store) lockDesired(ctx context.Context, tx *sql.Tx, account, device string, now time.Time) (DesiredState, error) {
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO desired (device_id, account_id, version, target_since, release_id, release_name,
		campaign_id, packages, envelope, expires_at, published, status, status_version, message, updated_at)
		VALUES (?, ?, 0, 0, '', '', '', '{"apps":[]}', '', 0, 1, '', 0, '', ?) ON CONFLICT (device_id) DO NOTHING`),
		device, account, micros(now)); err != nil {
		return DesiredState{}, err
	}
	return scanDesired(tx.QueryRowContext(ctx, s.q(`SELECT `+desiredCols+` FROM desired WHERE device_id = ?`+s.forUpdate()), device))
}

// DesiredChange is one new document for one device.
type DesiredChange struct {
	Account, Device string
	Target          Target
	Now             time.Time
	TTL             time.Duration // how long the document is valid
	Sign            SignFunc
}

// SetDesired gives a device a new target (a release, by an operator), signed and
// stored in one transaction; the caller publishes the returned document. A device
// that was part of a campaign leaves it (its campaign state becomes superseded).
func (s *Store) SetDesired(ctx context.Context, c DesiredChange) (Publication, error) {
	var pub Publication
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		d, err := s.device(ctx, tx, c.Account, c.Device)
		if err != nil {
			return false, err
		}
		if d.Status != StatusActive {
			return false, fmt.Errorf("device %s is %s: %w", d.ID, d.Status, ErrWrongState)
		}
		pub, _, err = s.setDesired(ctx, tx, c)
		if err != nil {
			return false, err
		}
		data := jsonObject(map[string]any{"version": pub.Version, "release": c.Target.ReleaseName, "campaign": c.Target.Campaign})
		return true, s.addEvent(ctx, tx, Event{AccountID: c.Account, Type: EventDesiredSet, DeviceID: c.Device, Data: data, At: c.Now})
	})
	return pub, err
}

// setDesired signs and stores the next document of a device inside tx and returns
// it with the state it replaced.
func (s *Store) setDesired(ctx context.Context, tx *sql.Tx, c DesiredChange) (Publication, DesiredState, error) {
	prev, err := s.lockDesired(ctx, tx, c.Account, c.Device, c.Now)
	if err != nil {
		return Publication{}, prev, err
	}
	pub, err := s.writeDesired(ctx, tx, prev, c, true)
	if err != nil {
		return pub, prev, err
	}
	if prev.Target.Campaign != "" && prev.Target.Campaign != c.Target.Campaign {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, updated_at = ? WHERE campaign_id = ? AND device_id = ?
			AND state IN (?, ?, ?, ?, ?)`), DevSuperseded, micros(c.Now), prev.Target.Campaign, c.Device,
			DevPending, DevAccepted, DevApplying, DevTimedOut, DevReverting); err != nil {
			return pub, prev, err
		}
	}
	return pub, prev, nil
}

// writeDesired signs version prev.Version+1 of c.Target and stores it. newTarget
// says whether the target changed (a renewal keeps the target and its status).
func (s *Store) writeDesired(ctx context.Context, tx *sql.Tx, prev DesiredState, c DesiredChange, newTarget bool) (Publication, error) {
	v := prev.Version + 1
	apps := c.Target.Apps
	if apps == nil {
		apps = []link.DesiredPackage{}
	}
	// Every document carries the account's developer-mode policy as it stands
	// when the document is signed (read inside the transaction).
	var policy string
	if err := tx.QueryRowContext(ctx, s.q(`SELECT devmode FROM accounts WHERE id = ?`), c.Account).Scan(&policy); err != nil {
		return Publication{}, notFound(err, "account", c.Account)
	}
	since := prev.TargetSince
	if newTarget {
		since = v
	}
	doc := &link.Desired{Device: c.Device, Version: v, Since: since, Expires: c.Now.Add(c.TTL).UTC().Truncate(time.Second), Apps: apps, OS: c.Target.OS,
		Campaign: c.Target.Campaign, Release: c.Target.ReleaseName}
	if policy == DevModeDeny {
		doc.DevMode = link.DevModeDeny
	}
	env, err := c.Sign(c.Account, doc)
	if err != nil {
		return Publication{}, fmt.Errorf("sign desired state of %s: %w", c.Device, err)
	}
	pkgs, err := json.Marshal(map[string]any{"apps": apps, "os": c.Target.OS})
	if err != nil {
		return Publication{}, err
	}
	query := `UPDATE desired SET version = ?, release_id = ?, release_name = ?, campaign_id = ?, packages = ?, envelope = ?,
		expires_at = ?, published = 0, updated_at = ?, devmode = ?`
	args := []any{int64(v), c.Target.ReleaseID, c.Target.ReleaseName, c.Target.Campaign, string(pkgs), string(env), micros(doc.Expires), micros(c.Now), policy}
	if newTarget {
		query += `, target_since = ?, status = '', status_version = 0, message = ''`
		args = append(args, int64(v))
	}
	args = append(args, c.Device, int64(prev.Version))
	res, err := tx.ExecContext(ctx, s.q(query+` WHERE device_id = ? AND version = ?`), args...)
	if err != nil {
		return Publication{}, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return Publication{}, fmt.Errorf("desired state of %s changed concurrently: %w", c.Device, ErrConflict)
	}
	return Publication{DeviceID: c.Device, Version: v, Envelope: env}, nil
}

// ErrConflict reports a change that lost a race with another writer; retrying
// it is safe.
var ErrConflict = errors.New("concurrent change")

// RenewDesired re-signs, with the next version and a new expiry, the documents
// that expire before horizon, so a device never holds an expired document while
// its target stands. At most limit documents per call.
func (s *Store) RenewDesired(ctx context.Context, horizon, now time.Time, ttl time.Duration, sign SignFunc, limit int) ([]Publication, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT device_id FROM desired WHERE version > 0 AND expires_at < ? ORDER BY expires_at LIMIT ?`),
		micros(horizon), limit)
	if err != nil {
		return nil, err
	}
	ids, err := scanStrings(rows)
	if err != nil {
		return nil, err
	}
	return s.reissue(ctx, ids, now, ttl, sign, func(prev DesiredState) bool { return prev.ExpiresAt.Before(horizon) })
}

// reissue gives each active device of ids, one transaction each, the next
// version of its document with the same target, when still needed (as need says
// of its current document once locked: another writer may have re-issued it
// meanwhile). The new document takes the account's policy as it stands. A
// device that fails does not stop the others: the errors are returned together
// (at most a few), after the documents that were made.
func (s *Store) reissue(ctx context.Context, ids []string, now time.Time, ttl time.Duration, sign SignFunc, need func(prev DesiredState) bool) ([]Publication, error) {
	var pubs []Publication
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		var pub *Publication
		err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
			pub = nil
			d, err := s.device(ctx, tx, "", id)
			if err != nil || d.Status != StatusActive {
				return false, err
			}
			prev, err := s.lockDesired(ctx, tx, d.AccountID, id, now)
			if err != nil || !need(prev) {
				return false, err
			}
			// A device without a document gets its first: a new target (an empty one).
			p, err := s.writeDesired(ctx, tx, prev, DesiredChange{Account: d.AccountID, Device: id, Target: prev.Target, Now: now, TTL: ttl, Sign: sign},
				prev.Version == 0)
			pub = &p
			return false, err
		})
		switch {
		case err != nil && len(errs) < 5:
			errs = append(errs, fmt.Errorf("device %s: %w", id, err))
		case err == nil && pub != nil: // only a committed document is ever published
			pubs = append(pubs, *pub)
		}
	}
	return pubs, errors.Join(errs...)
}

// SyncDevModePolicy issues a new document, same target, to each active device
// whose current document does not carry its account's developer-mode policy:
// after the policy changed, and for devices enrolled (or accepted) under a deny
// policy, which get their first document this way (it lists no app, so it
// changes none). At most limit devices per call; the caller publishes the
// documents and calls again while it returns limit of them. Running it after a
// crash at any point converges: it looks only at what is stored.
func (s *Store) SyncDevModePolicy(ctx context.Context, now time.Time, ttl time.Duration, sign SignFunc, limit int) ([]Publication, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT d.id FROM devices d JOIN accounts a ON a.id = d.account_id
		LEFT JOIN desired x ON x.device_id = d.id
		WHERE d.status = ? AND (
			(a.devmode = ? AND (x.device_id IS NULL OR x.version = 0 OR x.devmode <> ?)) OR
			(a.devmode <> ? AND x.version > 0 AND x.devmode = ?))
		ORDER BY d.id LIMIT ?`), string(StatusActive), DevModeDeny, DevModeDeny, DevModeDeny, DevModeDeny, limit)
	if err != nil {
		return nil, err
	}
	ids, err := scanStrings(rows)
	if err != nil {
		return nil, err
	}
	// A device re-issued meanwhile by another writer gets one more version: harmless.
	return s.reissue(ctx, ids, now, ttl, sign, func(DesiredState) bool { return true })
}

// Unpublished returns documents not yet taken by the broker (all documents of
// active devices when all is set), oldest first, after device id after.
func (s *Store) Unpublished(ctx context.Context, all bool, after string, limit int) ([]Publication, error) {
	query := `SELECT x.device_id, x.version, x.envelope FROM desired x JOIN devices d ON d.id = x.device_id
		WHERE x.version > 0 AND d.status = ? AND x.device_id > ?`
	if !all {
		query += ` AND x.published = 0`
	}
	rows, err := s.db.QueryContext(ctx, s.q(query+` ORDER BY x.device_id LIMIT ?`), string(StatusActive), after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Publication
	for rows.Next() {
		var p Publication
		var v int64
		var env string
		if err := rows.Scan(&p.DeviceID, &v, &env); err != nil {
			return nil, err
		}
		p.Version, p.Envelope = uint64(v), []byte(env)
		out = append(out, p)
	}
	return out, rows.Err()
}

// MarkPublished records, in one transaction, that the broker took these
// documents; a device whose document changed since keeps its newer one unpublished.
func (s *Store) MarkPublished(ctx context.Context, pubs ...Publication) error {
	if len(pubs) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		for _, p := range pubs {
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE desired SET published = 1 WHERE device_id = ? AND version = ?`),
				p.DeviceID, int64(p.Version)); err != nil {
				return false, err
			}
		}
		return false, nil
	})
}

// MarkAllUnpublished marks every document to be published again (a broker that
// may have lost its retained messages).
func (s *Store) MarkAllUnpublished(ctx context.Context) error {
	_, err := s.db.ExecContext(ctx, `UPDATE desired SET published = 0 WHERE version > 0 AND published = 1`)
	return err
}

func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func jsonObject(m map[string]any) json.RawMessage {
	for k, v := range m {
		if v == "" || v == nil {
			delete(m, k)
		}
	}
	b, _ := json.Marshal(m)
	return b
}
