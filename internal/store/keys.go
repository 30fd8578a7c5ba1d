package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"
)

// Role is what an API key may do within its account.
type Role string

// Roles, from most to least powerful.
const (
	RoleAdmin    Role = "admin"    // everything in the account, including keys and webhooks
	RoleOperator Role = "operator" // devices, tokens, groups
	RoleViewer   Role = "viewer"   // read only
)

// Valid reports whether r is one of the three roles.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleOperator || r == RoleViewer }

// Allows reports whether a key with role r may act where min is required.
func (r Role) Allows(min Role) bool { return r.rank() >= min.rank() }

func (r Role) rank() int {
	switch r {
	case RoleAdmin:
		return 3
	case RoleOperator:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// APIKey is an API key's record. Only a hash of its secret is stored: the secret is
// shown once, when the key is created.
type APIKey struct {
	ID        string    `json:"id"`
	AccountID string    `json:"account"`
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Hash      string    `json:"-"`
	CreatedAt time.Time `json:"created_at"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// CreateAPIKey inserts k.
func (s *Store) CreateAPIKey(ctx context.Context, k APIKey) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO api_keys (id, account_id, name, role, hash, created_at) VALUES (?, ?, ?, ?, ?, ?)`),
		k.ID, k.AccountID, k.Name, string(k.Role), k.Hash, micros(k.CreatedAt))
	return err
}

const apiKeyCols = `id, account_id, name, role, hash, created_at, revoked_at`

func scanAPIKey(row interface{ Scan(...any) error }) (APIKey, error) {
	var k APIKey
	var role string
	var created, revoked int64
	err := row.Scan(&k.ID, &k.AccountID, &k.Name, &role, &k.Hash, &created, &revoked)
	k.Role, k.CreatedAt, k.RevokedAt = Role(role), fromMicros(created), fromMicros(revoked)
	return k, err
}

// APIKey returns the key with id, revoked or not.
func (s *Store) APIKey(ctx context.Context, id string) (APIKey, error) {
	k, err := scanAPIKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+apiKeyCols+` FROM api_keys WHERE id = ?`), id))
	return k, notFound(err, "api key", id)
}

// APIKeys lists an account's keys, revoked ones included.
func (s *Store) APIKeys(ctx context.Context, account string) ([]APIKey, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+apiKeyCols+` FROM api_keys WHERE account_id = ? ORDER BY created_at, id`), account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeAPIKey revokes an account's key (ErrNotFound if the account has no such
// live key).
func (s *Store) RevokeAPIKey(ctx context.Context, account, id string, now time.Time) error {
	return s.expectOne(s.db.ExecContext(ctx, s.q(`UPDATE api_keys SET revoked_at = ? WHERE account_id = ? AND id = ? AND revoked_at = 0`),
		micros(now), account, id))("api key", id)
}

// Approval says how a device enrolled with a token is admitted.
type Approval string

// Approval modes.
const (
	ApprovalAuto   Approval = "auto"   // a valid token admits the device at once
	ApprovalManual Approval = "manual" // the device waits, pending, until an operator accepts it
)

// Token is an enrollment token's record; as with API keys only the secret's hash is
// stored.
type Token struct {
	ID          string            `json:"id"`
	AccountID   string            `json:"-"`
	Description string            `json:"description"`
	Hash        string            `json:"-"`
	Labels      map[string]string `json:"labels"`
	Approval    Approval          `json:"approval"`
	MaxUses     int               `json:"max_uses"`
	Uses        int               `json:"uses"`
	ExpiresAt   time.Time         `json:"expires_at"`
	CreatedAt   time.Time         `json:"created_at"`
	RevokedAt   time.Time         `json:"revoked_at,omitzero"`
}

// CreateToken inserts t.
func (s *Store) CreateToken(ctx context.Context, t Token) error {
	labels, err := json.Marshal(nonNil(t.Labels))
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO enrollment_tokens
		(id, account_id, description, hash, labels, approval, max_uses, expires_at, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		t.ID, t.AccountID, t.Description, t.Hash, string(labels), string(t.Approval), t.MaxUses, micros(t.ExpiresAt), micros(t.CreatedAt))
	return err
}

const tokenCols = `id, account_id, description, hash, labels, approval, max_uses, uses, expires_at, created_at, revoked_at`

func scanToken(row interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var labels, approval string
	var expires, created, revoked int64
	if err := row.Scan(&t.ID, &t.AccountID, &t.Description, &t.Hash, &labels, &approval, &t.MaxUses, &t.Uses,
		&expires, &created, &revoked); err != nil {
		return t, err
	}
	t.Approval, t.ExpiresAt, t.CreatedAt, t.RevokedAt = Approval(approval), fromMicros(expires), fromMicros(created), fromMicros(revoked)
	return t, json.Unmarshal([]byte(labels), &t.Labels)
}

// Token returns the token with id.
func (s *Store) Token(ctx context.Context, id string) (Token, error) {
	return s.token(ctx, s.db, id)
}

func (s *Store) token(ctx context.Context, q querier, id string) (Token, error) {
	t, err := scanToken(q.QueryRowContext(ctx, s.q(`SELECT `+tokenCols+` FROM enrollment_tokens WHERE id = ?`), id))
	return t, notFound(err, "enrollment token", id)
}

// Tokens lists an account's enrollment tokens.
func (s *Store) Tokens(ctx context.Context, account string) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+tokenCols+` FROM enrollment_tokens WHERE account_id = ? ORDER BY created_at, id`), account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken revokes an account's token: no further device may enroll with it.
func (s *Store) RevokeToken(ctx context.Context, account, id string, now time.Time) error {
	return s.expectOne(s.db.ExecContext(ctx, s.q(`UPDATE enrollment_tokens SET revoked_at = ? WHERE account_id = ? AND id = ? AND revoked_at = 0`),
		micros(now), account, id))("enrollment token", id)
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

var _ querier = (*sql.Tx)(nil)
