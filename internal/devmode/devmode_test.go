package devmode

import (
	"testing"
	"time"
)

func TestNormalizeAddrAddsDefaultPort(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"10.0.0.2", "10.0.0.2:7443"},
		{"10.0.0.2:8443", "10.0.0.2:8443"},
		{"gateway.local", "gateway.local:7443"},
		{"tern://gateway.local:9000", "gateway.local:9000"},
		{"fe80::1", "[fe80::1]:7443"},
		{"[fe80::1]", "[fe80::1]:7443"},
		{"[fe80::1]:7000", "[fe80::1]:7000"},
	} {
		got, err := NormalizeAddr(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizeAddr(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "host:port", "a b", "10.0.0.1:99999"} {
		if got, err := NormalizeAddr(bad); err == nil {
			t.Errorf("NormalizeAddr(%q) = %q, want an error", bad, got)
		}
	}
}

func TestCodeIsTypedForgivinglyAndExpires(t *testing.T) {
	now := time.Now()
	c, err := NewCode(now)
	if err != nil {
		t.Fatal(err)
	}
	for _, typed := range []string{c.String(), c.Value, " " + c.String() + " "} {
		if got, err := NormalizeCode(typed); err != nil || got != c.Value {
			t.Errorf("NormalizeCode(%q) = %q, %v; want %q", typed, got, err, c.Value)
		}
	}
	if got, _ := NormalizeCode("oil0-abcd"); got != "0110ABCD" {
		t.Errorf("O, I and L read as digits: got %q", got)
	}
	for _, bad := range []string{"ABC", "ABCD-EFGHJ", "ABCD-EFG!", "ABCD-EFGU"} {
		if _, err := NormalizeCode(bad); err == nil {
			t.Errorf("NormalizeCode(%q) accepted", bad)
		}
	}
	if !c.Usable(now) || c.Usable(now.Add(CodeTTL)) {
		t.Error("a code is usable for CodeTTL, then not")
	}
	c.Attempts = MaxCodeAttempts
	if c.Usable(now) {
		t.Error("a code tried MaxCodeAttempts times is burned")
	}
}

func TestPairingMACsBindCodeAndBothCertificates(t *testing.T) {
	k, err := DeriveKey("ABCD-EFGH", "devfp", "wsfp")
	if err != nil {
		t.Fatal(err)
	}
	req := PairRequest{Name: "dev@laptop", DeveloperKey: "PEM"}
	if err := k.SealRequest(&req); err != nil {
		t.Fatal(err)
	}
	if err := k.VerifyRequest(&req); err != nil {
		t.Fatalf("same key: %v", err)
	}
	for name, other := range map[string][3]string{
		"another code":                 {"ABCD-EFGJ", "devfp", "wsfp"},
		"relayed to another device":    {"ABCD-EFGH", "mitmfp", "wsfp"},
		"relayed from another machine": {"ABCD-EFGH", "devfp", "mitmfp"},
	} {
		k2, _ := DeriveKey(other[0], other[1], other[2])
		if err := k2.VerifyRequest(&req); err != ErrBadCode {
			t.Errorf("%s: %v, want ErrBadCode", name, err)
		}
	}
	tampered := req
	tampered.DeveloperKey = "another key"
	if err := k.VerifyRequest(&tampered); err != ErrBadCode {
		t.Errorf("swapped developer key: %v, want ErrBadCode", err)
	}
	resp := PairResponse{Device: DeviceInfo{ID: "x", Name: "gw"}, Fingerprint: "devfp"}
	if err := k.SealResponse(&req, &resp); err != nil {
		t.Fatal(err)
	}
	if err := k.VerifyResponse(&req, &resp); err != nil {
		t.Fatal(err)
	}
	resp.Fingerprint = "mitmfp"
	if err := k.VerifyResponse(&req, &resp); err == nil {
		t.Error("a response naming another certificate verified")
	}
}

func FuzzNormalizeCode(f *testing.F) {
	for _, s := range []string{"ABCD-EFGH", "oil0 abcd", "", "----", "ÀBCD-EFGH"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := NormalizeCode(s)
		if err != nil {
			return
		}
		if again, err := NormalizeCode(Code{Value: c}.String()); err != nil || again != c {
			t.Fatalf("%q -> %q -> %q, %v", s, c, again, err)
		}
	})
}

func FuzzNormalizeAddr(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "[fe80::1%eth0]:7443", "host:1", "tern://x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := NormalizeAddr(s)
		if err != nil {
			return
		}
		if again, err := NormalizeAddr(a); err != nil || again != a {
			t.Fatalf("%q -> %q -> %q, %v", s, a, again, err)
		}
	})
}
