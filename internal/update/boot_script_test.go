package update

import (
	"bufio"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The shipped boot scripts, run for real: docs/boot/boot.cmd under POSIX sh and
// docs/boot/grub.cfg under bash, each with the bootloader's commands stubbed by a
// shim (testdata/boot) over a plain environment file, against the same table as
// SimulateBoot (bootCases, bootSequences in bootloader_test.go).

var (
	ubootScript = filepath.Join("..", "..", "docs", "boot", "boot.cmd")
	grubConfig  = filepath.Join("..", "..", "docs", "boot", "grub.cfg")
	ubootShim   = filepath.Join("testdata", "boot", "uboot-shim.sh")
	grubShim    = filepath.Join("testdata", "boot", "grub-shim.bash")
)

// bootRun is one run of a boot script under a shim.
type bootRun struct {
	events []string          // the shim's events: saveenv, load ..., boot ..., reset
	slot   string            // slot on the booted kernel's command line ("" if none booted)
	env    map[string]string // the stored environment after the run
}

func (r bootRun) has(prefix string) bool {
	return slices.ContainsFunc(r.events, func(e string) bool { return strings.HasPrefix(e, prefix) })
}

// runBootScript runs script under shell+shim from the stored environment before.
// failSlot makes loading the kernel of that slot fail.
func runBootScript(t *testing.T, shell []string, shim, script string, before map[string]string, failSlot string) bootRun {
	t.Helper()
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	if err := writeEnvFile(envFile, before); err != nil {
		t.Fatal(err)
	}
	outFile := filepath.Join(dir, "out")
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	args := append(slices.Clone(shell[1:]), abs(shim), abs(script), envFile, outFile)
	cmd := exec.Command(shell[0], args...)
	// A clean environment: no variable of the test's may pass for a boot variable.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if failSlot != "" {
		cmd.Env = append(cmd.Env, "TERN_SHIM_FAIL_SLOT="+failSlot)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", shell[0], filepath.Base(script), err, out)
	}
	var r bootRun
	f, err := os.Open(outFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if cmdline, ok := strings.CutPrefix(line, "bootargs="); ok {
			slot, err := BootedSlot(cmdline)
			if err != nil {
				t.Fatalf("booted kernel command line %q: %v", cmdline, err)
			}
			r.slot = slot
			continue
		}
		r.events = append(r.events, line)
	}
	if r.env, err = readEnvFile(envFile); err != nil {
		t.Fatal(err)
	}
	return r
}

// bootScriptSim turns a boot script run into a bootSim: the run must boot a kernel.
func bootScriptSim(shell []string, shim, script string) bootSim {
	return func(t *testing.T, before map[string]string) (string, map[string]string) {
		t.Helper()
		r := runBootScript(t, shell, shim, script, before, "")
		if r.slot == "" {
			t.Fatalf("no kernel booted; events %q", r.events)
		}
		return r.slot, r.env
	}
}

// bootShells are the POSIX shells boot.cmd is run under: /bin/sh (dash on Debian),
// and busybox's ash when busybox is installed.
func bootShells(t *testing.T) map[string][]string {
	shells := map[string][]string{"sh": {"/bin/sh"}}
	if bb, err := exec.LookPath("busybox"); err == nil {
		shells["busybox-ash"] = []string{bb, "sh"}
	}
	return shells
}

func TestUBootScriptTable(t *testing.T) {
	for name, shell := range bootShells(t) {
		t.Run(name, func(t *testing.T) {
			sim := bootScriptSim(shell, ubootShim, ubootScript)
			checkBootCases(t, sim)
			checkBootSequences(t, sim)
		})
	}
}

func TestGRUBConfigTable(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	sim := bootScriptSim([]string{bash}, grubShim, grubConfig)
	checkBootCases(t, sim)
	checkBootSequences(t, sim)
}

// TestBootScriptsSaveOnlyDuringTrial: the scripts write the environment exactly
// once during a trial (before the kernel is loaded) and never outside one, so a
// normal boot does not wear the flash.
func TestBootScriptsSaveOnlyDuringTrial(t *testing.T) {
	for name, run := range bootScriptRunners(t) {
		t.Run(name, func(t *testing.T) {
			for _, c := range bootCases {
				r := run(t, c.before, "")
				saves := 0
				for i, e := range r.events {
					if strings.HasPrefix(e, "save") {
						saves++
						if slices.ContainsFunc(r.events[:i], func(e string) bool {
							return strings.HasPrefix(e, "load") || strings.HasPrefix(e, "linux")
						}) {
							t.Errorf("%s: environment saved after the kernel was loaded: %q", c.name, r.events)
						}
					}
				}
				want := 0
				if c.before[VarUpgrade] == "1" {
					want = 1
				}
				if saves != want {
					t.Errorf("%s: %d saves, want %d: %q", c.name, saves, want, r.events)
				}
			}
		})
	}
}

