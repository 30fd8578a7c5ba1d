package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/tern-iot/tern/internal/link"
)

// mqttConnect makes one MQTT 5 connection attempt with tlsCfg as clientID and
// returns the CONNACK's outcome.
func mqttConnect(t *testing.T, addr string, tlsCfg *tls.Config, clientID string) (*paho.Client, error) {
	t.Helper()
	d := tls.Dialer{Config: tlsCfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: clientID, Conn: conn})
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, err
	}
	if ack.ReasonCode != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNACK reason 0x%02x", ack.ReasonCode)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, nil
}

func TestDecommissionDisconnectsAndRefusesReconnect(t *testing.T) {
	e := start(t)
	id := e.enroll(e.token(e.admin, nil))
	e.connect(id, reportApps(`[]`))
	waitFor(t, "online", func() bool { return e.device(e.admin, id.DeviceID)["online"] == true })
	e.must(e.admin, "POST", "/api/v1/devices/"+id.DeviceID+"/decommission", nil, nil)
	waitFor(t, "offline", func() bool { return e.device(e.admin, id.DeviceID)["online"] == false })
	cfg, err := id.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mqttConnect(t, e.srv.MQTTAddr(), cfg, id.DeviceID); err == nil {
		t.Fatal("decommissioned device connected")
	}
	// The link keeps retrying in the background: it must never come back online.
	var evs []map[string]any
	e.must(e.admin, "GET", "/api/v1/events", nil, &evs)
	last := evs[len(evs)-1]["type"]
	if last != "decommissioned" && last != "offline" {
		t.Fatalf("events after decommission: %v", evs)
	}
	if e.device(e.admin, id.DeviceID)["online"] != false {
		t.Fatal("decommissioned device online")
	}
}

func TestBrokerRefusesCertificateFromAnotherCA(t *testing.T) {
	e := start(t)
	id := e.enroll(e.token(e.admin, nil))
	good, _ := id.TLSConfig()

	// A CA of our own, issuing a certificate with the real device's id as CN.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "evil"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	devTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: id.DeviceID}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	devDER, _ := x509.CreateCertificate(rand.Reader, devTmpl, ca, &devKey.PublicKey, caKey)
	evil := good.Clone()
	evil.Certificates = []tls.Certificate{{Certificate: [][]byte{devDER}, PrivateKey: devKey}}
	if _, err := mqttConnect(t, e.srv.MQTTAddr(), evil, id.DeviceID); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	noCert := good.Clone()
	noCert.Certificates = nil
	if _, err := mqttConnect(t, e.srv.MQTTAddr(), noCert, id.DeviceID); err == nil {
		t.Fatal("a client without certificate was accepted")
	}
	// The real certificate, but posing as another client id.
	if _, err := mqttConnect(t, e.srv.MQTTAddr(), good, "d-someone-else"); err == nil {
		t.Fatal("a device connected under another id")
	}
	if _, err := mqttConnect(t, e.srv.MQTTAddr(), good, id.DeviceID); err != nil {
		t.Fatalf("the real device: %v", err)
	}
}

func TestBrokerDropsStalledHandshake(t *testing.T) {
	e := start(t) // HandshakeTimeout: 2s
	conn, err := net.Dial("tcp", e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	startAt := time.Now()
	_, err = conn.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept a silent connection open past its handshake deadline")
	}
	if time.Since(startAt) > 10*time.Second {
		t.Fatalf("closed after %v", time.Since(startAt))
	}
}

func TestManualApprovalWaitsForOperator(t *testing.T) {
	e := start(t)
	tok := e.token(e.admin, map[string]any{"approval": "manual"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan *link.Identity, 1)
	go func() {
		id, err := link.Enroll(ctx, e.url, tok, t.TempDir(), testLogger(t))
		if err != nil {
			t.Error(err)
		}
		got <- id
	}()
	var pending []map[string]any
	waitFor(t, "a pending device", func() bool {
		e.must(e.admin, "GET", "/api/v1/devices?status=pending", nil, &pending)
		return len(pending) == 1
	})
	e.must(e.admin, "POST", "/api/v1/devices/"+pending[0]["id"].(string)+"/accept", nil, nil)
	id := <-got
	if id == nil || id.DeviceID != pending[0]["id"] {
		t.Fatalf("identity %v", id)
	}
	if e.device(e.admin, id.DeviceID)["status"] != "active" {
		t.Fatal("not active")
	}
}

// TestDeviceConfinedToOwnTopicsWithMosquittoClients uses Debian's mosquitto_pub and
// mosquitto_sub (MQTT 5) holding a real device certificate.
func TestDeviceConfinedToOwnTopicsWithMosquittoClients(t *testing.T) {
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto-clients is required under CI")
		}
		t.Skip("mosquitto-clients not installed")
	}
	e := start(t)
	tok := e.token(e.admin, map[string]any{"max_uses": 2})
	me, victim := e.enroll(tok), e.enroll(tok)
	e.connect(victim, reportApps(`[{"name":"victim"}]`))
	waitFor(t, "victim reported", func() bool { return e.device(e.admin, victim.DeviceID)["reported"] != nil })

	host, port, _ := net.SplitHostPort(e.srv.MQTTAddr())
	args := func(extra ...string) []string {
		return append([]string{"-h", host, "-p", port, "-V", "mqttv5", "-i", me.DeviceID,
			"--cafile", filepath.Join(me.Dir, "server-ca.crt"), "--cert", filepath.Join(me.Dir, "device.crt"),
			"--key", filepath.Join(me.Dir, "device.key")}, extra...)
	}
	run := func(name string, a ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, name, a...).CombinedOutput()
		return string(out), err
	}
	// Its own topic: allowed and recorded.
	if out, err := run("mosquitto_pub", args("-q", "1", "-r", "-t", link.Topic(me.DeviceID, "reported"), "-m", `{"apps":[{"name":"mine"}]}`)...); err != nil {
		t.Fatalf("own topic: %v\n%s", err, out)
	}
	waitFor(t, "own report stored", func() bool { return e.device(e.admin, me.DeviceID)["reported"] != nil })

	for _, topic := range []string{link.Topic(victim.DeviceID, "reported"), link.Topic(victim.DeviceID, "status"), "tern/v1/other"} {
		out, _ := run("mosquitto_pub", args("-q", "1", "-t", topic, "-m", `{"apps":"forged","state":"offline","session":""}`)...)
		if !strings.Contains(strings.ToLower(out), "not authorized") {
			t.Errorf("publish to %s accepted: %s", topic, out)
		}
	}
	for _, filter := range []string{link.Topic(victim.DeviceID, "#"), "tern/v1/d/+/reported", "#", "$share/g/" + link.Topic(victim.DeviceID, "#")} {
		out, _ := run("mosquitto_sub", args("-t", filter, "-C", "1", "-W", "2")...)
		if strings.Contains(out, "victim") {
			t.Errorf("subscription %s received another device's messages: %s", filter, out)
		}
		if !strings.Contains(out, "denied") {
			t.Errorf("subscription %s not denied: %s", filter, out)
		}
	}
	// Its own subscription works: it reads back its own retained report.
	out, err := run("mosquitto_sub", args("-t", link.Topic(me.DeviceID, "reported"), "-C", "1", "-W", "5")...)
	if err != nil || !strings.Contains(out, "mine") {
		t.Fatalf("own subscription: %v %s", err, out)
	}
	dev := e.device(e.admin, victim.DeviceID)
	if !strings.Contains(toJSON(dev["reported"]), "victim") || dev["online"] != true {
		t.Fatalf("victim's state changed: %v", dev)
	}
}

func toJSON(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}
