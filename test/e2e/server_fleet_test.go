package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/loopback"
)

// fleetServer is one `tern server` process on loopback ports, and the
// configuration directory of a `tern fleet` user logged in to it.
type fleetServer struct {
	t           *testing.T
	dir         string
	url         string
	httpAddr    string
	mqttAddr    string
	admin       string
	fingerprint string
	config      string // XDG_CONFIG_HOME of the fleet user
	cmd         *exec.Cmd
	log         *syncBuffer
}

// syncBuffer is a bytes.Buffer safe to write from a process and read from the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func loopbackAddr(t *testing.T) string { return loopback.TestAddr(t) }

func startFleetServer(t *testing.T, dir string) *fleetServer {
	t.Helper()
	s := &fleetServer{t: t, dir: dir, httpAddr: loopbackAddr(t), mqttAddr: loopbackAddr(t), config: filepath.Join(dir, "config")}
	s.url = "https://" + s.httpAddr
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *fleetServer) start() {
	s.t.Helper()
	s.log = &syncBuffer{}
	s.cmd = exec.Command(filepath.Join(bin, "tern"), "server", "--data", filepath.Join(s.dir, "data"),
		"--http", s.httpAddr, "--mqtt", s.mqttAddr)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if s.fingerprint == "" {
			if m := regexp.MustCompile(`fingerprint \(sha256\): ([0-9a-f]{64})`).FindStringSubmatch(s.log.String()); m != nil {
				s.fingerprint = m[1]
			}
		}
		if key, err := os.ReadFile(filepath.Join(s.dir, "data", "admin.token")); err == nil && s.fingerprint != "" {
			s.admin = strings.TrimSpace(string(key))
			if c, err := net.Dial("tcp", s.httpAddr); err == nil {
				c.Close()
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("tern server did not come up:\n%s", s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 stops the server the hard way.
func (s *fleetServer) kill9() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

func (s *fleetServer) stop() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Signal(os.Interrupt)
		s.cmd.Wait()
	}
}

// fleet runs `tern fleet ...` as the logged-in user; stdout and stderr apart.
func (s *fleetServer) fleet(args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "tern"), append([]string{"fleet"}, args...)...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+s.config)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (s *fleetServer) mustFleet(args ...string) string {
	s.t.Helper()
	out, errOut, err := s.fleet(args...)
	if err != nil {
		s.t.Fatalf("tern fleet %s: %v\n%s%s\nserver log:\n%s", strings.Join(args, " "), err, out, errOut, s.log)
	}
	return out
}

type fleetDevice struct {
	ID       string            `json:"id"`
	Status   string            `json:"status"`
	Online   bool              `json:"online"`
	Labels   map[string]string `json:"labels"`
	Reported *struct {
		AgentVersion string `json:"agent_version"`
		Apps         []struct {
			Name, Version, State string
		} `json:"apps"`
	} `json:"reported"`
}

func (s *fleetServer) devices() []fleetDevice {
	s.t.Helper()
	var ds []fleetDevice
	out, _, err := s.fleet("devices", "ls", "--json")
	if err != nil || json.Unmarshal([]byte(out), &ds) != nil {
		return nil
	}
	return ds
}

func (s *fleetServer) show(id string) fleetDevice {
	s.t.Helper()
	var d fleetDevice
	if err := json.Unmarshal([]byte(s.mustFleet("devices", "show", id, "--json")), &d); err != nil {
		s.t.Fatal(err)
	}
	return d
}

// TestFleetDeviceEnrollsReportsGoesOfflineAndSurvivesServerKill is the issue's
// scenario with the real programs: a ternd enrolls with a token, shows up online,
// its apps appear in `tern fleet devices show`, it goes offline when killed, and a
// server killed with SIGKILL comes back with everything it acknowledged.
func TestFleetDeviceEnrollsReportsGoesOfflineAndSurvivesServerKill(t *testing.T) {
	requireRunc(t)
	dir := t.TempDir()
	if out, err := tern("keys", "generate", "--out", filepath.Join(dir, "keys", "release")); err != nil {
		t.Fatal(err, out)
	}
	os.MkdirAll(filepath.Join(dir, "trust"), 0o755)
	pub, _ := os.ReadFile(filepath.Join(dir, "keys", "release.pub"))
	os.WriteFile(filepath.Join(dir, "trust", "release.pub"), pub, 0o644)
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(rootfs, 0o755)
	hello, _ := os.ReadFile(filepath.Join(bin, "hello"))
	os.WriteFile(filepath.Join(rootfs, "hello"), hello, 0o755)
	pkg := filepath.Join(dir, "hello.tern")
	if out, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", "../../examples/hello/tern.yaml",
		"--key", filepath.Join(dir, "keys", "release.key"), "-o", pkg); err != nil {
		t.Fatal(err, out)
	}

	srv := startFleetServer(t, filepath.Join(dir, "server"))
	srv.mustFleet("login", srv.url, "--key", srv.admin, "--ca-fingerprint", srv.fingerprint)
	if fi, err := os.Stat(filepath.Join(srv.config, "tern", "config.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("fleet config: %v %v", fi, err)
	}
	token := strings.TrimSpace(srv.mustFleet("tokens", "create", "--label", "site=lab"))

	d := startDevice(t, dir, "--server", srv.url, "--enroll-token", token)
	t.Cleanup(func() {
		d.tern("device", "remove", "hello")
		d.kill()
	})
	d.mustTern("device", "install", pkg)
	waitFor(t, "the device online with hello reported", func() bool {
		ds := srv.devices()
		if len(ds) != 1 || !ds[0].Online || ds[0].Reported == nil {
			return false
		}
		for _, a := range ds[0].Reported.Apps {
			if a.Name == "hello" && a.State == "running" {
				return true
			}
		}
		return false
	})
	id := srv.devices()[0].ID
	if dev := srv.show(id); dev.Labels["site"] != "lab" || dev.Reported.AgentVersion != "1.0.0" {
		t.Fatalf("device %+v", dev)
	}
	human := srv.mustFleet("devices", "show", id)
	if !strings.Contains(human, "hello") || !strings.Contains(human, "online") {
		t.Fatalf("devices show:\n%s", human)
	}

	// ternd dies hard: the broker's will marks it offline.
	d.kill()
	waitFor(t, "offline after ternd was killed", func() bool { return !srv.show(id).Online })
	// It comes back with the identity it has: no token needed, same id.
	d = startDevice(t, dir)
	waitFor(t, "online again", func() bool { return srv.show(id).Online })
	if ds := srv.devices(); len(ds) != 1 || ds[0].ID != id {
		t.Fatalf("devices after restart: %+v", ds)
	}

	// What the server acknowledged survives SIGKILL.
	srv.mustFleet("devices", "label", id, "room=42")
	srv.kill9()
	srv.start()
	dev := srv.show(id)
	if dev.Labels["room"] != "42" || dev.Labels["site"] != "lab" || dev.Reported == nil || len(dev.Reported.Apps) != 1 {
		t.Fatalf("after kill -9: %+v", dev)
	}
	if out := srv.mustFleet("tokens", "ls"); !strings.Contains(out, "1/1") {
		t.Fatalf("token uses lost:\n%s", out)
	}
	// The device reconnects by itself (the link retries with backoff).
	waitFor(t, "online after the server restarted", func() bool { return srv.show(id).Online })
	evs := srv.mustFleet("events", "--json")
	for _, want := range []string{`"enrolled"`, `"online"`, `"offline"`, `"reported"`, `"labels"`} {
		if !strings.Contains(evs, want) {
			t.Errorf("no %s event in:\n%s", want, evs)
		}
	}
}
