package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"
)

// Webhook is an account's subscription to its events over HTTP. Secret signs each
// delivery; it is kept in clear because signing needs it.
type Webhook struct {
	ID        string    `json:"id"`
	AccountID string    `json:"-"`
	URL       string    `json:"url"`
	Secret    string    `json:"-"`
	Events    []string  `json:"events"` // event types; empty means all
	CreatedAt time.Time `json:"created_at"`
}

// Delivery is one event's delivery to one webhook, with its attempts so far.
// Invariant: a delivery row exists for every (webhook, event) the dispatcher has
// claimed; after a crash, pending rows are retried, so an event is delivered at
// least once.
type Delivery struct {
	ID        int64     `json:"id"`
	WebhookID string    `json:"webhook"`
	EventSeq  int64     `json:"event_seq"`
	Status    string    `json:"status"` // pending | delivered | failed
	Attempts  int       `json:"attempts"`
	LastCode  int       `json:"last_code,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	NextAt    time.Time `json:"next_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at"`
}

// CreateWebhook inserts w.
func (s *Store) CreateWebhook(ctx context.Context, w Webhook) error {
	ev, _ := json.Marshal(w.Events)
	if w.Events == nil {
		ev = []byte("[]")
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO webhooks (id, account_id, url, secret, events, created_at) VALUES (?, ?, ?, ?, ?, ?)`),
		w.ID, w.AccountID, w.URL, w.Secret, string(ev), micros(w.CreatedAt))
	return err
}

// Webhooks lists an account's webhooks; account "" lists all.
func (s *Store) Webhooks(ctx context.Context, account string) ([]Webhook, error) {
	query, args := `SELECT id, account_id, url, secret, events, created_at FROM webhooks`, []any{}
	if account != "" {
		query += ` WHERE account_id = ?`
		args = append(args, account)
	}
	rows, err := s.db.QueryContext(ctx, s.q(query+` ORDER BY created_at, id`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Webhook{}
	for rows.Next() {
		var w Webhook
		var ev string
		var created int64
		if err := rows.Scan(&w.ID, &w.AccountID, &w.URL, &w.Secret, &ev, &created); err != nil {
			return nil, err
		}
		w.CreatedAt = fromMicros(created)
		if err := json.Unmarshal([]byte(ev), &w.Events); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// DeleteWebhook removes a webhook and its delivery log.
func (s *Store) DeleteWebhook(ctx context.Context, account, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM webhook_deliveries WHERE webhook_id IN (SELECT id FROM webhooks WHERE id = ? AND account_id = ?)`), id, account)
		if err != nil {
			return false, err
		}
		_ = res
		return false, s.expectOne(tx.ExecContext(ctx, s.q(`DELETE FROM webhooks WHERE id = ? AND account_id = ?`), id, account))("webhook", id)
	})
}

// EnqueueDeliveries records a pending delivery of event seq to each webhook in ids
// and advances the dispatcher's cursor to seq, in one transaction: after a crash
// either both happened or neither.
func (s *Store) EnqueueDeliveries(ctx context.Context, cursor string, seq int64, ids []string, now time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO webhook_deliveries (webhook_id, event_seq, status, next_at, updated_at) VALUES (?, ?, 'pending', ?, ?)`),
				id, seq, micros(now), micros(now)); err != nil {
				return false, err
			}
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`),
			cursor, jsonInt(seq))
		return false, err
	})
}

// DueDeliveries returns pending deliveries whose next attempt is due.
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]Delivery, error) {
	return s.deliveries(ctx, `WHERE status = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?`, micros(now), limit)
}

// Deliveries returns a webhook's latest deliveries, newest first.
func (s *Store) Deliveries(ctx context.Context, webhook string, limit int) ([]Delivery, error) {
	return s.deliveries(ctx, `WHERE webhook_id = ? ORDER BY id DESC LIMIT ?`, webhook, limit)
}

func (s *Store) deliveries(ctx context.Context, where string, args ...any) ([]Delivery, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, webhook_id, event_seq, status, attempts, last_code, last_error, next_at, updated_at
		FROM webhook_deliveries `+where), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Delivery{}
	for rows.Next() {
		var d Delivery
		var next, upd int64
		if err := rows.Scan(&d.ID, &d.WebhookID, &d.EventSeq, &d.Status, &d.Attempts, &d.LastCode, &d.LastError, &next, &upd); err != nil {
			return nil, err
		}
		d.NextAt, d.UpdatedAt = fromMicros(next), fromMicros(upd)
		out = append(out, d)
	}
	return out, rows.Err()
}

// RecordAttempt stores the outcome of one delivery attempt.
func (s *Store) RecordAttempt(ctx context.Context, id int64, status string, code int, errText string, next, now time.Time) error {
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, last_code = ?, last_error = ?,
		next_at = ?, updated_at = ? WHERE id = ?`), status, code, errText, micros(next), micros(now), id)
	return err
}

// Event returns one event by seq.
func (s *Store) Event(ctx context.Context, seq int64) (Event, error) {
	evs, err := s.Events(ctx, "", seq-1, 1)
	if err != nil {
		return Event{}, err
	}
	if len(evs) == 0 || evs[0].Seq != seq {
		return Event{}, notFound(sql.ErrNoRows, "event", jsonInt(seq))
	}
	return evs[0], nil
}

func jsonInt(v int64) string { b, _ := json.Marshal(v); return string(b) }
