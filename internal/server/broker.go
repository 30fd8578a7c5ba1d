package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// Broker is the MQTT broker devices connect to, seen from the server: the
// embedded one (mochi-mqtt) or an external MQTT 5 broker. Either way it hands the
// server every message a device publishes under its own topics (deviceMessage),
// including the will that marks it offline.
type Broker interface {
	// Start begins serving; it returns once devices can connect.
	Start(ctx context.Context) error
	// Addr is the address devices connect to.
	Addr() string
	// Disconnect drops a device's connection, if it has one.
	Disconnect(deviceID string)
	// Publish sends a message to devices (QoS 1), retained if retain is set; it
	// returns once the broker holds it.
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
	// Close stops the broker.
	Close() error
}

// Errors the broker's authentication reports.
var (
	errNoClientCert = errors.New("no client certificate")
	errCertRevoked  = errors.New("certificate is not the device's current certificate")
)

// maxReported bounds a reported-state document.
const maxReported = 256 << 10

// authorizeDevice decides whether a verified client certificate may connect: it
// must be the certificate the directory currently holds for an active device (so
// a decommissioned device, or an older certificate of a re-enrolled one, is
// refused even though its chain verifies). It returns the device id.
func (s *Server) authorizeDevice(ctx context.Context, cert *x509.Certificate) (string, error) {
	d, err := s.deviceForCert(ctx, cert)
	return d.ID, err
}

// deviceForCert is authorizeDevice returning the device's record.
func (s *Server) deviceForCert(ctx context.Context, cert *x509.Certificate) (store.Device, error) {
	if cert == nil {
		return store.Device{}, errNoClientCert
	}
	id := cert.Subject.CommonName
	d, err := s.store.Device(ctx, "", id)
	if err != nil {
		return d, err
	}
	if d.Status != store.StatusActive {
		return d, fmt.Errorf("device %s is %s: %w", id, d.Status, store.ErrWrongState)
	}
	if d.CertFingerprint == "" || d.CertFingerprint != Fingerprint(cert.Raw) {
		return d, errCertRevoked
	}
	return d, nil
}

// deviceMessage handles one message a device published on its own topic (the
// broker's ACL already confined it there). A nil return means the message is
// recorded: the embedded broker acknowledges a QoS 1 publish only then.
func (s *Server) deviceMessage(ctx context.Context, id, remote, kind string, payload []byte) error {
	now := s.now()
	switch kind {
	case link.TopicStatus:
		var m link.StatusMessage
		if err := json.Unmarshal(payload, &m); err != nil {
			return fmt.Errorf("status from %s: %w", id, err)
		}
		switch m.State {
		case link.Online:
			if _, err := s.store.Online(ctx, id, m.Session, remote, now); err != nil {
				return err
			}
			s.log.Info("device online", "device", id, "remote", remote)
		case link.Offline:
			changed, err := s.store.Offline(ctx, id, m.Session, now)
			if err != nil {
				return err
			}
			if changed {
				s.log.Info("device offline", "device", id)
			}
		default:
			return fmt.Errorf("status from %s: unknown state %q", id, m.State)
		}
	case link.TopicReported:
		if len(payload) > maxReported {
			return fmt.Errorf("reported state from %s: %d bytes, over %d", id, len(payload), maxReported)
		}
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(payload, &probe); err != nil {
			return fmt.Errorf("reported state from %s: %w", id, err)
		}
		if _, err := s.store.Report(ctx, id, payload, now); err != nil {
			return err
		}
	case link.TopicEvents:
		return s.deviceEvent(ctx, id, payload)
	case link.TopicLogs:
		return s.deviceLogs(ctx, id, payload)
	default:
		s.log.Debug("device message ignored", "device", id, "kind", kind)
	}
	return nil
}

// clientCAs caches the pool of every account's device CA for the broker's TLS
// handshakes, refreshed when an account is created here or every 30 seconds (for
// accounts created by other replicas).
type clientCAs struct {
	mu      sync.Mutex
	pool    *x509.CertPool
	loaded  time.Time
	invalid bool
}

func (s *Server) clientCAPool(ctx context.Context, c *clientCAs) (*x509.CertPool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pool != nil && !c.invalid && time.Since(c.loaded) < 30*time.Second {
		return c.pool, nil
	}
	accts, err := s.store.Accounts(ctx)
	if err != nil {
		if c.pool != nil {
			return c.pool, nil
		}
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, a := range accts {
		if cert, err := parseCertPEM([]byte(a.CACert)); err == nil {
			pool.AddCert(cert)
		}
	}
	c.pool, c.loaded, c.invalid = pool, time.Now(), false
	return pool, nil
}
