package devmode

import (
	"crypto/rand"
	"fmt"
	"strings"
	"time"
)

// Pairing code limits. A code carries 40 bits and allows MaxCodeAttempts
// attempts (each costs the device one slow key derivation, so this also bounds
// the work a flood of requests can cause), so guessing online is hopeless;
// offline guessing is what the slow derivation in pair.go is for.
const (
	CodeTTL         = 5 * time.Minute
	MaxCodeAttempts = 3
	codeLen         = 8
	// codeAlphabet is Crockford's base32: no I, L, O or U, so a code read aloud
	// or copied by hand survives.
	codeAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)

// Code is a one-time pairing code shown on the device: short, valid for CodeTTL,
// used once, and tried at most MaxCodeAttempts times.
type Code struct {
	Value    string    `json:"value"` // codeLen symbols of codeAlphabet, no separator
	Expires  time.Time `json:"expires"`
	Attempts int       `json:"attempts"` // counted before each attempt is checked
}

// NewCode makes a fresh random code valid until now+CodeTTL.
func NewCode(now time.Time) (Code, error) {
	var b [codeLen]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Code{}, err
	}
	for i := range b {
		b[i] = codeAlphabet[int(b[i])%len(codeAlphabet)] // 256 is a multiple of 32: no bias
	}
	return Code{Value: string(b[:]), Expires: now.Add(CodeTTL)}, nil
}

// Usable reports whether the code may still be tried at now.
func (c Code) Usable(now time.Time) bool {
	return c.Value != "" && now.Before(c.Expires) && c.Attempts < MaxCodeAttempts
}

// String shows the code as people type it: XXXX-XXXX.
func (c Code) String() string {
	if len(c.Value) != codeLen {
		return c.Value
	}
	return c.Value[:4] + "-" + c.Value[4:]
}

// NormalizeCode turns a code as typed (any case, dashes or spaces, O for 0, I
// or L for 1) into its canonical form.
func NormalizeCode(s string) (string, error) {
	var b strings.Builder
	for _, r := range strings.ToUpper(s) {
		switch r {
		case '-', ' ', '\t':
			continue
		case 'O':
			r = '0'
		case 'I', 'L':
			r = '1'
		}
		if !strings.ContainsRune(codeAlphabet, r) {
			return "", fmt.Errorf("pairing code %q: unexpected %q", s, r)
		}
		b.WriteRune(r)
	}
	if b.Len() != codeLen {
		return "", fmt.Errorf("pairing code %q: want %d symbols (XXXX-XXXX)", s, codeLen)
	}
	return b.String(), nil
}
