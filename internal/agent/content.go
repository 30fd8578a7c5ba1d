package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/oci"
)

// Content is the device's content-addressed storage: compressed blobs under
// blobs/sha256/<hex> and each layer unpacked once under layers/<hex>/, shared by
// every app that uses it (overlayfs lower directories).
//
// Invariant after a crash at any point: a file at blobs/sha256/<hex> holds exactly
// the bytes that hash to <hex>, and a directory at layers/<hex> is the complete,
// synced unpacking of that blob. Both are made under a temporary name and renamed
// into place; temporaries (".tmp-*") are garbage that Sweep removes.
type Content struct {
	root string
}

// NewContent prepares the content directories under root.
func NewContent(root string) (*Content, error) {
	for _, d := range []string{"blobs/sha256", "layers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, err
		}
	}
	return &Content{root: root}, nil
}

// BlobPath is where a blob lives.
func (c *Content) BlobPath(digest string) string {
	return filepath.Join(c.root, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

// LayerPath is where a layer blob is unpacked.
func (c *Content) LayerPath(digest string) string {
	return filepath.Join(c.root, "layers", strings.TrimPrefix(digest, "sha256:"))
}

// HasBlob reports whether the blob is stored.
func (c *Content) HasBlob(digest string) bool {
	_, err := os.Stat(c.BlobPath(digest))
	return err == nil
}

// WriteBlob implements app.BlobSink: it keeps the blob only when the package reader
// reports the bytes matched their signed digest (io.EOF).
func (c *Content) WriteBlob(d app.Descriptor, r io.Reader) error {
	final := c.BlobPath(d.Digest)
	if _, err := os.Stat(final); err == nil {
		return nil // already here: the reader still checks the package's copy
	}
	dir := filepath.Dir(final)
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, r); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return err
	}
	return syncDir(dir)
}

// Unpack unpacks a stored layer blob, once: a layer already unpacked is reused.
func (c *Content) Unpack(ctx context.Context, d app.Descriptor) error {
	final := c.LayerPath(d.Digest)
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	f, err := os.Open(c.BlobPath(d.Digest))
	if err != nil {
		return err
	}
	defer f.Close()
	tmp, err := os.MkdirTemp(filepath.Dir(final), ".tmp-")
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	_, err = oci.UnpackLayer(ctx, tmp, f, d.MediaType, oci.Options{Limits: oci.DefaultLimits(), Whiteouts: oci.WhiteoutOverlay})
	if err == nil {
		err = syncFS(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("unpack layer %s: %w", d.Digest, err)
	}
	return syncDir(filepath.Dir(final))
}

// GC removes blobs and layers no installed app uses, and leftover temporaries.
func (c *Content) GC(inUse map[string]bool) error {
	var errs []error
	for _, dir := range []string{filepath.Join(c.root, "blobs", "sha256"), filepath.Join(c.root, "layers")} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".tmp-") || !inUse["sha256:"+e.Name()] {
				if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// syncFS flushes the file system holding path: one syscall for a whole unpacked
// tree, in place of an fsync per file.
func syncFS(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
