//go:build linux

package oci

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// resolveFlags confine every lookup to the destination directory.
// RESOLVE_IN_ROOT makes "/" and ".." stop at it, so the layer's absolute and
// relative symlinks resolve as they will inside the container and never outside;
// RESOLVE_NO_MAGICLINKS refuses /proc/self/fd-style links, which jump anywhere;
// RESOLVE_NO_XDEV refuses to cross into a mount a caller left inside it.
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// dirFlags open directories for use as *at base fds. Not O_PATH: fsetxattr,
// fchown and getdents need a real open file, and O_DIRECTORY keeps open(2) from
// ever touching a fifo or device.
const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC

// implicitDirMode is the mode of parent directories a layer did not list.
const implicitDirMode = 0o755

// rootDir is the open destination directory. All paths are resolved against its
// fd, never against a string path, so renaming dst meanwhile cannot redirect us.
type rootDir struct {
	fd int
	// parentsLeft is how many more missing parent directories mkdirAll may
	// create. Without it, entries named like "a/a/a/.../f" would create up to
	// 2048 directories each and exhaust inodes while staying under MaxEntries.
	parentsLeft int
}

func openRootDir(dir string, maxParents int) (*rootDir, error) {
	fd, err := unix.Open(dir, dirFlags, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &rootDir{fd: fd, parentsLeft: maxParents}, nil
}

func (r *rootDir) close() { unix.Close(r.fd) }

// openDir resolves the directory rel inside the root, following symlinks the way
// the container will, and returns an fd the caller closes.
func (r *rootDir) openDir(rel string) (int, error) {
	how := unix.OpenHow{Flags: dirFlags, Resolve: resolveFlags}
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(r.fd, rel, &how)
		switch {
		case err == nil:
			return fd, nil
		case err == unix.EINTR, err == unix.EAGAIN && tries < 16:
			// EAGAIN: a rename raced the lookup; the kernel asks us to retry.
			continue
		case err == unix.ELOOP, err == unix.EXDEV:
			return -1, fmt.Errorf("%w: resolve %q: %w", ErrUnsafePath, rel, err)
		default:
			return -1, fmt.Errorf("resolve %q: %w", rel, err)
		}
	}
}

// maxSymlinks bounds the symlinks mkdirAll follows to create a directory, as
// the kernel's own limit of 40 bounds a lookup.
const maxSymlinks = 40

// mkdirAll is openDir that first creates the missing directories of rel (mode
// 0755, owned by us), as the container would see them: a dangling symlink on
// the way gets its target created, inside the root.
func (r *rootDir) mkdirAll(rel string) (int, error) {
	return r.mkdirAllLinks(rel, 0)
}

func (r *rootDir) mkdirAllLinks(rel string, links int) (int, error) {
	fd, err := r.openDir(rel)
	if err == nil || !errors.Is(err, unix.ENOENT) || rel == "." {
		return fd, err
	}
	pfd, err := r.mkdirAllLinks(path.Dir(rel), links)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	base := path.Base(rel)
	if r.parentsLeft <= 0 {
		return -1, fmt.Errorf("%w: too many missing parent directories", ErrLimit)
	}
	err = unix.Mkdirat(pfd, base, 0o700)
	created := err == nil
	switch {
	case created:
		r.parentsLeft--
	case err == unix.EEXIST:
		if st, serr := lstatAt(pfd, base); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return r.mkdirLinkTarget(pfd, rel, links)
		}
	default:
		return -1, fmt.Errorf("mkdir %q: %w", rel, err)
	}
	// O_NOFOLLOW: what we open must be the directory at this name, found
	// without a lookup that could leave the root.
	fd, err = unix.Openat(pfd, base, dirFlags|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, fmt.Errorf("mkdir %q: %w", rel, err)
	}
	if !created {
		return fd, nil
	}
	// The umask would otherwise decide the mode of directories the layer did
	// not list; a 0700 parent makes the tree unusable for non-root apps.
	if err := unix.Fchmod(fd, implicitDirMode); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("chmod %q: %w", rel, err)
	}
	return fd, nil
}

// mkdirLinkTarget creates the missing target of the dangling symlink rel (in the
// directory pfd), then resolves rel again. The target is computed lexically and
// clamped to the root, which only decides what to create; where rel leads is
// still decided by the kernel's confined lookup.
func (r *rootDir) mkdirLinkTarget(pfd int, rel string, links int) (int, error) {
	if links >= maxSymlinks {
		return -1, fmt.Errorf("%w: resolve %q: %w", ErrUnsafePath, rel, unix.ELOOP)
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(pfd, path.Base(rel), buf)
	if err != nil {
		return -1, fmt.Errorf("readlink %q: %w", rel, err)
	}
	target := string(buf[:n])
	if !path.IsAbs(target) {
		target = path.Join(path.Dir(rel), target)
	}
	// Joining to "/" drops any ".." that would climb above the root.
	target = strings.TrimPrefix(path.Join("/", target), "/")
	if target == "" {
		target = "."
	}
	fd, err := r.mkdirAllLinks(target, links+1)
	if err != nil {
		return -1, err
	}
	unix.Close(fd)
	return r.openDir(rel)
}

// lstatAt is fstatat without following a final symlink.
func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// removeAt removes name in dirfd, recursively if it is a directory. It never
// follows a symlink: a symlink is unlinked, not its target, and directories are
// entered with O_NOFOLLOW. A missing name is not an error.
func removeAt(dirfd int, name string) error {
	if name == "" || name == "." || name == ".." {
		// ".." relative to an fd is not confined: refuse outright.
		return fmt.Errorf("remove %q: %w", name, ErrUnsafePath)
	}
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, dirFlags|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	names, err := readNames(fd)
	if err == nil {
		for _, child := range names {
			if err = removeAt(fd, child); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	return nil
}

// readNames lists the directory open as fd, without "." and "..", leaving fd
// open and usable.
func readNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", dirFlags, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// setTimes sets name's atime and mtime to mtime, without following a symlink.
// The zero time, what a header without a timestamp decodes to, changes nothing.
// The atime is set too so that an unpacked tree does not depend on when it was
// unpacked.
func setTimes(dirfd int, name string, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	ts := unix.Timespec{Sec: mtime.Unix(), Nsec: int64(mtime.Nanosecond())}
	if err := unix.UtimesNanoAt(dirfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// SyncTree flushes the file system holding dir to stable storage, so that a
// freshly unpacked tree survives a power cut before the caller renames it into
// place. It uses syncfs(2): one call instead of an fsync per file.
func SyncTree(dir string) error {
	fd, err := unix.Open(dir, dirFlags, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}
