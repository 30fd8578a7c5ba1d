package store

import (
	"bytes"
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"time"
)

// Online records that a device connected in session, from remote. A session is the
// device's name for one connection: the offline message that ends it carries the
// same name, so an offline that arrives after the next connection's online (a race
// the broker does not order) is recognised as stale and ignored.
func (s *Store) Online(ctx context.Context, id, session, remote string, now time.Time) (changed bool, err error) {
	err = s.deviceTx(ctx, func(ctx context.Context, tx *sql.Tx) (bool, error) {
		d, err := s.device(ctx, tx, "", id)
		if err != nil {
			return false, err
		}
		if d.Status != StatusActive {
			return false, ErrWrongState
		}
		if d.Online && d.Session == session {
			_, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET last_seen = ? WHERE id = ?`), micros(now), id)
			return false, err
		}
		if d.Online && d.Session != "" { // the previous connection ended without its offline
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE connections SET disconnected_at = ? WHERE device_id = ? AND session = ? AND disconnected_at = 0`),
				micros(now), id, d.Session); err != nil {
				return false, err
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET online = 1, session = ?, remote_addr = ?, last_seen = ? WHERE id = ?`),
			session, remote, micros(now), id); err != nil {
			return false, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO connections (device_id, session, remote_addr, connected_at) VALUES (?, ?, ?, ?)`),
			id, session, remote, micros(now)); err != nil {
			return false, err
		}
		data, _ := json.Marshal(map[string]string{"remote_addr": remote})
		changed = true
		return true, s.addEvent(ctx, tx, Event{AccountID: d.AccountID, Type: EventOnline, DeviceID: id, Data: data, At: now})
	})
	return changed, err
}

// Offline records that session ended. An offline for any other session than the
// device's current one changes nothing.
func (s *Store) Offline(ctx context.Context, id, session string, now time.Time) (changed bool, err error) {
	err = s.deviceTx(ctx, func(ctx context.Context, tx *sql.Tx) (bool, error) {
		d, err := s.device(ctx, tx, "", id)
		if err != nil {
			return false, err
		}
		if !d.Online || (session != "" && d.Session != session) {
			return false, nil
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET online = 0, last_seen = ? WHERE id = ?`), micros(now), id); err != nil {
			return false, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE connections SET disconnected_at = ? WHERE device_id = ? AND session = ? AND disconnected_at = 0`),
			micros(now), id, d.Session); err != nil {
			return false, err
		}
		changed = true
		return true, s.addEvent(ctx, tx, Event{AccountID: d.AccountID, Type: EventOffline, DeviceID: id, At: now})
	})
	return changed, err
}

// AllOffline marks every online device offline, closing its open connection
// record. The embedded broker calls it at start: a broker that has just started
// holds no connection, whatever the database remembers from before a crash.
func (s *Store) AllOffline(ctx context.Context, now time.Time) error {
	ids, err := s.onlineIDs(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if _, err := s.Offline(ctx, id, "", now); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) onlineIDs(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM devices WHERE online = 1`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// Report stores a device's reported state (a JSON document) as its inventory. An
// identical report only refreshes last_seen; a different one records a "reported"
// event.
func (s *Store) Report(ctx context.Context, id string, doc json.RawMessage, now time.Time) (changed bool, err error) {
	var compact bytes.Buffer
	if err := json.Compact(&compact, doc); err != nil {
		return false, err
	}
	err = s.deviceTx(ctx, func(ctx context.Context, tx *sql.Tx) (bool, error) {
		d, err := s.device(ctx, tx, "", id)
		if err != nil {
			return false, err
		}
		if d.Status != StatusActive {
			return false, ErrWrongState
		}
		if bytes.Equal(d.Reported, compact.Bytes()) {
			_, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET last_seen = ? WHERE id = ?`), micros(now), id)
			return false, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET reported = ?, reported_at = ?, last_seen = ? WHERE id = ?`),
			compact.String(), micros(now), micros(now), id); err != nil {
			return false, err
		}
		changed = true
		return true, s.addEvent(ctx, tx, Event{AccountID: d.AccountID, Type: EventReported, DeviceID: id, At: now})
	})
	return changed, err
}

// Connection is one past or current connection of a device to the broker.
type Connection struct {
	Session        string    `json:"session"`
	RemoteAddr     string    `json:"remote_addr"`
	ConnectedAt    time.Time `json:"connected_at"`
	DisconnectedAt time.Time `json:"disconnected_at,omitzero"`
}

// Connections returns a device's latest connections, newest first.
func (s *Store) Connections(ctx context.Context, id string, limit int) ([]Connection, error) {
	if limit <= 0 || limit > 1000 {
		limit = 50
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT session, remote_addr, connected_at, disconnected_at FROM connections
		WHERE device_id = ? ORDER BY id DESC LIMIT ?`), id, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Connection{}
	for rows.Next() {
		var c Connection
		var on, off int64
		if err := rows.Scan(&c.Session, &c.RemoteAddr, &on, &off); err != nil {
			return nil, err
		}
		c.ConnectedAt, c.DisconnectedAt = fromMicros(on), fromMicros(off)
		out = append(out, c)
	}
	return out, rows.Err()
}

func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
