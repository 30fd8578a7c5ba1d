package link

import (
	"errors"
	"strings"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	tok := Token{ID: "t-abc", Secret: "s3cr3t", CAFingerprint: strings.Repeat("0f", 32)}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("%+v %v", got, err)
	}
	if id, secret, err := ParseCredential(tok.String()); err != nil || id != tok.ID || secret != tok.Secret {
		t.Fatalf("credential from token: %s %s %v", id, secret, err)
	}
}

func TestParseTokenRejectsMalformed(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	for _, s := range []string{"", "tern1", "tern1.a.b", "tern2.a.b." + fp, "tern1..b." + fp, "tern1.a.b.zz", "tern1.a.b." + fp[:10], "tern1.a.b.c." + fp} {
		if _, err := ParseToken(s); !errors.Is(err, ErrBadToken) {
			t.Errorf("%q: %v", s, err)
		}
	}
}

func TestSplitTopic(t *testing.T) {
	cases := map[string][2]string{"tern/v1/d/d-1/status": {"d-1", "status"}, "tern/v1/d/d-1/cmd/resp": {"d-1", "cmd/resp"}}
	for topic, want := range cases {
		id, kind, ok := SplitTopic(topic)
		if !ok || id != want[0] || kind != want[1] {
			t.Errorf("%s: %s %s %v", topic, id, kind, ok)
		}
	}
	for _, bad := range []string{"tern/v1/d/", "tern/v1/d/x", "other/x/y", "tern/v1/d//status"} {
		if _, _, ok := SplitTopic(bad); ok {
			t.Errorf("%s accepted", bad)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("tern1.t-1.secret." + strings.Repeat("ab", 32))
	f.Add("tern1...")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("round trip of %q: %+v %v", s, again, err)
		}
	})
}
