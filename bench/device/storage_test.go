package device

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tern-iot/tern/bench/peers"
	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/trust"
)

// Storage and transfer: install throughput against a plain copy of the same bytes,
// disk used by apps that share a base layer, and what an update that changes one
// layer downloads.

// programFiles copies real programs (the Go toolchain's, in name order) into dir,
// size bytes in all (the last one cut short): content that compresses as software
// does.
func programFiles(b *testing.B, dir string, size int64) {
	b.Helper()
	out, err := exec.Command("go", "env", "GOTOOLDIR").Output()
	if err != nil {
		b.Fatal(err)
	}
	tools := strings.TrimSpace(string(out))
	entries, err := os.ReadDir(tools)
	if err != nil {
		b.Fatal(err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	os.MkdirAll(dir, 0o755)
	var n int64
	for _, e := range entries {
		if n >= size {
			break
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(tools, e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		data = data[:min(int64(len(data)), size-n)]
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o755); err != nil {
			b.Fatal(err)
		}
		n += int64(len(data))
	}
	if n < size {
		b.Fatalf("only %d bytes of programs in %s", n, tools)
	}
}

// layerHexes lists the layer digests (hex) of a package file.
func layerHexes(b *testing.B, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			b.Fatalf("%s: no manifest: %v", path, err)
		}
		if hdr.Name != app.EntryManifest {
			continue
		}
		data, _ := io.ReadAll(tr)
		pm, err := app.ParsePackageManifest(data)
		if err != nil {
			b.Fatal(err)
		}
		var out []string
		for _, l := range pm.Image.Layers {
			out = append(out, l.Hex())
		}
		return out
	}
}

// appYAML is a manifest for hello without health check or volume, with a 1 s
// probation for updates.
func appYAML(name, version string) *app.Manifest {
	m, err := app.ParseYAML([]byte(helloYAML(name, version, "probation: 1s\n")))
	if err != nil {
		panic(err)
	}
	return m
}

// buildPkg makes a signed package from an OCI layout.
func buildPkg(b *testing.B, layout string, m *app.Manifest, key trust.PrivateKey) ([]byte, *app.PackageManifest) {
	b.Helper()
	var buf bytes.Buffer
	pm, err := app.Build(context.Background(), app.BuildOptions{Source: app.Source{Kind: app.SourceOCI, Path: layout},
		Manifest: m, Keys: []trust.PrivateKey{key}, TempDir: b.TempDir()}, &buf)
	if err != nil {
		b.Fatal(err)
	}
	return buf.Bytes(), pm
}

// BenchmarkInstallThroughput installs packages into the real ternd over its API
// (verify, store the blobs with fsync, unpack with syncfs, start) and, alternately,
// copies the same package file with `cp` then `sync`, from the page cache to the
// same disk. A third measure is the floor of the work an install cannot skip, done
// by standard tools: `tar -xf` of the package (the blobs), `zstd -dc | tar -x` of
// its layer, `sync`. Two packages: the example app (the hello binary alone, zstd)
// and a 64 MiB app (hello plus real programs). Each install is removed (untimed)
// before the next, so every install stores and unpacks everything.
func BenchmarkInstallThroughput(b *testing.B) {
	bins := build(b)
	t := startTernd(b, bins)
	defer t.close()
	dir := b.TempDir()
	small := filepath.Join(dir, "small")
	os.MkdirAll(small, 0o755)
	copyFile(b, filepath.Join(bins, "hello"), filepath.Join(small, "hello"))
	big := filepath.Join(dir, "big")
	programFiles(b, filepath.Join(big, "usr", "lib", "tools"), 64<<20)
	copyFile(b, filepath.Join(bins, "hello"), filepath.Join(big, "hello"))
	d := &device{key: t.key}
	pkgs := []struct{ name, file string }{{"example", ""}, {"64MiB", ""}}
	for i, root := range []string{small, big} {
		d.root = root
		pkgs[i].file = filepath.Join(dir, pkgs[i].name+".tern")
		os.WriteFile(pkgs[i].file, d.pkg(b, helloYAML("app", "1.0.0", "")), 0o644)
	}
	ctx := context.Background()
	type result struct{ install, copy, unpack []time.Duration }
	res := make([]result, len(pkgs))
	for b.Loop() {
		for i, p := range pkgs {
			f, _ := os.Open(p.file)
			start := time.Now()
			if _, err := t.c.Install(ctx, f); err != nil {
				b.Fatalf("install %s: %v\n%s", p.name, err, t.log())
			}
			res[i].install = append(res[i].install, time.Since(start))
			f.Close()
			b.StopTimer()
			if err := t.c.Remove(ctx, "app"); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			dst := filepath.Join(t.dir, "copy.tern")
			start = time.Now()
			if out, err := exec.Command("cp", p.file, dst).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v %s", err, out)
			}
			if err := exec.Command("sync").Run(); err != nil {
				b.Fatal(err)
			}
			res[i].copy = append(res[i].copy, time.Since(start))
			os.Remove(dst)

			dst = filepath.Join(t.dir, "unpacked")
			os.MkdirAll(filepath.Join(dst, "rootfs"), 0o755)
			script := fmt.Sprintf("tar -xf %s -C %s && for l in %s; do zstd -qdc %s/blobs/sha256/$l | tar -x -C %s/rootfs; done && sync",
				p.file, dst, strings.Join(layerHexes(b, p.file), " "), dst, dst)
			start = time.Now()
			if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
				b.Fatalf("%s: %v %s", script, err, out)
			}
			res[i].unpack = append(res[i].unpack, time.Since(start))
			os.RemoveAll(dst)
		}
	}
	for i, p := range pkgs {
		fi, _ := os.Stat(p.file)
		mb := float64(fi.Size()) / 1e6
		in, cp, un := peers.Median(res[i].install), peers.Median(res[i].copy), peers.Median(res[i].unpack)
		b.Logf("%-8s package %6.1f MB: install %7.1f ms (%6.1f MB/s), cp+sync %7.1f ms (%6.1f MB/s, install %.1fx), tar+zstd+sync %7.1f ms (install %.1fx)",
			p.name, mb, peers.Ms(in), mb/in.Seconds(), peers.Ms(cp), mb/cp.Seconds(), float64(in)/float64(cp), peers.Ms(un), float64(in)/float64(un))
		b.ReportMetric(mb, "MB-pkg-"+p.name)
		b.ReportMetric(peers.Ms(in), "ms-install-"+p.name)
		b.ReportMetric(peers.Ms(cp), "ms-cp-sync-"+p.name)
		b.ReportMetric(mb/in.Seconds(), "MBps-install-"+p.name)
		b.ReportMetric(mb/cp.Seconds(), "MBps-cp-sync-"+p.name)
		b.ReportMetric(float64(in)/float64(cp), "x-cp-"+p.name)
		b.ReportMetric(peers.Ms(un), "ms-tar-zstd-sync-"+p.name)
	}
	b.ReportMetric(0, "ns/op")
}

