package link

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tern-iot/tern/internal/trust"
)

// PayloadTypeDesired is the DSSE payload type of a desired-state document: a
// director signature over one can never pass as any other signed document.
const PayloadTypeDesired = "application/vnd.tern.desired.v1+json"

// MaxDesiredSize bounds a desired-state envelope.
const MaxDesiredSize = 256 << 10

// Errors a device reports about a desired-state document.
var (
	ErrDesiredSignature = errors.New("desired state: bad director signature")
	ErrDesiredStale     = errors.New("desired state: not newer than the last accepted")
	ErrDesiredExpired   = errors.New("desired state: expired")
	ErrDesiredDevice    = errors.New("desired state: for another device")
	ErrDesiredMalformed = errors.New("desired state: malformed")
)

// Desired is the state the server wants a device in. The server publishes it on
// the device's desired topic (retained), signed by the account's director key
// (ed25519), which the device received at enrollment (trust/director.pub).
//
// Apps lists the apps the server manages on the device, each at the version it
// must run; apps installed locally and not listed are left alone. A device refuses
// a document for another device, with a Version not above the last it accepted
// (replay), or past Expires (freeze).
type Desired struct {
	Device   string           `json:"device"`
	Version  uint64           `json:"version"`
	Expires  time.Time        `json:"expires"`
	Apps     []DesiredPackage `json:"apps"`
	OS       *DesiredPackage  `json:"os,omitempty"`
	Campaign string           `json:"campaign,omitempty"` // the campaign that set it, echoed in reports
	Release  string           `json:"release,omitempty"`
	// Since is the version that set this document's target. A later version
	// with the same Since only renews the document (its expiry, the account's
	// policy): a device that carried out that target does not do it again.
	// 0 (from an older server): every version is a new target.
	Since uint64 `json:"since,omitempty"`
	// DevMode is the account's developer-mode policy: DevModeDeny turns
	// developer mode off on the device and makes it refuse `dev enable` until a
	// later document no longer says so. Empty: the device decides locally.
	DevMode string `json:"devmode,omitempty"`
}

// DevModeDeny is Desired.DevMode when the account refuses developer mode.
const DevModeDeny = "deny"

// DesiredPackage is one package a device must run. Its signed manifest and blobs
// are fetched from the server over HTTPS with the device's client certificate:
//
//	GET {server}/api/v1/device/manifests/{manifest}       manifest.json, as signed
//	GET {server}/api/v1/device/manifests/{manifest}/sig   manifest.sig (release keys)
//	GET {server}/api/v1/device/blobs/{digest}             a blob; Range requests resume
//
// where {manifest} is Manifest, the sha256 of manifest.json ("sha256:<hex>").
type DesiredPackage struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Manifest string `json:"manifest"`
	Size     int64  `json:"size,omitempty"` // all blobs, for progress and space checks
}

// SignDesired signs d with the director key.
func SignDesired(d *Desired, key trust.PrivateKey) ([]byte, error) {
	payload, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	env, err := trust.Sign(PayloadTypeDesired, payload, key)
	if err != nil {
		return nil, err
	}
	return env.Marshal()
}

// VerifyDesired checks a desired-state envelope: signed by the director key, for
// device id, newer than lastVersion, not expired at now.
func VerifyDesired(data []byte, director trust.PublicKey, id string, lastVersion uint64, now time.Time) (*Desired, error) {
	if len(data) > MaxDesiredSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrDesiredMalformed, len(data))
	}
	env, err := trust.ParseEnvelope(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDesiredMalformed, err)
	}
	if _, err := env.Verify(PayloadTypeDesired, []trust.PublicKey{director}, 1); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDesiredSignature, err)
	}
	dec := json.NewDecoder(bytes.NewReader(env.Payload))
	dec.DisallowUnknownFields()
	var d Desired
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDesiredMalformed, err)
	}
	switch {
	case d.Device != id:
		return nil, fmt.Errorf("%w: %q", ErrDesiredDevice, d.Device)
	case d.Version <= lastVersion:
		return nil, fmt.Errorf("%w: version %d, last accepted %d", ErrDesiredStale, d.Version, lastVersion)
	case !now.Before(d.Expires):
		return nil, fmt.Errorf("%w: at %s", ErrDesiredExpired, d.Expires.Format(time.RFC3339))
	case d.Since > d.Version:
		return nil, fmt.Errorf("%w: target since version %d, after the document's %d", ErrDesiredMalformed, d.Since, d.Version)
	case d.DevMode != "" && d.DevMode != DevModeDeny:
		return nil, fmt.Errorf("%w: devmode %q", ErrDesiredMalformed, d.DevMode)
	}
	seen := map[string]bool{}
	for _, p := range append(append([]DesiredPackage{}, d.Apps...), derefOS(d.OS)...) {
		if p.Name == "" || p.Version == "" || len(p.Manifest) != len("sha256:")+64 || seen[p.Name] {
			return nil, fmt.Errorf("%w: bad or repeated package %q", ErrDesiredMalformed, p.Name)
		}
		seen[p.Name] = true
	}
	return &d, nil
}

func derefOS(p *DesiredPackage) []DesiredPackage {
	if p == nil {
		return nil
	}
	return []DesiredPackage{*p}
}

// Event kinds a device reports on its events topic (QoS 1), beside its agent's own
// (install, update, exit, ...).
const (
	// EventDesired reports progress on a desired-state document: State is one of
	// the Desired* states below.
	EventDesired = "desired"
)

// States of applying a desired-state document, in EventMessage.State.
const (
	DesiredAccepted   = "accepted"    // verified; downloading what is missing
	DesiredApplying   = "applying"    // the update transaction runs
	DesiredApplied    = "applied"     // committed: the device runs the desired versions
	DesiredRolledBack = "rolled_back" // the update failed and rolled back: Message says why
	DesiredRejected   = "rejected"    // refused before anything changed: Message says why
)

// EventMessage is one event a device publishes on its events topic. Seq increases
// per device (the agent's event sequence, or 0 for desired-state reports) so the
// server can drop duplicates of QoS 1 redeliveries.
type EventMessage struct {
	Seq            uint64    `json:"seq,omitempty"`
	Time           time.Time `json:"time"`
	Kind           string    `json:"kind"`
	App            string    `json:"app,omitempty"`
	Version        string    `json:"version,omitempty"`
	Txn            string    `json:"txn,omitempty"`
	From           string    `json:"from,omitempty"`
	To             string    `json:"to,omitempty"`
	Message        string    `json:"message,omitempty"`
	DesiredVersion uint64    `json:"desired_version,omitempty"`
	Campaign       string    `json:"campaign,omitempty"`
	State          string    `json:"state,omitempty"`
}
