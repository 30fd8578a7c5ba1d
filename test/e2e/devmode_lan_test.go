package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/devmode/netnstest"
)

// lanDevice is a ternd running in the device namespace of a LAN; its local
// socket is a file, so `tern device dev ...` reaches it from the test as root
// on the device would.
type lanDevice struct {
	*device
	lan *netnstest.LAN
}

func startLANDevice(t *testing.T, lan *netnstest.LAN, dir string) *lanDevice {
	t.Helper()
	d := &device{t: t, dir: dir, socket: filepath.Join(dir, "ternd.sock"), log: &bytes.Buffer{}}
	d.cmd = netnstest.Command(lan.Device, filepath.Join(bin, "ternd"), "--data", filepath.Join(dir, "data"), "--socket", d.socket,
		"--trust", filepath.Join(dir, "trust"), "--runtime-root", filepath.Join(dir, "runc"),
		"--cgroup-parent", "/tern-e2e-dev-"+filepath.Base(filepath.Dir(dir)))
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ld := &lanDevice{device: d, lan: lan}
	t.Cleanup(func() {
		d.tern("device", "remove", "hello")
		d.cmd.Process.Signal(syscall.SIGTERM)
		d.cmd.Wait()
	})
	waitFor(t, "ternd up", func() bool {
		_, err := d.tern("device", "ps")
		return err == nil
	})
	return ld
}

// workstation is a developer's machine in the workstation namespace, with its
// own home (so its own ~/.config/tern).
type workstation struct {
	t    *testing.T
	ns   string
	home string
}

func (w *workstation) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := netnstest.Command(w.ns, filepath.Join(bin, "tern"), args...)
	if ctx != nil {
		cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	}
	cmd.Env = append(os.Environ(), "HOME="+w.home, "XDG_CONFIG_HOME=", "TERN_DEVICE=")
	return cmd
}

func (w *workstation) tern(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := w.command(ctx, args...).CombinedOutput()
	return string(out), err
}

