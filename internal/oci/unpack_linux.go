//go:build linux

package oci

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Unpack writes the uncompressed tar stream r into dst, which must exist, and
// returns what it did.
//
// Every entry is created below dst: its parent directory is resolved by the
// kernel inside dst (symlinks included, as the container will see them), and
// the entry itself is made relative to that directory's fd without following a
// final symlink. Whatever exists at an entry's name is replaced, except that a
// directory entry keeps an existing directory and only updates its metadata.
// Owners and modes (setuid bits included) come from the headers; PAX xattrs are
// ignored. Directory times are set last, once their contents stop changing.
//
// Unpack stops at the first error, which wraps ErrUnsafePath, ErrSpecialFile or
// ErrLimit when a layer is hostile, leaving dst partly written: callers unpack
// into a fresh directory and remove it on error. Unpack does not fsync; see
// SyncTree.
func Unpack(ctx context.Context, dst string, r io.Reader, opts Options) (Stats, error) {
	limits := opts.Limits.withDefaults()
	root, err := openRootDir(dst, limits.MaxEntries)
	if err != nil {
		return Stats{}, err
	}
	defer root.close()
	u := &unpacker{
		ctx:     ctx,
		root:    root,
		limits:  limits,
		mode:    opts.Whiteouts,
		written: make(map[string]struct{}),
		cleaned: make(map[string]struct{}),
		buf:     make([]byte, 256<<10),
	}
	err = u.run(r)
	return u.stats, err
}

// unpacker holds the state of one Unpack call.
type unpacker struct {
	ctx    context.Context
	root   *rootDir
	limits Limits
	mode   WhiteoutMode
	stats  Stats
	// fileBytes is the sum of the regular files' header sizes so far.
	fileBytes int64
	// written holds every path this layer created, and all their ancestors:
	// whiteouts only hide what lower layers made.
	written map[string]struct{}
	// cleaned holds the directories an opaque whiteout has already emptied
	// of lower entries, so that no marker makes us scan them twice.
	cleaned map[string]struct{}
	// dirTimes are applied after the last entry, since creating a child
	// changes its directory's mtime.
	dirTimes []dirTime
	buf      []byte
}

type dirTime struct {
	name  string
	mtime time.Time
}

func (u *unpacker) run(r io.Reader) error {
	tr := tar.NewReader(&budgetReader{r: r, left: u.limits.streamBudget()})
	for {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("layer entry %q: %w", shortName(hdr.Name), err)
		}
	}
	return u.setDirTimes()
}

// entry checks one header against the limits and creates what it describes.
func (u *unpacker) entry(hdr *tar.Header, data io.Reader) error {
	u.stats.Entries++
	if u.stats.Entries > u.limits.MaxEntries {
		return fmt.Errorf("%w: more than %d entries", ErrLimit, u.limits.MaxEntries)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // PAX defaults for later entries; nothing we use.
	}
	if len(hdr.Name) > u.limits.MaxPathLen || len(hdr.Linkname) > u.limits.MaxPathLen {
		return fmt.Errorf("%w: path longer than %d bytes", ErrLimit, u.limits.MaxPathLen)
	}
	if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse {
		// Counted before writing, so a bomb is refused before it lands. A sparse
		// file counts its full logical size: we do not write holes.
		if hdr.Size > u.limits.MaxBytes-u.fileBytes {
			return fmt.Errorf("%w: files larger than %d bytes", ErrLimit, u.limits.MaxBytes)
		}
		u.fileBytes += hdr.Size
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return u.rootEntry(hdr)
	}
	dir, base := path.Split(name)
	dir = path.Clean(dir)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(dir, base)
	}
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return fmt.Errorf("%w: type %q", ErrSpecialFile, hdr.Typeflag)
	default:
		return fmt.Errorf("%w: unknown type %q", ErrSpecialFile, hdr.Typeflag)
	}
	if err := checkOwner(hdr); err != nil {
		return err
	}

	pfd, err := u.root.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = u.mkdir(pfd, name, base, hdr)
	case tar.TypeSymlink:
		err = symlink(pfd, base, hdr)
	case tar.TypeLink:
		err = u.hardlink(pfd, base, hdr)
	default:
		err = u.file(pfd, base, hdr, data)
	}
	if err != nil {
		return err
	}
	u.record(name)
	return nil
}

// cleanName validates a tar name and returns it cleaned, relative to the root,
// "." for the root itself. Any ".." is refused, even one that would clean away,
// because the kernel resolves "a/.." through a symlink a, not lexically.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: NUL in name", ErrUnsafePath)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name", ErrUnsafePath)
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: \"..\" in name", ErrUnsafePath)
		}
	}
	return path.Clean(name), nil
}

// shortName keeps error messages readable when a hostile name is megabytes long.
func shortName(name string) string {
	const max = 256
	if len(name) <= max {
		return name
	}
	return name[:max] + "..."
}

// maxID is the largest uid or gid chown(2) accepts: (uid_t)-1 means "unchanged".
const maxID = 1<<32 - 2

