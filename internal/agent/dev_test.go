package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/devmode"
	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/trust"
)

// pairDeveloper pairs a workstation (fingerprint wsFP) holding developer key dev
// the way the LAN pairing endpoint does.
func pairDeveloper(t *testing.T, a *Agent, wsFP string, dev trust.PrivateKey, code string) error {
	t.Helper()
	id, err := a.DevIdentity()
	if err != nil {
		t.Fatal(err)
	}
	k, err := devmode.DeriveKey(code, id.Fingerprint, wsFP)
	if err != nil {
		t.Fatal(err)
	}
	req := devmode.PairRequest{Name: "dev@laptop", DeveloperKey: string(trust.MarshalPublicKey(dev.Public()))}
	k.SealRequest(&req)
	resp, err := a.DevPair(context.Background(), req, wsFP, "10.0.0.2:50000")
	if err != nil {
		return err
	}
	if resp.Fingerprint != id.Fingerprint {
		t.Fatalf("pair answer names %s", resp.Fingerprint)
	}
	return k.VerifyResponse(&req, &resp)
}

func TestDeveloperSignedPackageIsAcceptedOnlyWhileDevModeIsOn(t *testing.T) {
	e := newEnv(t)
	a := e.agent
	dev, _ := trust.GenerateKey()
	devPkg := pkg(t, dev, helloRoot(t), helloYAML)

	if _, err := a.NewPairingCode(); !errors.Is(err, devmode.ErrDisabled) {
		t.Fatalf("pairing code with developer mode off: %v", err)
	}
	if _, err := a.EnableDev(e.ctx); err != nil {
		t.Fatal(err)
	}
	code, err := a.NewPairingCode()
	if err != nil {
		t.Fatal(err)
	}
	if err := pairDeveloper(t, a, strings.Repeat("a", 64), dev, code.Code); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DisableDev(e.ctx); err != nil {
		t.Fatal(err)
	}
	// Off: the paired developer's signature verifies nothing, even locally.
	_, err = a.Install(e.ctx, bytes.NewReader(devPkg))
	if !errors.Is(err, trust.ErrBadSignature) && !strings.Contains(err.Error(), "trusted") {
		t.Fatalf("developer-signed install with developer mode off: %v", err)
	}
	if statusOf(err) != http.StatusUnprocessableEntity {
		t.Fatalf("status %d for %v", statusOf(err), err)
	}
	if list, _ := a.List(e.ctx); len(list) != 0 {
		t.Fatalf("refused package left %v", list)
	}
	// On again: accepted.
	if _, err := a.EnableDev(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.install(devPkg)
	st, _ := a.DevStatus()
	if !st.Enabled || len(st.Pairings) != 1 || st.Pairings[0].KeyID != dev.ID {
		t.Fatalf("status %+v", st)
	}
	evs, _ := a.Events(0)
	var kinds []string
	for _, ev := range evs {
		if ev.Kind == "devmode" {
			kinds = append(kinds, ev.To+ev.Message)
		}
	}
	if len(kinds) < 4 {
		t.Fatalf("devmode events: %q", kinds)
	}
}

func TestPairingCodeIsSingleUseAndBurnsAfterWrongAttempts(t *testing.T) {
	e := newEnv(t)
	a := e.agent
	dev, _ := trust.GenerateKey()
	a.EnableDev(e.ctx)
	code, _ := a.NewPairingCode()
	if err := pairDeveloper(t, a, strings.Repeat("b", 64), dev, code.Code); err != nil {
		t.Fatal(err)
	}
	if err := pairDeveloper(t, a, strings.Repeat("c", 64), dev, code.Code); !errors.Is(err, devmode.ErrNoCode) {
		t.Fatalf("second use of a code: %v, want ErrNoCode", err)
	}
	code, _ = a.NewPairingCode()
	wrong := "0000-0000"
	if code.Code == wrong {
		wrong = "1111-1111"
	}
	for i := 0; i < devmode.MaxCodeAttempts; i++ {
		if err := pairDeveloper(t, a, strings.Repeat("d", 64), dev, wrong); !errors.Is(err, devmode.ErrBadCode) {
			t.Fatalf("wrong code, attempt %d: %v", i+1, err)
		}
	}
	if err := pairDeveloper(t, a, strings.Repeat("d", 64), dev, code.Code); !errors.Is(err, devmode.ErrNoCode) {
		t.Fatalf("right code after %d wrong ones: %v, want ErrNoCode (burned)", devmode.MaxCodeAttempts, err)
	}
	if a.DevPaired(strings.Repeat("d", 64)) || !a.DevPaired(strings.Repeat("b", 64)) {
		t.Fatal("pairings wrong")
	}
	if _, err := a.Unpair("bbbbbb"); err != nil {
		t.Fatal(err)
	}
	if a.DevPaired(strings.Repeat("b", 64)) {
		t.Fatal("unpaired workstation still paired")
	}
}

func TestDevModeSwitchesAreRefusedOffTheLocalSocket(t *testing.T) {
	e := newEnv(t)
	h := e.agent.Handler()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	unixL, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []net.Listener{tcp, unixL} {
		srv := &http.Server{Handler: h}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	remote := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{"/v1/dev/enable", "/v1/dev/disable", "/v1/dev/pair"} {
		resp, err := remote.Post("http://"+tcp.Addr().String()+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s over TCP: %s, want 403", path, resp.Status)
		}
	}
	if e.agent.DevEnabled() {
		t.Fatal("enabled over TCP")
	}
	c, err := NewClient("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.DevEnable(context.Background())
	if err != nil || !st.Enabled {
		t.Fatalf("enable over the socket: %+v %v", st, err)
	}
}

// TestAccountPolicyTurnsDevModeOffAndRefusesIt: a signed desired-state document
// that carries the account's deny policy turns developer mode off (the paired
// developer's packages are refused from then on) and makes `dev enable` fail
// with 403, across an agent restart; a later document without it lifts the
// refusal, and developer mode stays off until enabled again locally.
func TestAccountPolicyTurnsDevModeOffAndRefusesIt(t *testing.T) {
	r := newManagedRig(t)
	a := r.e.agent
	dev, _ := trust.GenerateKey()
	devPkg := pkg(t, dev, helloRoot(t), helloYAML)
	if _, err := a.EnableDev(r.e.ctx); err != nil {
		t.Fatal(err)
	}
	code, _ := a.NewPairingCode()
	if err := pairDeveloper(t, a, strings.Repeat("b", 64), dev, code.Code); err != nil {
		t.Fatal(err)
	}
	offer := func(devmode string) uint64 {
		t.Helper()
		r.version++
		env, err := link.SignDesired(&link.Desired{Device: "dev-1", Version: r.version, Expires: time.Now().Add(time.Hour),
			Apps: []link.DesiredPackage{}, DevMode: devmode}, r.director)
		if err != nil {
			t.Fatal(err)
		}
		a.OfferDesired(env)
		// A document that changes only the policy (same target) is taken
		// without being carried out again: no outcome is reported for it.
		waitFor(t, "the document taken", 30*time.Second, func() bool { v, done := a.DesiredVersion(); return v == r.version && done })
		return r.version
	}

	offer(link.DevModeDeny)
	st, err := a.DevStatus()
	if err != nil || st.Enabled || !st.Denied || !st.CodeExpires.IsZero() {
		t.Fatalf("after deny: %+v %v", st, err)
	}
	if _, err := a.EnableDev(r.e.ctx); !errors.Is(err, ErrDevModeDenied) || statusOf(err) != http.StatusForbidden {
		t.Fatalf("enable under deny: %v (status %d)", err, statusOf(err))
	}
	if _, err := a.Install(r.e.ctx, bytes.NewReader(devPkg)); err == nil {
		t.Fatal("developer-signed package installed under deny")
	}
	var msgs []string
	evs, _ := a.Events(0)
	for _, ev := range evs {
		if ev.Kind == "devmode" {
			msgs = append(msgs, ev.To+": "+ev.Message)
		}
	}
	if !slices.Contains(msgs, "disabled: developer mode disabled: refused by the account's policy") || !slices.ContainsFunc(msgs, func(m string) bool {
		return strings.HasPrefix(m, "refused: ")
	}) {
		t.Fatalf("devmode events: %q", msgs)
	}

	// The refusal is stored: it holds after ternd restarts, before any document.
	a.Close()
	r.e.start()
	a = r.e.agent
	if _, err := a.EnableDev(r.e.ctx); !errors.Is(err, ErrDevModeDenied) {
		t.Fatalf("enable under deny after a restart: %v", err)
	}

	// Lifted: off until enabled locally, then on.
	a.Manage(r.mgmt)
	offer("")
	if st, _ := a.DevStatus(); st.Enabled || st.Denied {
		t.Fatalf("after the policy is lifted: %+v", st)
	}
	if st, err := a.EnableDev(r.e.ctx); err != nil || !st.Enabled {
		t.Fatalf("enable after the policy is lifted: %+v %v", st, err)
	}
}
