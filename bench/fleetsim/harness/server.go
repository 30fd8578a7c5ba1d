package harness

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
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to create the database
)

// ternServer is a `tern server` process the harness started.
type ternServer struct {
	cmd      *exec.Cmd
	dir      string
	url      string
	mqtt     string
	admin    string
	log      string
	exited   chan struct{}
	exitErr  error
	stopOnce bool
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startServer runs `tern server` on loopback with its data in dir (db: "" for
// SQLite, or a postgres:// URL), and waits until it serves.
func startServer(ctx context.Context, tern, dir, db string, extra []string) (*ternServer, error) {
	hp, err := freePort()
	if err != nil {
		return nil, err
	}
	mp, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &ternServer{dir: dir, url: fmt.Sprintf("https://127.0.0.1:%d", hp), mqtt: fmt.Sprintf("127.0.0.1:%d", mp),
		log: filepath.Join(dir, "server.log"), exited: make(chan struct{})}
	args := []string{"server", "--data", filepath.Join(dir, "data"), "--http", fmt.Sprintf("127.0.0.1:%d", hp), "--mqtt", s.mqtt, "--log-level", "warn"}
	if db != "" {
		args = append(args, "--db", db)
	}
	args = append(args, extra...)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(tern, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		s.exitErr = s.cmd.Wait()
		logf.Close()
		close(s.exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.exited:
			out, _ := os.ReadFile(s.log)
			return nil, fmt.Errorf("tern server exited: %v\n%s", s.exitErr, out)
		default:
		}
		if key, err := os.ReadFile(filepath.Join(dir, "data", "admin.token")); err == nil {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", hp)); err == nil {
				c.Close()
				s.admin = strings.TrimSpace(string(key))
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, errors.New("tern server did not come up in 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *ternServer) pid() int { return s.cmd.Process.Pid }

// alive reports whether the server still runs.
func (s *ternServer) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// stop asks the server to stop (SIGTERM), then kills it after 15 s.
func (s *ternServer) stop() {
	if s == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// postgres is a throwaway PostgreSQL cluster (Debian's binaries, initdb into a
// directory, loopback only), run durably (fsync and synchronous commits on, as in
// production; internal/store/storetest turns them off for speed).
type postgres struct {
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

func findPGBin(name string) (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(matches) > 0 {
		return matches[len(matches)-1], nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", errors.New("postgresql is not installed (apt-get install postgresql)")
}

func startPostgres(dir string) (*postgres, error) {
	initdb, err := findPGBin("initdb")
	if err != nil {
		return nil, err
	}
	pgBin, err := findPGBin("postgres")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	asUser := func(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
	if os.Geteuid() == 0 { // initdb refuses root: run the cluster as postgres
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		asUser = func(name string, args ...string) *exec.Cmd {
			return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := asUser(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &postgres{dir: dir, port: port, done: make(chan struct{})}
	p.cmd = asUser(pgBin, "-D", data, "-p", strconv.Itoa(port), "-k", dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=100", "-c", "shared_buffers=256MB")
	logf, err := os.Create(filepath.Join(filepath.Dir(dir), "postgres.log"))
	if err == nil {
		p.cmd.Stdout, p.cmd.Stderr = logf, logf
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, err := sql.Open("pgx", p.url("postgres"))
		if err == nil {
			err = db.Ping()
			if err == nil {
				_, err = db.Exec("CREATE DATABASE tern")
			}
			db.Close()
		}
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("postgres did not start: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *postgres) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

// pid is the postmaster's (runuser's child).
func (p *postgres) pid() int {
	data, err := os.ReadFile(filepath.Join(p.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(data), "\n")
	n, _ := strconv.Atoi(strings.TrimSpace(first))
	return n
}

// stop shuts the cluster down fast (SIGINT to the postmaster).
func (p *postgres) stop() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	if pid := p.pid(); pid > 0 {
		syscall.Kill(pid, syscall.SIGINT)
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		if pid := p.pid(); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		p.cmd.Process.Kill()
		<-p.done
	}
}
