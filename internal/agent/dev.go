package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tern-iot/tern/internal/devmode"
	"github.com/tern-iot/tern/internal/trust"
)

// ErrNoPairing reports an unpair of a workstation the device has not paired.
var ErrNoPairing = errors.New("no such paired workstation")

// ErrDevModeDenied reports `dev enable` on a device whose account refuses
// developer mode (a policy it received in its signed desired state).
var ErrDevModeDenied = errors.New("developer mode is refused by the account's policy (set on the server: tern fleet policy devmode)")

// DevStatus is developer mode as `tern device dev status` shows it and as the
// device reports it to the server.
type DevStatus struct {
	Enabled bool      `json:"enabled"`
	Since   time.Time `json:"since,omitzero"`
	// Denied is set when the account's policy refuses developer mode.
	Denied bool `json:"denied,omitempty"`
	// LAN is where the LAN API listens, "" when it is closed.
	LAN string `json:"lan,omitempty"`
	// Fingerprint is the device's LAN certificate's, which workstations pin.
	Fingerprint string `json:"fingerprint,omitempty"`
	// CodeExpires is when the pairing code shown expires, if one is active.
	CodeExpires time.Time         `json:"code_expires,omitzero"`
	Pairings    []devmode.Pairing `json:"pairings"`
}

// PairingCode is a code to show the developer, as `tern device dev pair` prints it.
type PairingCode struct {
	Code    string    `json:"code"`
	Expires time.Time `json:"expires"`
}

// developerKeys are the paired developers' keys, trusted only while developer
// mode is on: off, they sign nothing the device accepts, even locally.
func (a *Agent) developerKeys() []trust.PublicKey {
	st, err := a.store.devState()
	if err != nil || !st.Enabled {
		return nil
	}
	ps, err := a.store.pairings()
	if err != nil {
		a.log.Error("developer keys", "err", err)
		return nil
	}
	var keys []trust.PublicKey
	for _, p := range ps {
		k, err := trust.ParsePublicKey([]byte(p.DeveloperKey))
		if err != nil {
			a.log.Warn("developer key", "workstation", p.Name, "err", err)
			continue
		}
		keys = append(keys, k)
	}
	return keys
}

// devDir holds the device's LAN identity.
func (a *Agent) devDir() string { return filepath.Join(a.cfg.DataDir, "dev") }

// DevIdentity is the device's LAN TLS identity, made on first use in DATA/dev/.
func (a *Agent) DevIdentity() (*devmode.Identity, error) {
	host, _ := os.Hostname()
	return devmode.LoadOrCreateIdentity(a.devDir(), "ternd "+host)
}

// Logger is the agent's logger, for the services wired beside it (the LAN API).
func (a *Agent) Logger() *slog.Logger { return a.log }

// DevStatus reports developer mode.
func (a *Agent) DevStatus() (DevStatus, error) {
	st, err := a.store.devState()
	if err != nil {
		return DevStatus{}, err
	}
	ps, err := a.store.pairings()
	if err != nil {
		return DevStatus{}, err
	}
	out := DevStatus{Enabled: st.Enabled, Since: st.Since, Denied: st.Denied, LAN: st.LAN, Pairings: ps}
	if out.Pairings == nil {
		out.Pairings = []devmode.Pairing{}
	}
	if st.Code != nil && st.Code.Usable(time.Now()) {
		out.CodeExpires = st.Code.Expires
	}
	if id, err := devmode.LoadIdentity(a.devDir()); err == nil {
		out.Fingerprint = id.Fingerprint
	}
	return out, nil
}