func checkOwner(hdr *tar.Header) error {
	if hdr.Uid < 0 || hdr.Uid > maxID || hdr.Gid < 0 || hdr.Gid > maxID {
		return fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	return nil
}

// setOwnerMode applies the header's owner, then its mode: chown(2) clears
// setuid and setgid bits, so the other order would lose them.
func setOwnerMode(fd int, hdr *tar.Header) error {
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// rootEntry applies a "./" entry to dst itself: its mode is the container's "/".
func (u *unpacker) rootEntry(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("%w: the root can only be a directory", ErrUnsafePath)
	}
	if err := checkOwner(hdr); err != nil {
		return err
	}
	if err := setOwnerMode(u.root.fd, hdr); err != nil {
		return err
	}
	u.dirTimes = append(u.dirTimes, dirTime{".", hdr.ModTime})
	return nil
}

func (u *unpacker) mkdir(pfd int, name, base string, hdr *tar.Header) error {
	st, err := lstatAt(pfd, base)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		// Keep it: an upper layer's directory entry updates a lower one's
		// metadata and must not drop its contents.
	case err == nil || err == unix.ENOENT:
		if err == nil {
			if err := removeAt(pfd, base); err != nil {
				return err
			}
		}
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	default:
		return fmt.Errorf("stat: %w", err)
	}
	fd, err := unix.Openat(pfd, base, dirFlags|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer unix.Close(fd)
	if err := setOwnerMode(fd, hdr); err != nil {
		return err
	}
	u.dirTimes = append(u.dirTimes, dirTime{name, hdr.ModTime})
	return nil
}

func (u *unpacker) file(pfd int, base string, hdr *tar.Header, data io.Reader) error {
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	// O_EXCL|O_NOFOLLOW: we write only into a file we just created, never
	// through a symlink or into a hardlinked inode left at this name.
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	err = u.copyData(f, data, hdr.Size)
	if err == nil {
		err = setOwnerMode(fd, hdr)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return setTimes(pfd, base, hdr.ModTime)
}

// copyData copies exactly size bytes, checking ctx between chunks so that a
// cancelled unpack of a large file stops promptly.
func (u *unpacker) copyData(w io.Writer, r io.Reader, size int64) error {
	for size > 0 {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		chunk := u.buf
		if int64(len(chunk)) > size {
			chunk = chunk[:size]
		}
		n, err := io.ReadFull(r, chunk)
		if n > 0 {
			if _, werr := w.Write(chunk[:n]); werr != nil {
				return fmt.Errorf("write: %w", werr)
			}
			u.stats.Bytes += int64(n)
			size -= int64(n)
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read file data: %w", err)
		}
	}
	return nil
}

// symlink creates a symlink. Its target is data, whatever it says: later
// lookups through it are resolved inside the root.
func symlink(pfd int, base string, hdr *tar.Header) error {
	if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
		return fmt.Errorf("invalid symlink target %q", shortName(hdr.Linkname))
	}
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	return setTimes(pfd, base, hdr.ModTime)
}

// hardlink links base to an existing file of the root. The target's directory
// is resolved inside the root like any entry's, and linkat(2) without
// AT_SYMLINK_FOLLOW links a symlink itself rather than what it points to, so
// the new name can only share an inode that is already inside the root. The
// header's owner and mode are not applied: they would change the target too.
func (u *unpacker) hardlink(pfd int, base string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	if target == "." {
		return fmt.Errorf("hardlink target: %w: the root", ErrUnsafePath)
	}
	tfd, err := u.root.openDir(path.Dir(target))
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", shortName(target), err)
	}
	defer unix.Close(tfd)
	tbase := path.Base(target)
	tst, err := lstatAt(tfd, tbase)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", shortName(target), err)
	}
	switch tst.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFLNK:
	case unix.S_IFDIR:
		return fmt.Errorf("hardlink target %q: is a directory", shortName(target))
	default:
		return fmt.Errorf("hardlink target %q: %w", shortName(target), ErrSpecialFile)
	}
	if st, err := lstatAt(pfd, base); err == nil && st.Dev == tst.Dev && st.Ino == tst.Ino {
		return nil // Already this inode; removing it first could delete the target.
	}
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("link to %q: %w", shortName(target), err)
	}
	return nil
}

// setDirTimes applies directory mtimes once nothing will be added to them. A
// directory a later entry replaced or a whiteout removed is skipped.
func (u *unpacker) setDirTimes() error {
	for _, d := range u.dirTimes {
		if d.name == "." {
			if err := setTimes(u.root.fd, ".", d.mtime); err != nil {
				return fmt.Errorf("layer root: %w", err)
			}
			continue
		}
		pfd, err := u.root.openDir(path.Dir(d.name))
		if err != nil {
			continue
		}
		base := path.Base(d.name)
		if st, err := lstatAt(pfd, base); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = setTimes(pfd, base, d.mtime)
			if err != nil {
				unix.Close(pfd)
				return fmt.Errorf("layer entry %q: %w", shortName(d.name), err)
			}
		}
		unix.Close(pfd)
	}
	return nil
}

// budgetReader fails with ErrLimit once the stream outgrows its budget of
// bytes (see Limits.streamBudget).
type budgetReader struct {
	r    io.Reader
	left int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// A stream that ends exactly at the budget is fine.
		var probe [1]byte
		if n, err := b.r.Read(probe[:]); n == 0 && err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%w: uncompressed layer longer than its budget", ErrLimit)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}
