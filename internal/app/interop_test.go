package app

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/tern-iot/tern/internal/trust"
)

// Interop: packages built from images made by third-party tools (umoci and skopeo
// from Debian) verify, and keep the image's bytes and config.

// requireTool skips the test when a program is missing, except in CI, where a missing
// prerequisite fails the run (make setup installs it).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		missing(t, "%s is not installed (make setup installs it): %v", name, err)
	}
	return path
}

func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// run runs a program and fails the test with its output if it fails.
func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// umociImage makes an OCI layout with umoci, the way a user without docker would:
// a busybox root file system with applet symlinks, and an image config that says how
// to start it. It returns the layout and the unpacked root file system.
func umociImage(t *testing.T) (layout, rootfs string) {
	t.Helper()
	requireTool(t, "umoci")
	if os.Geteuid() != 0 {
		missing(t, "umoci unpack needs root")
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		missing(t, "busybox-static is not installed (make setup installs it): %v", err)
	}
	dir := t.TempDir()
	layout, bundle := filepath.Join(dir, "L"), filepath.Join(dir, "B")
	run(t, dir, "umoci", "init", "--layout", layout)
	run(t, dir, "umoci", "new", "--image", layout+":v1")
	run(t, dir, "umoci", "unpack", "--image", layout+":v1", bundle)
	rootfs = filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "www"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin/busybox"), busybox, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "httpd", "ls"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "www/index.html"), []byte("<h1>hello</h1>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "umoci", "repack", "--image", layout+":v1", bundle)
	run(t, dir, "umoci", "config", "--image", layout+":v1",
		"--config.entrypoint", "/bin/busybox", "--config.cmd", "httpd",
		"--config.env", "FOO=bar", "--config.workingdir", "/www")
	return layout, rootfs
}

