package devmode

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// Pairing protocol (version 1).
//
// The workstation opens TLS to the device with server name PairServerName and
// its own client certificate. Neither side trusts the other yet; each notes the
// fingerprint of the certificate the other presented: F_d (device) and F_w
// (workstation). Both derive
//
//	K = PBKDF2-SHA256(code, "tern pairing v1" | F_d | F_w, pairIterations)
//
// The workstation sends its label, its developer public key and a nonce, with
// MAC_w = HMAC(K, "request" | fields). The device, holding the code it showed,
// checks MAC_w, stores the pairing, and answers with its own fingerprint and
// MAC_d = HMAC(K, "response" | MAC_w | F_d | device info); the workstation
// checks that the fingerprint is the certificate TLS presented and MAC_d, then
// pins F_d.
//
// Why this holds: a relay between the two sees different certificates on each
// leg, so K differs and no MAC carries over. A fake device that collects MAC_w
// can only guess the code offline, and each guess costs pairIterations of
// SHA-256 (40-bit codes: centuries on a GPU), while the real code expires in
// CodeTTL. A fake workstation gets MaxCodeAttempts online guesses. The code is
// never sent.
const (
	// PairServerName is the TLS server name a workstation sends to pair: such a
	// connection needs no paired certificate, and reaches the pairing endpoint
	// and nothing else.
	PairServerName = "pair.tern.invalid"
	// PairPath is the pairing endpoint on the LAN API.
	PairPath       = "/v1/dev/pairing"
	pairIterations = 200_000
	pairContext    = "tern pairing v1"
)

// PairRequest is what a workstation sends to pair.
type PairRequest struct {
	Name         string `json:"name"`          // the workstation's label (user@host)
	DeveloperKey string `json:"developer_key"` // ed25519 public key, PKIX PEM
	Nonce        []byte `json:"nonce"`
	MAC          []byte `json:"mac"`
}

// PairResponse is the device's answer to a good request.
type PairResponse struct {
	Device      DeviceInfo `json:"device"`
	Fingerprint string     `json:"fingerprint"` // of the device's LAN certificate
	MAC         []byte     `json:"mac"`
}

// PairKey is the key both sides derive from the code and the two certificates.
type PairKey []byte

// DeriveKey derives the pairing key. It is deliberately slow (see above).
func DeriveKey(code, deviceFP, workstationFP string) (PairKey, error) {
	code, err := NormalizeCode(code)
	if err != nil {
		return nil, err
	}
	salt := transcript(pairContext, deviceFP, workstationFP)
	k, err := pbkdf2.Key(sha256.New, code, salt, pairIterations, 32)
	return PairKey(k), err
}

// SealRequest fills in req's nonce and MAC.
func (k PairKey) SealRequest(req *PairRequest) error {
	req.Nonce = make([]byte, 16)
	if _, err := rand.Read(req.Nonce); err != nil {
		return err
	}
	req.MAC = k.mac("request", req.Name, req.DeveloperKey, string(req.Nonce))
	return nil
}

// VerifyRequest checks req's MAC: ErrBadCode if it was made with another code
// (or for other certificates).
func (k PairKey) VerifyRequest(req *PairRequest) error {
	if len(req.Nonce) < 16 || !hmac.Equal(req.MAC, k.mac("request", req.Name, req.DeveloperKey, string(req.Nonce))) {
		return ErrBadCode
	}
	return nil
}

// SealResponse fills in resp's MAC, binding it to req.
func (k PairKey) SealResponse(req *PairRequest, resp *PairResponse) error {
	info, err := json.Marshal(resp.Device)
	if err != nil {
		return err
	}
	resp.MAC = k.mac("response", string(req.MAC), resp.Fingerprint, string(info))
	return nil
}

// VerifyResponse checks resp's MAC against req.
func (k PairKey) VerifyResponse(req *PairRequest, resp *PairResponse) error {
	info, err := json.Marshal(resp.Device)
	if err != nil {
		return err
	}
	if !hmac.Equal(resp.MAC, k.mac("response", string(req.MAC), resp.Fingerprint, string(info))) {
		return fmt.Errorf("%w: the device's answer does not prove it knows the code", ErrBadCode)
	}
	return nil
}

func (k PairKey) mac(fields ...string) []byte {
	h := hmac.New(sha256.New, k)
	h.Write(transcript(fields...))
	return h.Sum(nil)
}

// transcript encodes fields unambiguously: each with its length before it.
func transcript(fields ...string) []byte {
	var out []byte
	for _, f := range fields {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}
