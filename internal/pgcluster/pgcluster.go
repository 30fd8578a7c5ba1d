// Package pgcluster starts private PostgreSQL clusters on loopback, for the
// store's and server's tests (internal/store/storetest) and for the fleet
// simulator (bench/fleetsim), which would otherwise each carry the same code.
//
// A cluster is Debian's postgresql (the server binaries live off PATH, under
// /usr/lib/postgresql/VERSION/bin), initdb'd into a directory, with trust
// authentication for the "postgres" user, listening on 127.0.0.1 and on a Unix
// socket in that directory. initdb refuses to run as root, so as root the
// directory is given to the "postgres" user and the cluster runs as it, through
// runuser.
package pgcluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to wait for the server and create databases

	"github.com/tern-iot/tern/internal/loopback"
)

// ErrNoPostgres reports that no PostgreSQL server binaries are installed.
var ErrNoPostgres = errors.New("postgresql is not installed (apt-get install postgresql)")

// Options configure a cluster.
type Options struct {
	// Dir holds the cluster (its data in Dir/data, its socket in Dir). Empty: a
	// new temporary directory, which Stop removes; otherwise Dir is created if
	// need be and left in place.
	Dir string
	// Durable keeps PostgreSQL's defaults, fsync and synchronous commits on, as
	// in production. Otherwise initdb skips syncing and the server runs with
	// fsync, synchronous_commit and full_page_writes off, for speed.
	Durable bool
	// Settings are extra server settings ("name=value", each passed as -c).
	Settings []string
	// LogPath receives the server's output. Empty: DIRNAME.log in os.TempDir().
	LogPath string
}

// Cluster is a running PostgreSQL cluster.
type Cluster struct {
	dir     string
	owned   bool // dir was created by Start: Stop removes it
	durable bool
	port    int
	cmd     *exec.Cmd
	done    chan struct{}
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

// Start initialises a cluster and starts it on a free loopback port, returning
// once it accepts connections. It returns ErrNoPostgres when the PostgreSQL
// server binaries are missing.
func Start(o Options) (*Cluster, error) {
	initdb, err := findBin("initdb")
	if err != nil {
		return nil, err
	}
	postgres, err := findBin("postgres")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: o.Dir, durable: o.Durable, done: make(chan struct{})}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "tern-pg-"); err != nil {
			return nil, err
		}
		c.owned = true
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	fail := func(err error) (*Cluster, error) {
		if c.owned {
			os.RemoveAll(c.dir)
		}
		return nil, err
	}
	asUser := func(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fail(fmt.Errorf("running as root needs the postgres user: %w", err))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(c.dir, uid, gid); err != nil {
			return fail(err)
		}
		asUser = func(name string, args ...string) *exec.Cmd {
			return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
		}
	}
	data := filepath.Join(c.dir, "data")
	initArgs := []string{"-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"}
	if !o.Durable {
		initArgs = append(initArgs, "--no-sync")
	}
	if out, err := asUser(initdb, initArgs...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %v\n%s", err, out))
	}
	if c.port, err = loopback.LaterPort(); err != nil {
		return fail(err)
	}
	settings := []string{"listen_addresses=127.0.0.1"}
	if !o.Durable {
		settings = append(settings, "fsync=off", "synchronous_commit=off", "full_page_writes=off")
	}
	args := []string{"-D", data, "-p", strconv.Itoa(c.port), "-k", c.dir}
	for _, s := range append(settings, o.Settings...) {
		args = append(args, "-c", s)
	}
	c.cmd = asUser(postgres, args...)
	logPath := o.LogPath
	if logPath == "" {
		logPath = filepath.Join(os.TempDir(), filepath.Base(c.dir)+".log")
	}
	logf, err := os.Create(logPath)
	if err == nil {
		c.cmd.Stdout, c.cmd.Stderr = logf, logf
	}
	if err := c.cmd.Start(); err != nil {
		if logf != nil {
			logf.Close()
		}
		return fail(err)
	}
	go func() {
		c.cmd.Wait()
		if logf != nil {
			logf.Close()
		}
		close(c.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, err := sql.Open("pgx", c.URL("postgres"))
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("postgres did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL is the connection URL of database db on the cluster.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// CreateDatabase creates an empty database.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	db, err := sql.Open("pgx", c.URL("postgres"))
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, "CREATE DATABASE "+name)
	return err
}

// PID is the postmaster's process id (under root, runuser's child), read from
// postmaster.pid; 0 if unknown.
func (c *Cluster) PID() int {
	data, err := os.ReadFile(filepath.Join(c.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(data), "\n")
	n, _ := strconv.Atoi(strings.TrimSpace(first))
	return n
}

// Stop shuts the server down fast (SIGINT to the postmaster: runuser does not
// forward signals), kills it if it has not stopped in time, and removes the
// directory if Start created it.
func (c *Cluster) Stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		if pid := c.PID(); pid > 0 {
			syscall.Kill(pid, syscall.SIGINT)
		} else {
			c.cmd.Process.Signal(os.Interrupt)
		}
		wait := 10 * time.Second
		if c.durable {
			wait = 20 * time.Second // the shutdown checkpoint writes every dirty buffer
		}
		select {
		case <-c.done:
		case <-time.After(wait):
			if pid := c.PID(); pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			c.cmd.Process.Kill()
			<-c.done
		}
	}
	if c.owned {
		os.RemoveAll(c.dir)
	}
}
