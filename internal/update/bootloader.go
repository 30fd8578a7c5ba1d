package update

// The bootloader side of OS updates: the variables the agent, the backends and the
// shipped boot scripts (docs/boot/boot.cmd for U-Boot, docs/boot/grub.cfg for GRUB)
// share, the boot-count rules those scripts implement (SimulateBoot is the same rules
// in Go), and the backends that read and write the bootloader environment from Linux.
// docs/bootloader.md describes all of it for people who port Tern to a board.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Boot variables shared by the agent, the backends and the shipped boot scripts.
const (
	VarSlot      = "tern_slot"         // slot the bootloader boots: "a" or "b"
	VarUpgrade   = "upgrade_available" // "1" while a new slot is on trial
	VarBootCount = "bootcount"         // boots of the trial slot so far
	VarBootLimit = "bootlimit"         // trial boots allowed before falling back (the agent sets 1: try once)
)

// The two slots.
const (
	SlotA = "a"
	SlotB = "b"
)

// MaxBootLimit is the largest bootlimit the boot scripts honour. Neither GRUB nor a
// portable U-Boot script can do decimal arithmetic, so they count in single digits
// (0 -> 1 -> ... -> 9); a bootlimit outside 1..MaxBootLimit is taken as 1.
const MaxBootLimit = 8

// CmdlineParam is the kernel command-line parameter the boot scripts add: the slot
// that booted, read back with BootedSlot.
const CmdlineParam = "tern.slot"

// Bootloader reads and writes the bootloader environment.
type Bootloader interface {
	// Get returns all variables. The file and grub backends return an empty map
	// when the environment file does not exist yet.
	Get(ctx context.Context) (map[string]string, error)
	// Set sets these variables (an empty value removes one) and leaves the others
	// unchanged, atomically (all or none) and durably (on storage when it returns).
	Set(ctx context.Context, vars map[string]string) error
}

// BootloaderConfig selects and configures a backend.
type BootloaderConfig struct {
	Kind        string // "file" | "uboot" | "grub"
	EnvFile     string // file backend: path of a plain KEY=VALUE env file; grub backend: grubenv path
	FwEnvConfig string // uboot backend: fw_env.config path passed to fw_printenv/fw_setenv with -c
	// DefaultEnv (uboot backend, optional) is passed to fw_printenv/fw_setenv with
	// -f: the environment to start from when the stored one is blank or corrupt.
	// Without it libubootenv falls back to /etc/u-boot-initial-env and fails when
	// that is missing too. Use the board's default environment (U-Boot's
	// u-boot-initial-env), never an empty file on a real board: the first Set would
	// then save an environment that holds only Tern's variables and no bootcmd.
	DefaultEnv string
}

// Backend kinds.
const (
	BootloaderFile  = "file"
	BootloaderUBoot = "uboot"
	BootloaderGRUB  = "grub"
)

// NewBootloader returns the backend cfg names. It does not touch the environment.
func NewBootloader(cfg BootloaderConfig) (Bootloader, error) {
	switch cfg.Kind {
	case BootloaderFile:
		if cfg.EnvFile == "" {
			return nil, errors.New("bootloader file: env file path is empty")
		}
		return &fileBootloader{path: cfg.EnvFile}, nil
	case BootloaderUBoot:
		if cfg.FwEnvConfig == "" {
			return nil, errors.New("bootloader uboot: fw_env.config path is empty")
		}
		return &ubootBootloader{config: cfg.FwEnvConfig, defaultEnv: cfg.DefaultEnv}, nil
	case BootloaderGRUB:
		if cfg.EnvFile == "" {
			return nil, errors.New("bootloader grub: grubenv path is empty")
		}
		return &grubBootloader{path: cfg.EnvFile}, nil
	case "":
		return nil, errors.New("bootloader: kind is empty (want file, uboot or grub)")
	}
	return nil, fmt.Errorf("bootloader: unknown kind %q (want file, uboot or grub)", cfg.Kind)
}

// ValidSlot reports whether s names a slot.
func ValidSlot(s string) bool { return s == SlotA || s == SlotB }

// OtherSlot returns the slot that is not s. As in the boot scripts, anything but
// "b" counts as "a", so the other slot of an unset or unknown slot is "b".
func OtherSlot(s string) string {
	if s == SlotB {
		return SlotA
	}
	return SlotB
}

// TrialVars are the variables that tell the bootloader to try slot once on the next
// boot: if that boot does not end in CommitVars, the boot after it falls back.
func TrialVars(slot string) map[string]string {
	return map[string]string{VarSlot: slot, VarUpgrade: "1", VarBootCount: "0", VarBootLimit: "1"}
}

// CommitVars are the variables that make the slot on trial (the one that booted)
// permanent.
func CommitVars() map[string]string {
	return map[string]string{VarUpgrade: "0", VarBootCount: "0"}
}