// layeredApps builds n app images of two layers each: a base (busybox and 24 MiB
// of programs, about what a language runtime weighs) and a top layer holding hello
// and a file naming the app. With shared, every app has the same base layer; else
// each base carries a file naming its app, so no two base digests are equal
// (same size, no sharing). It returns the OCI layouts.
func layeredApps(b *testing.B, bins, dir string, n int, shared bool) []string {
	base := filepath.Join(dir, "base")
	if _, err := os.Stat(base); err != nil {
		programFiles(b, filepath.Join(base, "usr", "lib", "runtime"), 24<<20)
		os.MkdirAll(filepath.Join(base, "bin"), 0o755)
		copyFile(b, "/bin/busybox", filepath.Join(base, "bin", "busybox"))
		os.MkdirAll(filepath.Join(base, "etc"), 0o755)
	}
	var layouts []string
	for i := range n {
		name := fmt.Sprintf("app%d", i)
		top := filepath.Join(dir, "top-"+name)
		os.MkdirAll(filepath.Join(top, "etc"), 0o755)
		copyFile(b, filepath.Join(bins, "hello"), filepath.Join(top, "hello"))
		os.WriteFile(filepath.Join(top, "etc", "app"), []byte(name+"\n"), 0o644)
		layerBase := base
		if !shared {
			os.WriteFile(filepath.Join(base, "etc", "base-of"), []byte(name+"\n"), 0o644)
		}
		img, err := peers.BuildImage(filepath.Join(dir, fmt.Sprintf("img-%v-%s", shared, name)), "localhost/tern-bench/"+name+":1",
			v1.Config{Entrypoint: []string{"/hello"}}, layerBase, top)
		if err != nil {
			b.Fatal(err)
		}
		layouts = append(layouts, img.Layout)
	}
	os.Remove(filepath.Join(base, "etc", "base-of"))
	return layouts
}

