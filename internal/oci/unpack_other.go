//go:build !linux

package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Unpack needs openat2(2) to confine paths to dst, so it exists only on Linux;
// elsewhere it fails, and tools that merely read images still build.
func Unpack(ctx context.Context, dst string, r io.Reader, opts Options) (Stats, error) {
	return Stats{}, fmt.Errorf("unpack layer: %w", errors.ErrUnsupported)
}

// SyncTree is not supported outside Linux.
func SyncTree(dir string) error {
	return fmt.Errorf("sync tree: %w", errors.ErrUnsupported)
}
