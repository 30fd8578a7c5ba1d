package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// Limits on what a device may send in its logs.
const (
	maxLogLine = 16 << 10 // a line longer than this is cut
	maxLogApp  = 64
)

// LogLine is one stored line of a device's log. ID orders a device's lines in the
// order they arrived; a follower resumes after the last ID it saw.
type LogLine struct {
	ID int64 `json:"id"`
	link.LogLine
}

// LogQuery selects a device's log lines.
type LogQuery struct {
	App   string    // only this app's lines ("ternd": the agent's own)
	Since time.Time // only lines stamped at or after this
	After int64     // only lines with an ID above this (following)
	Limit int       // at most this many (default and maximum 5,000)
}

// AddLogs stores a batch a device sent, in order. Lines it dropped while offline
// are recorded as one line of the agent's, so whoever reads the log sees the gap.
func (s *Store) AddLogs(ctx context.Context, device string, batch link.LogBatch, now time.Time) error {
	lines := batch.Lines
	if batch.Dropped > 0 {
		lines = append([]link.LogLine{{Time: now, App: "ternd", Stream: "agent", Level: "warn",
			Line: fmt.Sprintf("%d log lines were dropped on the device while it could not reach the server", batch.Dropped)}}, lines...)
	}
	if len(lines) == 0 {
		return nil
	}
	// The transaction wakes followers (Changed) once the lines are committed.
	return s.deviceTx(ctx, func(ctx context.Context, tx *sql.Tx) (bool, error) {
		stmt, err := tx.PrepareContext(ctx, s.q(`INSERT INTO device_logs (device_id, at, app, version, stream, level, line, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`))
		if err != nil {
			return false, err
		}
		defer stmt.Close()
		for _, l := range lines {
			if _, err := stmt.ExecContext(ctx, device, micros(l.Time), truncate(l.App, maxLogApp), truncate(l.Version, maxLogApp),
				truncate(l.Stream, 16), truncate(l.Level, 16), truncate(l.Line, maxLogLine), micros(now)); err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

// Logs returns lines of a device of account, oldest first.
func (s *Store) Logs(ctx context.Context, account, device string, q LogQuery) ([]LogLine, error) {
	if _, err := s.Device(ctx, account, device); err != nil {
		return nil, err
	}
	if q.Limit <= 0 || q.Limit > 5000 {
		q.Limit = 5000
	}
	query, args := `SELECT id, at, app, version, stream, level, line FROM device_logs WHERE device_id = ? AND id > ?`, []any{device, q.After}
	if q.App != "" {
		query, args = query+` AND app = ?`, append(args, q.App)
	}
	if !q.Since.IsZero() {
		query, args = query+` AND at >= ?`, append(args, micros(q.Since))
	}
	query, args = query+` ORDER BY id LIMIT ?`, append(args, q.Limit)
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []LogLine{}
	for rows.Next() {
		var l LogLine
		var at int64
		if err := rows.Scan(&l.ID, &at, &l.App, &l.Version, &l.Stream, &l.Level, &l.Line); err != nil {
			return nil, err
		}
		l.Time = fromMicros(at)
		out = append(out, l)
	}
	return out, rows.Err()
}

// PruneLogs enforces log retention: lines received before now-maxAge go, and each
// device keeps at most maxLines of its newest lines. It returns how many went.
func (s *Store) PruneLogs(ctx context.Context, now time.Time, maxAge time.Duration, maxLines int) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM device_logs WHERE received < ?`), micros(now.Add(-maxAge)))
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	// Per device: delete at and below the id of its (maxLines+1)-th newest line.
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT device_id FROM device_logs`)
	if err != nil {
		return n, err
	}
	var devices []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			rows.Close()
			return n, err
		}
		devices = append(devices, d)
	}
	rows.Close()
	for _, d := range devices {
		var cut int64
		err := s.db.QueryRowContext(ctx, s.q(`SELECT id FROM device_logs WHERE device_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?`), d, maxLines).Scan(&cut)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return n, err
		}
		res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM device_logs WHERE device_id = ? AND id <= ?`), d, cut)
		if err != nil {
			return n, err
		}
		m, _ := res.RowsAffected()
		n += m
	}
	return n, nil
}
