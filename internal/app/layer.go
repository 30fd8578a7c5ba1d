package app

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compression algorithms for the layers tern makes itself.
const (
	CompressZstd = "zstd"
	CompressGzip = "gzip"
)

// compressLayer writes the uncompressed tar stream from r into a new file in dir,
// compressed with algo, and returns its descriptor and diffID.
func compressLayer(dir string, r io.Reader, algo string) (Descriptor, string, string, error) {
	f, err := os.CreateTemp(dir, "layer-*")
	if err != nil {
		return Descriptor{}, "", "", err
	}
	defer f.Close()
	blobHash := sha256.New()
	counter := &countWriter{w: io.MultiWriter(f, blobHash)}
	var zw io.WriteCloser
	var mt string
	switch algo {
	case CompressZstd, "":
		zw, err = zstd.NewWriter(counter, zstd.WithEncoderLevel(zstd.SpeedDefault))
		mt = MediaTypeLayerZstd
	case CompressGzip:
		zw, mt = gzip.NewWriter(counter), MediaTypeLayerGzip
	default:
		err = fmt.Errorf("compression %q: want zstd or gzip", algo)
	}
	if err != nil {
		return Descriptor{}, "", "", err
	}
	diffHash := sha256.New()
	if _, err := io.Copy(zw, io.TeeReader(r, diffHash)); err != nil {
		zw.Close()
		return Descriptor{}, "", "", err
	}
	if err := zw.Close(); err != nil {
		return Descriptor{}, "", "", err
	}
	if err := f.Close(); err != nil {
		return Descriptor{}, "", "", err
	}
	d := Descriptor{MediaType: mt, Digest: digestOf(blobHash), Size: counter.n}
	return d, digestOf(diffHash), f.Name(), nil
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// tarDir writes dir as an uncompressed layer tar to w: entries in lexical order,
// owners and modes as on disk, hard links kept as links. Device nodes, fifos and
// sockets are refused: devices reach an app through capabilities.devices, never
// through its image, and a device refuses layers that carry them.
func tarDir(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := fi.Mode()
		if mode&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
			return fmt.Errorf("%s: %v is not allowed in an app image (declare devices under capabilities.devices)", rel, mode.Type())
		}
		var target string
		if mode&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		// Whole seconds and no atime/ctime: plain USTAR headers where names fit,
		// and the same bytes for the same tree.
		hdr.ModTime = hdr.ModTime.Truncate(time.Second)
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && mode.IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), uint64(st.Ino)}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func digestBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
