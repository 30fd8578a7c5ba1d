package server_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tern-iot/tern/internal/loopback"
	"github.com/tern-iot/tern/internal/server"
)

// startMosquitto runs Debian's mosquitto on a loopback port with the files the
// server wrote under dataDir/broker: client certificates required, the
// certificate's CN as username and client id, and the server's ACL.
func startMosquitto(t *testing.T, dataDir, addr string) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("mosquitto is required under CI")
			}
			t.Skip("mosquitto not installed")
		}
	}
	conf := server.MosquittoListener(dataDir, addr) + "persistence false\nuser root\nlog_dest stdout\n"
	path := filepath.Join(t.TempDir(), "mosquitto.conf")
	os.WriteFile(path, []byte(conf), 0o600)
	var log bytes.Buffer
	cmd := exec.Command(bin, "-c", path)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", log.String())
		}
	})
	waitFor(t, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func freeAddr(t *testing.T) string { return loopback.TestAddr(t) }

// TestExternalMosquittoBroker runs the server against Debian's Mosquitto instead of
// the embedded broker: a device enrolls, connects to Mosquitto, and the server
// sees it online, stores its report, and sees it go offline.
func TestExternalMosquittoBroker(t *testing.T) {
	if _, err := exec.LookPath("mosquitto"); err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("mosquitto is required under CI")
			}
			t.Skip("mosquitto not installed")
		}
	}
	dir := t.TempDir()
	brokerAddr := freeAddr(t)
	srv, err := server.Start(context.Background(), server.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0",
		Broker: "mqtts://" + brokerAddr, Out: io.Discard, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	startMosquitto(t, dir, brokerAddr)
	e := &env{t: t, dir: dir, srv: srv}
	key, _ := os.ReadFile(filepath.Join(dir, "admin.token"))
	e.admin = string(bytes.TrimSpace(key))
	e.url = "https://" + srv.HTTPAddr()
	e.http = newPinnedClient(srv.CAFingerprint())

	id := e.enroll(e.token(e.admin, nil))
	if id.MQTTURL != "mqtts://"+brokerAddr {
		t.Fatalf("device told broker %s", id.MQTTURL)
	}
	d := e.connect(id, reportApps(`[{"name":"hello","state":"running"}]`))
	waitFor(t, "online with report through mosquitto", func() bool {
		dev := e.device(e.admin, id.DeviceID)
		return dev["online"] == true && dev["reported"] != nil
	})
	d.stop()
	waitFor(t, "offline through mosquitto", func() bool { return e.device(e.admin, id.DeviceID)["online"] == false })
}

// TestCampaignThroughMosquitto runs a campaign with the external broker: desired
// state goes out through Mosquitto (retained), reports come back through it.
func TestCampaignThroughMosquitto(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
		if _, err := exec.LookPath("mosquitto"); err != nil {
			t.Skip("mosquitto not installed")
		}
	}
	dir := t.TempDir()
	brokerAddr := freeAddr(t)
	e := &env{t: t, dir: dir}
	e.bootWith(func(c *server.Config) { c.Broker = "mqtts://" + brokerAddr })
	t.Cleanup(func() { e.srv.Close() })
	startMosquitto(t, dir, brokerAddr)
	e.releases("v1")
	devs := e.fleet(2, "a")
	var c campaignOut
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "c", "release": "v1", "selector": "fleet=a", "phases": []string{"1", "100%"}}, &c)
	e.waitCampaign(c.ID, "completed through mosquitto", func(c campaignOut) bool { return c.State == "completed" })
	for _, d := range devs {
		if d.Running()["alpha"] != "1.0.0" {
			t.Fatalf("%s runs %v", d.ID(), d.Running())
		}
	}
}
