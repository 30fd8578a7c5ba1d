package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// bundle is one app version's directory: apps/<name>/<version>/ holding the
// runtime bundle (config.json), the overlay's rootfs mount point, and the upper and
// work directories that take what runc creates in the root (mount points) so the
// shared layers below stay untouched.
type bundle struct{ dir string }

func (b bundle) rootfs() string { return filepath.Join(b.dir, "rootfs") }
func (b bundle) upper() string  { return filepath.Join(b.dir, "upper") }
func (b bundle) work() string   { return filepath.Join(b.dir, "work") }

// mount mounts the overlay of lowers (bottom layer first, as images list them) at
// rootfs, unless it is mounted already (ternd restarted while the app ran).
func (b bundle) mount(lowers []string) error {
	for _, d := range []string{b.rootfs(), b.upper(), b.work()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if mounted, err := isMountPoint(b.rootfs()); err != nil || mounted {
		return err
	}
	top := make([]string, len(lowers))
	for i, l := range lowers {
		top[len(lowers)-1-i] = l // overlayfs lists the topmost layer first
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(top, ":"), b.upper(), b.work())
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("mount %s: %d layers make the overlay options longer than a page", b.rootfs(), len(lowers))
	}
	if err := unix.Mount("overlay", b.rootfs(), "overlay", unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", b.rootfs(), err)
	}
	return nil
}

// unmount unmounts the rootfs if mounted; a busy mount is detached.
func (b bundle) unmount() error {
	mounted, err := isMountPoint(b.rootfs())
	if err != nil || !mounted {
		return err
	}
	if err := unix.Unmount(b.rootfs(), 0); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return unix.Unmount(b.rootfs(), unix.MNT_DETACH)
		}
		return fmt.Errorf("unmount %s: %w", b.rootfs(), err)
	}
	return nil
}

// remove unmounts and deletes the bundle.
func (b bundle) remove() error {
	if err := b.unmount(); err != nil {
		return err
	}
	return os.RemoveAll(b.dir)
}

// isMountPoint reports whether path is the root of a mount, by device number.
func isMountPoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// resolveUser turns a manifest user ("uid[:gid]", "name[:group]", or "" for root)
// into ids, reading names from the app's own /etc/passwd and /etc/group inside
// rootfs (resolved in the root, so an image's symlinks cannot point elsewhere).
func resolveUser(rootfs, user string) (uid, gid uint32, err error) {
	if user == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	uid64, uerr := strconv.ParseUint(u, 10, 32)
	if uerr != nil {
		ent, err := lookupDB(rootfs, "/etc/passwd", u)
		if err != nil {
			return 0, 0, fmt.Errorf("user %q: %w", u, err)
		}
		uid64, _ = strconv.ParseUint(ent[2], 10, 32)
		if !hasGroup {
			g, hasGroup = ent[3], true
		}
	} else if !hasGroup {
		// A numeric user with no group: the group is the user's primary group if
		// the image knows the uid, else the same number.
		g = u
		if ent, err := lookupDBByID(rootfs, "/etc/passwd", u); err == nil {
			g = ent[3]
		}
	}
	gid64, gerr := strconv.ParseUint(g, 10, 32)
	if gerr != nil {
		ent, err := lookupDB(rootfs, "/etc/group", g)
		if err != nil {
			return 0, 0, fmt.Errorf("group %q: %w", g, err)
		}
		gid64, _ = strconv.ParseUint(ent[2], 10, 32)
	}
	return uint32(uid64), uint32(gid64), nil
}

func lookupDB(rootfs, file, name string) ([]string, error) {
	return scanDB(rootfs, file, func(f []string) bool { return f[0] == name })
}

func lookupDBByID(rootfs, file, id string) ([]string, error) {
	return scanDB(rootfs, file, func(f []string) bool { return f[2] == id })
}

// scanDB finds the first line of a passwd-style file whose fields match.
func scanDB(rootfs, file string, match func([]string) bool) ([]string, error) {
	rc, err := openInRoot(rootfs, file)
	if err != nil {
		return nil, fmt.Errorf("the image has no %s: %w", file, err)
	}
	defer rc.Close()
	sc := bufio.NewScanner(io.LimitReader(rc, 4<<20))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if _, err := strconv.ParseUint(f[2], 10, 32); err != nil {
			continue
		}
		if match(f) {
			return f, nil
		}
	}
	return nil, fmt.Errorf("not found in the image's %s", file)
}

// openInRoot opens name as if rootfs were /.
func openInRoot(rootfs, name string) (*os.File, error) {
	dirfd, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat2(dirfd, strings.TrimPrefix(name, "/"), &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(rootfs, name)), nil
}
