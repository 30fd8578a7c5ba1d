package fleetsim_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/trust"
)

// The benchmarks here run a tern server in the process, on loopback, with
// simulated devices (real enrollment, MQTT over mutual TLS, HTTPS downloads):
//
//	go test ./bench/fleetsim -run '^$' -bench . -benchtime 3x

type bench struct {
	tb    testing.TB
	srv   *server.Server
	url   string
	admin string
	key   trust.PrivateKey
	c     *server.Client
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newBench(tb testing.TB) *bench {
	dir := tb.TempDir()
	srv, err := server.Start(context.Background(), server.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Out: io.Discard,
		Logger: quiet(), CampaignTick: 200 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { srv.Close() })
	admin, _ := os.ReadFile(filepath.Join(dir, "admin.token"))
	b := &bench{tb: tb, srv: srv, url: "https://" + srv.HTTPAddr(), admin: strings.TrimSpace(string(admin))}
	b.c = server.NewClient(b.url, b.admin, srv.CAFingerprint())
	if b.key, err = trust.GenerateKey(); err != nil {
		tb.Fatal(err)
	}
	b.must("POST", "/api/v1/release-keys", map[string]any{"name": "bench", "public_key": string(trust.MarshalPublicKey(b.key.Public()))}, nil)
	return b
}

func (b *bench) must(method, path string, in, out any) {
	b.tb.Helper()
	if err := b.c.Do(context.Background(), method, path, in, out); err != nil {
		b.tb.Fatalf("%s %s: %v", method, path, err)
	}
}

// pkg builds a package with a layer of about size incompressible bytes.
func (b *bench) pkg(version string, size int) []byte {
	dir := b.tb.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "app"), []byte("#!/bin/sh\n"), 0o755)
	noise := make([]byte, size)
	rand.Read(noise)
	os.WriteFile(filepath.Join(dir, "data"), noise, 0o644)
	m, _ := app.ParseYAML([]byte("name: app\nversion: " + version + "\ncommand: [\"/bin/app\"]\n"))
	var buf bytes.Buffer
	if _, err := app.Build(context.Background(), app.BuildOptions{Source: app.Source{Kind: app.SourceRootFS, Path: dir}, Manifest: m,
		Keys: []trust.PrivateKey{b.key}, TempDir: b.tb.TempDir()}, &buf); err != nil {
		b.tb.Fatal(err)
	}
	return buf.Bytes()
}

func (b *bench) release(name string, pkg []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("name", name)
	w, _ := mw.CreateFormFile("package", "p.tern")
	w.Write(pkg)
	mw.Close()
	if err := b.c.Upload(context.Background(), "/api/v1/releases", mw.FormDataContentType(), &buf, nil); err != nil {
		b.tb.Fatal(err)
	}
}

// fleet enrolls and runs n simulated devices labelled fleet=bench.
func (b *bench) fleet(n int) []*fleetsim.Device {
	var tok struct{ Token string }
	b.must("POST", "/api/v1/tokens", map[string]any{"max_uses": n, "labels": map[string]string{"fleet": "bench"}}, &tok)
	ctx, cancel := context.WithCancel(context.Background())
	b.tb.Cleanup(cancel)
	var devs []*fleetsim.Device
	for range n {
		d, err := fleetsim.New(context.Background(), fleetsim.Config{Dir: b.tb.TempDir(), ServerURL: b.url, Token: tok.Token,
			ReportEvery: time.Second, Logger: quiet()})
		if err != nil {
			b.tb.Fatal(err)
		}
		go d.Run(ctx)
		devs = append(devs, d)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var ds []json.RawMessage
		b.must("GET", "/api/v1/devices?status=online", nil, &ds)
		if len(ds) == n {
			return devs
		}
		if time.Now().After(deadline) {
			b.tb.Fatalf("%d of %d devices online", len(ds), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// campaign runs one campaign of release to the fleet and waits for it to
// complete.
func (b *bench) campaign(name, release string, phases ...string) {
	var v server.CampaignView
	b.must("POST", "/api/v1/campaigns", map[string]any{"name": name, "release": release, "selector": "fleet=bench", "phases": phases}, &v)
	for v.State != "completed" {
		time.Sleep(10 * time.Millisecond)
		b.must("GET", "/api/v1/campaigns/"+v.ID, nil, &v)
		if v.State == "paused" {
			b.tb.Fatalf("campaign paused: %s", v.Reason)
		}
	}
}

// BenchmarkCampaign measures the time from creating a campaign (one phase, a
// 1 MiB package) to every device having applied it: signing and publishing the
// documents, each device verifying, downloading and reporting.
func BenchmarkCampaign(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			e := newBench(b)
			e.fleet(n)
			for i := range b.N + 1 {
				e.release(fmt.Sprint("r", i), e.pkg(fmt.Sprintf("1.0.%d", i), 1<<20))
			}
			b.ResetTimer()
			for i := range b.N {
				e.campaign(fmt.Sprint("c", i), fmt.Sprint("r", i))
			}
		})
	}
}

// BenchmarkPhasedCampaign is a 100-device campaign in three phases
// (10%,50%,100%) with no wait: the runner's phase changes on top of the above.
func BenchmarkPhasedCampaign(b *testing.B) {
	e := newBench(b)
	e.fleet(100)
	for i := range b.N {
		e.release(fmt.Sprint("r", i), e.pkg(fmt.Sprintf("1.0.%d", i), 64<<10))
	}
	b.ResetTimer()
	for i := range b.N {
		e.campaign(fmt.Sprint("c", i), fmt.Sprint("r", i), "10%", "50%", "100%")
	}
}

// BenchmarkReleaseUpload measures an upload of a 64 MiB package over HTTPS:
// streamed through the package reader (signature, then every blob hashed) to the
// blob store (written, synced, renamed).
func BenchmarkReleaseUpload(b *testing.B) {
	e := newBench(b)
	var pkgs [][]byte
	for i := range b.N { // distinct packages: no blob is already stored
		pkgs = append(pkgs, e.pkg(fmt.Sprintf("1.0.%d", i), 64<<20))
	}
	b.SetBytes(int64(len(pkgs[0])))
	b.ResetTimer()
	for i := range b.N {
		e.release(fmt.Sprint("r", i), pkgs[i])
	}
}

// BenchmarkBlobDownload measures a device downloading a 64 MiB blob over HTTPS
// with its client certificate.
func BenchmarkBlobDownload(b *testing.B) {
	e := newBench(b)
	pkg := e.pkg("1.0.0", 64<<20)
	e.release("r", pkg)
	devs := e.fleet(1)
	var d struct{}
	e.must("PUT", "/api/v1/devices/"+devs[0].ID()+"/desired", map[string]any{"release": "r"}, &d)
	p, _ := app.Read(bytes.NewReader(pkg), app.ReadOptions{SkipSignatures: true}, app.Discard)
	layer := p.Manifest.Image.Layers[0]
	cfg, _ := devs[0].Identity().TLSConfig()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	b.SetBytes(layer.Size)
	b.ResetTimer()
	for range b.N {
		res, err := c.Get(e.url + "/api/v1/device/blobs/" + layer.Digest)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if n != layer.Size {
			b.Fatalf("%d bytes", n)
		}
	}
}
