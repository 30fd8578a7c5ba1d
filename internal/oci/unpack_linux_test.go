//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUnpackRoundTripsRegularLayer(t *testing.T) {
	s := newSandbox(t)
	owned := func(uid, gid int) func(*tar.Header) {
		return func(h *tar.Header) { h.Uid, h.Gid = uid, gid }
	}
	st := mustUnpack(t, s.dst, Options{},
		dirEntry("./").with(func(h *tar.Header) { h.Mode = 0o755 }),
		dirEntry("etc/"),
		regEntry("etc/hostname", "tern\n").with(owned(0, 0)),
		regEntry("usr/bin/app", "#!/bin/sh\n").with(func(h *tar.Header) { h.Mode = 0o4755 }),
		dirEntry("tmp/").with(func(h *tar.Header) { h.Mode = 0o1777 }),
		dirEntry("home/app/").with(func(h *tar.Header) { h.Mode = 0o700; h.Uid, h.Gid = 1000, 1001 }),
		regEntry("home/app/secret", "s3cret").with(func(h *tar.Header) { h.Mode = 0o600; h.Uid, h.Gid = 1000, 1001 }),
		symlinkEntry("bin", "usr/bin").with(owned(1000, 1000)),
		symlinkEntry("etc/abs", "/usr/bin/app"),
		hardlinkEntry("usr/bin/app2", "usr/bin/app"),
		regEntry("empty", ""),
	)
	if st.Entries != 11 || st.Bytes != int64(len("tern\n#!/bin/sh\ns3cret")) {
		t.Errorf("stats = %+v", st)
	}

	checks := []struct {
		path      string
		mode      uint32 // full st_mode
		uid, gid  uint32
		body      string
		setsMtime bool
	}{
		{".", unix.S_IFDIR | 0o755, 0, 0, "", true},
		{"etc", unix.S_IFDIR | 0o755, 0, 0, "", true},
		{"etc/hostname", unix.S_IFREG | 0o644, 0, 0, "tern\n", true},
		{"usr", unix.S_IFDIR | 0o755, 0, 0, "", false},
		{"usr/bin/app", unix.S_IFREG | 0o4755, 0, 0, "#!/bin/sh\n", true},
		{"tmp", unix.S_IFDIR | 0o1777, 0, 0, "", true},
		{"home/app", unix.S_IFDIR | 0o700, 1000, 1001, "", true},
		{"home/app/secret", unix.S_IFREG | 0o600, 1000, 1001, "s3cret", true},
		{"bin", unix.S_IFLNK | 0o777, 1000, 1000, "", true},
		{"empty", unix.S_IFREG | 0o644, 0, 0, "", true},
	}
	for _, c := range checks {
		p := filepath.Join(s.dst, c.path)
		got := lstat(t, p)
		if got.Mode != c.mode || got.Uid != c.uid || got.Gid != c.gid {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", c.path, got.Mode, got.Uid, got.Gid, c.mode, c.uid, c.gid)
		}
		if c.setsMtime && got.Mtim.Sec != testTime.Unix() {
			t.Errorf("%s: mtime %d, want %d", c.path, got.Mtim.Sec, testTime.Unix())
		}
		if c.mode&unix.S_IFMT == unix.S_IFREG && readFile(t, p) != c.body {
			t.Errorf("%s: body %q, want %q", c.path, readFile(t, p), c.body)
		}
	}
	if target, _ := os.Readlink(filepath.Join(s.dst, "etc/abs")); target != "/usr/bin/app" {
		t.Errorf("etc/abs -> %q", target)
	}
	app, app2 := lstat(t, filepath.Join(s.dst, "usr/bin/app")), lstat(t, filepath.Join(s.dst, "usr/bin/app2"))
	if app.Ino != app2.Ino || app.Nlink != 2 {
		t.Errorf("usr/bin/app2 is not a hardlink of usr/bin/app: ino %d/%d nlink %d", app.Ino, app2.Ino, app.Nlink)
	}
	s.assertContained(t)
}

func TestUnpackSetsRootModeFromRootEntry(t *testing.T) {
	s := newSandbox(t)
	// os.MkdirTemp makes 0700 directories; the container's "/" must be 0755.
	if err := os.Chmod(s.dst, 0o700); err != nil {
		t.Fatal(err)
	}
	mustUnpack(t, s.dst, Options{}, dirEntry("."), regEntry("./a", "a"))
	if got := lstat(t, s.dst).Mode; got != unix.S_IFDIR|0o755 {
		t.Errorf("root mode %o, want 40755", got)
	}
}

func TestUnpackRejectsRootReplacedByFile(t *testing.T) {
	s := newSandbox(t)
	_, err := unpackEntries(t, s.dst, Options{}, symlinkEntry("./", "/"))
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("err = %v, want ErrUnsafePath", err)
	}
	if lstat(t, s.dst).Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Error("root is no longer a directory")
	}
}

