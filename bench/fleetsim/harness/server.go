package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tern-iot/tern/internal/loopback"
	"github.com/tern-iot/tern/internal/pgcluster"
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

// startServer runs `tern server` on loopback with its data in dir (db: "" for
// SQLite, or a postgres:// URL), and waits until it serves.
func startServer(ctx context.Context, tern, dir, db string, extra []string) (*ternServer, error) {
	hp, err := loopback.LaterPort()
	if err != nil {
		return nil, err
	}
	mp, err := loopback.LaterPort()
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

// postgres is the harness's throwaway PostgreSQL cluster, run durably (fsync and
// synchronous commits on, as in production; internal/store/storetest turns them
// off for speed), with an empty database "tern" for the server.
type postgres struct{ c *pgcluster.Cluster }

// startPostgres starts the cluster in dir, its log next to dir.
func startPostgres(dir string) (*postgres, error) {
	c, err := pgcluster.Start(pgcluster.Options{
		Dir:      dir,
		Durable:  true,
		Settings: []string{"max_connections=100", "shared_buffers=256MB"},
		LogPath:  filepath.Join(filepath.Dir(dir), "postgres.log"),
	})
	if err != nil {
		return nil, err
	}
	if err := c.CreateDatabase(context.Background(), "tern"); err != nil {
		c.Stop()
		return nil, err
	}
	return &postgres{c: c}, nil
}

func (p *postgres) url(db string) string { return p.c.URL(db) }

// pid is the postmaster's (runuser's child).
func (p *postgres) pid() int { return p.c.PID() }

// stop shuts the cluster down fast (SIGINT to the postmaster).
func (p *postgres) stop() {
	if p != nil {
		p.c.Stop()
	}
}
