package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Errors a caller must act on when a signature does not hold.
var (
	// ErrUnsigned: the envelope carries no signature at all.
	ErrUnsigned = errors.New("not signed")
	// ErrBadSignature: a signature by a trusted key does not verify: the payload or
	// the signature was changed after signing.
	ErrBadSignature = errors.New("signature does not verify")
	// ErrUntrustedSigner: every signature is by a key that is not trusted.
	ErrUntrustedSigner = errors.New("no signature by a trusted key")
	// ErrThreshold: fewer distinct trusted keys signed than the threshold asks.
	ErrThreshold = errors.New("too few trusted signatures")
	// ErrBadEnvelope: the envelope itself is malformed.
	ErrBadEnvelope = errors.New("malformed signature envelope")
)

// Envelope is a DSSE (Dead Simple Signing Envelope) v1 envelope. Signatures cover
// PAE(payloadType, payload), so a payload cannot be replayed as another type.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"` // standard base64 in JSON, as DSSE says
	Signatures  []Signature `json:"signatures"`
}

// Signature is one signature of an Envelope.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"` // base64 in JSON
}

// pae is DSSE's pre-authentication encoding.
func pae(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

// Sign returns a new envelope over payload signed by every key.
func Sign(payloadType string, payload []byte, keys ...PrivateKey) (*Envelope, error) {
	env := &Envelope{PayloadType: payloadType, Payload: payload}
	for _, k := range keys {
		if err := env.AddSignature(k); err != nil {
			return nil, err
		}
	}
	return env, nil
}

// AddSignature adds k's signature. A key signs at most once: a second signature by
// the same key would count twice toward nothing and only confuse readers.
func (e *Envelope) AddSignature(k PrivateKey) error {
	for _, s := range e.Signatures {
		if s.KeyID == k.ID {
			return fmt.Errorf("already signed by key %s", ShortID(k.ID))
		}
	}
	e.Signatures = append(e.Signatures, Signature{KeyID: k.ID, Sig: ed25519.Sign(k.Key, pae(e.PayloadType, e.Payload))})
	return nil
}

// Marshal encodes the envelope as JSON.
func (e *Envelope) Marshal() ([]byte, error) { return json.Marshal(e) }

// ParseEnvelope decodes a JSON envelope, strictly.
func ParseEnvelope(data []byte) (*Envelope, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var e Envelope
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrBadEnvelope)
	}
	if e.PayloadType == "" {
		return nil, fmt.Errorf("%w: no payloadType", ErrBadEnvelope)
	}
	return &e, nil
}

// Verified says which trusted keys signed a payload.
type Verified struct {
	KeyIDs []string // distinct trusted keys whose signatures verify
}

// Verify checks e against the trusted keys: at least threshold distinct trusted keys
// must have signed, and every signature by a trusted key must verify (one that does
// not means tampering, which is reported even if others would meet the threshold).
// Signatures by keys that are not trusted are ignored.
func (e *Envelope) Verify(payloadType string, trusted []PublicKey, threshold int) (Verified, error) {
	if threshold < 1 {
		threshold = 1
	}
	if e.PayloadType != payloadType {
		return Verified{}, fmt.Errorf("%w: payload type %q, want %q", ErrBadEnvelope, e.PayloadType, payloadType)
	}
	if len(e.Signatures) == 0 {
		return Verified{}, ErrUnsigned
	}
	byID := make(map[string]PublicKey, len(trusted))
	for _, k := range trusted {
		byID[k.ID] = k
	}
	msg := pae(e.PayloadType, e.Payload)
	seen := map[string]bool{}
	var good, foreign []string
	for _, s := range e.Signatures {
		k, ok := byID[s.KeyID]
		if !ok {
			foreign = append(foreign, ShortID(s.KeyID))
			continue
		}
		if !ed25519.Verify(k.Key, msg, s.Sig) {
			return Verified{}, fmt.Errorf("%w: key %s", ErrBadSignature, ShortID(s.KeyID))
		}
		if !seen[s.KeyID] {
			seen[s.KeyID] = true
			good = append(good, s.KeyID)
		}
	}
	if len(good) == 0 {
		return Verified{}, fmt.Errorf("%w: signed by %s, trusted are %s", ErrUntrustedSigner,
			strings.Join(foreign, ", "), shortIDs(trusted))
	}
	if len(good) < threshold {
		return Verified{KeyIDs: good}, fmt.Errorf("%w: %d of %d required", ErrThreshold, len(good), threshold)
	}
	return Verified{KeyIDs: good}, nil
}

func shortIDs(keys []PublicKey) string {
	if len(keys) == 0 {
		return "none"
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = ShortID(k.ID)
	}
	return strings.Join(ids, ", ")
}
