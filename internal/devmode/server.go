package devmode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Device is what the LAN server needs from the device's agent.
type Device interface {
	// DevEnabled reports whether developer mode is on now.
	DevEnabled() bool
	// DevPaired reports whether a workstation certificate is paired now.
	DevPaired(fingerprint string) bool
	// DevPair checks a pairing request made by the workstation whose
	// certificate has the given fingerprint, records the pairing, and answers.
	DevPair(ctx context.Context, req PairRequest, fingerprint, remote string) (PairResponse, error)
	// DevListening reports where the LAN API listens; "" when it closed.
	DevListening(addr string)
	// DevInfo describes the device for discovery.
	DevInfo() DeviceInfo
}

// Announcement is a running announcement of the LAN API (mDNS).
type Announcement interface {
	// Update replaces the announced description (apps and versions change
	// while developer mode is on).
	Update(info DeviceInfo) error
	Close() error
}

// AdvertiseFunc starts announcing the LAN API on port.
type AdvertiseFunc func(ctx context.Context, info DeviceInfo, port int) (Announcement, error)

// refreshEvery is how many polls pass between refreshes of the announcement.
const refreshEvery = 25

// Server serves the device's API on the LAN while, and only while, developer
// mode is on: it follows Device.DevEnabled, opening the listener (and the
// discovery announcement) when it turns on and closing both, with every
// connection, when it turns off.
type Server struct {
	Addr      string       // listen address, e.g. ":7443"
	Handler   http.Handler // the agent's API: the same one the unix socket serves
	Device    Device
	Identity  *Identity     // the device's LAN certificate
	Advertise AdvertiseFunc // nil: no discovery
	Log       *slog.Logger
	// Poll is how often developer mode is checked (default 200ms). Trust does
	// not wait for it: every handshake and every request asks Device again.
	Poll time.Duration
}

// ErrUnpairedCert is the handshake error for a certificate the device has not
// paired (the client sees a TLS "bad certificate" alert).
var ErrUnpairedCert = errors.New("client certificate not paired with this device")

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) {
	poll := s.Poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	s.Device.DevListening("")
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var cur *lanSession
	var lastErr string
	for n := 0; ; n++ {
		on := s.Device.DevEnabled()
		switch {
		case on && cur == nil:
			var err error
			if cur, err = s.open(ctx, log); err != nil {
				if err.Error() != lastErr {
					log.Error("developer mode: LAN API", "addr", s.Addr, "err", err)
					lastErr = err.Error()
				}
			} else {
				lastErr = ""
				log.Info("developer mode: LAN API open", "addr", cur.addr, "fingerprint", ShortID(s.Identity.Fingerprint))
			}
		case on && cur != nil && cur.ann != nil && n%refreshEvery == 0:
			if info := s.Device.DevInfo(); info != cur.info {
				if err := cur.ann.Update(info); err != nil {
					log.Warn("developer mode: mDNS update", "err", err)
				}
				cur.info = info
			}
		case !on && cur != nil:
			cur.close()
			s.Device.DevListening("")
			log.Info("developer mode: LAN API closed")
			cur = nil
		}
		select {
		case <-ctx.Done():
			// ternd is stopping and its store may close before this runs: the
			// recorded address stays, and the next start rewrites it.
			if cur != nil {
				cur.close()
			}
			return
		case <-tick.C:
		}
	}
}

// lanSession is one opening of the LAN API.
type lanSession struct {
	addr   string
	srv    *http.Server
	cancel context.CancelFunc
	ann    Announcement // nil without discovery
	info   DeviceInfo   // what ann announces
}

func (l *lanSession) close() {
	if l.ann != nil {
		l.ann.Close()
	}
	l.cancel() // ends hijacked streams (exec), which srv.Close does not track
	l.srv.Close()
}

func (s *Server) open(ctx context.Context, log *slog.Logger) (*lanSession, error) {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	srv := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return runCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go srv.Serve(tls.NewListener(ln, s.TLSConfig()))
	l := &lanSession{addr: ln.Addr().String(), srv: srv, cancel: cancel}
	if s.Advertise != nil {
		port := ln.Addr().(*net.TCPAddr).Port
		l.info = s.Device.DevInfo()
		if l.ann, err = s.Advertise(runCtx, l.info, port); err != nil {
			l.ann = nil
			// The API still works by address; only discovery is missing.
			log.Warn("developer mode: mDNS announcement", "err", err)
		}
	}
	s.Device.DevListening(l.addr)
	return l, nil
}

// TLSConfig is the LAN API's TLS: 1.3 only, the device's certificate, and a
// client certificate required on every connection. A connection that names
// PairServerName may present any certificate (it can only pair); any other
// must present a certificate paired while developer mode is on, or the
// handshake fails.
func (s *Server) TLSConfig() *tls.Config {
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{s.Identity.Cert},
		NextProtos:   []string{"http/1.1"},
		ClientAuth:   tls.RequireAnyClientCert,
	}
	pairing := base.Clone()
	paired := base.Clone()
	paired.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 || !s.Device.DevEnabled() || !s.Device.DevPaired(Fingerprint(raw[0])) {
			return ErrUnpairedCert
		}
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if hello.ServerName == PairServerName {
				return pairing, nil
			}
			return paired, nil
		},
	}
}

// handler admits a request only from a paired certificate, checked again on
// every request so that disabling developer mode or unpairing also ends
// connections kept alive; a pairing connection reaches only PairPath.
func (s *Server) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			writeProblem(w, http.StatusUnauthorized, "no client certificate", ErrUnpairedCert.Error())
			return
		}
		fp := Fingerprint(r.TLS.PeerCertificates[0].Raw)
		if r.TLS.ServerName == PairServerName {
			if r.Method == http.MethodPost && r.URL.Path == PairPath {
				s.servePair(w, r, fp)
				return
			}
			writeProblem(w, http.StatusForbidden, "pair first", "a pairing connection only pairs")
			return
		}
		if !s.Device.DevEnabled() || !s.Device.DevPaired(fp) {
			writeProblem(w, http.StatusForbidden, "not paired", ErrUnpairedCert.Error())
			return
		}
		s.Handler.ServeHTTP(w, r)
	})
}

func (s *Server) servePair(w http.ResponseWriter, r *http.Request, fp string) {
	var req PairRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		writeProblem(w, http.StatusBadRequest, "bad pairing request", err.Error())
		return
	}
	resp, err := s.Device.DevPair(r.Context(), req, fp, r.RemoteAddr)
	switch {
	case err == nil:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	case errors.Is(err, ErrBadCode):
		writeProblem(w, http.StatusUnauthorized, "pairing refused", err.Error())
	case errors.Is(err, ErrNoCode):
		writeProblem(w, http.StatusGone, "pairing refused", err.Error())
	case errors.Is(err, ErrDisabled):
		writeProblem(w, http.StatusForbidden, "pairing refused", err.Error())
	default:
		writeProblem(w, http.StatusBadRequest, "pairing refused", err.Error())
	}
}

func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(problem{Title: title, Status: status, Detail: detail})
}
