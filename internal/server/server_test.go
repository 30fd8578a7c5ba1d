package server_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/tern-iot/tern/internal/link"
)

func TestFirstStartWritesAdminTokenOnce(t *testing.T) {
	e := start(t)
	fi, err := os.Stat(filepath.Join(e.dir, "admin.token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v %v", fi, err)
	}
	var acct struct{ Name string }
	e.must(e.admin, "GET", "/api/v1/account", nil, &acct)
	if acct.Name != "default" {
		t.Fatalf("account %q", acct.Name)
	}
	first := e.admin
	e.restart()
	if e.admin != first {
		t.Fatal("restart made a new admin key")
	}
	e.must(first, "GET", "/api/v1/account", nil, nil)
}

func reportApps(apps string) link.ReportFunc {
	return func(context.Context) (link.Reported, error) {
		return link.Reported{AgentVersion: "test", OS: "linux", Arch: "amd64", Apps: json.RawMessage(apps)}, nil
	}
}

func TestDeviceEnrollsConnectsReportsAndGoesOffline(t *testing.T) {
	e := start(t)
	tok := e.token(e.admin, map[string]any{"labels": map[string]string{"site": "lab"}})
	id := e.enroll(tok)
	d := e.connect(id, reportApps(`[{"name":"hello","state":"running"}]`))
	waitFor(t, "online with reported apps", func() bool {
		dev := e.device(e.admin, id.DeviceID)
		rep, _ := dev["reported"].(map[string]any)
		return dev["online"] == true && rep != nil && rep["apps"] != nil
	})
	dev := e.device(e.admin, id.DeviceID)
	if dev["labels"].(map[string]any)["site"] != "lab" {
		t.Fatalf("labels %v", dev["labels"])
	}
	d.stop()
	waitFor(t, "offline", func() bool { return e.device(e.admin, id.DeviceID)["online"] == false })
	conns := e.device(e.admin, id.DeviceID)["connections"].([]any)
	if len(conns) != 1 || conns[0].(map[string]any)["disconnected_at"] == nil {
		t.Fatalf("connections %v", conns)
	}
}
