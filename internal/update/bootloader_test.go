package update

import (
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// bootCase is one boot: the stored environment before it, the slot that boots and
// the stored environment after the bootloader ran. after nil means unchanged.
type bootCase struct {
	name   string
	before map[string]string
	slot   string
	after  map[string]string
}

// bootEnv builds an environment from tern_slot, upgrade_available, bootcount and
// bootlimit; "-" leaves a variable unset.
func bootEnv(slot, upgrade, count, limit string) map[string]string {
	env := map[string]string{}
	for k, v := range map[string]string{VarSlot: slot, VarUpgrade: upgrade, VarBootCount: count, VarBootLimit: limit} {
		if v != "-" {
			env[k] = v
		}
	}
	return env
}

func bootEnvWith(env map[string]string, kv ...string) map[string]string {
	env = maps.Clone(env)
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

// bootCases is THE table of the boot-count rules. It drives SimulateBoot, the
// shipped U-Boot script (docs/boot/boot.cmd under sh, boot_script_test.go) and the
// shipped GRUB configuration (docs/boot/grub.cfg under bash).
var bootCases = []bootCase{
	{"empty environment boots a and writes nothing", map[string]string{}, "a", nil},
	{"committed b", bootEnv("b", "0", "0", "1"), "b", nil},
	{"committed a", bootEnv("a", "0", "0", "1"), "a", nil},
	{"slot unset boots a", bootEnv("-", "0", "-", "-"), "a", nil},
	{"unknown slot boots a and is not rewritten", bootEnv("c", "-", "-", "-"), "a", nil},
	{"upgrade_available other than 1 is no trial", bootEnv("b", "true", "5", "1"), "b", nil},

	{"first boot of a trial of b", bootEnv("b", "1", "0", "1"), "b", bootEnv("b", "1", "1", "1")},
	{"trial of b not committed falls back to a", bootEnv("b", "1", "1", "1"), "a", bootEnv("a", "0", "0", "1")},
	{"trial of a not committed falls back to b", bootEnv("a", "1", "1", "1"), "b", bootEnv("b", "0", "0", "1")},
	{"bootlimit 3, third boot", bootEnv("b", "1", "2", "3"), "b", bootEnv("b", "1", "3", "3")},
	{"bootlimit 3 used up", bootEnv("b", "1", "3", "3"), "a", bootEnv("a", "0", "0", "3")},
	{"bootlimit 8, last boot", bootEnv("a", "1", "7", "8"), "a", bootEnv("a", "1", "8", "8")},
	{"bootlimit 8 used up", bootEnv("a", "1", "8", "8"), "b", bootEnv("b", "0", "0", "8")},

	{"bootcount unset counts as 0", bootEnv("b", "1", "-", "1"), "b", bootEnv("b", "1", "1", "1")},
	{"bootlimit unset is 1", bootEnv("b", "1", "0", "-"), "b", bootEnv("b", "1", "1", "1")},
	{"bootlimit 0 is 1", bootEnv("b", "1", "0", "0"), "b", bootEnv("b", "1", "1", "1")},
	{"bootlimit 9 is 1", bootEnv("b", "1", "1", "9"), "a", bootEnv("a", "0", "0", "1")},
	{"bootlimit not a number is 1", bootEnv("b", "1", "0", "two"), "b", bootEnv("b", "1", "1", "1")},
	{"bootcount not a number falls back", bootEnv("b", "1", "x", "3"), "a", bootEnv("a", "0", "0", "3")},
	{"bootcount 9 falls back", bootEnv("b", "1", "9", "8"), "a", bootEnv("a", "0", "0", "8")},
	{"bootcount 12 falls back", bootEnv("b", "1", "12", "3"), "a", bootEnv("a", "0", "0", "3")},

	{"trial with slot unset is a trial of a: falls back to b", bootEnv("-", "1", "1", "1"), "b", bootEnv("b", "0", "0", "1")},
	{"trial with unknown slot boots a, slot not rewritten", bootEnv("c", "1", "0", "1"), "a", bootEnv("c", "1", "1", "1")},
	{"other variables are kept",
		bootEnvWith(bootEnv("b", "1", "1", "1"), "bootcmd", "run distro_bootcmd; reset", "board_opts", "x=1 y=2"), "a",
		bootEnvWith(bootEnv("a", "0", "0", "1"), "bootcmd", "run distro_bootcmd; reset", "board_opts", "x=1 y=2")},
}

// bootSequence is a series of boots from one environment, with the agent writing
// variables before some of them.
type bootSequence struct {
	name  string
	start map[string]string
	steps []bootStep
}

type bootStep struct {
	set  map[string]string // what the agent writes before this boot
	slot string            // the slot that boots
}

var bootSequences = []bootSequence{
	{"try once, not committed: back to a", bootEnv("a", "0", "0", "1"), []bootStep{
		{TrialVars("b"), "b"}, {nil, "a"}, {nil, "a"},
	}},
	{"try once, committed: b stays", bootEnv("a", "0", "0", "1"), []bootStep{
		{TrialVars("b"), "b"}, {CommitVars(), "b"}, {nil, "b"},
	}},
	{"committed b, trial of a fails: back to b", bootEnv("b", "0", "0", "1"), []bootStep{
		{TrialVars("a"), "a"}, {nil, "b"}, {nil, "b"},
	}},
	{"bootlimit 2 gives two boots", bootEnv("a", "0", "0", "1"), []bootStep{
		{bootEnvWith(TrialVars("b"), VarBootLimit, "2"), "b"}, {nil, "b"}, {nil, "a"}, {nil, "a"},
	}},
}

// bootSim boots once from the stored environment before: the slot that boots and
// the stored environment after.
type bootSim func(t *testing.T, before map[string]string) (slot string, after map[string]string)

func simulateBootSim(t *testing.T, before map[string]string) (string, map[string]string) {
	return SimulateBoot(before)
}

func checkBootCases(t *testing.T, sim bootSim) {
	t.Helper()
	for _, c := range bootCases {
		t.Run(c.name, func(t *testing.T) {
			before := maps.Clone(c.before)
			slot, after := sim(t, before)
			if !maps.Equal(before, c.before) {
				t.Fatalf("input environment modified: %v", before)
			}
			want := c.after
			if want == nil {
				want = c.before
			}
			if slot != c.slot || !maps.Equal(after, want) {
				t.Errorf("boot from %v:\n got slot %s, env %v\nwant slot %s, env %v", c.before, slot, after, c.slot, want)
			}
		})
	}
}

func checkBootSequences(t *testing.T, sim bootSim) {
	t.Helper()
	for _, s := range bootSequences {
		t.Run(s.name, func(t *testing.T) {
			env := maps.Clone(s.start)
			for i, st := range s.steps {
				for k, v := range st.set {
					env[k] = v
				}
				var slot string
				slot, env = sim(t, env)
				if slot != st.slot {
					t.Fatalf("boot %d: slot %s, want %s (env after: %v)", i+1, slot, st.slot, env)
				}
			}
		})
	}
}

func TestSimulateBoot(t *testing.T) {
	checkBootCases(t, simulateBootSim)
	checkBootSequences(t, simulateBootSim)
	// nil is an empty environment.
	if slot, after := SimulateBoot(nil); slot != "a" || after == nil || len(after) != 0 {
		t.Errorf("SimulateBoot(nil) = %s, %v", slot, after)
	}
}

// TestSimulateReboot runs the table and the sequences through a file backend: the
// stored environment after each reboot is the bootloader's.
func TestSimulateReboot(t *testing.T) {
	sim := func(t *testing.T, before map[string]string) (string, map[string]string) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "boot.env")
		if err := writeEnvFile(path, before); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(path)
		b, _ := NewBootloader(BootloaderConfig{Kind: "file", EnvFile: path})
		slot, err := SimulateReboot(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		after, err := b.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st2, _ := os.Stat(path); before[VarUpgrade] != "1" && !os.SameFile(st, st2) {
			t.Error("environment rewritten outside a trial")
		}
		return slot, after
	}
	checkBootCases(t, sim)
	checkBootSequences(t, sim)
}

func TestBootedSlot(t *testing.T) {
	for _, c := range []struct {
		cmdline, slot string
		err           bool
		noSlot        bool
	}{
		{"console=ttyS0 root=/dev/mmcblk0p3 rootwait ro tern.slot=b\n", "b", false, false},
		{"tern.slot=a", "a", false, false},
		{"tern.slot=a quiet tern.slot=b", "b", false, false},
		{`tern.slot="a"`, "a", false, false},
		{"console=ttyS0 root=/dev/sda2", "", true, true},
		{"", "", true, true},
		{"xtern.slot=a", "", true, true},
		{"tern.slot=c", "", true, false},
		{"tern.slot=", "", true, false},
		{"tern.slot=A", "", true, false},
	} {
		slot, err := BootedSlot(c.cmdline)
		if slot != c.slot || (err != nil) != c.err || errors.Is(err, ErrNoBootedSlot) != c.noSlot {
			t.Errorf("BootedSlot(%q) = %q, %v", c.cmdline, slot, err)
		}
	}
}

func TestNewBootloaderConfig(t *testing.T) {
	for _, cfg := range []BootloaderConfig{
		{}, {Kind: "lilo", EnvFile: "x"}, {Kind: "file"}, {Kind: "grub"}, {Kind: "uboot", EnvFile: "x"},
	} {
		if _, err := NewBootloader(cfg); err == nil {
			t.Errorf("NewBootloader(%+v) accepted", cfg)
		}
	}
}

// checkBootBackend runs what every backend must do against a fresh environment.
func checkBootBackend(t *testing.T, b Bootloader, fresh map[string]string) {
	t.Helper()
	ctx := context.Background()
	env, err := b.Get(ctx)
	if err != nil {
		t.Fatalf("Get on a fresh environment: %v", err)
	}
	if !maps.Equal(env, fresh) {
		t.Fatalf("fresh environment = %v, want %v", env, fresh)
	}
	want := maps.Clone(fresh)
	set := func(vars map[string]string) {
		t.Helper()
		if err := b.Set(ctx, vars); err != nil {
			t.Fatalf("Set(%v): %v", vars, err)
		}
		for k, v := range vars {
			if v == "" {
				delete(want, k)
			} else {
				want[k] = v
			}
		}
		got, err := b.Get(ctx)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("after Set(%v): env %v, want %v", vars, got, want)
		}
	}
	set(bootEnv("a", "0", "0", "1"))
	set(map[string]string{"other": "with spaces = and equals", "empty_later": "x"})
	set(TrialVars("b"))
	set(map[string]string{"empty_later": ""}) // an empty value removes
	set(map[string]string{"never_set": ""})   // removing what is not there is fine
	set(CommitVars())
	set(map[string]string{})

	// One trial boot through the backend: what the agent reads after a reboot.
	set(TrialVars("a"))
	got, _ := b.Get(ctx)
	slot, after := SimulateBoot(got)
	set(after)
	if slot != "a" {
		t.Fatalf("trial of a booted %s", slot)
	}

	for _, bad := range []map[string]string{
		{"": "x"}, {"a=b": "x"}, {"a b": "x"}, {"a\nb": "x"}, {"ok": "line\nbreak"}, {"ok": "nul\x00"},
	} {
		if err := b.Set(ctx, bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	if got, err := b.Get(ctx); err != nil || !maps.Equal(got, want) {
		t.Fatalf("refused Set changed the environment: %v, %v", got, err)
	}
}

func TestFileBootloader(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "boot.env")
	b, err := NewBootloader(BootloaderConfig{Kind: "file", EnvFile: path})
	if err != nil {
		t.Fatal(err)
	}
	checkBootBackend(t, b, map[string]string{})

	// The file is plain KEY=VALUE lines and no temporary file is left behind.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "tern_slot=a\n") {
		t.Errorf("env file:\n%s", data)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want the env file only", len(ents))
	}

	// Comments and blank lines are skipped; a line that is not KEY=VALUE is an error.
	os.WriteFile(path, []byte("# written by hand\n\ntern_slot=b\n"), 0o644)
	if env, err := b.Get(context.Background()); err != nil || !maps.Equal(env, map[string]string{"tern_slot": "b"}) {
		t.Errorf("Get = %v, %v", env, err)
	}
	os.WriteFile(path, []byte("tern_slot=b\ngarbage\n"), 0o644)
	if _, err := b.Get(context.Background()); err == nil {
		t.Error("Get accepted a line without '='")
	}
	if err := b.Set(context.Background(), map[string]string{"x": "1"}); err == nil {
		t.Error("Set over an unreadable env file succeeded")
	}

	// A directory that does not exist is an error, not a silent mkdir.
	b2, _ := NewBootloader(BootloaderConfig{Kind: "file", EnvFile: filepath.Join(dir, "no", "env")})
	if env, err := b2.Get(context.Background()); err != nil || len(env) != 0 {
		t.Errorf("Get in a missing directory = %v, %v", env, err)
	}
	if err := b2.Set(context.Background(), map[string]string{"x": "1"}); err == nil {
		t.Error("Set in a missing directory succeeded")
	}
}

