package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/tern-iot/tern/internal/trust"
)

// TestBuildIsDeterministic: the same tree, manifest and key give the same bytes
// (ed25519 signatures are deterministic, layer headers carry no atime or ctime).
func TestBuildIsDeterministic(t *testing.T) {
	key := testKey(1)
	rootfs := writeRootfs(t, t.TempDir())
	for _, algo := range []string{CompressZstd, CompressGzip} {
		t.Run(algo, func(t *testing.T) {
			a := buildBytes(t, rootfs, minimalManifest(t), algo, key)
			b := buildBytes(t, rootfs, minimalManifest(t), algo, key)
			if !bytes.Equal(a, b) {
				t.Fatalf("two builds differ (%d and %d bytes)", len(a), len(b))
			}
		})
	}
}

func TestBuildCompressesARootfsLayerAsAsked(t *testing.T) {
	key := testKey(1)
	rootfs := writeRootfs(t, t.TempDir())
	for algo, want := range map[string]string{"": MediaTypeLayerZstd, CompressZstd: MediaTypeLayerZstd, CompressGzip: MediaTypeLayerGzip} {
		p, err := Read(bytes.NewReader(buildBytes(t, rootfs, minimalManifest(t), algo, key)), trusting(key), Discard)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Manifest.Image.Layers[0].MediaType; got != want {
			t.Errorf("compression %q: layer %s, want %s", algo, got, want)
		}
	}
}

func TestBuildRefusesBadInputs(t *testing.T) {
	key := testKey(1)
	rootfs := writeRootfs(t, t.TempDir())
	noCommand, err := ParseYAML([]byte("name: demo\nversion: 1.0.0\n"))
	if err != nil {
		t.Fatal(err)
	}
	withFifo := writeRootfs(t, t.TempDir())
	if err := syscall.Mkfifo(filepath.Join(withFifo, "etc/pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	cases := []struct {
		name string
		opts BuildOptions
		want string
	}{
		{"no key", BuildOptions{Source: Source{Kind: SourceRootFS, Path: rootfs}, Manifest: minimalManifest(t)}, "release key"},
		{"no command anywhere", BuildOptions{Source: Source{Kind: SourceRootFS, Path: rootfs}, Manifest: noCommand}, "no command"},
		{"unknown compression", BuildOptions{Source: Source{Kind: SourceRootFS, Path: rootfs}, Manifest: minimalManifest(t), Compression: "lz4"}, `compression "lz4"`},
		{"rootfs is a file", BuildOptions{Source: Source{Kind: SourceRootFS, Path: file}, Manifest: minimalManifest(t)}, "not a directory"},
		{"rootfs missing", BuildOptions{Source: Source{Kind: SourceRootFS, Path: file + "-nope"}, Manifest: minimalManifest(t)}, "no such file"},
		{"rootfs with a fifo", BuildOptions{Source: Source{Kind: SourceRootFS, Path: withFifo}, Manifest: minimalManifest(t)}, "etc/pipe"},
		{"unknown source kind", BuildOptions{Source: Source{Kind: "tarball", Path: rootfs}, Manifest: minimalManifest(t)}, "unknown source kind"},
		{"OCI layout missing", BuildOptions{Source: Source{Kind: SourceOCI, Path: file + "-nope"}, Manifest: minimalManifest(t)}, "OCI layout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name != "no key" {
				c.opts.Keys = append(c.opts.Keys, key)
			}
			c.opts.TempDir = t.TempDir()
			var out bytes.Buffer
			_, err := Build(context.Background(), c.opts, &out)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
			if ents, _ := os.ReadDir(c.opts.TempDir); len(ents) != 0 {
				t.Fatalf("Build left %d entries in its temp dir", len(ents))
			}
		})
	}
}

func TestBuildFileLeavesNothingBehindOnFailure(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "demo.tern")
	noCommand, _ := ParseYAML([]byte("name: demo\nversion: 1.0.0\n"))
	opts := BuildOptions{Source: Source{Kind: SourceRootFS, Path: writeRootfs(t, t.TempDir())}, Manifest: noCommand, Keys: []trust.PrivateKey{testKey(1)}}
	if _, err := BuildFile(context.Background(), opts, out); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("err = %v, want ErrBadManifest", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a failed build left %v", ents)
	}
	opts.Manifest = minimalManifest(t)
	if _, err := BuildFile(context.Background(), opts, out); err != nil {
		t.Fatal(err)
	}
	onlyFile(t, out)
	if _, err := readPackageFile(t, out, trusting(testKey(1))); err != nil {
		t.Fatal(err)
	}
}

func TestBuildResolvesTheManifestWithDefaults(t *testing.T) {
	key := testKey(1)
	m, err := ParseYAML([]byte(minimalYAML + "health: {tcp: 8080}\nenv: {A: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	data := buildBytes(t, writeRootfs(t, t.TempDir()), m, "", key)
	p, err := Read(bytes.NewReader(data), trusting(key), Discard)
	if err != nil {
		t.Fatal(err)
	}
	app := p.Manifest.App
	if app.StopTimeout.D() != DefaultStopTimeout || app.Health.Retries != DefaultHealthRetries || app.Env["A"] != "b" {
		t.Fatalf("signed manifest not resolved: %+v", app)
	}
	if p.Manifest.Image.Platform != "linux/"+runtime.GOARCH {
		t.Fatalf("platform %q", p.Manifest.Image.Platform)
	}
}