// TestBootScriptsMissingKernel: a trial slot whose kernel cannot be loaded resets
// the board after the count was saved, and the next boot falls back.
func TestBootScriptsMissingKernel(t *testing.T) {
	for name, run := range bootScriptRunners(t) {
		t.Run(name, func(t *testing.T) {
			env := TrialVars("b")
			env[VarSlot] = "b"
			r := run(t, env, "b")
			if r.slot != "" || !r.has("reset") {
				t.Fatalf("kernel of b missing: booted %q, events %q", r.slot, r.events)
			}
			if want := bootEnv("b", "1", "1", "1"); !maps.Equal(r.env, want) {
				t.Fatalf("env after the failed boot %v, want %v", r.env, want)
			}
			r = run(t, r.env, "b")
			if r.slot != "a" || !maps.Equal(r.env, bootEnv("a", "0", "0", "1")) {
				t.Fatalf("boot after the failed one: slot %q, env %v", r.slot, r.env)
			}
		})
	}
}

type bootScriptRunner func(t *testing.T, before map[string]string, failSlot string) bootRun

func bootScriptRunners(t *testing.T) map[string]bootScriptRunner {
	runners := map[string]bootScriptRunner{
		"uboot": func(t *testing.T, before map[string]string, failSlot string) bootRun {
			return runBootScript(t, []string{"/bin/sh"}, ubootShim, ubootScript, before, failSlot)
		},
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		runners["grub"] = func(t *testing.T, before map[string]string, failSlot string) bootRun {
			return runBootScript(t, []string{bash}, grubShim, grubConfig, before, failSlot)
		}
	}
	return runners
}

// TestBootScriptSyntax checks the shipped files with the bootloaders' own tools
// where Debian has them: grub-script-check (grub-common) parses grub.cfg as GRUB
// does, and mkimage (u-boot-tools) packs boot.cmd as a U-Boot script image. Both
// files are also parsed by the shells that run them above.
func TestBootScriptSyntax(t *testing.T) {
	t.Run("grub-script-check", func(t *testing.T) {
		check := bootTool(t, "grub-script-check", "grub-common")
		if out, err := exec.Command(check, grubConfig).CombinedOutput(); err != nil {
			t.Fatalf("grub-script-check %s: %v\n%s", grubConfig, err, out)
		}
		// The check does reject broken GRUB script.
		bad := filepath.Join(t.TempDir(), "bad.cfg")
		os.WriteFile(bad, []byte("if [ x = x ]; then\n  set a=1\n"), 0o644)
		if err := exec.Command(check, bad).Run(); err == nil {
			t.Fatal("grub-script-check accepted an unterminated if")
		}
	})
	t.Run("mkimage", func(t *testing.T) {
		mkimage := bootTool(t, "mkimage", "u-boot-tools")
		scr := filepath.Join(t.TempDir(), "boot.scr")
		out, err := exec.Command(mkimage, "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
			"-n", "Tern boot", "-d", ubootScript, scr).CombinedOutput()
		if err != nil {
			t.Fatalf("mkimage: %v\n%s", err, out)
		}
		if out, err := exec.Command(mkimage, "-l", scr).CombinedOutput(); err != nil || !strings.Contains(string(out), "Script") {
			t.Fatalf("mkimage -l: %v\n%s", err, out)
		}
	})
	t.Run("sh -n", func(t *testing.T) {
		if out, err := exec.Command("/bin/sh", "-n", ubootScript).CombinedOutput(); err != nil {
			t.Fatalf("sh -n: %v\n%s", err, out)
		}
	})
	// The scripts use only the bootloaders' variables and commands: no shell
	// syntax one of them lacks.
	for _, f := range []string{ubootScript, grubConfig} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			code, _, _ := strings.Cut(line, "#")
			for _, bad := range []string{"$(", "`", "&&", "||", "case ", "while ", "for ", "function ", "$((", "<<"} {
				if strings.Contains(code, bad) {
					t.Errorf("%s:%d uses %q, not portable to the bootloader: %s", f, i+1, bad, line)
				}
			}
		}
	}
}