func TestFileBootloaderConcurrentSets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "boot.env")
	b, _ := NewBootloader(BootloaderConfig{Kind: "file", EnvFile: path})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Set(context.Background(), map[string]string{"v" + string(rune('a'+i)): "1"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if env, _ := b.Get(context.Background()); len(env) != 20 {
		t.Errorf("concurrent Sets lost updates: %v", env)
	}
}

// bootTool returns the path of a bootloader tool; without it the test is skipped,
// except under CI (CI=true), where the tool must be installed (scripts/setup.sh).
func bootTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI (Debian package %s)", name, pkg)
		}
		t.Skipf("%s not installed (Debian package %s)", name, pkg)
	}
	return p
}

// ubootEnvFixture makes a redundant U-Boot environment in one file (two copies of
// 16 KiB at offsets 0 and 0x4000, as on a board with CONFIG_ENV_REDUNDANT) and the
// fw_env.config that points libubootenv at it. The file is all zeros: no valid
// copy yet, as on a board that never ran saveenv.
func ubootEnvFixture(t *testing.T) (dir, envFile, config string) {
	t.Helper()
	dir = t.TempDir()
	envFile = filepath.Join(dir, "uboot.env")
	if err := os.WriteFile(envFile, make([]byte, 2*0x4000), 0o600); err != nil {
		t.Fatal(err)
	}
	config = filepath.Join(dir, "fw_env.config")
	cfg := "# device  offset  env size\n" + envFile + " 0x0000 0x4000\n" + envFile + " 0x4000 0x4000\n"
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, envFile, config
}

