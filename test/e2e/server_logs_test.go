package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDeviceLogsReachTheServerAfterAnOutageInOrderWithTheDropCount: an app logs
// continuously; the server goes away; the device keeps the lines in its bounded
// buffer (small here, so it overflows); when the server returns they arrive in
// order, after a line saying how many were dropped.
func TestDeviceLogsReachTheServerAfterAnOutageInOrderWithTheDropCount(t *testing.T) {
	requireRunc(t)
	dir := t.TempDir()
	keyBase := filepath.Join(dir, "keys", "release")
	if out, err := tern("keys", "generate", "--out", keyBase); err != nil {
		t.Fatal(err, out)
	}
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("busybox-static is not installed")
		}
		t.Skip("needs /bin/busybox")
	}
	os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755)
	for _, a := range []string{"sh", "sleep", "echo"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	manifest := filepath.Join(dir, "ticker.yaml")
	os.WriteFile(manifest, []byte("name: ticker\nversion: 1.0.0\nstop_timeout: 1s\n"+
		`command: ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.01; done"]`+"\n"), 0o644)
	pkg := filepath.Join(dir, "ticker.tern")
	if out, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", manifest, "--key", keyBase+".key", "-o", pkg); err != nil {
		t.Fatal(err, out)
	}
	os.MkdirAll(filepath.Join(dir, "trust"), 0o755)
	pub, _ := os.ReadFile(keyBase + ".pub")
	os.WriteFile(filepath.Join(dir, "trust", "release.pub"), pub, 0o644)

	srv := startFleetServer(t, filepath.Join(dir, "server"))
	srv.mustFleet("login", srv.url, "--key", srv.admin, "--ca-fingerprint", srv.fingerprint)
	token := strings.TrimSpace(srv.mustFleet("tokens", "create"))
	d := startDevice(t, dir, "--server", srv.url, "--enroll-token", token, "--log-buffer", "32768")
	t.Cleanup(func() {
		d.tern("device", "remove", "ticker")
		d.kill()
	})
	d.mustTern("device", "install", pkg)
	waitFor(t, "the device online", func() bool { ds := srv.devices(); return len(ds) == 1 && ds[0].Online })
	id := srv.devices()[0].ID
	ticks := func() []int {
		out := srv.mustFleet("logs", id, "--app", "ticker", "--json")
		var n []int
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var l struct{ Line string }
			if json.Unmarshal([]byte(line), &l) != nil {
				continue
			}
			if v, err := strconv.Atoi(strings.TrimPrefix(l.Line, "tick ")); err == nil {
				n = append(n, v)
			}
		}
		return n
	}
	waitFor(t, "ticks at the server", func() bool { return len(ticks()) > 20 })

	// The server goes away while the app keeps logging: far more than the
	// device's 32 KiB buffer holds.
	srv.stop()
	lastOnDevice := func() int {
		out, _ := d.tern("device", "logs", "ticker", "--tail", "1")
		f := strings.Fields(out)
		if len(f) == 0 {
			return 0
		}
		v, _ := strconv.Atoi(f[len(f)-1])
		return v
	}
	before := lastOnDevice()
	waitFor(t, "the app to log 1,000 lines while the server is down", func() bool { return lastOnDevice() > before+1000 })
	srv.start()
	var got []int
	waitFor(t, "the lines logged during the outage", func() bool { got = ticks(); return len(got) > 0 && got[len(got)-1] > before+1000 })
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("ticks out of order at %d: %d after %d", i, got[i], got[i-1])
		}
	}
	if missing := got[len(got)-1] - len(got); missing <= 0 {
		t.Fatalf("no line was dropped: %d lines up to tick %d", len(got), got[len(got)-1])
	}
	agentLog := srv.mustFleet("logs", id, "--app", "ternd")
	if !strings.Contains(agentLog, "log lines were dropped on the device") {
		t.Fatalf("no drop count in the agent's log:\n%s", agentLog)
	}
	t.Logf("%d ticks arrived, up to tick %d; %s", len(got), got[len(got)-1], fmt.Sprint(dropLine(agentLog)))
}

func dropLine(log string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "dropped") {
			return l
		}
	}
	return ""
}