// EnableDev turns developer mode on: the LAN API opens (the LAN server follows
// the persisted state) and paired developers' keys are trusted.
func (a *Agent) EnableDev(ctx context.Context) (DevStatus, error) {
	changed := false
	err := a.store.updateDevState(func(st *devState, _ *bolt.Bucket) error {
		if st.Denied {
			return ErrDevModeDenied
		}
		if !st.Enabled {
			st.Enabled, st.Since, changed = true, time.Now().UTC(), true
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrDevModeDenied) {
			a.event(Event{Kind: "devmode", To: "refused", Message: "developer mode enable refused: " + err.Error()})
		}
		return DevStatus{}, err
	}
	if changed {
		a.log.Warn("developer mode enabled: LAN API opens to paired workstations; developer-signed packages accepted")
		a.event(Event{Kind: "devmode", To: "enabled", Message: "developer mode enabled"})
	}
	return a.waitLAN(ctx, true)
}

// ApplyDevModePolicy follows the account's developer-mode policy, as the last
// accepted desired-state document carries it: deny turns developer mode off
// (closing the LAN API, dropping any pairing code) and refuses it from then on;
// no policy lifts the refusal (developer mode stays off until enabled locally).
// An error means the policy could not be stored.
func (a *Agent) ApplyDevModePolicy(ctx context.Context, deny bool) error {
	wasEnabled, changed := false, false
	err := a.store.updateDevState(func(st *devState, _ *bolt.Bucket) error {
		if st.Denied == deny && (!deny || !st.Enabled) {
			return nil
		}
		changed, st.Denied = true, deny
		if deny && st.Enabled {
			wasEnabled = true
			st.Enabled, st.Since, st.Code = false, time.Now().UTC(), nil
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !changed {
		return nil
	}
	switch {
	case wasEnabled:
		a.log.Warn("developer mode disabled: the account's policy refuses it")
		a.event(Event{Kind: "devmode", To: "disabled", Message: "developer mode disabled: refused by the account's policy"})
		a.waitLAN(ctx, false)
	case deny:
		a.log.Info("developer mode refused by the account's policy")
		a.event(Event{Kind: "devmode", To: "denied", Message: "developer mode refused by the account's policy"})
	default:
		a.log.Info("developer mode allowed again by the account's policy")
		a.event(Event{Kind: "devmode", To: "allowed", Message: "developer mode allowed by the account's policy"})
	}
	return nil
}

// DisableDev turns developer mode off. From the transaction's commit, no
// developer key verifies a package and no handshake or request on the LAN is
// admitted; it returns once the LAN server has closed its listener (or after
// a few seconds if none runs). Pairings are kept, inert, for the next enable.
func (a *Agent) DisableDev(ctx context.Context) (DevStatus, error) {
	changed := false
	err := a.store.updateDevState(func(st *devState, _ *bolt.Bucket) error {
		if st.Enabled {
			st.Enabled, st.Since, changed = false, time.Now().UTC(), true
		}
		st.Code = nil
		return nil
	})
	if err != nil {
		return DevStatus{}, err
	}
	if changed {
		a.log.Info("developer mode disabled")
		a.event(Event{Kind: "devmode", To: "disabled", Message: "developer mode disabled"})
	}
	return a.waitLAN(ctx, false)
}

// waitLAN waits (up to 3s) for the LAN server to report it opened or closed,
// so that `dev disable` returns with the port closed. A device whose LAN API
// cannot open (port taken) still reports its state.
func (a *Agent) waitLAN(ctx context.Context, open bool) (DevStatus, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, err := a.DevStatus()
		if err != nil || (st.LAN != "") == open || time.Now().After(deadline) {
			return st, err
		}
		if raw, err := a.store.devState(); err != nil || !raw.LANServer {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// NewPairingCode makes a one-time pairing code, replacing any previous one.
func (a *Agent) NewPairingCode() (PairingCode, error) {
	code, err := devmode.NewCode(time.Now())
	if err != nil {
		return PairingCode{}, err
	}
	err = a.store.updateDevState(func(st *devState, _ *bolt.Bucket) error {
		if !st.Enabled {
			return devmode.ErrDisabled
		}
		st.Code = &code
		return nil
	})
	if err != nil {
		return PairingCode{}, err
	}
	a.log.Info("pairing code shown", "expires", code.Expires)
	return PairingCode{Code: code.String(), Expires: code.Expires}, nil
}

// Unpair forgets a workstation (by id or fingerprint prefix; "all" for every
// one): its certificate is refused and its developer key untrusted at once.
func (a *Agent) Unpair(id string) ([]devmode.Pairing, error) {
	var gone []devmode.Pairing
	err := a.store.updateDevState(func(_ *devState, b *bolt.Bucket) error {
		ps, err := pairingsIn(b)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if id == "all" || (len(id) >= 6 && strings.HasPrefix(p.Fingerprint, id)) {
				if err := b.Delete([]byte(p.Fingerprint)); err != nil {
					return err
				}
				gone = append(gone, p)
			}
		}
		if len(gone) == 0 {
			return fmt.Errorf("%w: %q", ErrNoPairing, id)
		}
		return nil
	})
	for _, p := range gone {
		a.event(Event{Kind: "devmode", Message: fmt.Sprintf("unpaired workstation %s (%s)", p.Name, p.ID)})
	}
	return gone, err
}

// DevEnabled reports whether developer mode is on (devmode.Device).
func (a *Agent) DevEnabled() bool {
	st, err := a.store.devState()
	return err == nil && st.Enabled
}

// DevPaired reports whether a workstation certificate is paired (devmode.Device).
func (a *Agent) DevPaired(fingerprint string) bool { return a.store.paired(fingerprint) }

// DevListening records where the LAN API listens (devmode.Device).
func (a *Agent) DevListening(addr string) {
	err := a.store.updateDevState(func(st *devState, _ *bolt.Bucket) error {
		st.LAN, st.LANServer = addr, true
		return nil
	})
	if err != nil {
		a.log.Error("developer mode: record LAN state", "err", err)
	}
}

// DevPair checks a pairing request against the code shown and, if it was made
// with it, pairs the workstation whose certificate has fingerprint
// (devmode.Device). The attempt is counted before the slow key derivation runs
// (outside any transaction), so a flood of requests costs at most
// MaxCodeAttempts derivations per code; the transaction that stores the pairing
// consumes the code, so it pairs once.
func (a *Agent) DevPair(ctx context.Context, req devmode.PairRequest, fingerprint, remote string) (devmode.PairResponse, error) {
	devKey, err := trust.ParsePublicKey([]byte(req.DeveloperKey))
	if err != nil {
		return devmode.PairResponse{}, fmt.Errorf("developer key: %w", err)
	}
	id, err := a.DevIdentity()
	if err != nil {
		return devmode.PairResponse{}, err
	}
	var code string
	err = a.store.updateDevState(func(st *devState, _ *bolt.Bucket) error {
		switch {
		case !st.Enabled:
			return devmode.ErrDisabled
		case st.Code == nil || !st.Code.Usable(time.Now()):
			return devmode.ErrNoCode
		}
		st.Code.Attempts++
		code = st.Code.Value
		return nil
	})
	if err == nil {
		var key devmode.PairKey
		if key, err = devmode.DeriveKey(code, id.Fingerprint, fingerprint); err == nil {
			if err = key.VerifyRequest(&req); err == nil {
				p := devmode.Pairing{ID: devmode.ShortID(fingerprint), Name: req.Name, Fingerprint: fingerprint,
					DeveloperKey: req.DeveloperKey, KeyID: devKey.ID, Address: remote, PairedAt: time.Now().UTC()}
				if err = a.consumeCode(code, p); err == nil {
					a.log.Info("workstation paired", "workstation", p.Name, "id", p.ID, "developer_key", trust.ShortID(p.KeyID), "remote", remote)
					a.event(Event{Kind: "devmode", Message: fmt.Sprintf("paired workstation %s (%s), developer key %s", p.Name, p.ID, trust.ShortID(p.KeyID))})
					resp := devmode.PairResponse{Device: a.DevInfo(), Fingerprint: id.Fingerprint}
					return resp, key.SealResponse(&req, &resp)
				}
			}
		}
	}
	a.log.Warn("pairing refused", "remote", remote, "workstation", req.Name, "err", err)
	return devmode.PairResponse{}, err
}

// consumeCode stores a pairing made with code, and deletes the code, in one
// transaction; ErrNoCode if the code was replaced, cleared or expired meanwhile.
func (a *Agent) consumeCode(code string, p devmode.Pairing) error {
	return a.store.updateDevState(func(st *devState, b *bolt.Bucket) error {
		switch {
		case !st.Enabled:
			return devmode.ErrDisabled
		case st.Code == nil || st.Code.Value != code || !time.Now().Before(st.Code.Expires):
			return devmode.ErrNoCode
		}
		st.Code = nil
		return putPairing(b, p)
	})
}

// DevInfo describes the device for discovery and pairing (devmode.Device).
func (a *Agent) DevInfo() devmode.DeviceInfo {
	host, _ := os.Hostname()
	info := devmode.DeviceInfo{Name: host, Model: devmode.HostModel(), OS: devmode.HostOS(), Arch: goruntime.GOARCH, Ternd: terndVersion()}
	if id, err := devmode.LoadIdentity(a.devDir()); err == nil {
		info.ID, info.Fingerprint = devmode.ShortID(id.Fingerprint), id.Fingerprint
	}
	if recs, err := a.store.Apps(); err == nil {
		var apps []string
		for _, r := range recs {
			apps = append(apps, r.Name()+"@"+r.Version())
		}
		info.Apps = strings.Join(apps, ",")
	}
	return info
}

func terndVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func pairingsIn(b *bolt.Bucket) ([]devmode.Pairing, error) {
	var out []devmode.Pairing
	err := b.ForEach(func(k, v []byte) error {
		var p devmode.Pairing
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("state.db: pairing %s: %w", k, err)
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// isLocal reports whether a request came over the unix socket (root only),
// not the LAN: it is read from the connection itself, so no wrapping of the
// handler can forget it.
func isLocal(r *http.Request) bool {
	_, ok := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr)
	return ok
}

// registerDevRoutes adds developer mode's endpoints. Turning it on or off,
// showing a pairing code and unpairing are allowed on the local socket only;
// status and exec are served on both.
func (a *Agent) registerDevRoutes(mux *http.ServeMux) {
	local := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !isLocal(r) {
				problem(w, http.StatusForbidden, "local only", devmode.ErrLocalOnly.Error())
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /v1/dev", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.DevStatus()
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/dev/enable", local(func(w http.ResponseWriter, r *http.Request) {
		st, err := a.EnableDev(r.Context())
		reply(w, st, err)
	}))
	mux.HandleFunc("POST /v1/dev/disable", local(func(w http.ResponseWriter, r *http.Request) {
		st, err := a.DisableDev(r.Context())
		reply(w, st, err)
	}))
	mux.HandleFunc("POST /v1/dev/pair", local(func(w http.ResponseWriter, r *http.Request) {
		code, err := a.NewPairingCode()
		if errors.Is(err, devmode.ErrDisabled) {
			problem(w, http.StatusConflict, "conflict", devmode.ErrDisabled.Error()+": enable it first (tern device dev enable)")
			return
		}
		reply(w, code, err)
	}))
	mux.HandleFunc("DELETE /v1/dev/pairings/{id}", local(func(w http.ResponseWriter, r *http.Request) {
		gone, err := a.Unpair(r.PathValue("id"))
		if errors.Is(err, ErrNoPairing) {
			problem(w, http.StatusNotFound, "not found", err.Error())
			return
		}
		reply(w, gone, err)
	}))
	mux.HandleFunc("POST /v1/apps/{name}/exec", a.serveExec)
}
