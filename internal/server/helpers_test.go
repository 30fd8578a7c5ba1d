package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/store/storetest"
)

var pg *storetest.Postgres

func TestMain(m *testing.M) { os.Exit(storetest.Main(m, &pg)) }

// env is one running server and an admin client for it.
type env struct {
	t     testing.TB
	dir   string
	db    string
	srv   *server.Server
	url   string
	admin string // the bootstrap admin key
	http  *http.Client
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TERN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// start runs a server on loopback with SQLite in a temporary directory.
func start(t testing.TB) *env {
	return startWith(t, t.TempDir(), "")
}

func startWith(t testing.TB, dir, db string) *env {
	t.Helper()
	e := &env{t: t, dir: dir, db: db}
	e.boot()
	t.Cleanup(func() {
		if e.srv != nil {
			e.srv.Close()
		}
	})
	return e
}

func (e *env) boot() { e.bootWith(nil) }

// bootWith starts the server with the test configuration, changed by mod.
func (e *env) bootWith(mod func(*server.Config)) {
	e.t.Helper()
	cfg := server.Config{DataDir: e.dir, DB: e.db, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0",
		Out: io.Discard, Logger: testLogger(e.t), HandshakeTimeout: 2 * time.Second, WebhookRetryBase: 50 * time.Millisecond,
		CampaignTick: 50 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := server.Start(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv = srv
	e.url = "https://" + srv.HTTPAddr()
	key, err := os.ReadFile(filepath.Join(e.dir, "admin.token"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.admin = strings.TrimSpace(string(key))
	e.http = newPinnedClient(srv.CAFingerprint())
}

// restart stops the server and starts it again on the same addresses, so that
// devices reconnect to it.
func (e *env) restart() {
	e.t.Helper()
	httpAddr, mqttAddr := e.srv.HTTPAddr(), e.srv.MQTTAddr()
	e.srv.Close()
	e.srv = nil
	e.bootWith(func(c *server.Config) { c.HTTPAddr, c.MQTTAddr = httpAddr, mqttAddr })
}

// do sends a request with key (may be "") and decodes a JSON answer into out.
func (e *env) do(key, method, path string, body any, out any) int {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 400 && !strings.HasPrefix(res.Header.Get("Content-Type"), "application/problem+json") {
		e.t.Errorf("%s %s: %d without problem+json: %s", method, path, res.StatusCode, data)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: %d %s: %v", method, path, res.StatusCode, data, err)
		}
	}
	return res.StatusCode
}

func (e *env) must(key, method, path string, body any, out any) {
	e.t.Helper()
	var raw json.RawMessage
	code := e.do(key, method, path, body, &raw)
	if code >= 300 {
		e.t.Fatalf("%s %s: %d %s", method, path, code, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatal(err)
		}
	}
}

// token creates an enrollment token in the admin's account.
func (e *env) token(key string, req map[string]any) string {
	e.t.Helper()
	var out struct{ Token string }
	e.must(key, "POST", "/api/v1/tokens", req, &out)
	return out.Token
}

// key creates an API key with role in the account of by.
func (e *env) key(by string, role store.Role) string {
	e.t.Helper()
	var out struct{ Key string }
	e.must(by, "POST", "/api/v1/keys", map[string]any{"name": "k-" + string(role), "role": role}, &out)
	return out.Key
}

// device is an enrolled device run by link.Client in this process.
type device struct {
	id     *link.Identity
	cancel context.CancelFunc
	done   chan error
}

func (e *env) enroll(token string) *link.Identity {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := link.Enroll(ctx, e.url, token, filepath.Join(e.t.TempDir(), "identity"), testLogger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) connect(id *link.Identity, report link.ReportFunc) *device {
	ctx, cancel := context.WithCancel(context.Background())
	c := link.NewClient(link.ClientConfig{Identity: id, Report: report, ReportEvery: 100 * time.Millisecond, KeepAlive: 5, Logger: testLogger(e.t)})
	d := &device{id: id, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- c.Run(ctx) }()
	e.t.Cleanup(d.stop)
	return d
}

func (d *device) stop() {
	d.cancel()
	<-d.done
	d.done <- nil // stop is idempotent
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) device(key, id string) map[string]any {
	var d map[string]any
	e.do(key, "GET", "/api/v1/devices/"+id, nil, &d)
	return d
}

func newPinnedClient(fp string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: link.PinnedTLS(fp)}}
}
