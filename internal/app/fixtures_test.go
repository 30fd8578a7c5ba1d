package app

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/tern-iot/tern/internal/trust"
)

// Fixtures shared by the tests of this package: fixed keys, a small root file
// system, packages built from it, and hand-made tars for hostile packages.

// testKey returns a release key derived from a fixed seed: the same key on every run,
// so fuzz seeds and expected signatures are reproducible.
func testKey(seed byte) trust.PrivateKey {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	return trust.PrivateKey{ID: trust.KeyID(priv.Public().(ed25519.PublicKey)), Key: priv}
}

// trusting returns read options that trust the public halves of keys.
func trusting(keys ...trust.PrivateKey) ReadOptions {
	var opts ReadOptions
	for _, k := range keys {
		opts.Keys = append(opts.Keys, k.Public())
	}
	return opts
}

const minimalYAML = `name: demo
version: 1.0.0
command: ["/bin/app", "--serve"]
`

// minimalManifest is a tern.yaml with a command, for root file systems that carry no
// image config.
func minimalManifest(t testing.TB) *Manifest {
	t.Helper()
	m, err := ParseYAML([]byte(minimalYAML))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// writeRootfs fills dir with a small root file system: regular files, a directory
// tree, a symlink and a hard link.
func writeRootfs(t testing.TB, dir string) string {
	t.Helper()
	files := map[string]string{
		"bin/app":               "#!/bin/sh\necho hello from the app\n",
		"etc/app.conf":          "listen = :8080\n",
		"usr/share/doc/README":  "a small root file system for tests\n",
		"var/lib/app/state.txt": "",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("app", filepath.Join(dir, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "bin/app"), filepath.Join(dir, "bin/app-hardlink")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildBytes builds a package of the rootfs dir and returns its bytes.
func buildBytes(t testing.TB, rootfs string, m *Manifest, compression string, keys ...trust.PrivateKey) []byte {
	t.Helper()
	var buf bytes.Buffer
	opts := BuildOptions{
		Source:      Source{Kind: SourceRootFS, Path: rootfs},
		Manifest:    m,
		Keys:        keys,
		Compression: compression,
		TempDir:     t.TempDir(),
	}
	if _, err := Build(context.Background(), opts, &buf); err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes()
}

// validPackage builds a package of a fresh small rootfs signed by keys.
func validPackage(t testing.TB, keys ...trust.PrivateKey) []byte {
	t.Helper()
	return buildBytes(t, writeRootfs(t, t.TempDir()), minimalManifest(t), CompressZstd, keys...)
}

// tarEntry is one entry of a hand-made tar.
type tarEntry struct {
	name     string
	body     []byte
	typeflag byte // 0 means a regular file
	linkname string
}

// writeTar writes entries as a tar, in order, exactly as given.
func writeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typeflag, Mode: 0o644, Linkname: e.linkname}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarEntries splits a tar into its entries.
func tarEntries(t testing.TB, data []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{name: hdr.Name, body: body, typeflag: hdr.Typeflag, linkname: hdr.Linkname})
	}
}

// span is where an entry's content lies in a tar file.
type span struct{ off, size int64 }

// entrySpans returns, in order, the name of each entry and where its content lies.
func entrySpans(t testing.TB, data []byte) ([]string, map[string]span) {
	t.Helper()
	cr := &countReader{r: bytes.NewReader(data)}
	tr := tar.NewReader(cr)
	var names []string
	spans := map[string]span{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, spans
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		spans[hdr.Name] = span{off: cr.n, size: hdr.Size}
	}
}

// flipByte returns a copy of data with the byte at off changed.
func flipByte(data []byte, off int64, mask byte) []byte {
	out := bytes.Clone(data)
	out[off] ^= mask
	return out
}

// recordingSink is a BlobSink that reads each blob to its end and remembers what it
// was given and what the reader said at the end.
type recordingSink struct {
	calls []Descriptor
	errs  []error // the error that ended each blob; nil means a clean io.EOF
	bytes int64
}

func (s *recordingSink) WriteBlob(d Descriptor, r io.Reader) error {
	s.calls = append(s.calls, d)
	n, err := io.Copy(io.Discard, r)
	s.bytes += n
	s.errs = append(s.errs, err)
	return err
}
