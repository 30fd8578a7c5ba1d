// Package storetest starts the real databases the store's tests run against: a
// throwaway PostgreSQL cluster (Debian's postgresql, initdb into a temporary
// directory, loopback only) and SQLite files in a test's temporary directory.
package storetest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// ErrNoPostgres reports that no PostgreSQL server binaries are installed.
var ErrNoPostgres = errors.New("postgresql is not installed (apt-get install postgresql)")

// Postgres is a PostgreSQL cluster owned by a test binary.
type Postgres struct {
	dir  string
	port int
	cmd  *exec.Cmd
	n    atomic.Int64
}

// findBin locates a PostgreSQL server binary: Debian keeps them off PATH.
func findBin(name string) (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(matches) > 0 {
		return matches[len(matches)-1], nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", ErrNoPostgres
}

// StartPostgres initialises a cluster in a new temporary directory and starts it on
// a free loopback port. initdb refuses to run as root, so as root the cluster is
// owned by and run as the "postgres" user.
func StartPostgres() (*Postgres, error) {
	initdb, err := findBin("initdb")
	if err != nil {
		return nil, err
	}
	postgres, err := findBin("postgres")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tern-pg-")
	if err != nil {
		return nil, err
	}
	asUser := func(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		asUser = func(name string, args ...string) *exec.Cmd {
			return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := asUser(initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := &Postgres{dir: dir, port: port}
	p.cmd = asUser(postgres, "-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	logf, err := os.Create(filepath.Join(os.TempDir(), filepath.Base(dir)+".log"))
	if err == nil {
		p.cmd.Stdout, p.cmd.Stderr = logf, logf
	}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, err := sql.Open("pgx", p.url("postgres"))
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("postgres did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *Postgres) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

// NewDatabase creates an empty database and returns its URL.
func (p *Postgres) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", time.Now().UnixNano()%1e9, p.n.Add(1))
	db, err := sql.Open("pgx", p.url("postgres"))
	if err != nil {
		return "", err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return p.url(name), nil
}

// Stop stops the server and removes the cluster.
func (p *Postgres) Stop() {
	if p.cmd != nil && p.cmd.Process != nil {
		// SIGINT is PostgreSQL's fast shutdown. Signal the postmaster itself (its
		// pid is the first line of postmaster.pid): runuser does not forward it.
		if data, err := os.ReadFile(filepath.Join(p.dir, "data", "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(data), "\n")
			if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 {
				syscall.Kill(pid, syscall.SIGINT)
			}
		}
		p.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
	os.RemoveAll(p.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

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
