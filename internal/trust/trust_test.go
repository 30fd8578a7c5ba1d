package trust

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func mustKey(t *testing.T) PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyPairRoundTripsThroughFiles(t *testing.T) {
	dir := t.TempDir()
	k := mustKey(t)
	base := filepath.Join(dir, "release")
	if err := WriteKeyPair(base, k); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(base + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %o, want 600", fi.Mode().Perm())
	}
	priv, err := LoadPrivateKey(base + ".key")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(base + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if priv.ID != k.ID || pub.ID != k.ID {
		t.Fatalf("key ids differ: %s %s %s", k.ID, priv.ID, pub.ID)
	}
	if err := WriteKeyPair(base, mustKey(t)); err == nil {
		t.Fatal("overwrote an existing key")
	}
	keys, err := LoadPublicKeyDir(dir)
	if err != nil || len(keys) != 1 {
		t.Fatalf("LoadPublicKeyDir = %v, %v", keys, err)
	}
}

func TestLoadPrivateKeyRefusesReadableByOthers(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "k")
	if err := WriteKeyPair(base, mustKey(t)); err != nil {
		t.Fatal(err)
	}
	os.Chmod(base+".key", 0o644)
	if _, err := LoadPrivateKey(base + ".key"); err == nil {
		t.Fatal("loaded a world-readable private key")
	}
}

func TestParseRejectsWrongKeyTypes(t *testing.T) {
	k := mustKey(t)
	pubPEM := MarshalPublicKey(k.Public())
	if _, err := ParsePrivateKey(pubPEM); !errors.Is(err, ErrBadKey) {
		t.Fatalf("public key parsed as private: %v", err)
	}
	privPEM, _ := MarshalPrivateKey(k)
	if _, err := ParsePublicKey(privPEM); !errors.Is(err, ErrBadKey) {
		t.Fatalf("private key parsed as public: %v", err)
	}
	if _, err := ParsePublicKey([]byte("junk")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("junk parsed: %v", err)
	}
}

func TestEnvelopeVerify(t *testing.T) {
	const typ = "application/test"
	a, b, c := mustKey(t), mustKey(t), mustKey(t)
	payload := []byte(`{"x":1}`)
	signed := func(keys ...PrivateKey) *Envelope {
		e, err := Sign(typ, payload, keys...)
		if err != nil {
			t.Fatal(err)
		}
		// Round trip through JSON, as every reader sees it.
		data, _ := e.Marshal()
		e2, err := ParseEnvelope(data)
		if err != nil {
			t.Fatal(err)
		}
		return e2
	}
	tampered := signed(a)
	tampered.Payload = []byte(`{"x":2}`)
	flipped := signed(a)
	flipped.Signatures[0].Sig[3] ^= 1

	cases := []struct {
		name      string
		env       *Envelope
		trusted   []PublicKey
		threshold int
		want      error
	}{
		{"one trusted key", signed(a), []PublicKey{a.Public()}, 1, nil},
		{"two of two", signed(a, b), []PublicKey{a.Public(), b.Public()}, 2, nil},
		{"one of two below threshold", signed(a), []PublicKey{a.Public(), b.Public()}, 2, ErrThreshold},
		{"foreign key only", signed(c), []PublicKey{a.Public()}, 1, ErrUntrustedSigner},
		{"foreign plus trusted", signed(c, a), []PublicKey{a.Public()}, 1, nil},
		{"unsigned", signed(), []PublicKey{a.Public()}, 1, ErrUnsigned},
		{"payload tampered", tampered, []PublicKey{a.Public()}, 1, ErrBadSignature},
		{"signature flipped", flipped, []PublicKey{a.Public()}, 1, ErrBadSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.env.Verify(typ, tc.trusted, tc.threshold)
			if tc.want == nil && err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := signed(a).Verify("other/type", []PublicKey{a.Public()}, 1); !errors.Is(err, ErrBadEnvelope) {
		t.Fatalf("payload type confusion accepted: %v", err)
	}
	e := signed(a)
	if err := e.AddSignature(a); err == nil {
		t.Fatal("same key signed twice")
	}
}

func TestParseEnvelopeRejectsMalformed(t *testing.T) {
	for _, in := range []string{``, `{}`, `[]`, `{"payloadType":"x","payload":"!!"}`, `{"payloadType":"x","extra":1}`, `{"payloadType":"x"} {}`} {
		if _, err := ParseEnvelope([]byte(in)); !errors.Is(err, ErrBadEnvelope) {
			t.Errorf("ParseEnvelope(%q) = %v, want ErrBadEnvelope", in, err)
		}
	}
}
