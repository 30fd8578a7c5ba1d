//go:build linux

package oci

import (
	"archive/tar"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func exists(t testing.TB, p string) bool {
	t.Helper()
	_, err := os.Lstat(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func TestUnpackWhiteoutRemovesLowerFileAndDir(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{},
		regEntry("a/file", "f"), regEntry("a/keep", "k"),
		regEntry("d/sub/x", "x"), symlinkEntry("d/sub/ln", "/"),
	)
	mustUnpack(t, s.dst, Options{}, regEntry("a/.wh.file", ""), regEntry(".wh.d", ""), regEntry("a/.wh.missing", ""))
	for p, want := range map[string]bool{"a/file": false, "a/keep": true, "d": false, "a/.wh.file": false, ".wh.d": false} {
		if got := exists(t, filepath.Join(s.dst, p)); got != want {
			t.Errorf("%s exists = %v, want %v", p, got, want)
		}
	}
	s.assertContained(t)
}

func TestUnpackWhiteoutRemovesSymlinkNotItsTarget(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{},
		symlinkEntry("abs", s.outside), symlinkEntry("rel", "../outside"), symlinkEntry("file", s.outside+"/sentinel"))
	mustUnpack(t, s.dst, Options{},
		regEntry(".wh.abs", ""), regEntry(".wh.file", ""),
		// Whiteouts below a symlink resolve inside the root, where the
		// target does not exist: nothing to remove.
		regEntry("rel/.wh.sentinel", ""), regEntry("rel/.wh..wh..opq", ""))
	if exists(t, filepath.Join(s.dst, "abs")) || exists(t, filepath.Join(s.dst, "file")) {
		t.Error("whited-out symlinks still exist")
	}
	s.assertContained(t)
}

func TestUnpackWhiteoutIgnoresSameLayerEntry(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{}, regEntry("x", "x"), regEntry("d/y", "y"), regEntry(".wh.x", ""), regEntry(".wh.d", ""))
	if !exists(t, filepath.Join(s.dst, "x")) || !exists(t, filepath.Join(s.dst, "d/y")) {
		t.Error("a whiteout removed an entry of its own layer")
	}
}

func TestUnpackOpaqueWhiteoutRemovesOnlyLowerChildren(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{},
		regEntry("d/old", "old"), regEntry("d/sub/old", "old"), regEntry("d/gone/old", "old"),
		symlinkEntry("d/ln", "/"), regEntry("other/keep", "keep"), regEntry("d/mixed/old", "old"))
	mustUnpack(t, s.dst, Options{},
		regEntry("d/new", "before the marker"),
		regEntry("d/mixed/new", "before the marker"),
		regEntry("d/.wh..wh..opq", ""),
		regEntry("d/sub/new", "after the marker"),
	)
	for p, want := range map[string]bool{
		"d/old": false, "d/gone": false, "d/ln": false, "d/sub/old": false,
		"d/mixed/old": false, "d/mixed/new": true,
		"d/new": true, "d/sub/new": true, "other/keep": true, "d/.wh..wh..opq": false,
	} {
		if got := exists(t, filepath.Join(s.dst, p)); got != want {
			t.Errorf("%s exists = %v, want %v", p, got, want)
		}
	}
	s.assertContained(t)
}

