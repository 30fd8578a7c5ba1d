// Package store is the management server's persistence: one schema, two backends.
//
// SQLite (a file in the server's data directory, WAL journal, synchronous=FULL) is the
// embedded default; PostgreSQL serves several server replicas at once. Both are reached
// through database/sql with the same SQL text: queries use '?' placeholders, rewritten
// to $n for PostgreSQL, and only constructs both engines share (ON CONFLICT, RETURNING,
// integer timestamps in Unix microseconds, JSON kept as text).
//
// Invariant after a crash at any point: every method that changes more than one row
// does so in one transaction, so a change and the event that records it are both
// present or both absent; a caller that saw a method return nil sees its effect after
// a restart (SQLite commits with synchronous=FULL; PostgreSQL commits durably).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// Errors callers act on; test them with errors.Is.
var (
	ErrNotFound       = errors.New("not found")
	ErrExists         = errors.New("already exists")
	ErrTokenInvalid   = errors.New("enrollment token is not valid")
	ErrTokenExpired   = errors.New("enrollment token has expired")
	ErrTokenRevoked   = errors.New("enrollment token was revoked")
	ErrTokenExhausted = errors.New("enrollment token has no uses left")
	ErrDecommissioned = errors.New("device is decommissioned")
	ErrRejected       = errors.New("device enrollment was rejected")
	ErrWrongState     = errors.New("device is not in a state that allows this")
	ErrKeyEnrolled    = errors.New("device key is already enrolled with another token")
)

// Dialect names the database engine behind a Store.
type Dialect string

// The two backends.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Store is the server's database. It is safe for concurrent use, and several Stores
// (in several server processes) may share one PostgreSQL database.
type Store struct {
	db      *sql.DB
	dialect Dialect

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever this Store records an event

	// writeLock (a one-slot semaphore) serialises this process's write
	// transactions on SQLite, which allows one writer at a time anyway. Waiting
	// here costs nothing, first come first served, and gives up when the
	// caller's context ends; waiting in SQLite's busy handler sleeps 1, 2, 5,
	// 10... ms per retry while holding a pooled connection, so that under a burst
	// (a fleet reconnecting at once) writers slept most of the time and readers
	// found no connection.
	writeLock chan struct{}
	// committer groups device messages into shared transactions on SQLite
	// (groupcommit.go); nil on PostgreSQL.
	committer *committer
}

// Open opens (creating if needed) the database named by dsn and brings its schema up
// to date. dsn is a postgres:// or postgresql:// URL, or a path to a SQLite file
// (optionally written sqlite:///path).
func Open(ctx context.Context, dsn string) (*Store, error) {
	var (
		db      *sql.DB
		dialect Dialect
		err     error
	)
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		dialect = Postgres
		db, err = sql.Open("pgx", dsn)
		if err != nil {
			return nil, err
		}
		db.SetMaxOpenConns(16)
		// Keep them: database/sql keeps 2 idle by default, so every burst past
		// two concurrent queries closed connections and opened new ones, each a
		// new PostgreSQL backend (a fork and its caches): the fleet simulator
		// measured ~5 ms of PostgreSQL CPU per device report, and 100 ms from a
		// report to the event stream, from that churn alone.
		db.SetMaxIdleConns(16)
	default:
		dialect = SQLite
		path := strings.TrimPrefix(dsn, "sqlite://")
		if path == "" {
			return nil, errors.New("store: empty database path")
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		q := url.Values{}
		for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)"} {
			q.Add("_pragma", p)
		}
		q.Set("_txlock", "immediate") // writers take the lock up front: no upgrade deadlocks
		db, err = sql.Open("sqlite", "file:"+path+"?"+q.Encode())
		if err != nil {
			return nil, err
		}
		db.SetMaxOpenConns(4)
	}
	s := &Store{db: db, dialect: dialect, changed: make(chan struct{}), writeLock: make(chan struct{}, 1)}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", dialect, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: migrate: %w", err)
	}
	if dialect == SQLite {
		s.committer = startCommitter(s)
	}
	return s, nil
}

// Close closes the database (after the device messages being committed).
func (s *Store) Close() error {
	if s.committer != nil {
		s.committer.close()
	}
	return s.db.Close()
}

// Dialect reports which engine this Store uses.
func (s *Store) Dialect() Dialect { return s.dialect }

// Changed returns a channel that is closed the next time this Store records an
// event. Long-lived readers (the SSE stream, webhook delivery) wait on it instead of
// polling fast; they still poll slowly to see events other replicas record.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Store) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// q rewrites '?' placeholders for the engine in use.
func (s *Store) q(query string) string {
	if s.dialect != Postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// tx runs fn in a transaction; it commits when fn returns nil. When fn recorded an
// event, waiters on Changed are woken after the commit.
func (s *Store) tx(ctx context.Context, fn func(tx *sql.Tx) (event bool, err error)) error {
	if s.dialect == SQLite {
		select {
		case s.writeLock <- struct{}{}:
			defer func() { <-s.writeLock }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	event, err := fn(tx)
	if err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if event {
		s.notify()
	}
	return nil
}

// micros converts a time to the stored form: Unix microseconds, 0 for the zero time.
func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// fromMicros is the inverse of micros.
func fromMicros(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// notFound maps sql.ErrNoRows to ErrNotFound with context.
func notFound(err error, what, id string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s %q: %w", what, id, ErrNotFound)
	}
	return err
}

// isUniqueViolation reports a primary-key or unique constraint failure on either engine.
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || strings.Contains(msg, "SQLSTATE 23505") ||
		strings.Contains(msg, "duplicate key value")
}
