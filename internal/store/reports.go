package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// DeviceEventsKept is how many of its latest events the server keeps per device.
const DeviceEventsKept = 100

// DeviceEvent is one event a device reported on its events topic.
type DeviceEvent struct {
	ID    int64             `json:"id"`
	Event link.EventMessage `json:"event"`
	At    time.Time         `json:"received_at"`
}

// ReportResult says what a device event changed.
type ReportResult struct {
	Duplicate bool   // a redelivery of an event already recorded: nothing changed
	Campaign  string // the campaign whose device state changed, if any
}

// statusRank orders the states of one document: a report never moves a document
// back (a redelivered "applying" after "applied" changes nothing).
func statusRank(s string) int {
	switch s {
	case link.DesiredAccepted:
		return 1
	case link.DesiredApplying:
		return 2
	case link.DesiredApplied, link.DesiredRolledBack, link.DesiredRejected:
		return 3
	}
	return 0
}

// RecordDeviceEvent stores an event a device published, keeping the device's
// latest DeviceEventsKept. An event with a Seq the device already sent is a QoS 1
// redelivery and changes nothing. A desired-state report updates the status of the
// device's document (if it is about the current target and moves it forward), the
// device's state in the campaign that set it, and records a desired.<state> event
// in the account's log, all in one transaction.
func (s *Store) RecordDeviceEvent(ctx context.Context, device string, ev link.EventMessage, now time.Time) (ReportResult, error) {
	var res ReportResult
	err := s.deviceTx(ctx, func(ctx context.Context, tx *sql.Tx) (bool, error) {
		res = ReportResult{}
		d, err := s.device(ctx, tx, "", device)
		if err != nil {
			return false, err
		}
		if d.Status != StatusActive {
			return false, ErrWrongState
		}
		data, err := json.Marshal(ev)
		if err != nil {
			return false, err
		}
		r, err := tx.ExecContext(ctx, s.q(`INSERT INTO device_events (device_id, seq, kind, data, at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`),
			device, int64(ev.Seq), truncate(ev.Kind, 64), string(data), micros(now))
		if err != nil {
			return false, err
		}
		if n, _ := r.RowsAffected(); n == 0 {
			res.Duplicate = true
			return false, nil
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM device_events WHERE device_id = ? AND id <= (SELECT id FROM device_events
			WHERE device_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`), device, device, DeviceEventsKept); err != nil {
			return false, err
		}
		if ev.Kind != link.EventDesired || statusRank(ev.State) == 0 {
			return false, nil
		}
		return s.desiredReport(ctx, tx, d, ev, now, &res)
	})
	return res, err
}

func (s *Store) desiredReport(ctx context.Context, tx *sql.Tx, d Device, ev link.EventMessage, now time.Time, res *ReportResult) (bool, error) {
	cur, err := scanDesired(tx.QueryRowContext(ctx, s.q(`SELECT `+desiredCols+` FROM desired WHERE device_id = ?`+s.forUpdate()), d.ID))
	if err == sql.ErrNoRows {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	v := ev.DesiredVersion
	switch {
	case v < cur.TargetSince || v > cur.Version:
		return false, nil // about a target the device no longer has (or never had)
	case v < cur.StatusVersion:
		return false, nil
	case v == cur.StatusVersion && statusRank(ev.State) <= statusRank(cur.Status):
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE desired SET status = ?, status_version = ?, message = ?, updated_at = ? WHERE device_id = ?`),
		ev.State, int64(v), truncate(ev.Message, 2000), micros(now), d.ID); err != nil {
		return false, err
	}
	camp := cur.Target.Campaign
	if camp != "" {
		cd, err := s.campaignDevice(ctx, tx, camp, d.ID)
		switch {
		case isNotFound(err):
		case err != nil:
			return false, err
		default:
			if next := campaignDeviceState(cd.State, ev.State); next != "" {
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE campaign_devices SET state = ?, message = ?, desired_version = ?, updated_at = ?
					WHERE campaign_id = ? AND device_id = ?`), next, truncate(ev.Message, 2000), int64(v), micros(now), camp, d.ID); err != nil {
					return false, err
				}
				res.Campaign = camp
			}
		}
	}
	data := jsonObject(map[string]any{"version": v, "state": ev.State, "message": ev.Message, "campaign": camp,
		"release": cur.Target.ReleaseName})
	return true, s.addEvent(ctx, tx, Event{AccountID: d.AccountID, Type: "desired." + ev.State, DeviceID: d.ID, Data: data, At: now})
}

// campaignDeviceState maps a device's report onto its state in the campaign that
// set its target ("" leaves it): a device being reverted by a campaign rollback
// ends reverted or revert_failed; one that left the campaign stays as it was.
func campaignDeviceState(cur, reported string) string {
	switch cur {
	case DevReverting:
		switch reported {
		case link.DesiredApplied:
			return DevReverted
		case link.DesiredRolledBack, link.DesiredRejected:
			return DevRevertFailed
		}
		return ""
	case DevPending, DevAccepted, DevApplying, DevApplied, DevRolledBack, DevRejected, DevTimedOut:
		if cur == reported {
			return ""
		}
		return reported
	}
	return ""
}

// DeviceEvents returns a device's latest events, newest first.
func (s *Store) DeviceEvents(ctx context.Context, account, device string, limit int) ([]DeviceEvent, error) {
	if _, err := s.Device(ctx, account, device); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > DeviceEventsKept {
		limit = DeviceEventsKept
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, data, at FROM device_events WHERE device_id = ? ORDER BY id DESC LIMIT ?`), device, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []DeviceEvent{}
	for rows.Next() {
		var e DeviceEvent
		var data string
		var at int64
		if err := rows.Scan(&e.ID, &data, &at); err != nil {
			return nil, err
		}
		e.At = fromMicros(at)
		if err := json.Unmarshal([]byte(data), &e.Event); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// truncate makes a device-supplied string safe to store on either engine (valid
// UTF-8, no NUL, which PostgreSQL text refuses) and at most about n bytes long.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
