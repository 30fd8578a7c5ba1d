package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	goruntime "runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tern-iot/tern/internal/app"
)

// Health states shown by ps and inspect.
const (
	HealthNone      = ""          // the app has no health check
	HealthStarting  = "starting"  // no probe has passed yet
	HealthHealthy   = "healthy"   // the last probe passed
	HealthUnhealthy = "unhealthy" // retries probes in a row failed
)

// execer runs a command in a running container (runtime.Runtime.Exec).
type execer func(ctx context.Context, args []string) (int, error)

// probe runs one health check against a container whose init is pid. TCP and HTTP
// probes connect from inside the container's network namespace, so they reach an
// app that listens only there (the default, network none).
func probe(ctx context.Context, h *app.Health, pid int, exec execer) error {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout.D())
	defer cancel()
	switch {
	case len(h.Exec) > 0:
		code, err := exec(ctx, h.Exec)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("exec %s: exit %d", h.Exec[0], code)
		}
		return nil
	case h.TCP != 0:
		conn, err := dialInNetns(ctx, pid, h.TCP)
		if err != nil {
			return err
		}
		return conn.Close()
	case h.HTTP != nil:
		return httpProbe(ctx, pid, h.HTTP)
	}
	return fmt.Errorf("health check has no probe")
}

func httpProbe(ctx context.Context, pid int, p *app.HTTPProbe) error {
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return dialInNetns(ctx, pid, p.Port) },
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	path := p.Path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost:"+strconv.Itoa(p.Port)+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "ternd-health")
	resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("http %s: %s", path, resp.Status)
	}
	return nil
}

// dialInNetns connects to 127.0.0.1:port inside the network namespace of pid. A
// socket belongs to the namespace it was created in, so the thread enters the
// namespace only for socket creation and connect, then returns to its own.
func dialInNetns(ctx context.Context, pid, port int) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("container network: %w", err)}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter container network: %w", err)}
			return
		}
		d := net.Dialer{}
		c, err := d.DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread is stuck in the container's namespace: leave it locked
			// so the Go runtime retires it with this goroutine.
			ch <- result{c, err}
			return
		}
		goruntime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// healthTracker turns probe results into a health state: healthy after a pass,
// unhealthy after retries failures in a row.
type healthTracker struct {
	retries  int
	failures int
	state    string
	lastErr  string
	lastAt   time.Time
}

func (t *healthTracker) record(err error, now time.Time) (changed bool) {
	old := t.state
	t.lastAt = now
	if err == nil {
		t.failures, t.state, t.lastErr = 0, HealthHealthy, ""
	} else {
		t.failures++
		t.lastErr = err.Error()
		if t.failures >= max(t.retries, 1) {
			t.state = HealthUnhealthy
		}
	}
	return t.state != old
}

// DialApp connects to a port an app listens on inside its own network namespace,
// the way the health checks do: with network none, nothing outside reaches it.
func (a *Agent) DialApp(ctx context.Context, name string, port int) (net.Conn, error) {
	s, ok := a.supervisorOf(name)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotInstalled, name)
	}
	_, pid, _, _, _ := s.status()
	if pid == 0 {
		return nil, fmt.Errorf("%s is not running", name)
	}
	return dialInNetns(ctx, pid, port)
}
