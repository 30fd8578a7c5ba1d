package update

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
)

// grubBootloader reads and writes a GRUB environment block (grubenv) with
// grub-editenv (Debian: grub-common). grub-editenv rewrites the file in place
// (truncate, then write), which a power cut can leave empty; Set therefore edits a
// copy beside it and renames the copy over the original. GRUB finds the file by
// name at every boot, so the new inode is what its load_env and save_env use.
type grubBootloader struct{ path string }

func (b *grubBootloader) Get(ctx context.Context) (map[string]string, error) {
	// grub-editenv FILE list creates a missing FILE: look first, so that Get
	// never writes.
	if _, err := os.Stat(b.path); errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	out, err := runBootTool(ctx, "grub-editenv", b.path, "list")
	if err != nil {
		return nil, err
	}
	return parseEnvList(out), nil
}

func (b *grubBootloader) Set(ctx context.Context, vars map[string]string) error {
	if err := checkBootVars(vars); err != nil {
		return err
	}
	if len(vars) == 0 {
		return nil
	}
	var set, unset []string
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		if vars[k] == "" {
			unset = append(unset, k)
		} else {
			set = append(set, k+"="+vars[k])
		}
	}
	defer lockEnv(b.path)()
	dir, base := filepath.Split(b.path)
	if dir == "" {
		dir = "."
	}
	work, err := os.MkdirTemp(dir, "."+base+".edit-*")
	if err != nil {
		return fmt.Errorf("bootloader grub: %w", err)
	}
	defer os.RemoveAll(work)
	edit := filepath.Join(work, base)
	switch err := copyEnvFile(b.path, edit); {
	case errors.Is(err, os.ErrNotExist):
		if _, err := runBootTool(ctx, "grub-editenv", edit, "create"); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("bootloader grub: %w", err)
	}
	if len(set) > 0 {
		if _, err := runBootTool(ctx, "grub-editenv", append([]string{edit, "set"}, set...)...); err != nil {
			return err
		}
	}
	if len(unset) > 0 {
		if _, err := runBootTool(ctx, "grub-editenv", append([]string{edit, "unset"}, unset...)...); err != nil {
			return err
		}
	}
	return replaceEnvFile(b.path, func(f *os.File) error {
		src, err := os.Open(edit)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(f, src)
		return err
	})
}

func copyEnvFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o600)
}
