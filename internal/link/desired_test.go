package link

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/trust"
)

func fixedKey(seed byte) trust.PrivateKey {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	if seed != 0 {
		s := make([]byte, 32)
		s[0] = seed
		priv = ed25519.NewKeyFromSeed(s)
	}
	return trust.PrivateKey{ID: trust.KeyID(priv.Public().(ed25519.PublicKey)), Key: priv}
}

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func doc(v uint64) *Desired {
	return &Desired{Device: "d-1", Version: v, Expires: t0.Add(time.Hour),
		Apps: []DesiredPackage{{Name: "hello", Version: "1.0.0", Manifest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}}}
}

func TestVerifyDesired(t *testing.T) {
	director, other := fixedKey(0), fixedKey(1)
	sign := func(d *Desired, k trust.PrivateKey) []byte {
		b, err := SignDesired(d, k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := sign(doc(5), director)
	if d, err := VerifyDesired(good, director.Public(), "d-1", 4, t0); err != nil || d.Version != 5 {
		t.Fatalf("good document: %v", err)
	}
	expired := doc(5)
	expired.Expires = t0
	dup := doc(5)
	dup.Apps = append(dup.Apps, dup.Apps[0])
	badPolicy := doc(5)
	badPolicy.DevMode = "sometimes"
	sinceAfter := doc(5)
	sinceAfter.Since = 6
	deny := doc(5)
	deny.DevMode = DevModeDeny
	if d, err := VerifyDesired(sign(deny, director), director.Public(), "d-1", 4, t0); err != nil || d.DevMode != DevModeDeny {
		t.Fatalf("deny policy: %+v %v", d, err)
	}
	cases := []struct {
		name string
		data []byte
		last uint64
		want error
	}{
		{"replayed", good, 5, ErrDesiredStale},
		{"older", good, 9, ErrDesiredStale},
		{"other key", sign(doc(5), other), 0, ErrDesiredSignature},
		{"other device", good, 0, nil},
		{"expired", sign(expired, director), 0, ErrDesiredExpired},
		{"repeated package", sign(dup, director), 0, ErrDesiredMalformed},
		{"unknown devmode policy", sign(badPolicy, director), 0, ErrDesiredMalformed},
		{"target set after the document", sign(sinceAfter, director), 0, ErrDesiredMalformed},
		{"garbage", []byte("{"), 0, ErrDesiredMalformed},
	}
	for _, tc := range cases {
		id := "d-1"
		if tc.name == "other device" {
			id, tc.want = "d-2", ErrDesiredDevice
		}
		if _, err := VerifyDesired(tc.data, director.Public(), id, tc.last, t0); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzVerifyDesired: whatever arrives on the desired topic, the device never
// panics and accepts only documents the director signed.
func FuzzVerifyDesired(f *testing.F) {
	director := fixedKey(0)
	good, _ := SignDesired(doc(3), director)
	f.Add(good)
	f.Add([]byte(`{"payloadType":"application/vnd.tern.desired.v1+json","payload":"e30=","signatures":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := VerifyDesired(data, director.Public(), "d-1", 0, t0)
		if err != nil {
			return
		}
		env, perr := trust.ParseEnvelope(data)
		if perr != nil {
			t.Fatalf("accepted an envelope that does not parse: %v", perr)
		}
		if _, verr := env.Verify(PayloadTypeDesired, []trust.PublicKey{director.Public()}, 1); verr != nil || d.Device != "d-1" {
			t.Fatalf("accepted a document not signed for d-1: %v", verr)
		}
	})
}
