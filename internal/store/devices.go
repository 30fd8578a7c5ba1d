package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
)

// DeviceStatus is where a device is in its life: enrolment, service, retirement.
type DeviceStatus string

// Device statuses. Only an active device holds a certificate the broker accepts.
const (
	StatusPending        DeviceStatus = "pending"        // enrolled with a manual-approval token, waiting for an operator
	StatusAccepted       DeviceStatus = "accepted"       // accepted; its certificate is issued when it next asks
	StatusActive         DeviceStatus = "active"         // holds a certificate
	StatusRejected       DeviceStatus = "rejected"       // an operator refused it
	StatusDecommissioned DeviceStatus = "decommissioned" // certificate revoked for good
)

// Device is one device in the directory.
type Device struct {
	ID               string            `json:"id"`
	AccountID        string            `json:"-"`
	TokenID          string            `json:"token_id"`
	Status           DeviceStatus      `json:"status"`
	KeyFingerprint   string            `json:"key_fingerprint"`
	CertSerial       string            `json:"cert_serial,omitempty"`
	CertFingerprint  string            `json:"cert_fingerprint,omitempty"`
	CertNotAfter     time.Time         `json:"cert_not_after,omitzero"`
	Labels           map[string]string `json:"labels"`
	Online           bool              `json:"online"`
	Session          string            `json:"-"`
	RemoteAddr       string            `json:"remote_addr,omitempty"`
	LastSeen         time.Time         `json:"last_seen,omitzero"`
	Reported         json.RawMessage   `json:"reported,omitempty"`
	ReportedAt       time.Time         `json:"reported_at,omitzero"`
	CreatedAt        time.Time         `json:"created_at"`
	UpdatedAt        time.Time         `json:"updated_at"`
	DecommissionedAt time.Time         `json:"decommissioned_at,omitzero"`
}

// Cert is what the store keeps of a certificate it is told was issued.
type Cert struct {
	Serial      string
	Fingerprint string // hex SHA-256 of the DER
	NotAfter    time.Time
}

const deviceCols = `d.id, d.account_id, d.token_id, d.status, d.key_fingerprint, d.cert_serial, d.cert_fingerprint,
	d.cert_not_after, d.labels, d.online, d.session, d.remote_addr, d.last_seen, d.reported, d.reported_at,
	d.created_at, d.updated_at, d.decommissioned_at`

func scanDevice(row interface{ Scan(...any) error }) (Device, error) {
	var d Device
	var status, labels, reported string
	var online int
	var notAfter, lastSeen, reportedAt, created, updated, decom int64
	if err := row.Scan(&d.ID, &d.AccountID, &d.TokenID, &status, &d.KeyFingerprint, &d.CertSerial, &d.CertFingerprint,
		&notAfter, &labels, &online, &d.Session, &d.RemoteAddr, &lastSeen, &reported, &reportedAt,
		&created, &updated, &decom); err != nil {
		return d, err
	}
	d.Status, d.Online = DeviceStatus(status), online != 0
	d.CertNotAfter, d.LastSeen, d.ReportedAt = fromMicros(notAfter), fromMicros(lastSeen), fromMicros(reportedAt)
	d.CreatedAt, d.UpdatedAt, d.DecommissionedAt = fromMicros(created), fromMicros(updated), fromMicros(decom)
	if reported != "" {
		d.Reported = json.RawMessage(reported)
	}
	return d, json.Unmarshal([]byte(labels), &d.Labels)
}

// Enrollment is one enrolment request as the store sees it: the token presented
// and the device id the server derived from the device's public key.
type Enrollment struct {
	TokenID        string
	TokenHash      string // hash of the secret presented; compared with the stored one
	DeviceID       string
	KeyFingerprint string
	Now            time.Time
	// Issue signs the device's certificate. The store calls it inside the
	// transaction, only when a certificate is due; if the transaction then fails the
	// certificate is never recorded and so never accepted by the broker.
	Issue func() (Cert, error)
}

