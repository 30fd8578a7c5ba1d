// Package storetest starts the real databases the store's tests run against: a
// throwaway PostgreSQL cluster (Debian's postgresql, initdb into a temporary
// directory, loopback only) and SQLite files in a test's temporary directory.
package storetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/pgcluster"
)

// ErrNoPostgres reports that no PostgreSQL server binaries are installed.
var ErrNoPostgres = pgcluster.ErrNoPostgres

// Postgres is a PostgreSQL cluster owned by a test binary.
type Postgres struct {
	c *pgcluster.Cluster
	n atomic.Int64
}

// StartPostgres starts a fast, non-durable cluster (fsync and synchronous
// commits off) in a new temporary directory on a free loopback port.
func StartPostgres() (*Postgres, error) {
	c, err := pgcluster.Start(pgcluster.Options{Settings: []string{"max_connections=200"}})
	if err != nil {
		return nil, err
	}
	return &Postgres{c: c}, nil
}

// NewDatabase creates an empty database and returns its URL.
func (p *Postgres) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", time.Now().UnixNano()%1e9, p.n.Add(1))
	if err := p.c.CreateDatabase(ctx, name); err != nil {
		return "", err
	}
	return p.c.URL(name), nil
}

// Stop stops the server and removes the cluster.
func (p *Postgres) Stop() { p.c.Stop() }

// Main is a TestMain body for packages that test against PostgreSQL: it starts one
// cluster for the test binary, stores it in *pg (nil when PostgreSQL is missing),
// runs the tests and stops the cluster.
func Main(m *testing.M, pg **Postgres) int {
	p, err := StartPostgres()
	if err != nil {
		fmt.Fprintln(os.Stderr, "storetest: no PostgreSQL:", err)
	} else {
		*pg = p
		defer p.Stop()
	}
	return m.Run()
}

// PostgresURL returns a fresh database on pg, skipping the test when pg is nil
// (PostgreSQL not installed) and failing it under CI=true.
func PostgresURL(t testing.TB, pg *Postgres) string {
	t.Helper()
	if pg == nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("PostgreSQL is required under CI (apt-get install postgresql)")
		}
		t.Skip("PostgreSQL not installed")
	}
	u, err := pg.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Backends returns the database URLs to run a store test against: a SQLite file
// in a temporary directory and, when available, a fresh PostgreSQL database.
func Backends(t *testing.T, pg *Postgres) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"sqlite":   func(t *testing.T) string { return filepath.Join(t.TempDir(), "tern.db") },
		"postgres": func(t *testing.T) string { return PostgresURL(t, pg) },
	}
}
