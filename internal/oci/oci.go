// Package oci reads OCI image layers and unpacks them safely into a directory.
//
// Layers come from app packages, that is from outside the device, and are treated
// as hostile: every path is resolved inside the destination directory by the
// kernel (openat2 with RESOLVE_IN_ROOT), so a layer's symlinks resolve as they
// would inside the container and no write can land outside the destination;
// device nodes are refused; and the entry count, path lengths and uncompressed
// size are bounded so that a decompression bomb fails with ErrLimit instead of
// filling the disk.
package oci

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Layer media types accepted by Decompress.
const (
	MediaTypeLayerGzip       = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeLayerZstd       = "application/vnd.oci.image.layer.v1.tar+zstd"
	MediaTypeLayerTar        = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeDockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// MaxZstdWindow is the largest zstd window Decompress accepts. The decoder keeps
// one window of history in memory, and a hostile frame may declare a window of
// terabytes. 32 MiB covers the reference encoder up to zstd --ultra -20 (levels
// 1 to 19 use at most 8 MiB, as klauspost's encoder does by default); layers
// made with zstd --long or -21/-22 are refused with ErrLimit.
const MaxZstdWindow = 32 << 20

// Errors that callers test with errors.Is. Unpack wraps them with the entry name.
var (
	// ErrUnsafePath reports an entry whose name or link target is absolute,
	// contains "..", or whose resolution the kernel refused (a symlink loop, a
	// mount crossing) — anything that could reach outside the destination.
	ErrUnsafePath = errors.New("unsafe path")
	// ErrSpecialFile reports a device node, fifo or an entry type Unpack does
	// not create. Overlay whiteout devices are made by Unpack itself, never
	// copied from a layer.
	ErrSpecialFile = errors.New("special file not allowed")
	// ErrLimit reports a decompression bomb: a layer exceeding Limits (too
	// many entries, file bytes or metadata bytes, too long a path) or a zstd
	// window above MaxZstdWindow.
	ErrLimit = errors.New("layer exceeds limit")
	// ErrUnsupportedMediaType reports a layer media type Decompress cannot read.
	ErrUnsupportedMediaType = errors.New("unsupported layer media type")
)

// Limits bounds what one layer may make Unpack do. A field <= 0 takes its value
// from DefaultLimits, so the zero Limits is safe to use.
type Limits struct {
	// MaxEntries is the largest number of tar entries (whiteouts included),
	// and separately of parent directories created for entries whose
	// parents the layer does not list.
	MaxEntries int
	// MaxBytes is the largest total size of regular files, counted from the
	// headers before anything is written.
	MaxBytes int64
	// MaxPathLen is the longest entry name or link target, in bytes.
	MaxPathLen int
}

// DefaultLimits returns limits that admit any reasonable root file system:
// a million entries, 8 GiB of files, and paths as long as Linux's PATH_MAX.
func DefaultLimits() Limits {
	return Limits{MaxEntries: 1 << 20, MaxBytes: 8 << 30, MaxPathLen: 4096}
}

// withDefaults fills the fields <= 0 from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = d.MaxBytes
	}
	if l.MaxPathLen <= 0 {
		l.MaxPathLen = d.MaxPathLen
	}
	return l
}

// streamBudget is the most uncompressed tar bytes Unpack reads. MaxBytes bounds
// file contents only; headers, padding and PAX records (which archive/tar caps
// at 1 MiB each but otherwise reads in full) get an average allowance per entry,
// so a stream of giant metadata records cannot burn CPU without end either.
func (l Limits) streamBudget() int64 {
	perEntry := int64(2048 + 2*l.MaxPathLen)
	return l.MaxBytes + int64(l.MaxEntries)*perEntry
}

// WhiteoutMode says what Unpack does with the OCI whiteout entries ".wh.NAME"
// and ".wh..wh..opq".
type WhiteoutMode int

const (
	// WhiteoutApply flattens: layers are unpacked one over another into the
	// same directory, ".wh.NAME" deletes NAME and ".wh..wh..opq" empties its
	// directory of everything that lower layers put there.
	WhiteoutApply WhiteoutMode = iota
	// WhiteoutOverlay prepares an overlayfs lower directory: ".wh.NAME" becomes
	// a 0/0 character device NAME and ".wh..wh..opq" sets the xattr
	// trusted.overlay.opaque=y on its directory.
	WhiteoutOverlay
)

// Options configures Unpack. The zero Options applies whiteouts with the
// default limits.
type Options struct {
	Limits    Limits
	Whiteouts WhiteoutMode
}

// Stats tells what Unpack did.
type Stats struct {
	// Entries is the number of tar entries read.
	Entries int
	// Bytes is the number of file content bytes written.
	Bytes int64
}

// Decompress returns the uncompressed tar stream of a layer blob of the given
// media type. Closing the result releases the decoder; it does not close r.
// It does not verify the blob's digest: the caller does that on the blob.
func Decompress(r io.Reader, mediaType string) (io.ReadCloser, error) {
	switch mediaType {
	case MediaTypeLayerTar:
		return io.NopCloser(r), nil
	case MediaTypeLayerGzip, MediaTypeDockerLayerGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip layer: %w", err)
		}
		return zr, nil
	case MediaTypeLayerZstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(MaxZstdWindow), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd layer: %w", err)
		}
		return zstdReadCloser{zr}, nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedMediaType, mediaType)
	}
}

// zstdReadCloser adapts zstd.Decoder, whose Close returns nothing, and stops its
// goroutines when the caller is done.
type zstdReadCloser struct{ d *zstd.Decoder }

// Read reports a frame that needs more memory than MaxZstdWindow as ErrLimit,
// like any other bomb.
func (z zstdReadCloser) Read(p []byte) (int, error) {
	n, err := z.d.Read(p)
	if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		err = fmt.Errorf("%w: %w", ErrLimit, err)
	}
	return n, err
}

func (z zstdReadCloser) Close() error {
	z.d.Close()
	return nil
}

// UnpackLayer decompresses the layer blob of the given media type and unpacks
// it into dst, as Decompress followed by Unpack.
func UnpackLayer(ctx context.Context, dst string, blob io.Reader, mediaType string, opts Options) (Stats, error) {
	rc, err := Decompress(blob, mediaType)
	if err != nil {
		return Stats{}, err
	}
	defer rc.Close()
	return Unpack(ctx, dst, rc, opts)
}
