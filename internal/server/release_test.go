package server_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// blobDigests lists the distinct blobs of packages.
func blobDigests(t *testing.T, pkgs ...[]byte) map[string]bool {
	out := map[string]bool{}
	for _, p := range pkgs {
		pk, err := app.Read(bytes.NewReader(p), app.ReadOptions{SkipSignatures: true}, app.Discard)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range pk.Manifest.Blobs() {
			out[b.Hex()] = true
		}
	}
	return out
}

func blobFiles(t *testing.T, dir string) map[string]bool {
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		out[e.Name()] = true
	}
	return out
}

func TestReleaseUploadVerifiesStoresContentAddressedAndDedupes(t *testing.T) {
	e := start(t)
	key := e.releaseKey(e.admin)
	a1, b1, b2 := buildPackage(t, key, "alpha", "1.0.0"), buildPackage(t, key, "beta", "1.0.0"), buildPackage(t, key, "beta", "2.0.0")

	r1 := e.mustUpload(e.admin, "r1", a1, b1)
	if len(r1.Packages) != 2 || r1.Packages[0].Name != "alpha" || r1.Packages[1].Version != "1.0.0" || r1.Size == 0 {
		t.Fatalf("release: %+v", r1)
	}
	sum := sha256.Sum256(func() []byte {
		p, _ := app.Read(bytes.NewReader(a1), app.ReadOptions{SkipSignatures: true}, app.Discard)
		return p.ManifestJSON
	}())
	if r1.Packages[0].Digest != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Fatalf("manifest digest %s is not the sha256 of manifest.json", r1.Packages[0].Digest)
	}
	// Blobs are on disk under their digest, each once, whatever release holds them.
	e.mustUpload(e.admin, "r2", a1, b2)
	if got, want := blobFiles(t, e.dir), blobDigests(t, a1, b1, b2); len(got) != len(want) {
		t.Fatalf("%d blob files for %d distinct blobs", len(got), len(want))
	} else {
		for d := range want {
			data, err := os.ReadFile(filepath.Join(e.dir, "blobs", "sha256", d))
			s := sha256.Sum256(data)
			if err != nil || hex.EncodeToString(s[:]) != d {
				t.Fatalf("blob %s: content does not hash to its name (%v)", d, err)
			}
		}
	}
	if tmp, _ := os.ReadDir(filepath.Join(e.dir, "blobs", "tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}

	// A package uploaded alone becomes a release by its digest.
	code, _, body := e.raw(e.admin, "POST", "/api/v1/packages", "application/octet-stream", buildPackage(t, key, "gamma", "0.1.0"))
	if code != 201 {
		t.Fatalf("package upload: %d %s", code, body)
	}
	var p store.Package
	jsonInto(t, body, &p)
	var r3 store.Release
	e.must(e.admin, "POST", "/api/v1/releases", map[string]any{"name": "r3", "packages": []string{p.Digest}}, &r3)
	if len(r3.Packages) != 1 || r3.Packages[0].Name != "gamma" {
		t.Fatalf("release from digests: %+v", r3)
	}
	var rs []store.Release
	e.must(e.admin, "GET", "/api/v1/releases", nil, &rs)
	if len(rs) != 3 || rs[0].Name != "r3" {
		t.Fatalf("releases: %+v", rs)
	}
	var shown store.Release
	e.must(e.admin, "GET", "/api/v1/releases/r1", nil, &shown)
	if shown.ID != r1.ID || len(shown.Packages) != 2 {
		t.Fatalf("show: %+v", shown)
	}
	evs := e.eventTypes()
	if !evs["release.created"] {
		t.Fatalf("no release.created event: %v", evs)
	}
}

// TestReleaseUploadRefusesBadPackagesAndStoresNothing: each hostile or broken
// upload gets its own 4xx and leaves no release and no package behind.
func TestReleaseUploadRefusesBadPackagesAndStoresNothing(t *testing.T) {
	dir := t.TempDir()
	e := &env{t: t, dir: dir}
	e.bootWith(func(c *server.Config) { c.MaxUpload = 256 << 10 })
	t.Cleanup(func() { e.srv.Close() })

	code, _, body := e.upload(e.admin, "nokeys", buildPackage(t, mustKey(t), "alpha", "1.0.0"))
	if code != 422 || !strings.Contains(body, "no release key") {
		t.Fatalf("upload without release keys: %d %s", code, body)
	}
	key := e.releaseKey(e.admin)
	good := buildPackage(t, key, "alpha", "1.0.0")
	foreign := buildPackage(t, mustKey(t), "alpha", "1.0.0")
	tampered := append([]byte{}, good...)
	tampered[len(tampered)-3*512] ^= 0xff // inside the last blob
	big := buildPackageSized(t, key, 400<<10)

	cases := []struct {
		name string
		pkgs [][]byte
		want int
		say  string
	}{
		{"signed by a foreign key", [][]byte{foreign}, 422, "bad signature"},
		{"tampered blob", [][]byte{tampered}, 422, "digest mismatch"},
		{"truncated", [][]byte{good[:len(good)/2]}, 422, "truncated"},
		{"not a package", [][]byte{[]byte("hello")}, 422, "package refused"},
		{"over the upload limit", [][]byte{big}, 413, "too large"},
		{"one app twice", [][]byte{good, buildPackage(t, key, "alpha", "2.0.0")}, 422, "twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, body := e.upload(e.admin, "bad", c.pkgs...)
			if code != c.want || !strings.Contains(body, c.say) {
				t.Fatalf("got %d %s, want %d mentioning %q", code, body, c.want, c.say)
			}
			var rs []store.Release
			e.must(e.admin, "GET", "/api/v1/releases", nil, &rs)
			if len(rs) != 0 {
				t.Fatalf("a release was stored: %+v", rs)
			}
		})
	}
	if code, _, body := e.raw(e.admin, "POST", "/api/v1/releases", "text/plain", []byte("x")); code != 415 {
		t.Fatalf("text/plain: %d %s", code, body)
	}
	if code, _, body := e.raw(e.admin, "POST", "/api/v1/releases", "application/json", []byte(`{"name":"x","packages":["sha256:`+strings.Repeat("0", 64)+`"]}`)); code != 404 {
		t.Fatalf("unknown package digest: %d %s", code, body)
	}
	viewer := e.key(e.admin, store.RoleViewer)
	if code, _, _ := e.upload(viewer, "r", good); code != 403 {
		t.Fatalf("viewer upload: %d", code)
	}
	e.mustUpload(e.admin, "r1", good)
	if code, _, body := e.upload(e.admin, "r1", good); code != 409 {
		t.Fatalf("duplicate name: %d %s", code, body)
	}
	if code, _, body := e.upload(e.admin, "bad name!", good); code != 400 {
		t.Fatalf("bad name: %d %s", code, body)
	}
}

