package update

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// ubootBootloader reads and writes the U-Boot environment with fw_printenv and
// fw_setenv from libubootenv (Debian: libubootenv-tool), configured by an
// fw_env.config. A redundant environment (two copies, two lines in fw_env.config)
// makes every write power-safe: libubootenv writes the copy not in use and only then
// marks it current; with one copy a power cut during the write can corrupt it.
type ubootBootloader struct {
	config     string
	defaultEnv string
}

// ubootLineMax is libubootenv's line buffer for fw_setenv -s scripts (1024 bytes in
// 0.3.x, newline and NUL included): a longer line would be split into two variables.
const ubootLineMax = 1024 - 2

func (b *ubootBootloader) args(extra ...string) []string {
	a := []string{"-c", b.config}
	if b.defaultEnv != "" {
		a = append(a, "-f", b.defaultEnv)
	}
	return append(a, extra...)
}

func (b *ubootBootloader) Get(ctx context.Context) (map[string]string, error) {
	out, err := runBootTool(ctx, "fw_printenv", b.args()...)
	if err != nil {
		return nil, err
	}
	return parseEnvList(out), nil
}

// Set writes every variable in one fw_setenv -s run: libubootenv applies the
// script to the environment in memory and stores it once, so the variables change
// together or not at all. A name=... line with an empty value deletes the variable.
func (b *ubootBootloader) Set(ctx context.Context, vars map[string]string) error {
	if err := checkBootVars(vars); err != nil {
		return err
	}
	if len(vars) == 0 {
		return nil
	}
	var script strings.Builder
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		line := k + "=" + vars[k]
		if len(line) > ubootLineMax {
			return fmt.Errorf("bootloader uboot: %s: name and value longer than %d bytes", k, ubootLineMax)
		}
		script.WriteString(line + "\n")
	}
	f, err := os.CreateTemp("", "tern-fw_setenv-*")
	if err != nil {
		return fmt.Errorf("bootloader uboot: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(script.String()); err != nil {
		f.Close()
		return fmt.Errorf("bootloader uboot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bootloader uboot: %w", err)
	}
	defer lockEnv(b.config)()
	_, err = runBootTool(ctx, "fw_setenv", b.args("-s", f.Name())...)
	return err
}

// runBootTool runs a bootloader tool and returns its standard output; a failure carries
// the tool's standard error (libubootenv and grub-editenv explain there).
func runBootTool(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return "", fmt.Errorf("bootloader: %s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return "", fmt.Errorf("bootloader: %s %s: %w", name, strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}
