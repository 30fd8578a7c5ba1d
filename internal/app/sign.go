package app

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/tern-iot/tern/internal/trust"
)

// Resign adds signatures by keys to the package at path, for k-of-n signing: each
// release key holder adds theirs. The package is checked whole first, then rewritten
// beside itself and renamed into place, so a crash leaves the old or the new package,
// never half of one.
func Resign(path string, keys ...trust.PrivateKey) (*Package, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := Read(f, ReadOptions{SkipSignatures: true}, Discard)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, k := range keys {
		if err := p.Envelope.AddSignature(k); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if _, err := f.Seek(0, 0); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tern-sign-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	defer tmp.Close()
	pw, _, err := newPackageWriter(tmp, p.ManifestJSON, p.Envelope)
	if err != nil {
		return nil, err
	}
	if _, err := Read(f, ReadOptions{SkipSignatures: true}, pw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := pw.tw.Close(); err != nil {
		return nil, err
	}
	if err := CommitFile(tmp, path); err != nil {
		return nil, err
	}
	return p, nil
}

// CommitFile makes tmp's content appear at path whole: fsync, close, chmod 0644,
// rename, fsync the directory.
func CommitFile(tmp *os.File, path string) error {
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