// BenchmarkDiskSharedLayers installs 10 apps whose images share a 24 MiB base
// layer into one ternd, and 10 whose base layers differ (same size) into another,
// and reports the disk each data directory uses (du -sxk: blocks, the apps'
// overlay mounts not crossed), with its parts: blobs (compressed, as shipped),
// layers (unpacked once per digest), apps (bundles, overlay upper directories).
func BenchmarkDiskSharedLayers(b *testing.B) {
	bins := build(b)
	dir := b.TempDir()
	for b.Loop() {
	}
	for _, shared := range []bool{true, false} {
		t := startTernd(b, bins)
		layouts := layeredApps(b, bins, filepath.Join(dir, fmt.Sprint(shared)), 10, shared)
		for i, l := range layouts {
			p, _ := buildPkg(b, l, appYAML(fmt.Sprintf("app%d", i), "1.0.0"), t.key)
			t.install(b, p)
		}
		kind := map[bool]string{true: "shared", false: "unshared"}[shared]
		total := duKiB(b, t.data)
		b.Logf("10 apps, %-8s base: data dir %6.1f MiB (blobs %6.1f, layers %6.1f, apps %5.1f, state %4.1f)", kind, total/1024,
			duKiB(b, filepath.Join(t.data, "blobs"))/1024, duKiB(b, filepath.Join(t.data, "layers"))/1024,
			duKiB(b, filepath.Join(t.data, "apps"))/1024, duKiB(b, filepath.Join(t.data, "state.db"))/1024)
		b.ReportMetric(total/1024, "MiB-10-apps-"+kind)
		t.close()
	}
	b.ReportMetric(0, "ns/op")
}

// duKiB is `du -sxk path`.
func duKiB(b *testing.B, path string) float64 {
	out, err := exec.Command("du", "-sxk", path).Output()
	if err != nil {
		b.Fatalf("du %s: %v", path, err)
	}
	n, _ := strconv.ParseFloat(strings.Fields(string(out))[0], 64)
	return n
}

// BenchmarkUpdateOneLayer updates an app from a version to the next where only the
// top layer of two differs (the app's binary, rebuilt with another version; the 24
// MiB base is the same), the way a managed device does: a signed desired state
// names the new package, the agent fetches what it lacks from the server over
// HTTPS (an httptest server on loopback that serves the parts and counts the
// bytes), installs and commits. It reports the bytes downloaded beside the whole
// package's size and the changed layer's, and checks them against the count made
// from the manifests (blobs of the new version the device does not hold, plus the
// manifest and its signature).
func BenchmarkUpdateOneLayer(b *testing.B) {
	d := newDevice(b)
	dir := b.TempDir()
	base := filepath.Join(dir, "base")
	programFiles(b, filepath.Join(base, "usr", "lib", "runtime"), 24<<20)
	var pkgs [][]byte
	var mans []*app.PackageManifest
	for _, v := range []string{"1.0.0", "1.1.0"} {
		top := filepath.Join(dir, "top-"+v)
		os.MkdirAll(top, 0o755)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version="+v, "-o", filepath.Join(top, "hello"), "./examples/hello")
		cmd.Dir, cmd.Env = "../..", append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		img, err := peers.BuildImage(filepath.Join(dir, "img-"+v), "localhost/tern-bench/hello:"+v, v1.Config{Entrypoint: []string{"/hello"}}, base, top)
		if err != nil {
			b.Fatal(err)
		}
		p, pm := buildPkg(b, img.Layout, appYAML("hello", v), d.key)
		pkgs, mans = append(pkgs, p), append(mans, pm)
	}

	srv := newPartServer()
	ts := httptest.NewTLSServer(srv)
	defer ts.Close()
	director, _ := trust.GenerateKey()
	d.a.Manage(agent.Management{DeviceID: "bench", ServerURL: ts.URL, Director: director.Public(),
		TLS: &tls.Config{RootCAs: ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}})
	var version uint64
	offer := func(i int) time.Duration {
		version++
		digest := srv.add(b, pkgs[i])
		env, err := link.SignDesired(&link.Desired{Device: "bench", Version: version, Expires: time.Now().Add(time.Hour),
			Apps: []link.DesiredPackage{{Name: "hello", Version: mans[i].App.Version, Manifest: digest}}}, director)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		d.a.OfferDesired(env)
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
			evs, _ := d.a.Events(0)
			for _, ev := range evs {
				if ev.Kind == link.EventDesired && ev.DesiredVersion == version && ev.State != link.DesiredAccepted && ev.State != link.DesiredApplying {
					if ev.State != link.DesiredApplied {
						b.Fatalf("desired %d: %s %s", version, ev.State, ev.Message)
					}
					return time.Since(start)
				}
			}
			if time.Now().After(deadline) {
				b.Fatal("no outcome for the desired state")
			}
		}
	}
	var fetched, full []int64
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		d.a.Remove(context.Background(), "hello")
		offer(0) // v1: everything is downloaded
		full = append(full, srv.reset())
		b.StartTimer()
		took = append(took, offer(1))
		fetched = append(fetched, srv.reset())
	}
	// The count from the manifests: v2's blobs that v1 does not have.
	have := map[string]bool{}
	for _, bl := range mans[0].Blobs() {
		have[bl.Digest] = true
	}
	var lacking, changedLayer int64
	for _, bl := range mans[1].Blobs() {
		if !have[bl.Digest] {
			lacking += bl.Size
			if bl.MediaType != app.MediaTypeConfig {
				changedLayer += bl.Size
			}
		}
	}
	manifestBytes := srv.docBytes(1)
	fb := fetched[len(fetched)/2]
	b.Logf("package %.2f MB; first install downloaded %.2f MB; the update downloaded %.3f MB (changed layer %.3f MB; from the manifests: %.3f MB of blobs + %.1f KB manifest and signature), applied in %.0f ms (1 s probation included)",
		float64(len(pkgs[1]))/1e6, float64(full[0])/1e6, float64(fb)/1e6, float64(changedLayer)/1e6, float64(lacking)/1e6, float64(manifestBytes)/1e3, peers.Ms(peers.Median(took)))
	if fb != lacking+manifestBytes {
		b.Errorf("downloaded %d bytes, the manifests say %d", fb, lacking+manifestBytes)
	}
	b.ReportMetric(float64(len(pkgs[1]))/1e6, "MB-package")
	b.ReportMetric(float64(fb)/1e6, "MB-downloaded")
	b.ReportMetric(float64(changedLayer)/1e6, "MB-changed-layer")
	b.ReportMetric(float64(fb)/float64(len(pkgs[1]))*100, "pct-of-package")
	b.ReportMetric(peers.Ms(peers.Median(took)-time.Second), "ms-applied-beyond-probation")
	b.ReportMetric(0, "ns/op")
}

