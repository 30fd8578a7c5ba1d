package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Account is a tenant: its devices, keys, tokens and events are visible only to
// API keys of the same account. Each has its own device CA and director key.
type Account struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	CACert      string `json:"-"` // PEM: the device CA that issues this account's device certificates
	CAKey       string `json:"-"` // PEM (PKCS#8) private key of the device CA
	DirectorKey string `json:"-"` // PEM (PKCS#8) ed25519 key that signs desired-state documents
	// DevMode is the account's developer-mode policy: DevModeAllow (the default)
	// or DevModeDeny, which every device of the account receives in its signed
	// desired state and obeys: developer mode off, and refused.
	DevMode   string    `json:"devmode"`
	CreatedAt time.Time `json:"created_at"`
}

// Developer-mode policies of an account.
const (
	DevModeAllow = "allow"
	DevModeDeny  = "deny"
)

// ErrBadPolicy reports a policy value that is not one of the allowed ones.
var ErrBadPolicy = errors.New("invalid policy")

// EventPolicy is recorded when an account's policy changes.
const EventPolicy = "account.policy"

// SetDevModePolicy sets the account's developer-mode policy and records the
// change as an event. The devices' documents follow through SyncDevModePolicy.
func (s *Store) SetDevModePolicy(ctx context.Context, account, policy string, now time.Time) (Account, error) {
	if policy != DevModeAllow && policy != DevModeDeny {
		return Account{}, fmt.Errorf("developer-mode policy %q: want %q or %q: %w", policy, DevModeAllow, DevModeDeny, ErrBadPolicy)
	}
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		var cur string
		if err := tx.QueryRowContext(ctx, s.q(`SELECT devmode FROM accounts WHERE id = ?`+s.forUpdate()), account).Scan(&cur); err != nil {
			return false, notFound(err, "account", account)
		}
		if cur == policy {
			return false, nil
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE accounts SET devmode = ? WHERE id = ?`), policy, account); err != nil {
			return false, err
		}
		data := jsonObject(map[string]any{"devmode": policy, "previous": cur})
		return true, s.addEvent(ctx, tx, Event{AccountID: account, Type: EventPolicy, Data: data, At: now})
	})
	if err != nil {
		return Account{}, err
	}
	return s.Account(ctx, account)
}

// CreateAccount inserts a; ErrExists if its id or name is taken.
func (s *Store) CreateAccount(ctx context.Context, a Account) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO accounts (id, name, ca_cert, ca_key, director_key, created_at)
		VALUES (?, ?, ?, ?, ?, ?)`), a.ID, a.Name, a.CACert, a.CAKey, a.DirectorKey, micros(a.CreatedAt))
	if isUniqueViolation(err) {
		return fmt.Errorf("account %q: %w", a.Name, ErrExists)
	}
	return err
}

const accountCols = `id, name, ca_cert, ca_key, director_key, devmode, created_at`

func scanAccount(row interface{ Scan(...any) error }) (Account, error) {
	var a Account
	var created int64
	err := row.Scan(&a.ID, &a.Name, &a.CACert, &a.CAKey, &a.DirectorKey, &a.DevMode, &created)
	a.CreatedAt = fromMicros(created)
	return a, err
}

// Account returns the account with id.
func (s *Store) Account(ctx context.Context, id string) (Account, error) {
	a, err := scanAccount(s.db.QueryRowContext(ctx, s.q(`SELECT `+accountCols+` FROM accounts WHERE id = ?`), id))
	return a, notFound(err, "account", id)
}

// AccountByName returns the account named name.
func (s *Store) AccountByName(ctx context.Context, name string) (Account, error) {
	a, err := scanAccount(s.db.QueryRowContext(ctx, s.q(`SELECT `+accountCols+` FROM accounts WHERE name = ?`), name))
	return a, notFound(err, "account", name)
}

// Accounts lists every account, oldest first.
func (s *Store) Accounts(ctx context.Context) ([]Account, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+accountCols+` FROM accounts ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Account
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// Setting returns a server-wide setting (ErrNotFound if unset).
func (s *Store) Setting(ctx context.Context, name string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT value FROM settings WHERE name = ?`), name).Scan(&v)
	return v, notFound(err, "setting", name)
}

// InitSetting stores value under name unless a value is already there, and returns
// the value that holds afterwards. Replicas starting at once agree on one value.
func (s *Store) InitSetting(ctx context.Context, name, value string) (string, error) {
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`), name, value); err != nil {
		return "", err
	}
	return s.Setting(ctx, name)
}

// ReleaseKey is a release public key registered in an account: devices of the
// account receive it as a trust root at enrollment.
type ReleaseKey struct {
	AccountID string    `json:"-"`
	KeyID     string    `json:"key_id"`
	Name      string    `json:"name"`
	PublicKey string    `json:"public_key"` // PKIX PEM
	CreatedAt time.Time `json:"created_at"`
}

// AddReleaseKey registers k (idempotent for the same key id).
func (s *Store) AddReleaseKey(ctx context.Context, k ReleaseKey) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO release_keys (account_id, key_id, name, public_key, created_at)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, key_id) DO NOTHING`),
		k.AccountID, k.KeyID, k.Name, k.PublicKey, micros(k.CreatedAt))
	return err
}

// ReleaseKeys lists an account's release keys.
func (s *Store) ReleaseKeys(ctx context.Context, account string) ([]ReleaseKey, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT account_id, key_id, name, public_key, created_at
		FROM release_keys WHERE account_id = ? ORDER BY created_at, key_id`), account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ReleaseKey
	for rows.Next() {
		var k ReleaseKey
		var created int64
		if err := rows.Scan(&k.AccountID, &k.KeyID, &k.Name, &k.PublicKey, &created); err != nil {
			return nil, err
		}
		k.CreatedAt = fromMicros(created)
		out = append(out, k)
	}
	return out, rows.Err()
}

// DeleteReleaseKey removes a release key from an account.
func (s *Store) DeleteReleaseKey(ctx context.Context, account, keyID string) error {
	return s.expectOne(s.db.ExecContext(ctx, s.q(`DELETE FROM release_keys WHERE account_id = ? AND key_id = ?`), account, keyID))("release key", keyID)
}

// expectOne turns an Exec result that touched no row into ErrNotFound.
func (s *Store) expectOne(res sql.Result, err error) func(what, id string) error {
	return func(what, id string) error {
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%s %q: %w", what, id, ErrNotFound)
		}
		return nil
	}
}
