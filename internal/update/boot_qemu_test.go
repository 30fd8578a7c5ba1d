package update

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestUBootScriptUnderQEMU runs docs/boot/boot.cmd in real U-Boot (Debian's
// u-boot-qemu build for qemu_arm64, under qemu-system-aarch64) against the same
// table as SimulateBoot and the sh shims: it proves that U-Boot's own hush parses
// and runs the script as sh does. It is optional (skipped without the packages, also
// under CI): the sh run in boot_script_test.go is the required check.
//
// U-Boot cannot write its environment in Debian 12's QEMU (its emulated flash
// fails buffered writes: "Flash buffer write timeout"), and the script ends in
// reset when no kernel loads. So the script is run in its two parts, split at its
// structural comments: the trial logic, which ends with saveenv (whose calls are
// counted from U-Boot's "Saving Environment" message; the environment in memory
// at that point is what saveenv stores), then the preparation of the boot up to the
// reset, after which bootargs holds the kernel command line.
func TestUBootScriptUnderQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: boots U-Boot in QEMU")
	}
	qemu, err := exec.LookPath("qemu-system-aarch64")
	if err != nil {
		t.Skip("qemu-system-aarch64 not installed (Debian package qemu-system-arm)")
	}
	const uboot = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"
	if _, err := os.Stat(uboot); err != nil {
		t.Skip("U-Boot for QEMU not installed (Debian package u-boot-qemu)")
	}
	mkimage, err := exec.LookPath("mkimage")
	if err != nil {
		t.Skip("mkimage not installed (Debian package u-boot-tools)")
	}

	script, err := os.ReadFile(ubootScript)
	if err != nil {
		t.Fatal(err)
	}
	logic, prepare, ok := splitBootScript(string(script))
	if !ok {
		t.Fatal("boot.cmd lacks its structural comments (# Nothing below is saved, # Reached only when)")
	}
	dir := t.TempDir()
	var loaders []string
	for i, part := range []string{logic, prepare} {
		src := filepath.Join(dir, fmt.Sprintf("part%d.cmd", i))
		scr := filepath.Join(dir, fmt.Sprintf("part%d.scr", i))
		os.WriteFile(src, []byte(part), 0o644)
		if out, err := exec.Command(mkimage, "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
			"-d", src, scr).CombinedOutput(); err != nil {
			t.Fatalf("mkimage: %v\n%s", err, out)
		}
		loaders = append(loaders, "-device", fmt.Sprintf("loader,file=%s,addr=%#x,force-raw=on", scr, ubootPartAddr[i]))
	}

	cmd := exec.Command(qemu, append([]string{"-M", "virt", "-cpu", "cortex-a57", "-m", "512",
		"-nographic", "-no-reboot", "-nic", "none", "-bios", uboot}, loaders...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	con := &ubootConsole{t: t, in: stdin}
	cmd.Stdout, cmd.Stderr = con, con
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	con.expect("Hit any key to stop autoboot", 60*time.Second)
	con.send(" ")
	con.expect("=> ", 30*time.Second)

	sim := func(t *testing.T, before map[string]string) (string, map[string]string) {
		t.Helper()
		con.t = t
		line := "env default -a"
		for k, v := range before {
			if strings.ContainsAny(v, "\"$\\") {
				t.Fatalf("value %q cannot be typed at the U-Boot prompt", v)
			}
			line += fmt.Sprintf("; setenv %s \"%s\"", k, v)
		}
		con.send(line + fmt.Sprintf("; source %#x; echo @@\"lo\"gic@@; printenv; echo @@\"en\"v@@; source %#x; printenv bootargs; echo @@\"do\"ne@@\n",
			ubootPartAddr[0], ubootPartAddr[1]))
		out := con.expect("@@logic@@", 30*time.Second)
		saves := strings.Count(out, "Saving Environment")
		env := parseEnvList(strings.ReplaceAll(strings.TrimSpace(con.expect("@@env@@", 30*time.Second)), "\r", ""))
		out = con.expect("@@done@@", 30*time.Second)
		cmdline, _ := strings.CutPrefix(strings.TrimSpace(out[strings.LastIndex(out, "bootargs="):]), "bootargs=")
		slot, err := BootedSlot(strings.ReplaceAll(cmdline, "\r", ""))
		if err != nil {
			t.Fatalf("bootargs: %v\n%s", err, out)
		}
		// The stored environment: what saveenv stored, else the one before.
		keys := map[string]bool{VarSlot: true, VarUpgrade: true, VarBootCount: true, VarBootLimit: true}
		for k := range before {
			keys[k] = true
		}
		mem := map[string]string{}
		for k := range keys {
			if v, ok := env[k]; ok {
				mem[k] = v
			}
		}
		switch saves {
		case 0:
			if !maps.Equal(mem, before) {
				t.Fatalf("environment changed in memory without saveenv: %v", mem)
			}
			return slot, maps.Clone(before)
		case 1:
			return slot, mem
		}
		t.Fatalf("%d saveenv calls in one boot", saves)
		return "", nil
	}
	checkBootCases(t, sim)
	checkBootSequences(t, sim)
	con.t = t
	con.send("poweroff\n")
}

// Where QEMU loads the two parts of the script (RAM on qemu virt starts at
// 0x40000000; U-Boot relocates itself to the top of it).
var ubootPartAddr = [2]int{0x50000000, 0x50100000}

// splitBootScript splits boot.cmd into the trial logic (up to "# Nothing below is
// saved") and the preparation of the boot (up to "# Reached only when", the reset).
func splitBootScript(s string) (logic, prepare string, ok bool) {
	i := strings.Index(s, "\n# Nothing below is saved")
	j := strings.Index(s, "\n# Reached only when")
	if i < 0 || j < i {
		return "", "", false
	}
	return s[:i+1], s[i+1 : j+1], true
}

// ubootConsole is the serial console of U-Boot in QEMU: what it printed, read by
// expect from where the last expect stopped.
type ubootConsole struct {
	t   *testing.T
	in  io.Writer
	mu  sync.Mutex
	buf bytes.Buffer
	pos int
}

func (c *ubootConsole) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *ubootConsole) send(s string) {
	if _, err := io.WriteString(c.in, s); err != nil {
		c.t.Fatalf("console: %v", err)
	}
}

// expect waits for marker and returns what was printed before it.
func (c *ubootConsole) expect(marker string, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		rest := c.buf.String()[c.pos:]
		if i := strings.Index(rest, marker); i >= 0 {
			c.pos += i + len(marker)
			c.mu.Unlock()
			return rest[:i]
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			c.t.Fatalf("console: no %q within %v; printed:\n%s", marker, timeout, rest)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