// Enroll admits a device, or answers a device that asks again.
//
// A new device consumes one use of a valid token (not revoked, not expired, uses
// left) and is created with the token's labels: active with a certificate for an
// auto-approval token, pending otherwise. A device that asks again with the same
// key and token consumes nothing: pending stays pending, accepted or active gets a
// (new) certificate, rejected and decommissioned are refused.
func (s *Store) Enroll(ctx context.Context, e Enrollment) (Device, error) {
	var out Device
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		tok, err := s.token(ctx, tx, e.TokenID)
		if err != nil || !constantTimeEqual(tok.Hash, e.TokenHash) {
			return false, ErrTokenInvalid
		}
		dev, err := s.device(ctx, tx, "", e.DeviceID)
		switch {
		case err == nil:
			if dev.AccountID != tok.AccountID || dev.TokenID != tok.ID {
				return false, ErrKeyEnrolled
			}
			switch dev.Status {
			case StatusDecommissioned:
				return false, ErrDecommissioned
			case StatusRejected:
				return false, ErrRejected
			case StatusPending:
				out = dev
				return false, nil
			}
			cert, err := e.Issue()
			if err != nil {
				return false, err
			}
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET status = ?, cert_serial = ?, cert_fingerprint = ?,
				cert_not_after = ?, updated_at = ? WHERE id = ?`), string(StatusActive), cert.Serial, cert.Fingerprint,
				micros(cert.NotAfter), micros(e.Now), dev.ID); err != nil {
				return false, err
			}
			if err := s.addEvent(ctx, tx, Event{AccountID: dev.AccountID, Type: EventCertIssued, DeviceID: dev.ID, At: e.Now}); err != nil {
				return false, err
			}
			out, err = s.device(ctx, tx, "", dev.ID)
			return true, err
		case !isNotFound(err):
			return false, err
		}
		switch {
		case !tok.RevokedAt.IsZero():
			return false, ErrTokenRevoked
		case !e.Now.Before(tok.ExpiresAt):
			return false, ErrTokenExpired
		}
		res, err := tx.ExecContext(ctx, s.q(`UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ? AND uses < max_uses`), tok.ID)
		if err != nil {
			return false, err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return false, ErrTokenExhausted
		}
		status, cert := StatusPending, Cert{}
		if tok.Approval != ApprovalManual {
			status = StatusActive
			if cert, err = e.Issue(); err != nil {
				return false, err
			}
		}
		labels, _ := json.Marshal(nonNil(tok.Labels))
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO devices (id, account_id, token_id, status, key_fingerprint,
			cert_serial, cert_fingerprint, cert_not_after, labels, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`), e.DeviceID, tok.AccountID, tok.ID, string(status), e.KeyFingerprint,
			cert.Serial, cert.Fingerprint, micros(cert.NotAfter), string(labels), micros(e.Now), micros(e.Now)); err != nil {
			if isUniqueViolation(err) {
				return false, ErrKeyEnrolled
			}
			return false, err
		}
		if err := s.writeLabels(ctx, tx, e.DeviceID, tok.Labels); err != nil {
			return false, err
		}
		typ := EventEnrolled
		if status == StatusPending {
			typ = EventPending
		}
		if err := s.addEvent(ctx, tx, Event{AccountID: tok.AccountID, Type: typ, DeviceID: e.DeviceID, At: e.Now}); err != nil {
			return false, err
		}
		out, err = s.device(ctx, tx, "", e.DeviceID)
		return true, err
	})
	return out, err
}

// Device returns a device of account; account "" looks in every account (for the
// broker, which knows devices only by id).
func (s *Store) Device(ctx context.Context, account, id string) (Device, error) {
	return s.device(ctx, s.db, account, id)
}

func (s *Store) device(ctx context.Context, q querier, account, id string) (Device, error) {
	query, args := `SELECT `+deviceCols+` FROM devices d WHERE d.id = ?`, []any{id}
	if account != "" {
		query += ` AND d.account_id = ?`
		args = append(args, account)
	}
	d, err := scanDevice(q.QueryRowContext(ctx, s.q(query), args...))
	return d, notFound(err, "device", id)
}

// DeviceFilter narrows a device listing. Zero fields do not filter.
type DeviceFilter struct {
	Selector Selector
	Status   string // online, offline, or a DeviceStatus
	Text     string // substring of the id or of any label value, case-insensitive
	Members  string // only the static members of this group id
	Limit    int    // default 1000
	After    string // page: ids greater than this
}

