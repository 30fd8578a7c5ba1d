// Package trust holds Tern's signing keys and the signature envelopes that carry them.
//
// Release keys are ed25519. Private keys are stored as PKCS#8 PEM ("PRIVATE KEY"),
// public keys as PKIX PEM ("PUBLIC KEY"), so that openssl and every other tool read
// them. A key is named by its key id: the hex SHA-256 of its PKIX DER encoding, the
// same bytes whatever file or tool holds it.
package trust

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrBadKey reports a key file that is not an ed25519 key in the expected PEM form.
var ErrBadKey = errors.New("not an ed25519 key in PEM form")

// PublicKey is an ed25519 public key with its key id.
type PublicKey struct {
	ID  string
	Key ed25519.PublicKey
}

// PrivateKey is an ed25519 private key with the key id of its public half.
type PrivateKey struct {
	ID  string
	Key ed25519.PrivateKey
}

// Public returns the public half of k.
func (k PrivateKey) Public() PublicKey {
	return PublicKey{ID: k.ID, Key: k.Key.Public().(ed25519.PublicKey)}
}

// KeyID returns the key id of pub: hex SHA-256 of its PKIX DER encoding.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// An ed25519.PublicKey of the right length always marshals.
		panic(fmt.Sprintf("trust: marshal ed25519 public key: %v", err))
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// ShortID returns the first 16 hex digits of a key id, for display.
func ShortID(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

// GenerateKey makes a new ed25519 release key.
func GenerateKey() (PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return PrivateKey{}, err
	}
	return PrivateKey{ID: KeyID(pub), Key: priv}, nil
}

// MarshalPrivateKey encodes k as PKCS#8 PEM.
func MarshalPrivateKey(k PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes k as PKIX PEM.
func MarshalPublicKey(k PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(k.Key)
	if err != nil {
		panic(fmt.Sprintf("trust: marshal ed25519 public key: %v", err))
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ParsePrivateKey decodes a PKCS#8 PEM ed25519 private key.
func ParsePrivateKey(data []byte) (PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return PrivateKey{}, fmt.Errorf("%w: want a PEM block of type PRIVATE KEY", ErrBadKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return PrivateKey{}, fmt.Errorf("%w: key is %T", ErrBadKey, k)
	}
	return PrivateKey{ID: KeyID(priv.Public().(ed25519.PublicKey)), Key: priv}, nil
}

// ParsePublicKey decodes a PKIX PEM ed25519 public key.
func ParsePublicKey(data []byte) (PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return PublicKey{}, fmt.Errorf("%w: want a PEM block of type PUBLIC KEY", ErrBadKey)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return PublicKey{}, fmt.Errorf("%w: key is %T", ErrBadKey, k)
	}
	return PublicKey{ID: KeyID(pub), Key: pub}, nil
}

// LoadPrivateKey reads a private key file. It refuses a file that others can read,
// as ssh does, because a release key that leaked is a fleet that can be taken over.
func LoadPrivateKey(path string) (PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return PrivateKey{}, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return PrivateKey{}, fmt.Errorf("private key %s: mode %04o lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return PrivateKey{}, err
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("private key %s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads a public key file.
func LoadPublicKey(path string) (PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return PublicKey{}, err
	}
	k, err := ParsePublicKey(data)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key %s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKeyDir reads every *.pub file of dir: the keys a device trusts.
func LoadPublicKeyDir(dir string) ([]PublicKey, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.pub"))
	if err != nil {
		return nil, err
	}
	var keys []PublicKey
	for _, p := range paths {
		k, err := LoadPublicKey(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// WriteKeyPair writes base+".key" (mode 0600) and base+".pub" (mode 0644). It refuses
// to overwrite an existing key: losing a release key can strand a fleet.
func WriteKeyPair(base string, k PrivateKey) error {
	base = strings.TrimSuffix(base, ".key")
	privPEM, err := MarshalPrivateKey(k)
	if err != nil {
		return err
	}
	for _, p := range []string{base + ".key", base + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists; refusing to overwrite a key", p)
		}
	}
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return err
	}
	if err := writeFileExcl(base+".key", privPEM, 0o600); err != nil {
		return err
	}
	return writeFileExcl(base+".pub", MarshalPublicKey(k.Public()), 0o644)
}

func writeFileExcl(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
