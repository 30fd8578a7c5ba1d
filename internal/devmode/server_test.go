package devmode

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeDevice stands for the agent: developer mode, one code, pairings.
type fakeDevice struct {
	id *Identity

	mu        sync.Mutex
	enabled   bool
	code      string
	paired    map[string]bool
	listening string
}

func (f *fakeDevice) DevEnabled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.enabled
}

func (f *fakeDevice) DevPaired(fp string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paired[fp]
}

func (f *fakeDevice) DevListening(addr string) {
	f.mu.Lock()
	f.listening = addr
	f.mu.Unlock()
}

func (f *fakeDevice) DevInfo() DeviceInfo {
	return DeviceInfo{ID: ShortID(f.id.Fingerprint), Name: "gw", Fingerprint: f.id.Fingerprint}
}

func (f *fakeDevice) DevPair(_ context.Context, req PairRequest, fp, _ string) (PairResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.enabled {
		return PairResponse{}, ErrDisabled
	}
	if f.code == "" {
		return PairResponse{}, ErrNoCode
	}
	k, err := DeriveKey(f.code, f.id.Fingerprint, fp)
	if err != nil {
		return PairResponse{}, err
	}
	f.code = "" // single use, right or wrong: enough for these tests
	if err := k.VerifyRequest(&req); err != nil {
		return PairResponse{}, err
	}
	f.paired[fp] = true
	resp := PairResponse{Device: DeviceInfo{ID: ShortID(f.id.Fingerprint), Name: "gw"}, Fingerprint: f.id.Fingerprint}
	return resp, k.SealResponse(&req, &resp)
}

func (f *fakeDevice) set(fn func(f *fakeDevice)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *fakeDevice) lan() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listening
}

// startLAN runs a Server on a free loopback port; the API answers "apps".
func startLAN(t *testing.T) (*fakeDevice, string) {
	t.Helper()
	id, err := LoadOrCreateIdentity(t.TempDir(), "test device")
	if err != nil {
		t.Fatal(err)
	}
	dev := &fakeDevice{id: id, paired: map[string]bool{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "apps") })
	srv := &Server{Addr: addr, Handler: api, Device: dev, Identity: id, Log: slog.New(slog.DiscardHandler), Poll: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return dev, addr
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func get(ws *Workstation, pin, addr string) (string, error) {
	tr := &http.Transport{TLSClientConfig: ws.ClientTLS(pin)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/v1/apps")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), errors.New(resp.Status)
	}
	return string(b), nil
}

func TestLANAPIListensOnlyWhileDeveloperModeIsOn(t *testing.T) {
	dev, addr := startLAN(t)
	time.Sleep(100 * time.Millisecond) // several polls
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("the LAN port accepts connections with developer mode off")
	}
	dev.set(func(f *fakeDevice) { f.enabled = true })
	waitUntil(t, "LAN API open", func() bool { return dev.lan() != "" })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	dev.set(func(f *fakeDevice) { f.enabled = false })
	waitUntil(t, "LAN API closed", func() bool { return dev.lan() == "" })
	// The connection made while it was open is closed too.
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("open connection survived disable: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("the LAN port accepts connections after disable")
	}
}

func TestPairedWorkstationReachesAPIAndUnpairedIsRefusedAtHandshake(t *testing.T) {
	dev, addr := startLAN(t)
	dev.set(func(f *fakeDevice) { f.enabled = true; f.code = "ABCD-EFGH" })
	waitUntil(t, "LAN API open", func() bool { return dev.lan() != "" })
	ctx := context.Background()

	a, err := OpenWorkstation(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Pair(ctx, addr, "ABCD-EFGJ"); !errors.Is(err, ErrBadCode) {
		t.Fatalf("pair with a wrong code: %v, want ErrBadCode", err)
	}
	if _, err := a.Pair(ctx, addr, "ABCD-EFGH"); !errors.Is(err, ErrNoCode) {
		t.Fatalf("pair after the code was burned: %v, want ErrNoCode", err)
	}
	dev.set(func(f *fakeDevice) { f.code = "ABCD-EFGH" })
	kd, err := a.Pair(ctx, addr, "abcd efgh")
	if err != nil {
		t.Fatal(err)
	}
	if kd.Fingerprint != dev.id.Fingerprint || kd.Address != addr {
		t.Fatalf("known device %+v", kd)
	}
	if got, _ := a.Known(addr); got != kd {
		t.Fatalf("not remembered: %+v", got)
	}
	if body, err := get(a, kd.Fingerprint, addr); err != nil || body != "apps" {
		t.Fatalf("paired workstation: %q %v", body, err)
	}
	// Another workstation that knows the device's fingerprint but never paired.
	b, err := OpenWorkstation(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(b, kd.Fingerprint, addr); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("unpaired workstation: %v, want a TLS bad certificate alert", err)
	}
	// A pairing connection reaches nothing but pairing.
	conf := b.ClientTLS(kd.Fingerprint)
	conf.ServerName = PairServerName
	tr := &http.Transport{TLSClientConfig: conf}
	resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/v1/apps")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("pairing connection to the API: %s", resp.Status)
	}
	// A device presenting another certificate than the pinned one is refused.
	if _, err := get(a, strings.Repeat("0", 64), addr); !errors.Is(err, ErrPinMismatch) {
		t.Fatalf("wrong pin: %v, want ErrPinMismatch", err)
	}
	// Disabling developer mode ends trust even before the listener closes.
	dev.set(func(f *fakeDevice) { f.enabled = false })
	if _, err := get(a, kd.Fingerprint, addr); err == nil {
		t.Fatal("paired workstation admitted with developer mode off")
	}
}

func TestIdentityIsMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreateIdentity(dir, "x")
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateIdentity(dir, "x")
	if err != nil {
		t.Fatal(err)
	}
	if a.Fingerprint != b.Fingerprint || len(a.Fingerprint) != 64 {
		t.Fatalf("%s != %s", a.Fingerprint, b.Fingerprint)
	}
}