// partServer serves packages in parts as the management server does
// (GET /api/v1/device/manifests/{digest}[/sig], /api/v1/device/blobs/{digest})
// and counts the bytes it sends.
type partServer struct {
	mu        sync.Mutex
	manifests map[string][2][]byte
	blobs     map[string][]byte
	sent      int64
	order     []string // manifest digests in the order added
}

func newPartServer() *partServer {
	return &partServer{manifests: map[string][2][]byte{}, blobs: map[string][]byte{}}
}

// add splits a package into its parts and returns its manifest digest.
func (s *partServer) add(b *testing.B, pkg []byte) string {
	tr := tar.NewReader(bytes.NewReader(pkg))
	var manifest, sig []byte
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		switch {
		case hdr.Name == app.EntryManifest:
			manifest = data
		case hdr.Name == app.EntrySig:
			sig = data
		case strings.HasPrefix(hdr.Name, app.BlobPrefix):
			s.blobs["sha256:"+strings.TrimPrefix(hdr.Name, app.BlobPrefix)] = data
		}
	}
	sum := sha256.Sum256(manifest)
	d := "sha256:" + hex.EncodeToString(sum[:])
	if _, ok := s.manifests[d]; !ok {
		s.order = append(s.order, d)
	}
	s.manifests[d] = [2][]byte{manifest, sig}
	return d
}

// docBytes is the size of the i-th package's manifest and signature.
func (s *partServer) docBytes(i int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.manifests[s.order[i]]
	return int64(len(m[0]) + len(m[1]))
}

// reset returns the bytes sent since the last reset.
func (s *partServer) reset() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.sent
	s.sent = 0
	return n
}

func (s *partServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	path := strings.TrimPrefix(r.URL.Path, "/api/v1/device/")
	var body []byte
	switch {
	case strings.HasPrefix(path, "manifests/"):
		d, sig := strings.CutSuffix(strings.TrimPrefix(path, "manifests/"), "/sig")
		if m, ok := s.manifests[d]; ok {
			body = m[0]
			if sig {
				body = m[1]
			}
		}
	case strings.HasPrefix(path, "blobs/"):
		body = s.blobs[strings.TrimPrefix(path, "blobs/")]
	}
	s.mu.Unlock()
	if body == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	n, _ := w.Write(body)
	s.mu.Lock()
	s.sent += int64(n)
	s.mu.Unlock()
}
