package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCampaignsDriveARealDevice: a real ternd (runc containers) enrolled with a
// token follows campaigns: a release is rolled out and runs; a broken release is
// rolled back by the device itself and its campaign pauses; the operator's
// rollback of the first campaign's successor returns the device to it.
func TestCampaignsDriveARealDevice(t *testing.T) {
	requireRunc(t)
	dir := t.TempDir()
	keyBase := filepath.Join(dir, "keys", "release")
	if out, err := tern("keys", "generate", "--out", keyBase); err != nil {
		t.Fatal(err, out)
	}
	hello, _ := os.ReadFile(filepath.Join(bin, "hello"))
	build := func(version, command string) string {
		rootfs := filepath.Join(dir, "rootfs-"+version)
		os.MkdirAll(rootfs, 0o755)
		os.WriteFile(filepath.Join(rootfs, "hello"), hello, 0o755)
		manifest := filepath.Join(dir, version+".yaml")
		os.WriteFile(manifest, []byte(fmt.Sprintf("name: hello\nversion: %s\ncommand: %s\nprobation: 1s\nstop_timeout: 2s\n"+
			"health: {http: {port: 8080, path: /healthz}, interval: 200ms, timeout: 200ms, retries: 2}\n", version, command)), 0o644)
		pkg := filepath.Join(dir, "hello-"+version+".tern")
		if out, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", manifest, "--key", keyBase+".key", "-o", pkg); err != nil {
			t.Fatal(err, out)
		}
		return pkg
	}
	v1 := build("1.0.0", `["/hello", "--listen", ":8080"]`)
	v2 := build("1.1.0", `["/hello", "--listen", ":8080"]`)
	v3 := build("1.2.0", `["/hello", "--listen", ":99999"]`) // cannot listen: fails probation

	srv := startFleetServer(t, filepath.Join(dir, "server"))
	srv.mustFleet("login", srv.url, "--key", srv.admin, "--ca-fingerprint", srv.fingerprint)
	srv.mustFleet("release-keys", "add", keyBase+".pub")
	token := strings.TrimSpace(srv.mustFleet("tokens", "create", "--label", "site=lab"))
	d := startDevice(t, dir, "--server", srv.url, "--enroll-token", token)
	t.Cleanup(func() {
		d.tern("device", "remove", "hello")
		d.kill()
	})
	waitFor(t, "the device online", func() bool { ds := srv.devices(); return len(ds) == 1 && ds[0].Online })

	rollout := func(name, release, pkg string) (int, string) {
		srv.mustFleet("release", "create", release, pkg)
		srv.mustFleet("campaign", "create", name, "--release", release, "--selector", "site=lab")
		return srv.watch(name)
	}
	if code, out := rollout("c1", "r1", v1); code != 0 {
		t.Fatalf("campaign c1 exited %d:\n%s", code, out)
	}
	if st := d.ps()["hello"]; st.Version != "1.0.0" || st.State != "running" {
		t.Fatalf("after c1: %+v", st)
	}
	if code, out := rollout("c2", "r2", v2); code != 0 {
		t.Fatalf("campaign c2 exited %d:\n%s", code, out)
	}
	if st := d.ps()["hello"]; st.Version != "1.1.0" || st.Previous != "1.0.0" {
		t.Fatalf("after c2: %+v", st)
	}

	// The operator rolls c2 back: the device returns to 1.0.0 (its N-1).
	srv.mustFleet("campaign", "rollback", "c2")
	waitFor(t, "hello back at 1.0.0", func() bool {
		st := d.ps()["hello"]
		return st.Version == "1.0.0" && st.Update == "" && st.State == "running"
	})

	// A broken release: the device rolls it back by itself; the campaign pauses.
	code, out := rollout("c3", "r3", v3)
	if code == 0 || !strings.Contains(out, "paused") {
		t.Fatalf("campaign c3 exited %d:\n%s", code, out)
	}
	if st := d.ps()["hello"]; st.Version != "1.0.0" || st.State != "running" {
		t.Fatalf("after the broken release: %+v", st)
	}
	c := srv.campaign("c3")
	if len(c.Devices) != 1 || c.Devices[0].State != "rolled_back" || !strings.Contains(c.Devices[0].Message, "1.2.0") {
		t.Fatalf("c3 device status: %+v", c.Devices)
	}
}