func TestUnpackCreatesMissingParentsWith0755(t *testing.T) {
	s := newSandbox(t)
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	mustUnpack(t, s.dst, Options{}, regEntry("a/b/c/file", "x"))
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		if got := lstat(t, filepath.Join(s.dst, d)).Mode; got != unix.S_IFDIR|0o755 {
			t.Errorf("%s: mode %o, want 40755", d, got)
		}
	}
}

func TestUnpackUpperLayerReplacesLowerEntries(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{},
		dirEntry("d/"), regEntry("d/lower", "lower"),
		regEntry("f2d", "file"),
		dirEntry("d2f/"), regEntry("d2f/inner", "inner"),
		symlinkEntry("link", "target"), regEntry("target", "target"),
		regEntry("a", "a"), hardlinkEntry("b", "a"),
	)
	mustUnpack(t, s.dst, Options{},
		dirEntry("d/").with(func(h *tar.Header) { h.Mode = 0o750 }),
		dirEntry("f2d/"),
		regEntry("d2f", "now a file"),
		regEntry("link", "replaces the symlink"),
		regEntry("b", "replaces the hardlink"),
	)
	if got := readFile(t, filepath.Join(s.dst, "d/lower")); got != "lower" {
		t.Errorf("a directory entry dropped the lower directory's contents: %q", got)
	}
	if got := lstat(t, filepath.Join(s.dst, "d")).Mode; got != unix.S_IFDIR|0o750 {
		t.Errorf("d: mode %o, want 40750", got)
	}
	if got := lstat(t, filepath.Join(s.dst, "f2d")).Mode & unix.S_IFMT; got != unix.S_IFDIR {
		t.Errorf("f2d: type %o, want directory", got)
	}
	if got := readFile(t, filepath.Join(s.dst, "d2f")); got != "now a file" {
		t.Errorf("d2f = %q", got)
	}
	// Writes replace the name; they never go through a symlink or into a
	// hardlinked inode.
	if got := readFile(t, filepath.Join(s.dst, "target")); got != "target" {
		t.Errorf("a file entry wrote through a symlink: target = %q", got)
	}
	if got := readFile(t, filepath.Join(s.dst, "a")); got != "a" {
		t.Errorf("a file entry wrote into a hardlinked inode: a = %q", got)
	}
	s.assertContained(t)
}

func TestUnpackCreatesTargetOfDanglingSymlinkInsideRoot(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{},
		symlinkEntry("var/run", "/run"),
		symlinkEntry("var/lock", "../run/lock"),
		regEntry("var/run/pid", "1"),
		regEntry("var/lock/lk", "2"),
	)
	if got := readFile(t, filepath.Join(s.dst, "run/pid")); got != "1" {
		t.Errorf("run/pid = %q", got)
	}
	if got := readFile(t, filepath.Join(s.dst, "run/lock/lk")); got != "2" {
		t.Errorf("run/lock/lk = %q", got)
	}
	s.assertContained(t)
}

func TestUnpackStopsWhenContextCancelled(t *testing.T) {
	s := newSandbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	layer := buildTar(t, regEntry("a", "a"))
	_, err := Unpack(ctx, s.dst, bytes.NewReader(layer), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(filepath.Join(s.dst, "a")); err == nil {
		t.Error("entry written after cancellation")
	}
}

func TestUnpackFailsOnTruncatedLayer(t *testing.T) {
	s := newSandbox(t)
	layer := buildTar(t, regEntry("a", string(make([]byte, 4096))))
	_, err := Unpack(context.Background(), s.dst, bytes.NewReader(layer[:1024]), Options{})
	if err == nil {
		t.Fatal("truncated layer unpacked without error")
	}
}

func TestUnpackRequiresExistingDestination(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "missing")
	_, err := Unpack(context.Background(), dst, bytes.NewReader(buildTar(t)), Options{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

func TestSyncTreeSyncsUnpackedTree(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{}, regEntry("a", "a"))
	if err := SyncTree(s.dst); err != nil {
		t.Fatal(err)
	}
}

func TestUnpackLayerUnpacksEveryMediaType(t *testing.T) {
	layer := buildTar(t, dirEntry("etc/"), regEntry("etc/os-release", "ID=tern\n"), symlinkEntry("bin", "usr/bin"))
	for _, mt := range layerMediaTypes {
		s := newSandbox(t)
		st, err := UnpackLayer(context.Background(), s.dst, bytes.NewReader(compress(t, mt, layer)), mt, Options{})
		if err != nil {
			t.Fatalf("%s: %v", mt, err)
		}
		if st.Entries != 3 || readFile(t, filepath.Join(s.dst, "etc/os-release")) != "ID=tern\n" {
			t.Errorf("%s: stats %+v", mt, st)
		}
	}
	s := newSandbox(t)
	if _, err := UnpackLayer(context.Background(), s.dst, bytes.NewReader(layer), "application/x-rar", Options{}); !errors.Is(err, ErrUnsupportedMediaType) {
		t.Errorf("unknown media type: err = %v, want ErrUnsupportedMediaType", err)
	}
}
