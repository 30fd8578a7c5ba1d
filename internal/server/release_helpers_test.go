package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// releaseKey makes a release key and registers its public half in the account of
// admin.
func (e *env) releaseKey(admin string) trust.PrivateKey {
	e.t.Helper()
	k, err := trust.GenerateKey()
	if err != nil {
		e.t.Fatal(err)
	}
	e.must(admin, "POST", "/api/v1/release-keys", map[string]any{"name": "release", "public_key": string(trust.MarshalPublicKey(k.Public()))}, nil)
	return k
}

// buildPackage builds a signed app package from a small root file system whose
// files say name and version (so each version has its own layer).
func buildPackage(t testing.TB, key trust.PrivateKey, name, version string) []byte {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "app"), []byte("#!/bin/sh\necho "+name+" "+version+"\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "VERSION"), bytes.Repeat([]byte(name+"@"+version+"\n"), 200), 0o644)
	m, err := app.ParseYAML(fmt.Appendf(nil, "name: %s\nversion: %s\ncommand: [\"/bin/app\"]\n", name, version))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := app.Build(context.Background(), app.BuildOptions{Source: app.Source{Kind: app.SourceRootFS, Path: dir}, Manifest: m,
		Keys: []trust.PrivateKey{key}, TempDir: t.TempDir()}, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// buildPackageSized builds a package whose layer holds about n incompressible bytes.
func buildPackageSized(t testing.TB, key trust.PrivateKey, n int) []byte {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "app"), []byte("#!/bin/sh\n"), 0o755)
	noise := make([]byte, n)
	rand.Read(noise)
	os.WriteFile(filepath.Join(dir, "noise"), noise, 0o644)
	m, err := app.ParseYAML([]byte("name: big\nversion: 1.0.0\ncommand: [\"/bin/app\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := app.Build(context.Background(), app.BuildOptions{Source: app.Source{Kind: app.SourceRootFS, Path: dir}, Manifest: m,
		Keys: []trust.PrivateKey{key}, TempDir: t.TempDir()}, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// multipartRelease is the body of POST /api/v1/releases.
func multipartRelease(name string, pkgs ...[]byte) (string, []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("name", name)
	for i, p := range pkgs {
		w, _ := mw.CreateFormFile("package", fmt.Sprintf("p%d.tern", i))
		w.Write(p)
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

// upload posts a release and returns the status and the decoded answer.
func (e *env) upload(key, name string, pkgs ...[]byte) (int, store.Release, string) {
	e.t.Helper()
	ct, body := multipartRelease(name, pkgs...)
	return e.raw(key, "POST", "/api/v1/releases", ct, body)
}

func (e *env) raw(key, method, path, contentType string, body []byte) (int, store.Release, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", contentType)
	res, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	var r store.Release
	if res.StatusCode < 300 {
		json.Unmarshal(data, &r)
	}
	return res.StatusCode, r, string(data)
}

func (e *env) mustUpload(key, name string, pkgs ...[]byte) store.Release {
	e.t.Helper()
	code, r, body := e.upload(key, name, pkgs...)
	if code != 201 {
		e.t.Fatalf("upload %s: %d %s", name, code, body)
	}
	return r
}

// sim enrolls a simulated device with token and runs it until the test ends or
// stop is called.
type sim struct {
	*fleetsim.Device
	cancel context.CancelFunc
	done   chan error
}

func (e *env) sim(token string, dir string) *sim {
	e.t.Helper()
	if dir == "" {
		dir = e.t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := fleetsim.New(ctx, fleetsim.Config{Dir: dir, ServerURL: e.url, Token: token, ReportEvery: 50 * time.Millisecond, Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	s := &sim{Device: d}
	s.start()
	e.t.Cleanup(s.stop)
	return s
}

func (s *sim) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- s.Run(ctx) }()
}

func (s *sim) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.cancel = nil
}

// desired returns a device's desired state as the API shows it.
func (e *env) desired(key, id string) store.DesiredState {
	e.t.Helper()
	var d store.DesiredState
	e.do(key, "GET", "/api/v1/devices/"+id+"/desired", nil, &d)
	return d
}

// deviceClient is an HTTPS client presenting a simulated device's certificate.
func deviceClient(t testing.TB, s *fleetsim.Device) *http.Client {
	cfg, err := s.Identity().TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func get(t testing.TB, c *http.Client, url string, header ...string) (int, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return res.StatusCode, data, res.Header
}