func TestUBootBootloader(t *testing.T) {
	bootTool(t, "fw_printenv", "libubootenv-tool")
	bootTool(t, "fw_setenv", "libubootenv-tool")
	ctx := context.Background()

	t.Run("blank env without default env is an error", func(t *testing.T) {
		_, _, config := ubootEnvFixture(t)
		b, _ := NewBootloader(BootloaderConfig{Kind: "uboot", FwEnvConfig: config, DefaultEnv: filepath.Join(t.TempDir(), "missing")})
		if env, err := b.Get(ctx); err == nil {
			t.Fatalf("Get on a blank env without a default env = %v, want an error", env)
		}
		if err := b.Set(ctx, TrialVars("b")); err == nil {
			t.Fatal("Set on a blank env without a default env succeeded")
		}
	})

	t.Run("blank env starts from the default env", func(t *testing.T) {
		dir, _, config := ubootEnvFixture(t)
		def := filepath.Join(dir, "u-boot-initial-env")
		os.WriteFile(def, []byte("bootcmd=run tern_boot\nbootdelay=2\n"), 0o644)
		b, err := NewBootloader(BootloaderConfig{Kind: "uboot", FwEnvConfig: config, DefaultEnv: def})
		if err != nil {
			t.Fatal(err)
		}
		checkBootBackend(t, b, map[string]string{"bootcmd": "run tern_boot", "bootdelay": "2"})
		// Once saved, the environment reads back without the default env.
		b2, _ := NewBootloader(BootloaderConfig{Kind: "uboot", FwEnvConfig: config})
		env, err := b2.Get(ctx)
		if err != nil || env["bootcmd"] != "run tern_boot" || env[VarSlot] == "" {
			t.Fatalf("Get without default env = %v, %v", env, err)
		}
	})

	t.Run("env made by mkenvimage", func(t *testing.T) {
		bootTool(t, "mkenvimage", "u-boot-tools")
		_, envFile, config := ubootEnvFixture(t)
		// mkenvimage -r makes one copy of a redundant environment; the second
		// copy stays blank, which libubootenv accepts.
		cmd := exec.Command("mkenvimage", "-r", "-s", "0x4000", "-o", envFile+".img", "-")
		cmd.Stdin = strings.NewReader("bootcmd=run tern_boot\ntern_slot=a\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mkenvimage: %v: %s", err, out)
		}
		img, _ := os.ReadFile(envFile + ".img")
		f, _ := os.OpenFile(envFile, os.O_WRONLY, 0)
		f.WriteAt(img, 0)
		f.Close()
		b, _ := NewBootloader(BootloaderConfig{Kind: "uboot", FwEnvConfig: config})
		checkBootBackend(t, b, map[string]string{"bootcmd": "run tern_boot", "tern_slot": "a"})
	})

	t.Run("a line too long for fw_setenv -s is refused, nothing written", func(t *testing.T) {
		dir, _, config := ubootEnvFixture(t)
		def := filepath.Join(dir, "def")
		os.WriteFile(def, nil, 0o644)
		b, _ := NewBootloader(BootloaderConfig{Kind: "uboot", FwEnvConfig: config, DefaultEnv: def})
		if err := b.Set(ctx, bootEnv("a", "0", "0", "1")); err != nil {
			t.Fatal(err)
		}
		long := strings.Repeat("x", 2000)
		if err := b.Set(ctx, map[string]string{VarSlot: "b", "long": long}); err == nil {
			t.Fatal("Set of a 2000-byte value succeeded")
		}
		if env, err := b.Get(ctx); err != nil || env[VarSlot] != "a" {
			t.Fatalf("after a refused Set: %v, %v", env, err)
		}
	})
}

