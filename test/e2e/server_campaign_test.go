package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/server"
)

// simFleet is simulated devices (fleetsim: real enrollment, real MQTT over mutual
// TLS, real downloads with Range) run in the test process against a real
// `tern server`.
type simFleet struct {
	t    *testing.T
	devs map[string]*simDev
}

type simDev struct {
	*fleetsim.Device
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

func (d *simDev) start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan error, 1)
	go func() { d.done <- d.Run(ctx) }()
}

func (d *simDev) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel != nil {
		d.cancel()
		<-d.done
		d.cancel = nil
	}
}

func startSimFleet(t *testing.T, srv *fleetServer, token string, n int) *simFleet {
	t.Helper()
	f := &simFleet{t: t, devs: map[string]*simDev{}}
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		d, err := fleetsim.New(ctx, fleetsim.Config{Dir: filepath.Join(t.TempDir(), fmt.Sprint("dev", i)), ServerURL: srv.url, Token: token,
			Chunk: 16 << 10, ReportEvery: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		sd := &simDev{Device: d}
		sd.start()
		t.Cleanup(sd.stop)
		f.devs[d.ID()] = sd
	}
	return f
}

// campaignJSON is what `tern fleet campaign show --json` prints.
type campaignJSON struct {
	server.CampaignView
}

func (s *fleetServer) campaign(id string) campaignJSON {
	s.t.Helper()
	var c campaignJSON
	if err := json.Unmarshal([]byte(s.mustFleet("campaign", "show", id, "--json")), &c); err != nil {
		s.t.Fatal(err)
	}
	return c
}

// watch runs `tern fleet campaign show ID --watch` to its end and returns its
// exit code and output.
func (s *fleetServer) watch(id string) (int, string) {
	s.t.Helper()
	out, errOut, err := s.fleet("campaign", "show", id, "--watch")
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &ee):
		return ee.ExitCode(), out + errOut
	}
	s.t.Fatalf("watch: %v\n%s%s", err, out, errOut)
	return -1, ""
}

// buildRelease builds and signs package hello@version with `tern app build`.
func buildRelease(t *testing.T, dir, key, version string) string {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs-"+version)
	os.MkdirAll(rootfs, 0o755)
	os.WriteFile(filepath.Join(rootfs, "hello"), []byte("#!/bin/sh\necho hello "+version+"\n"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "payload"), []byte(strings.Repeat("hello "+version+"\n", 20000)), 0o644)
	manifest := filepath.Join(dir, "tern-"+version+".yaml")
	os.WriteFile(manifest, []byte("name: hello\nversion: "+version+"\ncommand: [\"/hello\"]\n"), 0o644)
	pkg := filepath.Join(dir, "hello-"+version+".tern")
	if out, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", manifest, "--key", key, "-o", pkg); err != nil {
		t.Fatal(err, out)
	}
	return pkg
}

// hookSink records the webhook deliveries it receives, by event type.
type hookSink struct {
	mu    sync.Mutex
	types map[string]int
}

func (h *hookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var p server.WebhookPayload
	json.NewDecoder(r.Body).Decode(&p)
	h.mu.Lock()
	h.types[p.Type]++
	h.mu.Unlock()
}

func (h *hookSink) got(typ string) bool { h.mu.Lock(); defer h.mu.Unlock(); return h.types[typ] > 0 }

