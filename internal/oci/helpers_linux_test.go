//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testTime is the mtime of the test entries: whole seconds, far from now.
var testTime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

// entry is one tar entry to build: a header and, for regular files, a body.
type entry struct {
	hdr  tar.Header
	body string
}

func regEntry(name, body string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: testTime}, body: body}
}

func dirEntry(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: testTime}}
}

func symlinkEntry(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

func hardlinkEntry(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: testTime}}
}

// with returns e after applying f to its header.
func (e entry) with(f func(h *tar.Header)) entry {
	f(&e.hdr)
	return e
}

// buildTar writes the entries as a tar stream.
func buildTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatalf("write header %q: %v", hdr.Name, err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatalf("write body %q: %v", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// unpackEntries unpacks a tar of the entries into dst.
func unpackEntries(t testing.TB, dst string, opts Options, entries ...entry) (Stats, error) {
	t.Helper()
	return Unpack(context.Background(), dst, bytes.NewReader(buildTar(t, entries...)), opts)
}

// mustUnpack is unpackEntries for layers that must succeed.
func mustUnpack(t testing.TB, dst string, opts Options, entries ...entry) Stats {
	t.Helper()
	st, err := unpackEntries(t, dst, opts, entries...)
	if err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	return st
}

// requireRoot skips tests that chown, mknod or set trusted.* xattrs.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: Unpack applies owners from the layer")
	}
}

// sandbox is a temporary directory holding the destination "root" beside a
// directory "outside" with a sentinel file, which a hostile layer tries to reach.
type sandbox struct {
	tmp, dst, outside string
}

const sentinel = "do not touch"

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	requireRoot(t)
	tmp := t.TempDir()
	s := sandbox{tmp: tmp, dst: filepath.Join(tmp, "root"), outside: filepath.Join(tmp, "outside")}
	for _, d := range []string{s.dst, s.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.outside, "sentinel"), []byte(sentinel), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// assertContained fails unless everything in the sandbox apart from the
// destination is exactly as newSandbox left it.
func (s sandbox) assertContained(t testing.TB) {
	t.Helper()
	want := map[string]bool{".": true, "root": true, "outside": true, "outside/sentinel": true}
	err := filepath.WalkDir(s.tmp, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.tmp, p)
		if rel == "root" {
			return filepath.SkipDir
		}
		if !want[rel] {
			t.Errorf("layer wrote outside the destination: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(s.outside, "sentinel"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("sentinel changed: %v %v", fi, err)
	}
	b, _ := os.ReadFile(filepath.Join(s.outside, "sentinel"))
	if string(b) != sentinel || fi.Mode().Perm() != 0o644 || nlink(t, filepath.Join(s.outside, "sentinel")) != 1 {
		t.Errorf("sentinel changed: %q %v", b, fi.Mode())
	}
}

// assertAbsent fails if the absolute path p exists: where a broken unpacker
// would have written through a symlink to "/". It then removes p, which must
// be a name only the tests use.
func assertAbsent(t testing.TB, p string) {
	t.Helper()
	if _, err := os.Lstat(p); err == nil {
		os.RemoveAll(p)
		t.Errorf("layer wrote outside the destination: %s", p)
	}
}

// uniqueName is a name that exists nowhere on this machine yet.
func uniqueName(t testing.TB) string {
	return "tern-oci-escape-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + time.Now().Format("150405.000000000")
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lstat returns the raw stat of p, not following a symlink.
func lstat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func nlink(t testing.TB, p string) uint64 {
	t.Helper()
	return uint64(lstat(t, p).Nlink)
}
