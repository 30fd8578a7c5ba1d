package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

func csrPEM(t *testing.T, key any) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// TestBadInputGetsClearErrorAndChangesNothing sends hostile or broken requests;
// each gets its own 4xx problem and leaves the directory and the tokens as they
// were.
func TestBadInputGetsClearErrorAndChangesNothing(t *testing.T) {
	e := start(t)
	good := e.token(e.admin, map[string]any{"max_uses": 1})
	cred, _ := link.ParseToken(good)
	used := e.token(e.admin, map[string]any{"max_uses": 1})
	e.enroll(used)
	usedTok, _ := link.ParseToken(used)
	expired := e.token(e.admin, map[string]any{"expires": "1ns"})
	expTok, _ := link.ParseToken(expired)
	revoked := e.token(e.admin, nil)
	revTok, _ := link.ParseToken(revoked)
	e.must(e.admin, "DELETE", "/api/v1/tokens/"+revTok.ID, nil, nil)

	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	okCSR := csrPEM(t, ec)
	tampered := []byte(okCSR)
	block, _ := pem.Decode(tampered)
	block.Bytes[len(block.Bytes)-5] ^= 0xff
	tamperedCSR := string(pem.EncodeToMemory(block))

	enroll := func(token, csr string) map[string]any {
		return map[string]any{"token": token, "csr": csr}
	}
	cases := []struct {
		name   string
		key    string
		method string
		path   string
		body   any
		want   int
	}{
		{"malformed json", "", "POST", link.EnrollPath, `{"token": `, 400},
		{"empty body", "", "POST", link.EnrollPath, ``, 400},
		{"unknown field", "", "POST", link.EnrollPath, `{"token":"a.b","csr":"x","admin":true}`, 400},
		{"trailing data", "", "POST", link.EnrollPath, `{"token":"a.b","csr":"x"} {}`, 400},
		{"oversized body", "", "POST", link.EnrollPath, `{"token":"` + strings.Repeat("a", 100<<10) + `"}`, 413},
		{"csr not pem", "", "POST", link.EnrollPath, enroll(cred.Credential(), "hello"), 400},
		{"csr rsa key", "", "POST", link.EnrollPath, enroll(cred.Credential(), csrPEM(t, rsaKey)), 400},
		{"csr p384 key", "", "POST", link.EnrollPath, enroll(cred.Credential(), csrPEM(t, p384)), 400},
		{"csr bad signature", "", "POST", link.EnrollPath, enroll(cred.Credential(), tamperedCSR), 400},
		{"token wrong secret", "", "POST", link.EnrollPath, enroll(cred.ID+".wrong", okCSR), 401},
		{"token unknown", "", "POST", link.EnrollPath, enroll("t-nope.secret", okCSR), 401},
		{"token malformed", "", "POST", link.EnrollPath, enroll("nodots", okCSR), 401},
		{"token used up", "", "POST", link.EnrollPath, enroll(usedTok.Credential(), okCSR), 403},
		{"token expired", "", "POST", link.EnrollPath, enroll(expTok.Credential(), okCSR), 403},
		{"token revoked", "", "POST", link.EnrollPath, enroll(revTok.Credential(), okCSR), 403},
		{"key bad role", e.admin, "POST", "/api/v1/keys", map[string]any{"name": "x", "role": "root"}, 400},
		{"token negative uses", e.admin, "POST", "/api/v1/tokens", map[string]any{"max_uses": -1}, 400},
		{"token bad expiry", e.admin, "POST", "/api/v1/tokens", map[string]any{"expires": "forever"}, 400},
		{"token bad label", e.admin, "POST", "/api/v1/tokens", map[string]any{"labels": map[string]string{"bad key!": "x"}}, 400},
		{"wrong content type", e.admin, "POST", "/api/v1/tokens", []byte("max_uses=1"), 415},
		{"bad selector", e.admin, "GET", "/api/v1/devices?selector=a%3D%3D%3Db%21", nil, 400},
		{"bad status", e.admin, "GET", "/api/v1/devices?status=sleepy", nil, 400},
		{"no such device", e.admin, "GET", "/api/v1/devices/d-nope", nil, 404},
		{"no such endpoint", e.admin, "GET", "/api/v1/nope", nil, 404},
		{"webhook bad url", e.admin, "POST", "/api/v1/webhooks", map[string]any{"url": "ftp://x", "secret": "0123456789abcdef"}, 400},
		{"release key not a key", e.admin, "POST", "/api/v1/release-keys", map[string]any{"name": "x", "public_key": "nope"}, 400},
	}
	before := snapshot(e)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := c.body
			if b, ok := body.([]byte); ok && c.name == "wrong content type" {
				req, _ := http.NewRequest(c.method, e.url+c.path, strings.NewReader(string(b)))
				req.Header.Set("Authorization", "Bearer "+c.key)
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				res, err := e.http.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != c.want {
					t.Fatalf("got %d, want %d", res.StatusCode, c.want)
				}
				return
			}
			var p struct {
				Title, Detail string
				Status        int
			}
			if code := e.do(c.key, c.method, c.path, body, &p); code != c.want || p.Status != c.want || p.Title == "" {
				t.Fatalf("got %d %+v, want %d", code, p, c.want)
			}
		})
	}
	if after := snapshot(e); after != before {
		t.Fatalf("bad input changed state:\nbefore %s\nafter  %s", before, after)
	}
}

// snapshot summarises the default account's devices and token uses.
func snapshot(e *env) string {
	var ds []store.Device
	e.must(e.admin, "GET", "/api/v1/devices", nil, &ds)
	var ts []store.Token
	e.must(e.admin, "GET", "/api/v1/tokens", nil, &ts)
	var b strings.Builder
	for _, d := range ds {
		b.WriteString(d.ID + ":" + string(d.Status) + " ")
	}
	for _, t := range ts {
		b.WriteString(t.ID + "=" + string(rune('0'+t.Uses)) + " ")
	}
	return b.String()
}

func TestEnrollRefusesServerNotMatchingTokenFingerprint(t *testing.T) {
	e := start(t)
	tok, _ := link.ParseToken(e.token(e.admin, nil))
	tok.CAFingerprint = strings.Repeat("ab", 32)
	_, err := link.Enroll(t.Context(), e.url, tok.String(), t.TempDir(), testLogger(t))
	if err == nil || !strings.Contains(err.Error(), link.ErrServerNotPinned.Error()) {
		t.Fatalf("enrolled with an impostor: %v", err)
	}
	var ds []store.Device
	e.must(e.admin, "GET", "/api/v1/devices", nil, &ds)
	if len(ds) != 0 {
		t.Fatal("a device was created")
	}
}

func TestEnrollIsIdempotentAndReusesIdentity(t *testing.T) {
	e := start(t)
	tokStr := e.token(e.admin, map[string]any{"max_uses": 1})
	dir := t.TempDir()
	a, err := link.Enroll(t.Context(), e.url, tokStr, dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := link.Enroll(t.Context(), e.url, tokStr, dir, testLogger(t))
	if err != nil || b.DeviceID != a.DeviceID {
		t.Fatalf("second enroll: %v %v", b, err)
	}
}