func mustKey(t *testing.T) trust.PrivateKey {
	k, err := trust.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestDeviceEndpointsServeOwnAccountsReleasesWithRange: a device with its client
// certificate gets manifests, signatures and blobs of its account's releases
// (ranges included), and nothing else.
func TestDeviceEndpointsServeOwnAccountsReleasesWithRange(t *testing.T) {
	e := start(t)
	key := e.releaseKey(e.admin)
	pkg := buildPackage(t, key, "alpha", "1.0.0")
	unreleased := buildPackage(t, key, "alpha", "9.0.0")
	rel := e.mustUpload(e.admin, "r1", pkg)
	code, _, body := e.raw(e.admin, "POST", "/api/v1/packages", "application/octet-stream", unreleased)
	if code != 201 {
		t.Fatal(code, body)
	}
	var loose store.Package
	jsonInto(t, body, &loose)

	dev := e.sim(e.token(e.admin, nil), "")
	c := deviceClient(t, dev.Device)
	p, _ := app.Read(bytes.NewReader(pkg), app.ReadOptions{SkipSignatures: true}, app.Discard)
	digest := rel.Packages[0].Digest
	base := e.url + "/api/v1/device/"

	if code, data, h := get(t, c, base+"manifests/"+digest); code != 200 || !bytes.Equal(data, p.ManifestJSON) || h.Get("ETag") == "" {
		t.Fatalf("manifest: %d %q", code, data)
	}
	sig, _ := p.Envelope.Marshal()
	if code, data, _ := get(t, c, base+"manifests/"+digest+"/sig"); code != 200 || !bytes.Equal(data, sig) {
		t.Fatalf("sig: %d %q", code, data)
	}
	layer := p.Manifest.Image.Layers[0]
	whole := func() []byte {
		_, data, _ := get(t, c, base+"blobs/"+layer.Digest)
		return data
	}()
	if int64(len(whole)) != layer.Size {
		t.Fatalf("blob: %d bytes, want %d", len(whole), layer.Size)
	}
	if code, data, h := get(t, c, base+"blobs/"+layer.Digest, "Range", "bytes=10-19"); code != 206 || !bytes.Equal(data, whole[10:20]) ||
		h.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", layer.Size) {
		t.Fatalf("range: %d %v", code, h)
	}
	if code, data, _ := get(t, c, base+"blobs/"+layer.Digest, "Range", fmt.Sprintf("bytes=%d-", layer.Size-5)); code != 206 || !bytes.Equal(data, whole[layer.Size-5:]) {
		t.Fatalf("resume at the end: %d", code)
	}
	if code, _, _ := get(t, c, base+"blobs/"+layer.Digest, "Range", fmt.Sprintf("bytes=%d-", layer.Size+10)); code != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range beyond the size: %d", code)
	}

	// Not in a release of the device's account: 404, whether it exists or not.
	for _, path := range []string{"manifests/" + loose.Digest, "manifests/sha256:" + strings.Repeat("a", 64), "blobs/sha256:" + strings.Repeat("b", 64)} {
		if code, _, _ := get(t, c, base+path); code != 404 {
			t.Fatalf("%s: %d, want 404", path, code)
		}
	}
	if code, _, _ := get(t, c, base+"blobs/../../etc/passwd"); code < 400 {
		t.Fatalf("path escape: %d", code)
	}
	if code, _, _ := get(t, c, base+"blobs/not-a-digest"); code != 400 {
		t.Fatalf("bad digest: %d", code)
	}
	// Without a client certificate: 401, API key or not.
	if code, _, _ := get(t, e.http, base+"blobs/"+layer.Digest, "Authorization", "Bearer "+e.admin); code != 401 {
		t.Fatalf("no client certificate: %d", code)
	}

	// A device of another account is told nothing of this account's blobs.
	var other struct {
		AdminKey string `json:"admin_key"`
	}
	e.must(e.admin, "POST", "/api/v1/accounts", map[string]any{"name": "other"}, &other)
	stranger := e.sim(e.token(other.AdminKey, nil), "")
	sc := deviceClient(t, stranger.Device)
	for _, path := range []string{"manifests/" + digest, "manifests/" + digest + "/sig", "blobs/" + layer.Digest} {
		if code, _, _ := get(t, sc, base+path); code != 404 {
			t.Fatalf("another account's %s: %d, want 404", path, code)
		}
	}

	// A decommissioned device's certificate no longer opens anything.
	e.must(e.admin, "POST", "/api/v1/devices/"+dev.ID()+"/decommission", nil, nil)
	c.CloseIdleConnections()
	if code, _, _ := get(t, c, base+"blobs/"+layer.Digest); code != 403 {
		t.Fatalf("decommissioned device: %d, want 403", code)
	}
}