func TestUnpackOverlayModeMakesWhiteoutDevicesAndOpaqueXattr(t *testing.T) {
	s := newSandbox(t)
	mustUnpack(t, s.dst, Options{Whiteouts: WhiteoutOverlay},
		regEntry("etc/.wh.passwd", "").with(func(h *tar.Header) { h.Uid, h.Gid = 1000, 1000 }),
		regEntry(".wh.gone", ""),
		dirEntry("opaque/"),
		regEntry("opaque/.wh..wh..opq", ""),
		regEntry("opaque/kept", "k"),
		regEntry("implicit/.wh..wh..opq", ""),
		regEntry("x", "x"), regEntry(".wh.x", ""), // same layer: ignored
	)
	for _, p := range []string{"etc/passwd", "gone"} {
		st := lstat(t, filepath.Join(s.dst, p))
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: mode %o rdev %d owner %d:%d, want a 0/0 char device owned by root", p, st.Mode, st.Rdev, st.Uid, st.Gid)
		}
	}
	for _, d := range []string{"opaque", "implicit"} {
		buf := make([]byte, 16)
		n, err := unix.Lgetxattr(filepath.Join(s.dst, d), overlayOpaqueXattr, buf)
		if errors.Is(err, unix.ENOTSUP) {
			t.Skipf("%s: no trusted xattrs on this file system", s.dst)
		}
		if err != nil || string(buf[:n]) != "y" {
			t.Errorf("%s: %s = %q, %v, want \"y\"", d, overlayOpaqueXattr, buf[:n], err)
		}
	}
	for _, p := range []string{"opaque/kept", "x"} {
		if lstat(t, filepath.Join(s.dst, p)).Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("%s is not the layer's file", p)
		}
	}
	for _, p := range []string{"etc/.wh.passwd", ".wh.gone", "opaque/.wh..wh..opq"} {
		if exists(t, filepath.Join(s.dst, p)) {
			t.Errorf("%s was written as a file", p)
		}
	}
	s.assertContained(t)
}

func TestUnpackOverlayModeOpaqueDoesNotFollowSymlink(t *testing.T) {
	s := newSandbox(t)
	_, err := unpackEntries(t, s.dst, Options{Whiteouts: WhiteoutOverlay},
		symlinkEntry("evil", s.outside), regEntry("evil/.wh..wh..opq", ""), regEntry("evil/.wh.sentinel", ""))
	if err != nil {
		t.Logf("refused: %v", err)
	}
	buf := make([]byte, 16)
	if _, err := unix.Lgetxattr(s.outside, overlayOpaqueXattr, buf); err == nil {
		t.Error("opaque xattr set outside the destination")
	}
	s.assertContained(t)
}

// TestUnpackOverlayLowerDirsMatchFlattenedLayers mounts real overlayfs over two
// layers unpacked in WhiteoutOverlay mode and compares what it shows with the
// same layers flattened in WhiteoutApply mode.
func TestUnpackOverlayLowerDirsMatchFlattenedLayers(t *testing.T) {
	requireRoot(t)
	lower := []entry{
		regEntry("a/file", "f"), regEntry("a/keep", "k"), regEntry("d/x", "x"),
		regEntry("o/old", "old"), regEntry("o/sub/old", "old"),
	}
	upper := []entry{
		regEntry("a/.wh.file", ""), regEntry(".wh.d", ""),
		dirEntry("o/"), regEntry("o/.wh..wh..opq", ""), regEntry("o/new", "new"),
	}
	tmp := t.TempDir()
	dir := func(name string) string {
		p := filepath.Join(tmp, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l1, l2, mnt, flat := dir("l1"), dir("l2"), dir("mnt"), dir("flat")
	mustUnpack(t, l1, Options{Whiteouts: WhiteoutOverlay}, lower...)
	mustUnpack(t, l2, Options{Whiteouts: WhiteoutOverlay}, upper...)
	mustUnpack(t, flat, Options{}, lower...)
	mustUnpack(t, flat, Options{}, upper...)
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+l2+":"+l1); err != nil {
		t.Skipf("cannot mount overlayfs here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })

	for _, p := range []string{"a/file", "a/keep", "d", "d/x", "o/old", "o/sub", "o/new"} {
		inMount, inFlat := exists(t, filepath.Join(mnt, p)), exists(t, filepath.Join(flat, p))
		if inMount != inFlat {
			t.Errorf("%s: exists in overlay = %v, flattened = %v", p, inMount, inFlat)
		}
	}
	if !exists(t, filepath.Join(mnt, "o/new")) || exists(t, filepath.Join(mnt, "o/old")) {
		t.Error("overlayfs did not treat o as opaque")
	}
}