// Devices lists an account's devices matching f, ordered by id.
func (s *Store) Devices(ctx context.Context, account string, f DeviceFilter) ([]Device, error) {
	where := []string{`d.account_id = ?`}
	args := []any{account}
	if sel, a := f.Selector.sql(); sel != "" {
		where = append(where, sel)
		args = append(args, a...)
	}
	switch f.Status {
	case "":
	case "online":
		where = append(where, `d.online = 1`)
	case "offline":
		where = append(where, `d.online = 0`)
	default:
		where = append(where, `d.status = ?`)
		args = append(args, f.Status)
	}
	if f.Text != "" {
		pat := "%" + strings.ToLower(f.Text) + "%"
		where = append(where, `(LOWER(d.id) LIKE ? OR EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND LOWER(l.value) LIKE ?))`)
		args = append(args, pat, pat)
	}
	if f.Members != "" {
		where = append(where, `EXISTS (SELECT 1 FROM group_members m WHERE m.device_id = d.id AND m.group_id = ?)`)
		args = append(args, f.Members)
	}
	if f.After != "" {
		where = append(where, `d.id > ?`)
		args = append(args, f.After)
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+deviceCols+` FROM devices d WHERE `+strings.Join(where, " AND ")+
		fmt.Sprintf(` ORDER BY d.id LIMIT %d`, limit)), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// SetLabels applies changes to a device's labels: a key mapped to "" is removed.
func (s *Store) SetLabels(ctx context.Context, account, id string, changes map[string]string, now time.Time) (Device, error) {
	var out Device
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		d, err := s.device(ctx, tx, account, id)
		if err != nil {
			return false, err
		}
		labels := maps.Clone(nonNil(d.Labels))
		for k, v := range changes {
			if v == "" {
				delete(labels, k)
			} else {
				labels[k] = v
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM device_labels WHERE device_id = ?`), id); err != nil {
			return false, err
		}
		if err := s.writeLabels(ctx, tx, id, labels); err != nil {
			return false, err
		}
		js, _ := json.Marshal(labels)
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET labels = ?, updated_at = ? WHERE id = ?`), string(js), micros(now), id); err != nil {
			return false, err
		}
		data, _ := json.Marshal(map[string]any{"labels": labels})
		if err := s.addEvent(ctx, tx, Event{AccountID: account, Type: EventLabels, DeviceID: id, Data: data, At: now}); err != nil {
			return false, err
		}
		out, err = s.device(ctx, tx, account, id)
		return true, err
	})
	return out, err
}

func (s *Store) writeLabels(ctx context.Context, tx *sql.Tx, id string, labels map[string]string) error {
	for k, v := range labels {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO device_labels (device_id, name, value) VALUES (?, ?, ?)`), id, k, v); err != nil {
			return err
		}
	}
	return nil
}

// Transition moves a device from one of the statuses in from to to, recording an
// event of type typ (ErrWrongState if it is in none of them). Decommissioning also
// forgets its certificate, so the broker refuses it from then on.
func (s *Store) Transition(ctx context.Context, account, id string, from []DeviceStatus, to DeviceStatus, typ string, now time.Time) (Device, error) {
	var out Device
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		d, err := s.device(ctx, tx, account, id)
		if err != nil {
			return false, err
		}
		ok := false
		for _, f := range from {
			ok = ok || d.Status == f
		}
		if !ok {
			return false, fmt.Errorf("device %s is %s: %w", id, d.Status, ErrWrongState)
		}
		query := `UPDATE devices SET status = ?, updated_at = ? WHERE id = ?`
		args := []any{string(to), micros(now), id}
		if to == StatusDecommissioned {
			query = `UPDATE devices SET status = ?, updated_at = ?, decommissioned_at = ?, cert_fingerprint = '', online = 0, session = '' WHERE id = ?`
			args = []any{string(to), micros(now), micros(now), id}
		}
		if _, err := tx.ExecContext(ctx, s.q(query), args...); err != nil {
			return false, err
		}
		if err := s.addEvent(ctx, tx, Event{AccountID: account, Type: typ, DeviceID: id, At: now}); err != nil {
			return false, err
		}
		out, err = s.device(ctx, tx, account, id)
		return true, err
	})
	return out, err
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
