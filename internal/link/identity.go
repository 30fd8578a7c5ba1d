package link

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrNotEnrolled reports an identity directory that holds no completed enrolment.
var ErrNotEnrolled = errors.New("device is not enrolled")

// Files of an identity directory. identity.json is written last: its presence
// means every other file is complete, so a crash during enrolment leaves a device
// that enrolls again (with the same key, which the server recognises).
const (
	keyFile      = "device.key"    // ECDSA P-256, PKCS#8 PEM, mode 0600; never leaves the device
	certFile     = "device.crt"    // the device's certificate, CN = device id
	deviceCAFile = "device-ca.crt" // the account's device CA
	serverCAFile = "server-ca.crt" // the CA of the server's HTTPS and MQTT certificates
	trustDir     = "trust"         // release-*.pub and director.pub
	identityFile = "identity.json"
)

// Identity is an enrolled device's identity, as stored under its directory.
type Identity struct {
	Dir       string `json:"-"`
	DeviceID  string `json:"device_id"`
	ServerURL string `json:"server_url"`
	MQTTURL   string `json:"mqtt_url"`
}

// LoadIdentity reads the identity in dir (ErrNotEnrolled when there is none).
func LoadIdentity(dir string) (*Identity, error) {
	data, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, err
	}
	var id Identity
	if err := json.Unmarshal(data, &id); err != nil {
		return nil, fmt.Errorf("%s: %w", identityFile, err)
	}
	id.Dir = dir
	return &id, nil
}

// TrustDir is where the account's release keys and director key were written.
func (id *Identity) TrustDir() string { return filepath.Join(id.Dir, trustDir) }

// TLSConfig is the client configuration for the broker: the device's certificate,
// and the server CA as the only root.
func (id *Identity) TLSConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(id.Dir, certFile), filepath.Join(id.Dir, keyFile))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(id.Dir, serverCAFile))
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(caPEM)
	if b == nil {
		return nil, errors.New("server CA: no PEM block")
	}
	ca, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// The server CA is private to the server and pinned at enrolment, so any
		// certificate it issued is the server, whatever name the device used.
		InsecureSkipVerify: true,
		VerifyConnection:   verifyAgainst(ca),
	}, nil
}

// verifyAgainst checks that the peer's chain leads to root.
func verifyAgainst(root *x509.Certificate) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		roots := x509.NewCertPool()
		roots.AddCert(root)
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
}

// loadOrCreateKey returns the device key in dir, generating it (mode 0600) on
// first use. It is written before any request, so a retried enrolment presents the
// same key and is recognised as the same device.
func loadOrCreateKey(dir string) (*ecdsa.PrivateKey, error) {
	path := filepath.Join(dir, keyFile)
	data, err := os.ReadFile(path)
	if err == nil {
		b, _ := pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s: no PEM block", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s: not an ECDSA key", path)
		}
		return ek, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// writeAtomic writes data to path through a synced temporary file and a rename.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}