// TestServerCampaignEndToEnd is issue 6's server side with the real `tern server`
// and `tern fleet` programs and simulated devices: a campaign completes; a release
// that fails pauses its campaign at the threshold after its first phase and is
// rolled back; the server is killed with SIGKILL mid-campaign and the campaign
// resumes; a device offline during its phase catches up when it returns.
func TestServerCampaignEndToEnd(t *testing.T) {
	dir := t.TempDir()
	if out, err := tern("keys", "generate", "--out", filepath.Join(dir, "keys", "release")); err != nil {
		t.Fatal(err, out)
	}
	key := filepath.Join(dir, "keys", "release.key")
	v1, v2, v3 := buildRelease(t, dir, key, "1.0.0"), buildRelease(t, dir, key, "2.0.0"), buildRelease(t, dir, key, "3.0.0")

	srv := startFleetServer(t, filepath.Join(dir, "server"))
	srv.mustFleet("login", srv.url, "--key", srv.admin, "--ca-fingerprint", srv.fingerprint)
	srv.mustFleet("release-keys", "add", filepath.Join(dir, "keys", "release.pub"))
	sink := &hookSink{types: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: sink}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	srv.mustFleet("webhooks", "create", "http://"+ln.Addr().String()+"/hook", "--secret", "0123456789abcdef0123",
		"--event", "campaign.paused", "--event", "campaign.completed", "--event", "desired.rolled_back")

	token := strings.TrimSpace(srv.mustFleet("tokens", "create", "--label", "site=lab", "--max-uses", "4"))
	fleet := startSimFleet(t, srv, token, 4)
	srv.mustFleet("groups", "create", "lab", "--selector", "site=lab")
	for _, r := range [][2]string{{"v1", v1}, {"v2", v2}, {"v3", v3}} {
		out := srv.mustFleet("release", "create", r[0], r[1])
		if !strings.Contains(out, "hello") || !strings.Contains(out, "package(s)") {
			t.Fatalf("release create:\n%s", out)
		}
	}

	// 1. A campaign completes, phase by phase.
	start := time.Now()
	srv.mustFleet("campaign", "create", "c1", "--release", "v1", "--group", "lab", "--phases", "25%,100%")
	code, out := srv.watch("c1")
	took := time.Since(start)
	if code != 0 || !strings.Contains(out, "completed") || !strings.Contains(out, "phase 2 (100%)") {
		t.Fatalf("watch c1 (exit %d):\n%s", code, out)
	}
	for id, d := range fleet.devs {
		if d.Running()["hello"] != "1.0.0" {
			t.Fatalf("%s runs %v", id, d.Running())
		}
	}
	t.Logf("campaign to 4 simulated devices in 2 phases: %s", took.Round(time.Millisecond))

	// 2. A release that fails on devices stops by itself after its first phase.
	for _, d := range fleet.devs {
		d.SetFail(func(doc *link.Desired) string {
			if doc.Release == "v2" {
				return "health check failed"
			}
			return ""
		})
	}
	srv.mustFleet("campaign", "create", "c2", "--release", "v2", "--group", "lab", "--phases", "50%,100%", "--max-failures", "1")
	if code, out := srv.watch("c2"); code != 2 || !strings.Contains(out, "paused: failures over threshold") {
		t.Fatalf("watch c2 (exit %d):\n%s", code, out)
	}
	c2 := srv.campaign("c2")
	if c2.Phases[0].Failed != 2 || c2.Phases[1].Waiting != 2 {
		t.Fatalf("c2 phases: %+v", c2.Phases)
	}
	srv.mustFleet("campaign", "rollback", "c2")
	if code, out := srv.watch("c2"); code != 2 || !strings.Contains(out, "rolled_back") || !strings.Contains(out, "2 reverted") {
		t.Fatalf("watch c2 after rollback (exit %d):\n%s", code, out)
	}
	for id, d := range fleet.devs {
		if d.Running()["hello"] != "1.0.0" {
			t.Fatalf("%s runs %v after the rollback", id, d.Running())
		}
	}

	// 3. SIGKILL mid-campaign, with a device offline during its phase.
	out = srv.mustFleet("campaign", "create", "c3", "--release", "v3", "--group", "lab", "--phases", "1,100%", "--wait", "3s", "--json")
	var c3 campaignJSON
	if err := json.Unmarshal([]byte(out), &c3); err != nil {
		t.Fatal(err)
	}
	var offline *simDev
	for _, d := range c3.Devices {
		if d.Phase == 1 {
			offline = fleet.devs[d.DeviceID]
			break
		}
	}
	offline.stop()
	waitFor(t, "phase 1 of c3 done", func() bool { return !srv.campaign("c3").PhaseDone.IsZero() })
	srv.kill9()
	srv.start()
	waitFor(t, "phase 2 assigned after the restart", func() bool {
		c := srv.campaign("c3")
		return c.Phase == 1 && c.Phases[1].Applied == 2 && c.Phases[1].Pending == 1
	})
	if c := srv.campaign("c3"); c.State != "running" {
		t.Fatalf("c3 with a device offline: %s", c.State)
	}
	offline.start()
	if code, out := srv.watch("c3"); code != 0 {
		t.Fatalf("watch c3 (exit %d):\n%s\nserver log:\n%s", code, out, srv.log)
	}
	for id, d := range fleet.devs {
		if d.Running()["hello"] != "3.0.0" {
			t.Fatalf("%s runs %v", id, d.Running())
		}
	}

	ls := srv.mustFleet("campaign", "ls")
	for _, want := range []string{"c1", "c2", "c3", "completed", "rolled_back"} {
		if !strings.Contains(ls, want) {
			t.Errorf("campaign ls lacks %q:\n%s", want, ls)
		}
	}
	waitFor(t, "webhook deliveries", func() bool {
		return sink.got("campaign.paused") && sink.got("campaign.completed") && sink.got("desired.rolled_back")
	})
	var bytes int64
	for _, d := range fleet.devs {
		bytes += d.Downloaded.Load()
	}
	t.Logf("downloaded by the 4 devices over 3 campaigns: %d bytes", bytes)
}
