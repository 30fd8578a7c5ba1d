//go:build linux

package oci

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// OCI whiteout names (image-spec layer.md) and the overlayfs xattr for opaque
// directories.
const (
	whiteoutPrefix     = ".wh."
	whiteoutMetaPrefix = ".wh..wh."
	whiteoutOpaque     = ".wh..wh..opq"
	overlayOpaqueXattr = "trusted.overlay.opaque"
)

// whiteout handles the entry base in dir, whose name starts with ".wh.".
// Whiteouts only hide what lower layers made: one naming a path this layer
// created is ignored, and an opaque directory keeps what this layer put in it,
// whatever the order of the entries.
func (u *unpacker) whiteout(dir, base string) error {
	if base == whiteoutOpaque {
		if u.mode == WhiteoutOverlay {
			return u.overlayOpaque(dir)
		}
		return u.applyOpaque(dir)
	}
	if strings.HasPrefix(base, whiteoutMetaPrefix) {
		return nil // aufs bookkeeping such as .wh..wh.plnk: meaningless here.
	}
	target := strings.TrimPrefix(base, whiteoutPrefix)
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("%w: whiteout of %q", ErrUnsafePath, target)
	}
	if u.wrote(path.Join(dir, target)) {
		return nil
	}
	if u.mode == WhiteoutOverlay {
		return overlayWhiteout(u.root, dir, target)
	}
	pfd, err := u.root.openDir(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // Nothing below to hide.
	}
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return removeAt(pfd, target)
}

// overlayWhiteout makes target in dir a 0/0 character device owned by root,
// which overlayfs reads as "deleted in this layer".
func overlayWhiteout(root *rootDir, dir, target string) error {
	pfd, err := root.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, target); err != nil {
		return err
	}
	if err := unix.Mknodat(pfd, target, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("whiteout device: %w", err)
	}
	if err := unix.Fchownat(pfd, target, 0, 0, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("whiteout device: chown: %w", err)
	}
	return nil
}

// overlayOpaque marks dir opaque for overlayfs. The xattr is set through an fd
// of the directory resolved inside the root, never through a path that could
// be redirected.
func (u *unpacker) overlayOpaque(dir string) error {
	fd, err := u.root.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fsetxattr(fd, overlayOpaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("set %s: %w", overlayOpaqueXattr, err)
	}
	u.record(dir)
	return nil
}

// applyOpaque empties dir of everything this layer did not write. A directory
// already emptied by this layer's opaque whiteout, or below one, holds nothing
// lower any more: a repeated marker is skipped, so that a hostile layer cannot
// make us rescan a large directory once per marker.
func (u *unpacker) applyOpaque(dir string) error {
	for p := dir; ; p = path.Dir(p) {
		if _, ok := u.cleaned[p]; ok {
			return nil
		}
		if p == "." {
			break
		}
	}
	fd, err := u.root.openDir(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := u.removeLower(fd, dir); err != nil {
		return err
	}
	u.record(dir)
	return nil
}

// removeLower removes every child of the directory fd (named rel) that this
// layer did not write, and descends into the directories it did write, since
// their lower contents are hidden too.
func (u *unpacker) removeLower(fd int, rel string) error {
	if err := u.ctx.Err(); err != nil {
		return err
	}
	u.cleaned[rel] = struct{}{}
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("read directory %q: %w", rel, err)
	}
	for _, n := range names {
		child := path.Join(rel, n)
		if !u.wrote(child) {
			if err := removeAt(fd, n); err != nil {
				return err
			}
			continue
		}
		if _, ok := u.cleaned[child]; ok {
			continue
		}
		cfd, err := unix.Openat(fd, n, dirFlags|unix.O_NOFOLLOW, 0)
		if err == unix.ENOTDIR || err == unix.ELOOP {
			continue // A file or symlink of this layer: keep it.
		}
		if err != nil {
			return fmt.Errorf("open %q: %w", child, err)
		}
		err = u.removeLower(cfd, child)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

// record notes that this layer created name, and so its ancestors.
func (u *unpacker) record(name string) {
	for name != "." {
		if _, ok := u.written[name]; ok {
			return // Its ancestors were recorded with it.
		}
		u.written[name] = struct{}{}
		name = path.Dir(name)
	}
}

func (u *unpacker) wrote(name string) bool {
	_, ok := u.written[name]
	return ok
}