func jsonInto(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
}

// eventTypes returns the types in the admin's account event log.
func (e *env) eventTypes() map[string]bool {
	var evs []store.Event
	e.must(e.admin, "GET", "/api/v1/events?limit=1000", nil, &evs)
	out := map[string]bool{}
	for _, ev := range evs {
		out[ev.Type] = true
	}
	return out
}

// TestReleaseWithOSImageGoesInTheDocumentsOSField: an OS package in a release is
// the document's os entry (named "os"), beside the apps.
func TestReleaseWithOSImageGoesInTheDocumentsOSField(t *testing.T) {
	e := start(t)
	key := e.releaseKey(e.admin)
	img := filepath.Join(t.TempDir(), "rootfs.img")
	os.WriteFile(img, bytes.Repeat([]byte("ext4"), 4096), 0o644)
	var osPkg bytes.Buffer
	if _, err := app.BuildOS(t.Context(), app.OSBuildOptions{Image: img, Version: "2026.5.0", DeviceTypes: []string{"qemu-x86_64"},
		Keys: []trust.PrivateKey{key}, TempDir: t.TempDir()}, &osPkg); err != nil {
		t.Fatal(err)
	}
	rel := e.mustUpload(e.admin, "full", buildPackage(t, key, "alpha", "1.0.0"), osPkg.Bytes())
	if len(rel.Packages) != 2 || rel.Packages[1].Kind != store.KindOS || rel.Packages[1].Name != "os" || rel.Packages[1].Version != "2026.5.0" {
		t.Fatalf("release: %+v", rel.Packages)
	}
	code, _, body := e.upload(e.admin, "two-os", osPkg.Bytes(), osPkg.Bytes())
	if code != 422 {
		t.Fatalf("two OS images: %d %s", code, body)
	}
	id := e.enroll(e.token(e.admin, nil))
	var d store.DesiredState
	e.must(e.admin, "PUT", "/api/v1/devices/"+id.DeviceID+"/desired", map[string]any{"release": "full"}, &d)
	if len(d.Target.Apps) != 1 || d.Target.OS == nil || d.Target.OS.Name != "os" || d.Target.OS.Manifest != rel.Packages[1].Digest {
		t.Fatalf("desired: %+v", d.Target)
	}
}
