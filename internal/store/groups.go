package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Group is a named set of an account's devices: dynamic (Selector set: every device
// whose labels match, now and later) or static (explicit members).
type Group struct {
	ID        string    `json:"id"`
	AccountID string    `json:"-"`
	Name      string    `json:"name"`
	Selector  string    `json:"selector,omitempty"`
	Members   []string  `json:"members,omitempty"` // static groups only
	CreatedAt time.Time `json:"created_at"`
}

// CreateGroup inserts g with its static members, which must be devices of the same
// account.
func (s *Store) CreateGroup(ctx context.Context, g Group) error {
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO device_groups (id, account_id, name, selector, created_at) VALUES (?, ?, ?, ?, ?)`),
			g.ID, g.AccountID, g.Name, g.Selector, micros(g.CreatedAt)); err != nil {
			if isUniqueViolation(err) {
				return false, fmt.Errorf("group %q: %w", g.Name, ErrExists)
			}
			return false, err
		}
		return false, s.addMembers(ctx, tx, g.AccountID, g.ID, g.Members)
	})
}

func (s *Store) addMembers(ctx context.Context, tx *sql.Tx, account, group string, members []string) error {
	for _, id := range members {
		if _, err := s.device(ctx, tx, account, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO group_members (group_id, device_id) VALUES (?, ?) ON CONFLICT DO NOTHING`), group, id); err != nil {
			return err
		}
	}
	return nil
}

// SetMembers replaces a static group's members.
func (s *Store) SetMembers(ctx context.Context, account, group string, members []string) error {
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		g, err := s.group(ctx, tx, account, group)
		if err != nil {
			return false, err
		}
		if g.Selector != "" {
			return false, fmt.Errorf("group %s is dynamic: %w", g.Name, ErrWrongState)
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM group_members WHERE group_id = ?`), g.ID); err != nil {
			return false, err
		}
		return false, s.addMembers(ctx, tx, account, g.ID, members)
	})
}

// Group returns one of an account's groups with its static members.
func (s *Store) Group(ctx context.Context, account, id string) (Group, error) {
	return s.group(ctx, s.db, account, id)
}

func (s *Store) group(ctx context.Context, q querier, account, id string) (Group, error) {
	var g Group
	var created int64
	err := q.QueryRowContext(ctx, s.q(`SELECT id, account_id, name, selector, created_at FROM device_groups WHERE account_id = ? AND (id = ? OR name = ?)`),
		account, id, id).Scan(&g.ID, &g.AccountID, &g.Name, &g.Selector, &created)
	if err != nil {
		return g, notFound(err, "group", id)
	}
	g.CreatedAt = fromMicros(created)
	rows, err := q.QueryContext(ctx, s.q(`SELECT device_id FROM group_members WHERE group_id = ? ORDER BY device_id`), g.ID)
	if err != nil {
		return g, err
	}
	defer rows.Close()
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return g, err
		}
		g.Members = append(g.Members, m)
	}
	return g, rows.Err()
}

// Groups lists an account's groups (without members).
func (s *Store) Groups(ctx context.Context, account string) ([]Group, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, name, selector, created_at FROM device_groups WHERE account_id = ? ORDER BY name`), account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Group{}
	for rows.Next() {
		g := Group{AccountID: account}
		var created int64
		if err := rows.Scan(&g.ID, &g.Name, &g.Selector, &created); err != nil {
			return nil, err
		}
		g.CreatedAt = fromMicros(created)
		out = append(out, g)
	}
	return out, rows.Err()
}

// DeleteGroup removes a group (its devices stay).
func (s *Store) DeleteGroup(ctx context.Context, account, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		g, err := s.group(ctx, tx, account, id)
		if err != nil {
			return false, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM group_members WHERE group_id = ?`), g.ID); err != nil {
			return false, err
		}
		_, err = tx.ExecContext(ctx, s.q(`DELETE FROM device_groups WHERE id = ?`), g.ID)
		return false, err
	})
}

// GroupDevices lists the devices in a group: those matching a dynamic group's
// selector, or a static group's members.
func (s *Store) GroupDevices(ctx context.Context, account, id string) ([]Device, error) {
	g, err := s.Group(ctx, account, id)
	if err != nil {
		return nil, err
	}
	if g.Selector != "" {
		sel, err := ParseSelector(g.Selector)
		if err != nil {
			return nil, err
		}
		return s.Devices(ctx, account, DeviceFilter{Selector: sel})
	}
	return s.Devices(ctx, account, DeviceFilter{Members: g.ID})
}
