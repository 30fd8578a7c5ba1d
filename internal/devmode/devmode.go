// Package devmode is Tern's developer mode: the pieces that let a developer's
// workstation reach a device on the LAN without weakening it.
//
// A device opens its LAN API only while developer mode is on, and only to
// workstations that paired with it: pairing proves knowledge of a short one-time
// code shown on the device (see pair.go), and leaves each side pinning the other's
// self-signed TLS certificate. Afterwards every connection is mutual TLS, and a
// certificate the device has not paired is refused during the handshake.
//
// The package holds both sides: the device's LAN server (server.go), identities
// and pairing codes, and the workstation's keys and known devices
// (workstation.go). It knows nothing of the agent: the agent satisfies Device.
package devmode

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"time"
)

// DefaultPort is the LAN API's port when an address names none.
const DefaultPort = 7443

// Errors a caller acts on.
var (
	// ErrDisabled: developer mode is off, so the device has no LAN API and
	// trusts no developer key.
	ErrDisabled = errors.New("developer mode is off")
	// ErrNoCode: no pairing code is active (none was shown, it expired, or it
	// was used).
	ErrNoCode = errors.New("no active pairing code: run `tern device dev pair` on the device")
	// ErrBadCode: the pairing request was not made with the code the device
	// shows (or was tampered with, or relayed to another device).
	ErrBadCode = errors.New("pairing code does not match")
	// ErrNotPaired: this workstation has not paired with the device.
	ErrNotPaired = errors.New("not paired with this device")
	// ErrPinMismatch: the device presented a certificate other than the one
	// pinned at pairing (or, while pairing, other than the one it vouched for).
	ErrPinMismatch = errors.New("device certificate does not match its pinned fingerprint")
	// ErrLocalOnly: the request may only be made on the device itself.
	ErrLocalOnly = errors.New("only allowed on the device's local socket")
)

// DeviceInfo is what a device tells about itself in discovery and pairing.
type DeviceInfo struct {
	ID          string `json:"id"`                 // short fingerprint of the device's LAN certificate
	Name        string `json:"name"`               // host name
	Model       string `json:"model,omitempty"`    // hardware model, when the device knows it
	OS          string `json:"os,omitempty"`       // /etc/os-release PRETTY_NAME
	Arch        string `json:"arch,omitempty"`     // GOARCH
	Ternd       string `json:"ternd,omitempty"`    // the agent's version
	Apps        string `json:"apps,omitempty"`     // installed apps: name@version, comma separated
	Fingerprint string `json:"fingerprint"`        // SHA-256 of the LAN certificate, hex
	Address     string `json:"address,omitempty"`  // HOST:PORT of its LAN API, as seen by the client
	Instance    string `json:"instance,omitempty"` // mDNS service instance name
}

// Pairing is a workstation the device paired with: its TLS client certificate
// (by fingerprint) and the developer key whose signatures the device accepts
// while developer mode is on.
type Pairing struct {
	ID           string    `json:"id"`            // short fingerprint, for display and unpair
	Name         string    `json:"name"`          // the workstation's label (user@host)
	Fingerprint  string    `json:"fingerprint"`   // SHA-256 of its client certificate, hex
	DeveloperKey string    `json:"developer_key"` // ed25519 public key, PKIX PEM
	KeyID        string    `json:"key_id"`        // the developer key's id
	Address      string    `json:"address,omitempty"`
	PairedAt     time.Time `json:"paired_at"`
}

// ShortID is the first 12 hex digits of a fingerprint: what people read.
func ShortID(fingerprint string) string {
	if len(fingerprint) > 12 {
		return fingerprint[:12]
	}
	return fingerprint
}

// NormalizeAddr returns HOST:PORT for a HOST[:PORT] address, adding the default
// port. IPv6 literals may come bare or bracketed.
func NormalizeAddr(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	addr = strings.TrimPrefix(addr, "tern://")
	addr = strings.TrimPrefix(addr, "https://")
	addr = strings.TrimSuffix(addr, "/")
	if addr == "" {
		return "", errors.New("empty device address")
	}
	bad := errors.New("device address " + addr + ": want HOST[:PORT]")
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil || !validHost(host) {
			return "", bad
		}
		return net.JoinHostPort(host, port), nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	if !validHost(host) {
		return "", bad
	}
	return net.JoinHostPort(host, strconv.Itoa(DefaultPort)), nil
}

// validHost accepts host names and IP literals (with an IPv6 zone): letters,
// digits and . - _ : %.
func validHost(h string) bool {
	if h == "" {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:%", r)) {
			return false
		}
	}
	return true
}
