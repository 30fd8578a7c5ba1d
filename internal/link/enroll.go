package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Errors of enrolment.
var (
	// ErrServerNotPinned: the server's certificate chain does not contain the CA
	// whose fingerprint the token carries: it is not the server the token is for.
	ErrServerNotPinned = errors.New("server certificate does not match the token's CA fingerprint")
	// ErrEnrollRefused: the server refused the enrolment (the wrapped text says why).
	ErrEnrollRefused = errors.New("enrollment refused")
)

// Enroll makes this device known to the server at serverURL with token, and writes
// its identity under dir. It is idempotent: an identity already in dir is returned
// as is, and an interrupted enrolment resumes with the same key. While an operator
// has not yet accepted the device (manual approval) it waits, asking again as the
// server says, until ctx ends.
func Enroll(ctx context.Context, serverURL, token, dir string, log *slog.Logger) (*Identity, error) {
	if log == nil {
		log = slog.Default()
	}
	if id, err := LoadIdentity(dir); err == nil {
		return id, nil
	} else if !errors.Is(err, ErrNotEnrolled) {
		return nil, err
	}
	tok, err := ParseToken(token)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := loadOrCreateKey(dir)
	if err != nil {
		return nil, err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(EnrollRequest{Token: tok.Credential(),
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))})
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: PinnedTLS(tok.CAFingerprint),
	}}
	endpoint := strings.TrimSuffix(serverURL, "/") + EnrollPath
	for {
		resp, err := post(ctx, client, endpoint, body)
		if err != nil {
			return nil, err
		}
		switch resp.Status {
		case EnrollActive:
			return save(dir, serverURL, resp)
		case EnrollPending:
			wait := time.Duration(max(resp.RetryAfter, 1)) * time.Second
			log.Info("enrollment pending: waiting for an operator to accept this device", "device", resp.DeviceID, "retry_in", wait)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait):
			}
		default:
			return nil, fmt.Errorf("%w: unknown status %q", ErrEnrollRefused, resp.Status)
		}
	}
}

func post(ctx context.Context, client *http.Client, endpoint string, body []byte) (*EnrollResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusAccepted {
		var p struct{ Title, Detail string }
		json.Unmarshal(data, &p)
		return nil, fmt.Errorf("%w: %s: %s (HTTP %d)", ErrEnrollRefused, p.Title, p.Detail, res.StatusCode)
	}
	var out EnrollResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("enrollment answer: %w", err)
	}
	return &out, nil
}

// save writes what the server sent, identity.json last.
func save(dir, serverURL string, r *EnrollResponse) (*Identity, error) {
	if r.DeviceID == "" || r.Certificate == "" || r.ServerCA == "" || r.MQTTURL == "" {
		return nil, errors.New("enrollment answer is missing fields")
	}
	files := map[string]string{certFile: r.Certificate, deviceCAFile: r.DeviceCA, serverCAFile: r.ServerCA}
	if err := os.MkdirAll(filepath.Join(dir, trustDir), 0o700); err != nil {
		return nil, err
	}
	for i, k := range r.Trust.ReleaseKeys {
		files[filepath.Join(trustDir, fmt.Sprintf("release-%d.pub", i))] = k
	}
	if r.Trust.DirectorKey != "" {
		files[filepath.Join(trustDir, "director.pub")] = r.Trust.DirectorKey
	}
	for name, data := range files {
		if err := writeAtomic(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return nil, err
		}
	}
	id := &Identity{Dir: dir, DeviceID: r.DeviceID, ServerURL: serverURL, MQTTURL: r.MQTTURL}
	data, _ := json.MarshalIndent(id, "", "  ")
	if err := writeAtomic(filepath.Join(dir, identityFile), data, 0o644); err != nil {
		return nil, err
	}
	return id, nil
}

// PinnedTLS trusts exactly the servers whose certificate chain contains a
// certificate with the given SHA-256 fingerprint, and verifies the chain up to it:
// trust on first contact from a fingerprint carried out of band (in a token, or
// given to `tern fleet login`).
func PinnedTLS(fingerprint string) *tls.Config {
	fingerprint = strings.ToLower(strings.TrimPrefix(fingerprint, "sha256:"))
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			for _, c := range cs.PeerCertificates {
				sum := sha256.Sum256(c.Raw)
				if hex.EncodeToString(sum[:]) == fingerprint {
					return verifyAgainst(c)(cs)
				}
			}
			return ErrServerNotPinned
		},
	}
}