func (w *workstation) mustTern(args ...string) string {
	w.t.Helper()
	out, err := w.tern(args...)
	if err != nil {
		w.t.Fatalf("tern %s (workstation): %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// lanPort reports whether anything accepts TCP connections at addr, dialled
// from namespace ns.
func lanPort(t *testing.T, ns, addr string) bool {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	err := netnstest.Command(ns, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", host, port)).Run()
	return err == nil
}

var codeRE = regexp.MustCompile(`pairing code: ([0-9A-Z]{4}-[0-9A-Z]{4})`)

func TestDevModeLANWorkflowAcrossNamespaces(t *testing.T) {
	requireRunc(t)
	lan := netnstest.New(t)
	dir := t.TempDir()
	writeReleaseTrust(t, dir)
	d := startLANDevice(t, lan, dir)
	devAddr := lan.DeviceIP + ":7443"
	ws := &workstation{t: t, ns: lan.Workstation, home: filepath.Join(dir, "ws-a")}

	// Off: nothing on the LAN.
	if lanPort(t, lan.Workstation, devAddr) {
		t.Fatal("the LAN port answers with developer mode off")
	}
	if out := ws.mustTern("device", "discover", "--timeout", "1s", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("discover with developer mode off:\n%s", out)
	}

	out := d.mustTern("device", "dev", "enable")
	if !strings.Contains(out, "developer mode: on") || !strings.Contains(out, "LAN API: [::]:7443") {
		t.Fatalf("dev enable:\n%s", out)
	}
	// Discovered from the other namespace, with its TXT record.
	var found []struct{ ID, Name, Address, Fingerprint, OS, Arch string }
	if err := json.Unmarshal([]byte(ws.mustTern("device", "discover", "--timeout", "2s", "--json")), &found); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Address != devAddr || len(found[0].Fingerprint) != 64 || found[0].Arch == "" {
		t.Fatalf("discover: %+v", found)
	}
	if table := ws.mustTern("device", "discover", "--timeout", "1s"); !strings.Contains(table, devAddr) || !strings.Contains(table, found[0].ID) {
		t.Fatalf("discover table:\n%s", table)
	}

	// Pairing: a wrong code is refused; the shown one pairs and pins.
	m := codeRE.FindStringSubmatch(d.mustTern("device", "dev", "pair"))
	if m == nil {
		t.Fatal("no pairing code shown")
	}
	if out, err := ws.tern("device", "pair", lan.DeviceIP, "--code", "ZZZZ-ZZZZ"); err == nil || !strings.Contains(out, "does not match") {
		t.Fatalf("pair with a wrong code: %v\n%s", err, out)
	}
	if out := ws.mustTern("device", "pair", lan.DeviceIP, "--code", m[1]); !strings.Contains(out, "pinned certificate "+found[0].Fingerprint[:12]) {
		t.Fatalf("pair:\n%s", out)
	}
	if out, err := ws.tern("device", "pair", lan.DeviceIP, "--code", m[1]); err == nil {
		t.Fatalf("a code paired twice:\n%s", out)
	}
	// Another workstation that learned the pin but never paired is refused
	// during the TLS handshake.
	other := &workstation{t: t, ns: lan.Workstation, home: filepath.Join(dir, "ws-b")}
	other.tern("device", "pair", lan.DeviceIP, "--code", "AAAA-AAAA") // makes its keys; refused
	pins, _ := os.ReadFile(filepath.Join(ws.home, ".config/tern/dev/devices.json"))
	os.WriteFile(filepath.Join(other.home, ".config/tern/dev/devices.json"), pins, 0o600)
	if out, err := other.tern("device", "--device", lan.DeviceIP, "ps"); err == nil || !strings.Contains(out, "bad certificate") {
		t.Fatalf("unpaired workstation: %v\n%s", err, out)
	}
	// Local-only verbs are refused over the LAN.
	if out, err := ws.tern("device", "--device", lan.DeviceIP, "dev", "disable"); err == nil || !strings.Contains(out, "local socket") {
		t.Fatalf("dev disable over the LAN: %v\n%s", err, out)
	}

	ws.mustTern("device", "select", lan.DeviceIP)
	devKey := filepath.Join(ws.home, ".config/tern/dev/developer.key")
	pkg := buildHelloWithBusybox(t, dir, devKey)

	// push, then the app answering, measured through exec (an HTTP GET inside
	// the container's network namespace).
	start := time.Now()
	if out := ws.mustTern("device", "push", "--wait=false", pkg); !strings.Contains(out, "installed hello 1.0.0") {
		t.Fatalf("push:\n%s", out)
	}
	pushed := time.Since(start)
	waitFor(t, "hello answering", func() bool {
		out, err := ws.tern("device", "exec", "hello", "--", "/bin/busybox", "wget", "-qO-", "http://127.0.0.1:8080/")
		return err == nil && strings.Contains(out, "hi from hello")
	})
	answered := time.Since(start)
	t.Logf("push to installed: %s; push to answering (HTTP GET via exec): %s", pushed.Round(time.Millisecond), answered.Round(time.Millisecond))

	// push --wait: push to healthy, after a remove over the LAN.
	ws.mustTern("device", "remove", "hello")
	out = ws.mustTern("device", "push", pkg)
	if !regexp.MustCompile(`hello 1\.0\.0 healthy [0-9.]+s after push`).MatchString(out) {
		t.Fatalf("push --wait:\n%s", out)
	}
	t.Logf("push --wait: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
	// The announcement follows the apps (refreshed every few seconds).
	waitFor(t, "discover to list hello", func() bool {
		out, _ := ws.tern("device", "discover", "--timeout", "1s", "--json")
		return strings.Contains(out, `"apps": "hello@1.0.0"`)
	})
	if out := ws.mustTern("device", "ps"); !strings.Contains(out, "hello") || !strings.Contains(out, "healthy") {
		t.Fatalf("ps over the LAN:\n%s", out)
	}

	// exec: output, stderr, exit code, stdin.
	cmd := ws.command(nil, "device", "exec", "hello", "--", "/bin/busybox", "sh", "-c", "cat; echo to-stderr >&2; exit 5")
	cmd.Stdin = strings.NewReader("from stdin\n")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 || stdout.String() != "from stdin\n" || !strings.HasPrefix(stderr.String(), "to-stderr\n") {
		t.Fatalf("exec: %v stdout %q stderr %q", err, stdout.String(), stderr.String())
	}
	if out := ws.mustTern("device", "exec", "--tty", "hello", "--", "/bin/busybox", "tty"); !strings.HasPrefix(out, "/dev/pts/") {
		t.Fatalf("exec --tty: %q", out)
	}

	// logs -f over the LAN sees lines written after it started.
	followLogs(t, ws, func() { ws.mustTern("device", "restart", "hello") })

	// Off again: the port closes, and the developer's signature is refused
	// even on the local socket.
	d.mustTern("device", "remove", "hello")
	d.mustTern("device", "dev", "disable")
	if lanPort(t, lan.Workstation, devAddr) {
		t.Fatal("the LAN port still answers after dev disable")
	}
	if out, err := ws.tern("device", "ps"); err == nil {
		t.Fatalf("ps over the LAN after disable:\n%s", out)
	}
	if out, err := d.tern("device", "install", pkg); err == nil || !strings.Contains(out, "trusted") {
		t.Fatalf("developer-signed install with developer mode off: %v\n%s", err, out)
	}
	if evs := d.mustTern("device", "events"); strings.Count(evs, "devmode") < 3 {
		t.Fatalf("devmode events:\n%s", evs)
	}
}

// followLogs runs `tern device logs -f hello` on the workstation, does
// something that logs, and waits for the new lines.
func followLogs(t *testing.T, ws *workstation, act func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := ws.command(ctx, "device", "logs", "-f", "hello")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		pw.Close()
		cmd.Wait()
	}()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	listening := 0
	timeout := time.After(30 * time.Second)
	acted := false
	for listening < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("logs -f ended")
			}
			if strings.Contains(l, "listening on :8080") {
				listening++
			}
			if listening == 1 && !acted {
				acted = true
				act()
			}
		case <-timeout:
			t.Fatalf("logs -f: saw %d start lines, want 2", listening)
		}
	}
}

func TestDeviceNotInDevModeAnswersNothingOnTheLAN(t *testing.T) {
	requireRunc(t)
	lan := netnstest.New(t)
	dir := t.TempDir()
	writeReleaseTrust(t, dir)
	d := startLANDevice(t, lan, dir)
	ws := &workstation{t: t, ns: lan.Workstation, home: filepath.Join(dir, "ws")}
	if out := d.mustTern("device", "dev", "status"); !strings.Contains(out, "developer mode: off") || !strings.Contains(out, "LAN API: closed") {
		t.Fatalf("status:\n%s", out)
	}
	if lanPort(t, lan.Workstation, lan.DeviceIP+":7443") {
		t.Fatal("the LAN port answers")
	}
	if out := ws.mustTern("device", "discover", "--timeout", "1s", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("discover:\n%s", out)
	}
	if out, err := ws.tern("device", "pair", lan.DeviceIP, "--code", "ABCD-EFGH"); err == nil || !strings.Contains(out, "refused") {
		t.Fatalf("pair: %v\n%s", err, out)
	}
	if out, err := d.tern("device", "dev", "pair"); err == nil || !strings.Contains(out, "developer mode is off") {
		t.Fatalf("dev pair with developer mode off: %v\n%s", err, out)
	}
}

// writeReleaseTrust gives the device a release key (ternd needs one); the tests
// sign with developer keys instead.
func writeReleaseTrust(t *testing.T, dir string) {
	t.Helper()
	if out, err := tern("keys", "generate", "--out", filepath.Join(dir, "keys", "release")); err != nil {
		t.Fatal(err, out)
	}
	os.MkdirAll(filepath.Join(dir, "trust"), 0o755)
	pub, _ := os.ReadFile(filepath.Join(dir, "keys", "release.pub"))
	os.WriteFile(filepath.Join(dir, "trust", "release.pub"), pub, 0o644)
}

// buildHelloWithBusybox packages the example app, with busybox beside it for
// exec, signed by key.
func buildHelloWithBusybox(t *testing.T, dir, key string) string {
	t.Helper()
	rootfs := filepath.Join(dir, "hello-rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	hello, _ := os.ReadFile(filepath.Join(bin, "hello"))
	os.WriteFile(filepath.Join(rootfs, "hello"), hello, 0o755)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static")
	}
	os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755)
	pkg := filepath.Join(dir, "hello-dev.tern")
	if out, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", "../../examples/hello/tern.yaml",
		"--key", key, "-o", pkg); err != nil {
		t.Fatal(err, out)
	}
	return pkg
}
