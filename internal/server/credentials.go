package server

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/store"
)

// errBadKey reports an API key string that does not parse.
var errBadKey = errors.New("malformed API key")

const apiKeyPrefix = "ternk"

// newAPIKey makes an API key: the secret string (shown once: "ternk.<id>.<secret>")
// and the record to store (which holds only the secret's hash).
func newAPIKey(account, name string, role store.Role, now time.Time) (string, store.APIKey, error) {
	id, secret := randomID(6), randomSecret()
	return apiKeyPrefix + "." + id + "." + secret,
		store.APIKey{ID: id, AccountID: account, Name: name, Role: role, Hash: hashSecret(secret), CreatedAt: now}, nil
}

// parseAPIKey splits an API key string into its id and secret.
func parseAPIKey(s string) (id, secret string, err error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != apiKeyPrefix || parts[1] == "" || parts[2] == "" {
		return "", "", errBadKey
	}
	return parts[1], parts[2], nil
}

// hashSecret is how secrets are stored. The secrets are 160 random bits, so a
// plain SHA-256 is as good as a slow hash here and keeps every request cheap.
func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// randomID returns n random bytes in hex.
func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// randomSecret returns 160 random bits in lower-case base32 (no dots, no padding).
func randomSecret() string {
	b := make([]byte, 20)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}