// ociManifest returns the image manifest tagged tag in an OCI layout.
func ociManifest(t *testing.T, layout, tag string) ocispec.Manifest {
	t.Helper()
	var idx ocispec.Index
	if err := json.Unmarshal(readFile(t, filepath.Join(layout, "index.json")), &idx); err != nil {
		t.Fatal(err)
	}
	for _, d := range idx.Manifests {
		if d.Annotations[ocispec.AnnotationRefName] == tag {
			var m ocispec.Manifest
			blob := filepath.Join(layout, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded())
			if err := json.Unmarshal(readFile(t, blob), &m); err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatalf("%s has no image tagged %s", layout, tag)
	return ocispec.Manifest{}
}

// buildFrom builds a package from the source text src and verifies it with Read.
func buildFrom(t *testing.T, src string, m *Manifest) *Package {
	t.Helper()
	key := testKey(1)
	source, err := ParseSource(src)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	opts := BuildOptions{Source: source, Manifest: m, Keys: []trust.PrivateKey{key}, TempDir: t.TempDir()}
	if _, err := Build(context.Background(), opts, &buf); err != nil {
		t.Fatalf("Build from %s: %v", src, err)
	}
	p, err := Read(&buf, trusting(key), Discard)
	if err != nil {
		t.Fatalf("Read of the package built from %s: %v", src, err)
	}
	return p
}

func manifestOf(t *testing.T, yaml string) *Manifest {
	t.Helper()
	m, err := ParseYAML([]byte("name: web\nversion: 1.0.0\n" + yaml))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBuildFromThirdPartyImages(t *testing.T) {
	layout, rootfs := umociImage(t)
	umoci := ociManifest(t, layout, "v1")
	if len(umoci.Layers) != 1 {
		t.Fatalf("umoci made %d layers", len(umoci.Layers))
	}

	t.Run("umoci layout, tag named", func(t *testing.T) {
		p := buildFrom(t, "oci:"+layout+":v1", manifestOf(t, ""))
		app, img := p.Manifest.App, p.Manifest.Image
		if want := []string{"/bin/busybox", "httpd"}; !reflect.DeepEqual(app.Command, want) {
			t.Errorf("command %q, want the image's entrypoint+cmd %q", app.Command, want)
		}
		if app.Env["FOO"] != "bar" || app.WorkDir != "/www" {
			t.Errorf("env %v, workdir %q: want the image's FOO=bar and /www", app.Env, app.WorkDir)
		}
		if img.Config.Digest != umoci.Config.Digest.String() {
			t.Errorf("config %s, the layout's is %s", img.Config.Digest, umoci.Config.Digest)
		}
		if len(img.Layers) != 1 || img.Layers[0].Digest != umoci.Layers[0].Digest.String() || img.Layers[0].Size != umoci.Layers[0].Size {
			t.Errorf("layers %+v: want umoci's layer %s kept byte for byte", img.Layers, umoci.Layers[0].Digest)
		}
		if img.Layers[0].MediaType != MediaTypeLayerGzip {
			t.Errorf("layer media type %s", img.Layers[0].MediaType)
		}
	})

	t.Run("umoci layout, only tag", func(t *testing.T) {
		p := buildFrom(t, "oci:"+layout, manifestOf(t, ""))
		if p.Manifest.Image.Layers[0].Digest != umoci.Layers[0].Digest.String() {
			t.Errorf("built from another image: %+v", p.Manifest.Image)
		}
	})

	t.Run("tern.yaml overrides the image config", func(t *testing.T) {
		p := buildFrom(t, "oci:"+layout+":v1", manifestOf(t,
			"command: [/bin/busybox, httpd, -f, -p, '8080']\nenv: {FOO: baz, MODE: test}\nworkdir: /srv\nuser: \"1000:1000\"\n"))
		app := p.Manifest.App
		if want := []string{"/bin/busybox", "httpd", "-f", "-p", "8080"}; !reflect.DeepEqual(app.Command, want) {
			t.Errorf("command %q, want %q", app.Command, want)
		}
		if want := map[string]string{"FOO": "baz", "MODE": "test"}; !reflect.DeepEqual(app.Env, want) {
			t.Errorf("env %v, want %v", app.Env, want)
		}
		if app.WorkDir != "/srv" || app.User != "1000:1000" {
			t.Errorf("workdir %q user %q", app.WorkDir, app.User)
		}
	})

	t.Run("skopeo docker-archive", func(t *testing.T) {
		requireTool(t, "skopeo")
		archive := filepath.Join(t.TempDir(), "A.tar")
		run(t, "", "skopeo", "copy", "oci:"+layout+":v1", "docker-archive:"+archive+":hello:v1")
		p := buildFrom(t, "docker-archive:"+archive, manifestOf(t, ""))
		img := p.Manifest.Image
		if !reflect.DeepEqual(p.Manifest.App.Command, []string{"/bin/busybox", "httpd"}) || p.Manifest.App.Env["FOO"] != "bar" {
			t.Errorf("image config lost: %+v", p.Manifest.App)
		}
		// docker save writes uncompressed layers: tern compresses them, and the
		// uncompressed content is still the image's.
		var cfg ocispec.Image
		blob := filepath.Join(layout, "blobs/sha256", umoci.Config.Digest.Encoded())
		if err := json.Unmarshal(readFile(t, blob), &cfg); err != nil {
			t.Fatal(err)
		}
		if len(img.DiffIDs) != 1 || img.DiffIDs[0] != cfg.RootFS.DiffIDs[0].String() {
			t.Errorf("diffIDs %v, the image's are %v", img.DiffIDs, cfg.RootFS.DiffIDs)
		}
		if img.Layers[0].MediaType != MediaTypeLayerZstd {
			t.Errorf("layer media type %s, want tern's default zstd", img.Layers[0].MediaType)
		}
	})

	t.Run("skopeo OCI layout", func(t *testing.T) {
		requireTool(t, "skopeo")
		layout2 := filepath.Join(t.TempDir(), "L2")
		run(t, "", "skopeo", "copy", "oci:"+layout+":v1", "oci:"+layout2+":other")
		skopeo := ociManifest(t, layout2, "other")
		for _, src := range []string{"oci:" + layout2 + ":other", "oci:" + layout2} {
			p := buildFrom(t, src, manifestOf(t, ""))
			if got := p.Manifest.Image.Layers[0].Digest; got != skopeo.Layers[0].Digest.String() {
				t.Errorf("%s: layer %s, skopeo's layout has %s", src, got, skopeo.Layers[0].Digest)
			}
		}
	})

	t.Run("plain directory", func(t *testing.T) {
		p := buildFrom(t, "rootfs:"+rootfs, manifestOf(t, "command: [/bin/busybox, httpd, -f]\n"))
		if len(p.Manifest.Image.Layers) != 1 || p.Manifest.App.WorkDir != "" {
			t.Errorf("image %+v app %+v", p.Manifest.Image, p.Manifest.App)
		}
	})

	t.Run("layout with two tags needs one named", func(t *testing.T) {
		two := filepath.Join(t.TempDir(), "two")
		run(t, "", "cp", "-a", layout, two)
		run(t, "", "umoci", "tag", "--image", two+":v1", "v2")
		_, err := Build(context.Background(), BuildOptions{Source: Source{Kind: SourceOCI, Path: two},
			Manifest: manifestOf(t, ""), Keys: []trust.PrivateKey{testKey(1)}, TempDir: t.TempDir()}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "2 images") || !strings.Contains(err.Error(), "v1, v2") {
			t.Fatalf("err = %v, want it to ask for a tag and list v1, v2", err)
		}
		buildFrom(t, "oci:"+two+":v2", manifestOf(t, ""))
	})

	t.Run("unknown tag", func(t *testing.T) {
		_, err := Build(context.Background(), BuildOptions{Source: Source{Kind: SourceOCI, Path: layout, Tag: "v9"},
			Manifest: manifestOf(t, ""), Keys: []trust.PrivateKey{testKey(1)}, TempDir: t.TempDir()}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), `no image tagged "v9"`) || !strings.Contains(err.Error(), "v1") {
			t.Fatalf("err = %v, want it to name the tag and list v1", err)
		}
	})
}

func TestParseSource(t *testing.T) {
	colonDir := filepath.Join(t.TempDir(), "lay:out")
	if err := os.Mkdir(colonDir, 0o755); err != nil {
		t.Fatal(err)
	}
	good := []struct {
		in   string
		want Source
	}{
		{"rootfs:/srv/root", Source{Kind: SourceRootFS, Path: "/srv/root"}},
		{"rootfs:rel/dir", Source{Kind: SourceRootFS, Path: "rel/dir"}},
		{"docker-archive:app.tar", Source{Kind: SourceDockerArchive, Path: "app.tar"}},
		{"oci:/img", Source{Kind: SourceOCI, Path: "/img"}},
		{"oci:/img:v1", Source{Kind: SourceOCI, Path: "/img", Tag: "v1"}},
		{"oci:img:1.2.0-rc.1", Source{Kind: SourceOCI, Path: "img", Tag: "1.2.0-rc.1"}},
		{"oci:" + colonDir, Source{Kind: SourceOCI, Path: colonDir}},
		{"oci:" + colonDir + ":v2", Source{Kind: SourceOCI, Path: colonDir, Tag: "v2"}},
	}
	for _, c := range good {
		got, err := ParseSource(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSource(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		if got.String() != c.in {
			t.Errorf("ParseSource(%q).String() = %q", c.in, got.String())
		}
	}
	for _, in := range []string{"", "rootfs", "rootfs:", "oci:", "docker-archive:", "/srv/root", "docker:hello", "tarball:x.tar"} {
		if got, err := ParseSource(in); err == nil {
			t.Errorf("ParseSource(%q) = %+v, want an error", in, got)
		}
	}
}
