package server

import (
	"errors"
	"net"
	"net/http"
	"net/url"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// postEnroll admits a device. The device proves possession of its key by the
// CSR's signature; its id is derived from that key, so asking again (a lost answer,
// a pending device polling) is the same device and consumes no further token use.
// Nothing is stored unless the whole request is valid.
func (s *Server) postEnroll(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req link.EnrollRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	tokID, secret, err := link.ParseCredential(req.Token)
	if err != nil {
		return err
	}
	csr, devID, err := checkCSR([]byte(req.CSR))
	if err != nil {
		return err
	}
	ctx := r.Context()
	tok, err := s.store.Token(ctx, tokID)
	if errors.Is(err, store.ErrNotFound) {
		return store.ErrTokenInvalid
	} else if err != nil {
		return err
	}
	ca, err := s.deviceCA(ctx, tok.AccountID)
	if err != nil {
		return err
	}
	now := s.now()
	var certPEM []byte
	d, err := s.store.Enroll(ctx, store.Enrollment{
		TokenID: tokID, TokenHash: hashSecret(secret), DeviceID: devID,
		KeyFingerprint: Fingerprint(csr.RawSubjectPublicKeyInfo), Now: now,
		Issue: func() (store.Cert, error) {
			cert, p, err := ca.deviceCert(csr, devID, now)
			if err != nil {
				return store.Cert{}, err
			}
			certPEM = p
			return store.Cert{Serial: cert.SerialNumber.Text(16), Fingerprint: Fingerprint(cert.Raw), NotAfter: cert.NotAfter}, nil
		},
	})
	if err != nil {
		return err
	}
	if d.Status == store.StatusPending || certPEM == nil {
		w.Header().Set("Retry-After", "5")
		return writeJSON(w, http.StatusAccepted, link.EnrollResponse{DeviceID: d.ID, Status: link.EnrollPending, RetryAfter: 5})
	}
	s.log.Info("device enrolled", "device", d.ID, "account", d.AccountID, "token", tokID)
	s.runner.requestPolicySync() // under a deny policy, its first document says so
	roots, err := s.trustRoots(r, d.AccountID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, link.EnrollResponse{
		DeviceID: d.ID, Status: link.EnrollActive, Certificate: string(certPEM), DeviceCA: string(ca.certPEM),
		ServerCA: string(s.serverCAPEM()), MQTTURL: s.mqttURL(r), Trust: roots,
	})
}

func (s *Server) trustRoots(r *http.Request, account string) (link.TrustRoots, error) {
	a, err := s.store.Account(r.Context(), account)
	if err != nil {
		return link.TrustRoots{}, err
	}
	keys, err := s.store.ReleaseKeys(r.Context(), account)
	if err != nil {
		return link.TrustRoots{}, err
	}
	roots := link.TrustRoots{ReleaseKeys: []string{}}
	for _, k := range keys {
		roots.ReleaseKeys = append(roots.ReleaseKeys, k.PublicKey)
	}
	director, err := trust.ParsePrivateKey([]byte(a.DirectorKey))
	if err != nil {
		return roots, err
	}
	roots.DirectorKey = string(trust.MarshalPublicKey(director.Public()))
	return roots, nil
}

// mqttURL is the broker address given to a device: configured, or the host the
// device reached us by with the broker's port.
func (s *Server) mqttURL(r *http.Request) string {
	if s.cfg.MQTTAdvertise != "" {
		return s.cfg.MQTTAdvertise
	}
	if s.cfg.Broker != "" {
		return s.cfg.Broker
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(r.Host); err == nil {
		host = h
	}
	_, port, _ := net.SplitHostPort(s.broker.Addr())
	return (&url.URL{Scheme: "mqtts", Host: net.JoinHostPort(host, port)}).String()
}
