package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAccountPolicyRefusesDeveloperMode: a device in developer mode shows it in
// the directory; `tern fleet policy devmode deny` turns it off on the device
// (its LAN API closes) and `tern device dev enable` is refused there, also for a
// device enrolled after the change; `allow` lifts the refusal.
func TestAccountPolicyRefusesDeveloperMode(t *testing.T) {
	requireRunc(t)
	dir := t.TempDir()
	writeReleaseTrust(t, dir)
	srv := startFleetServer(t, filepath.Join(dir, "server"))
	srv.mustFleet("login", srv.url, "--key", srv.admin, "--ca-fingerprint", srv.fingerprint)
	token := strings.TrimSpace(srv.mustFleet("tokens", "create", "--max-uses", "2"))
	d := startDevice(t, dir, "--server", srv.url, "--enroll-token", token, "--lan", loopbackAddr(t))
	t.Cleanup(d.kill)
	waitFor(t, "the device online", func() bool { ds := srv.devices(); return len(ds) == 1 && ds[0].Online })
	id := srv.devices()[0].ID

	devmode := func(id string) (enabled, denied bool, ok bool) {
		var v struct {
			Reported *struct {
				Update struct {
					DevMode *struct{ Enabled, Denied bool } `json:"devmode"`
				} `json:"update"`
			} `json:"reported"`
		}
		out, _, err := srv.fleet("devices", "show", id, "--json")
		if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Reported == nil || v.Reported.Update.DevMode == nil {
			return false, false, false
		}
		return v.Reported.Update.DevMode.Enabled, v.Reported.Update.DevMode.Denied, true
	}
	if out := d.mustTern("device", "dev", "enable"); !strings.Contains(out, "developer mode: on") {
		t.Fatalf("dev enable:\n%s", out)
	}
	waitFor(t, "the directory to show developer mode on", func() bool { on, _, ok := devmode(id); return ok && on })
	if out := srv.mustFleet("devices", "show", id); !strings.Contains(out, "Developer mode:") || !strings.Contains(out, "ON") {
		t.Fatalf("devices show:\n%s", out)
	}

	denied := time.Now()
	if out := srv.mustFleet("policy", "devmode", "deny"); !strings.Contains(out, "deny") {
		t.Fatalf("policy devmode deny:\n%s", out)
	}
	if out := srv.mustFleet("policy"); !strings.Contains(out, "devmode") || !strings.Contains(out, "deny") {
		t.Fatalf("policy:\n%s", out)
	}
	waitFor(t, "the device to turn developer mode off", func() bool {
		out, err := d.tern("device", "dev", "status")
		return err == nil && strings.Contains(out, "developer mode: off") && strings.Contains(out, "LAN API: closed") &&
			strings.Contains(out, "refused by the account")
	})
	t.Logf("policy deny to developer mode off on the device: %s", time.Since(denied).Round(time.Millisecond))
	out, err := d.tern("device", "dev", "enable")
	if err == nil || !strings.Contains(out, "refused by the account's policy") {
		t.Fatalf("dev enable under deny: %v\n%s", err, out)
	}
	waitFor(t, "the directory to show developer mode refused", func() bool { on, denied, ok := devmode(id); return ok && !on && denied })
	if out := srv.mustFleet("devices", "show", id); !strings.Contains(out, "refused by the account's policy") {
		t.Fatalf("devices show:\n%s", out)
	}
	events, _ := d.tern("device", "events")
	if !strings.Contains(events, "developer mode disabled: refused by the account's policy") {
		t.Fatalf("device events:\n%s", events)
	}

	// A device enrolled while the policy stands is told at once.
	dir2 := t.TempDir()
	writeReleaseTrust(t, dir2)
	d2 := startDevice(t, dir2, "--server", srv.url, "--enroll-token", token, "--lan", loopbackAddr(t))
	t.Cleanup(d2.kill)
	waitFor(t, "the second device to hear the policy", func() bool {
		out, err := d2.tern("device", "dev", "enable")
		return err != nil && strings.Contains(out, "refused by the account's policy")
	})

	srv.mustFleet("policy", "devmode", "allow")
	waitFor(t, "developer mode to be allowed again", func() bool {
		out, err := d.tern("device", "dev", "enable")
		return err == nil && strings.Contains(out, "developer mode: on")
	})
	waitFor(t, "the second device to hear the policy lifted, developer mode still off", func() bool {
		out, err := d2.tern("device", "dev", "status")
		return err == nil && !strings.Contains(out, "refused") && strings.Contains(out, "developer mode: off")
	})
}
