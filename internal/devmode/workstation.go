package devmode

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/trust"
)

// Workstation is a developer's side of developer mode, kept in CONFIG/dev/
// (CONFIG is ~/.config/tern): a TLS client identity the devices it pairs with
// admit, an ed25519 developer signing key they trust while in developer mode,
// and the devices it paired with, each with its pinned certificate fingerprint.
type Workstation struct {
	Dir       string
	Identity  *Identity
	Developer trust.PrivateKey
}

// KnownDevice is a device this workstation paired with.
type KnownDevice struct {
	Address     string    `json:"address"`     // HOST:PORT as the developer named it
	Fingerprint string    `json:"fingerprint"` // pinned: the device's LAN certificate
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	PairedAt    time.Time `json:"paired_at"`
}

// File names under the workstation's directory and the config directory.
const (
	devicesFile   = "devices.json"
	developerBase = "developer" // developer.key, developer.pub
	selectedFile  = "device"    // in the config directory: the default device
)

// ConfigDir is the tern configuration directory: $XDG_CONFIG_HOME/tern or
// ~/.config/tern.
func ConfigDir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "tern"), nil
}

// OpenWorkstation opens the workstation's keys in configDir/dev, making them
// the first time (the developer key is never overwritten).
func OpenWorkstation(configDir string) (*Workstation, error) {
	dir := filepath.Join(configDir, "dev")
	id, err := LoadOrCreateIdentity(dir, "tern workstation "+Label())
	if err != nil {
		return nil, err
	}
	base := filepath.Join(dir, developerBase)
	dev, err := trust.LoadPrivateKey(base + ".key")
	if errors.Is(err, os.ErrNotExist) {
		if dev, err = trust.GenerateKey(); err == nil {
			err = trust.WriteKeyPair(base, dev)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("developer key: %w", err)
	}
	return &Workstation{Dir: dir, Identity: id, Developer: dev}, nil
}

// LoadWorkstation opens existing keys only: a workstation that never paired
// gets ErrNotPaired.
func LoadWorkstation(configDir string) (*Workstation, error) {
	dir := filepath.Join(configDir, "dev")
	if _, err := os.Stat(filepath.Join(dir, certFile)); err != nil {
		return nil, fmt.Errorf("%w: no workstation keys in %s (tern device pair HOST --code CODE)", ErrNotPaired, dir)
	}
	return OpenWorkstation(configDir)
}

// Label names this workstation to the devices it pairs with: user@host.
func Label() string {
	host, _ := os.Hostname()
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return name + "@" + host
}

// Devices returns the devices this workstation paired with.
func (w *Workstation) Devices() ([]KnownDevice, error) {
	data, err := os.ReadFile(filepath.Join(w.Dir, devicesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []KnownDevice
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", devicesFile, err)
	}
	return list, nil
}

// Known returns the paired device at addr (HOST[:PORT]), or ErrNotPaired.
func (w *Workstation) Known(addr string) (KnownDevice, error) {
	addr, err := NormalizeAddr(addr)
	if err != nil {
		return KnownDevice{}, err
	}
	list, err := w.Devices()
	if err != nil {
		return KnownDevice{}, err
	}
	for _, d := range list {
		if d.Address == addr {
			return d, nil
		}
	}
	return KnownDevice{}, fmt.Errorf("%w: %s (tern device pair %s --code CODE)", ErrNotPaired, addr, addr)
}

// Remember records a paired device, replacing any entry at its address.
func (w *Workstation) Remember(d KnownDevice) error {
	list, err := w.Devices()
	if err != nil {
		return err
	}
	list = slices.DeleteFunc(list, func(k KnownDevice) bool { return k.Address == d.Address })
	list = append(list, d)
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(w.Dir, devicesFile), data, 0o600)
}

// ClientTLS is the TLS configuration to reach a paired device: this
// workstation's certificate, and the device's pinned fingerprint checked in
// place of a CA (the certificates are self-signed).
func (w *Workstation) ClientTLS(pin string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{w.Identity.Cert},
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || Fingerprint(cs.PeerCertificates[0].Raw) != pin {
				return ErrPinMismatch
			}
			return nil
		},
	}
}

// Pair pairs this workstation with the device at addr using the code it shows,
// and pins the device's certificate. See pair.go for the protocol.
func (w *Workstation) Pair(ctx context.Context, addr, code string) (KnownDevice, error) {
	addr, err := NormalizeAddr(addr)
	if err != nil {
		return KnownDevice{}, err
	}
	if _, err := NormalizeCode(code); err != nil {
		return KnownDevice{}, err
	}
	var deviceFP string
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         PairServerName,
		Certificates:       []tls.Certificate{w.Identity.Cert},
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: true, // nothing to verify against yet: the code authenticates
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return ErrPinMismatch
			}
			deviceFP = Fingerprint(cs.PeerCertificates[0].Raw)
			return nil
		},
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: conf}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return KnownDevice{}, fmt.Errorf("pair %s: %w", addr, err)
	}
	defer conn.Close()
	key, err := DeriveKey(code, deviceFP, w.Identity.Fingerprint)
	if err != nil {
		return KnownDevice{}, err
	}
	req := PairRequest{Name: Label(), DeveloperKey: string(trust.MarshalPublicKey(w.Developer.Public()))}
	if err := key.SealRequest(&req); err != nil {
		return KnownDevice{}, err
	}
	var resp PairResponse
	if err := postOnConn(ctx, conn, addr, PairPath, req, &resp); err != nil {
		return KnownDevice{}, fmt.Errorf("pair %s: %w", addr, err)
	}
	if resp.Fingerprint != deviceFP {
		return KnownDevice{}, fmt.Errorf("pair %s: %w (TLS presented %s, the device says %s)", addr, ErrPinMismatch,
			ShortID(deviceFP), ShortID(resp.Fingerprint))
	}
	if err := key.VerifyResponse(&req, &resp); err != nil {
		return KnownDevice{}, fmt.Errorf("pair %s: %w", addr, err)
	}
	kd := KnownDevice{Address: addr, Fingerprint: deviceFP, ID: resp.Device.ID, Name: resp.Device.Name, PairedAt: time.Now().UTC()}
	return kd, w.Remember(kd)
}

// postOnConn sends one JSON request over an established connection and decodes
// the answer; an error answer becomes an error wrapping the matching kind.
func postOnConn(ctx context.Context, conn net.Conn, addr, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	var once sync.Once
	tr := &http.Transport{DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
		var c net.Conn
		once.Do(func() { c = conn })
		if c == nil {
			return nil, errors.New("pairing connection already used")
		}
		return c, nil
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var p problem
		json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&p)
		return p.err(resp.StatusCode)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
}

// problem is the RFC 9457 error body the device answers with.
type problem struct {
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func (p problem) err(status int) error {
	msg := p.Detail
	if msg == "" {
		msg = p.Title
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	for _, kind := range []error{ErrBadCode, ErrNoCode, ErrDisabled} {
		if strings.Contains(msg, kind.Error()) {
			return fmt.Errorf("%w%s", kind, strings.TrimPrefix(msg, kind.Error()))
		}
	}
	return errors.New(msg)
}

// SelectedDevice returns the default device saved by SelectDevice, "" if none.
func SelectedDevice(configDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(configDir, selectedFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return strings.TrimSpace(string(data)), err
}

// SelectDevice saves addr as the default device of `tern device`.
func SelectDevice(configDir, addr string) error {
	if err := os.MkdirAll(configDir, 0o700); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(configDir, selectedFile), []byte(addr+"\n"), 0o600)
}
