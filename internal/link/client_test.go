package link

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tern-iot/tern/internal/loopback"
)

// refuseFirstOnline is a broker hook that refuses (PUBACK 0x80) the first n
// online statuses it sees and records the ones it let through.
type refuseFirstOnline struct {
	mqtt.HookBase
	mu       sync.Mutex
	refuse   int
	refused  int
	accepted int
}

func (h *refuseFirstOnline) ID() string { return "refuse-first-online" }
func (h *refuseFirstOnline) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish}, []byte{b})
}
func (h *refuseFirstOnline) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *refuseFirstOnline) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
func (h *refuseFirstOnline) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	var st StatusMessage
	if pk.TopicName != Topic(cl.ID, TopicStatus) || json.Unmarshal(pk.Payload, &st) != nil || st.State != Online {
		return pk, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.refused < h.refuse {
		h.refused++
		return pk, packets.ErrUnspecifiedError
	}
	h.accepted++
	return pk, nil
}

func (h *refuseFirstOnline) counts() (refused, accepted int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.refused, h.accepted
}

// TestClientAnnouncesOnlineAgainAfterARefusal: a server that refuses the
// device's online status (as one under load may) hears it again at the next
// report tick, on the same connection, and the device then reports as usual.
func TestClientAnnouncesOnlineAgainAfterARefusal(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	serverCert, pool := writeTestIdentity(t, dir, Identity{DeviceID: "d-1", MQTTURL: "mqtts://" + addr})
	broker := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	hook := &refuseFirstOnline{refuse: 2}
	if err := broker.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "t", Address: addr, TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}})
	if err := broker.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := broker.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Close() })

	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	reports := make(chan struct{}, 100)
	c := NewClient(ClientConfig{Identity: id, ReportEvery: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Report: func(context.Context) (Reported, error) {
			select {
			case reports <- struct{}{}:
			default:
			}
			return Reported{AgentVersion: "test"}, nil
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	deadline := time.Now().Add(20 * time.Second)
	for {
		refused, accepted := hook.counts()
		if accepted == 1 {
			if refused != 2 {
				t.Fatalf("refused %d times before the status went through", refused)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the online status never went through: refused %d, accepted %d", refused, accepted)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-reports:
	case <-time.After(10 * time.Second):
		t.Fatal("no report after the online status went through")
	}
}

func freeAddr(t *testing.T) string { return loopback.TestAddr(t) }

// writeTestIdentity writes an enrolled identity into dir, issued by a fresh CA
// that also issues the returned server certificate.
func writeTestIdentity(t *testing.T, dir string, id Identity) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(cn string, usage x509.ExtKeyUsage, ip net.IP) (*ecdsa.PrivateKey, []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature}
		if ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return k, der
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	keyPEM := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pemOf("PRIVATE KEY", der)
	}
	devKey, devDER := issue(id.DeviceID, x509.ExtKeyUsageClientAuth, nil)
	srvKey, srvDER := issue("server", x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1"))
	files := map[string][]byte{keyFile: keyPEM(devKey), certFile: pemOf("CERTIFICATE", devDER), serverCAFile: pemOf("CERTIFICATE", caDER),
		deviceCAFile: pemOf("CERTIFICATE", caDER)}
	files[identityFile], _ = json.Marshal(id)
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srvCert, err := tls.X509KeyPair(pemOf("CERTIFICATE", srvDER), keyPEM(srvKey))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return srvCert, pool
}