// SimulateBoot applies exactly the boot-count rules of the shipped U-Boot script
// (docs/boot/boot.cmd; docs/boot/grub.cfg has the same) to env and returns the slot
// that boots and the environment after the bootloader ran (the script's saveenv).
// env is not modified.
//
// The rules: when upgrade_available is "1", bootlimit outside "1".."8" is taken as
// "1"; bootcount steps up by one (unset counts as "0"; anything but "0".."8" becomes
// "9", over any limit); when bootcount > bootlimit the trial failed: tern_slot
// becomes the other slot, upgrade_available "0", bootcount "0"; then the environment
// is saved. Otherwise nothing is changed or saved. The slot that boots is tern_slot
// when it is "b", else "a".
func SimulateBoot(env map[string]string) (slot string, after map[string]string) {
	after = maps.Clone(env)
	if after == nil {
		after = map[string]string{}
	}
	if env[VarUpgrade] == "1" {
		limit := env[VarBootLimit]
		if !bootDigitIn(limit, '1', '0'+MaxBootLimit) {
			limit = "1"
		}
		after[VarBootLimit] = limit
		count := env[VarBootCount]
		switch {
		case count == "":
			count = "1"
		case bootDigitIn(count, '0', '8'):
			count = string(count[0] + 1)
		default:
			count = "9"
		}
		after[VarBootCount] = count
		if count > limit { // single digits: byte order is numeric order
			after[VarSlot] = OtherSlot(env[VarSlot])
			after[VarUpgrade] = "0"
			after[VarBootCount] = "0"
		}
	}
	slot = SlotA
	if after[VarSlot] == SlotB {
		slot = SlotB
	}
	return slot, after
}

// SimulateReboot is a reboot for tests and bring-up with the file backend: it reads
// b's environment, applies SimulateBoot, stores what the bootloader would have
// saved (nothing outside a trial) and returns the slot that boots.
func SimulateReboot(ctx context.Context, b Bootloader) (string, error) {
	env, err := b.Get(ctx)
	if err != nil {
		return "", err
	}
	slot, after := SimulateBoot(env)
	changed := map[string]string{}
	for k, v := range after {
		if env[k] != v {
			changed[k] = v
		}
	}
	if len(changed) > 0 {
		if err := b.Set(ctx, changed); err != nil {
			return "", err
		}
	}
	return slot, nil
}

func bootDigitIn(s string, lo, hi byte) bool {
	return len(s) == 1 && s[0] >= lo && s[0] <= hi
}

// ErrNoBootedSlot reports a kernel command line without tern.slot: the system was
// not started by a Tern boot script.
var ErrNoBootedSlot = errors.New("kernel command line has no " + CmdlineParam)

// BootedSlot returns the slot named by tern.slot=<slot> on a kernel command line
// (the content of /proc/cmdline). The last occurrence counts, as the boot scripts
// append theirs; a value other than "a" or "b" is an error.
func BootedSlot(cmdline string) (string, error) {
	found, slot := false, ""
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, CmdlineParam+"=")
		if !ok {
			continue
		}
		found, slot = true, strings.Trim(v, `"`)
	}
	if !found {
		return "", ErrNoBootedSlot
	}
	if !ValidSlot(slot) {
		return "", fmt.Errorf("kernel command line: %s=%q is not a slot (want a or b)", CmdlineParam, slot)
	}
	return slot, nil
}

// checkBootVars rejects what no backend can store and read back unambiguously: names
// that are empty or hold '=', white space or control characters, and values that
// hold a newline or NUL (every backend lists the environment one name=value a line).
func checkBootVars(vars map[string]string) error {
	for k, v := range vars {
		if k == "" {
			return errors.New("bootloader: empty variable name")
		}
		if strings.ContainsFunc(k, func(r rune) bool { return r == '=' || r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("bootloader: invalid variable name %q", k)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("bootloader: value of %s holds a newline or NUL", k)
		}
	}
	return nil
}

// parseEnvList parses name=value lines as fw_printenv and grub-editenv list print
// them. A line without '=' continues the previous value (a value with a newline,
// which Tern never writes but another tool may have).
func parseEnvList(out string) map[string]string {
	env := map[string]string{}
	last := ""
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			if last != "" {
				env[last] += "\n" + line
			}
			continue
		}
		env[k], last = v, k
	}
	return env
}

// envLocks serialises read-modify-write cycles on one environment within the
// process (the backends' tools lock across processes where they can).
var envLocks sync.Map // cleaned path -> *sync.Mutex

func lockEnv(path string) func() {
	m, _ := envLocks.LoadOrStore(filepath.Clean(path), &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// fileBootloader keeps the environment in a plain KEY=VALUE file: for tests and
// bring-up, and the environment format the test shims of the boot scripts use.
type fileBootloader struct{ path string }

func (b *fileBootloader) Get(ctx context.Context) (map[string]string, error) {
	return readEnvFile(b.path)
}

func (b *fileBootloader) Set(ctx context.Context, vars map[string]string) error {
	if err := checkBootVars(vars); err != nil {
		return err
	}
	defer lockEnv(b.path)()
	env, err := readEnvFile(b.path)
	if err != nil {
		return err
	}
	for k, v := range vars {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return writeEnvFile(b.path, env)
}

// readEnvFile reads KEY=VALUE lines; blank lines and lines starting with '#' are
// skipped. A missing file is an empty environment.
func readEnvFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bootloader env: %w", err)
	}
	env := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("bootloader env %s:%d: not KEY=VALUE: %q", path, i+1, line)
		}
		env[k] = v
	}
	return env, nil
}

// writeEnvFile replaces path with env, power-safe: a temporary file in the same
// directory is written and synced, renamed over path, and the directory synced, so
// after a power loss path holds either the old or the new environment, whole.
func writeEnvFile(path string, env map[string]string) error {
	var sb strings.Builder
	for _, k := range slices.Sorted(maps.Keys(env)) {
		sb.WriteString(k + "=" + env[k] + "\n")
	}
	return replaceEnvFile(path, func(f *os.File) error {
		_, err := f.WriteString(sb.String())
		return err
	})
}

// replaceEnvFile atomically and durably replaces path with what fill writes into a
// temporary file beside it (keeping path's permissions when it exists).
func replaceEnvFile(path string, fill func(f *os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("bootloader env: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("bootloader env %s: %w", path, err)
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncEnvDir(dir)
}

func syncEnvDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
