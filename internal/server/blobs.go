package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/app"
)

// blobStore keeps package blobs on disk, content addressed under
// DATA/blobs/sha256/<hex> and shared by every release and account.
//
// Invariant after a crash at any point: a file under sha256/ holds exactly the
// bytes of its digest. A blob is written to tmp/, synced, renamed into place and
// the directory synced; it is renamed only after the package reader confirmed its
// digest and size. tmp/ is emptied at start.
type blobStore struct {
	dir string
}

func newBlobStore(dataDir string) (*blobStore, error) {
	b := &blobStore{dir: filepath.Join(dataDir, "blobs")}
	if err := os.RemoveAll(b.tmpDir()); err != nil {
		return nil, err
	}
	for _, d := range []string{b.tmpDir(), filepath.Join(b.dir, "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func (b *blobStore) tmpDir() string { return filepath.Join(b.dir, "tmp") }

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// path returns where a blob lives; digest must already be checked by digestRE.
func (b *blobStore) path(digest string) string {
	return filepath.Join(b.dir, "sha256", strings.TrimPrefix(digest, "sha256:"))
}

// WriteBlob implements app.BlobSink. A blob already on disk with the right size is
// not written again: the reader still hashes the upload's bytes, so a package whose
// blob differs is refused all the same.
func (b *blobStore) WriteBlob(d app.Descriptor, r io.Reader) error {
	if !digestRE.MatchString(d.Digest) {
		return fmt.Errorf("bad digest %q", d.Digest)
	}
	final := b.path(d.Digest)
	if fi, err := os.Stat(final); err == nil && fi.Size() == d.Size {
		now := time.Now()
		return os.Chtimes(final, now, now) // recent again: the collector leaves it to this upload
	}
	f, err := os.CreateTemp(b.tmpDir(), "blob-*")
	if err != nil {
		return err
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return err
	}
	keep = true
	return syncDir(filepath.Dir(final))
}

// open opens a blob for reading.
func (b *blobStore) open(digest string) (*os.File, error) {
	if !digestRE.MatchString(digest) {
		return nil, os.ErrNotExist
	}
	return os.Open(b.path(digest))
}

// gc removes blobs no package references that are older than grace (a blob of an
// upload still in progress is recent). It returns how many it removed.
func (b *blobStore) gc(ctx context.Context, referenced func(ctx context.Context, digest string) (bool, error), grace time.Duration) (int, error) {
	entries, err := os.ReadDir(filepath.Join(b.dir, "sha256"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < grace {
			continue
		}
		digest := "sha256:" + e.Name()
		ok, err := referenced(ctx, digest)
		if err != nil {
			return n, err
		}
		if !ok {
			if err := os.Remove(b.path(digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