func TestGRUBBootloader(t *testing.T) {
	bootTool(t, "grub-editenv", "grub-common")
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "grubenv")
	b, err := NewBootloader(BootloaderConfig{Kind: "grub", EnvFile: path})
	if err != nil {
		t.Fatal(err)
	}
	// Get on a missing grubenv is empty and does not create it.
	if env, err := b.Get(ctx); err != nil || len(env) != 0 {
		t.Fatalf("Get on a missing grubenv = %v, %v", env, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Get created the grubenv: %v", err)
	}
	checkBootBackend(t, b, map[string]string{})

	// Still a GRUB environment block (1024 bytes, GRUB's header), readable by
	// grub-editenv itself, and nothing else left in the directory.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 1024 || !strings.HasPrefix(string(data), "# GRUB Environment Block\n") {
		t.Fatalf("grubenv is not an environment block: %d bytes: %.40q", len(data), data)
	}
	out, err := exec.Command("grub-editenv", path, "list").Output()
	if err != nil || !strings.Contains(string(out), "tern_slot=a\n") {
		t.Fatalf("grub-editenv list: %v: %s", err, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want grubenv only", len(ents))
	}

	// A corrupt grubenv is an error for Get and Set, and Set leaves it alone.
	os.WriteFile(path, []byte("garbage\n"), 0o644)
	if _, err := b.Get(ctx); err == nil {
		t.Error("Get accepted a corrupt grubenv")
	}
	if err := b.Set(ctx, TrialVars("b")); err == nil {
		t.Error("Set over a corrupt grubenv succeeded")
	}
	if data, _ := os.ReadFile(path); string(data) != "garbage\n" {
		t.Errorf("failed Set changed the file: %q", data)
	}
}
