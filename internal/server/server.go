// Package server is Tern's management service: the device directory, enrolment,
// the MQTT side of the device protocol (presence, reported state, events, and the
// signed desired state it publishes), accounts and API keys with roles, releases
// and the blobs devices download, phased campaigns, the event stream and webhooks.
//
// A Server owns one store.Store and one Broker. Several servers may share a
// PostgreSQL database (and an external broker) as replicas; every piece of state
// that must agree between them lives in the store.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// DefaultAccount is the account created at first start. Its admins are the
// service's administrators: only they may create and list accounts.
const DefaultAccount = "default"

// Config configures a Server. Zero fields take the defaults noted.
type Config struct {
	DataDir  string // required: database (SQLite), admin.token
	HTTPAddr string // HTTPS API and enrolment; default ":8443"
	MQTTAddr string // embedded broker's MQTT over mutual TLS; default ":8883"
	DB       string // postgres:// URL; default a SQLite file DataDir/tern.db
	// Broker is an external MQTT 5 broker's URL (mqtts://host:port); empty runs the
	// embedded broker on MQTTAddr.
	Broker string
	// BrokerCert and BrokerKey are the client certificate the server presents to an
	// external broker (PEM files); empty issues one from the server CA.
	BrokerCert, BrokerKey string
	// MQTTAdvertise is the broker URL given to devices; default mqtts://<host the
	// device used for enrolment>:<MQTT port>, or Broker when external.
	MQTTAdvertise string
	// Hosts are extra DNS names or IPs for the server certificate (localhost,
	// loopback and the hostname are always included).
	Hosts []string
	// TLSCert and TLSKey replace the server certificate issued by the server CA
	// (PEM files; the certificate file may carry its chain, whose last certificate
	// is then what enrolment tokens pin).
	TLSCert, TLSKey string
	// HandshakeTimeout bounds a TLS handshake on the HTTPS listener, and a device's
	// TLS handshake plus MQTT CONNECT on the broker's; default 10s.
	HandshakeTimeout time.Duration
	// WebhookRetryBase is the first retry delay of a failed webhook delivery,
	// doubled at each attempt; default 2s.
	WebhookRetryBase time.Duration
	// DesiredTTL is how long a signed desired-state document is valid; documents
	// are re-signed and published again when half of it has passed. Default 7 days.
	DesiredTTL time.Duration
	// CampaignTick is how often every running campaign is stepped (reports and
	// operator actions step it at once). Default 2s.
	CampaignTick time.Duration
	// MaxUpload bounds one release or package upload. Default 4 GiB.
	MaxUpload int64
	// LogRetention is how long device log lines are kept (default 7 days), and
	// LogMaxLines how many of its newest lines each device keeps (default 100,000).
	LogRetention time.Duration
	LogMaxLines  int
	// Out receives the first-start admin key (default os.Stdout).
	Out    io.Writer
	Logger *slog.Logger
}

// Server is a running management service.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store *store.Store
	now   func() time.Time

	serverCA      *authority
	caFingerprint string // what tokens pin: hex SHA-256 of the trust anchor's DER
	tlsCert       tls.Certificate
	broker        Broker

	httpLn  net.Listener
	httpSrv *http.Server
	httpCAs clientCAs // device CAs for client certificates on the HTTPS listener
	hooks   *webhooks
	blobs   *blobStore
	pub     *publisher
	runner  *runner

	authMu    sync.Mutex
	cas       map[string]*authority       // account id -> device CA, loaded lazily
	directors map[string]trust.PrivateKey // account id -> director key, loaded lazily
	wg        sync.WaitGroup
	cancel    context.CancelFunc
}

// Start opens the store, creates what a first start needs, binds the HTTPS and
// MQTT listeners and serves in the background until Close.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("server: a data directory is required")
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":8443"
	}
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = ":8883"
	}
	if cfg.DB == "" {
		cfg.DB = filepath.Join(cfg.DataDir, "tern.db")
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DesiredTTL == 0 {
		cfg.DesiredTTL = 7 * 24 * time.Hour
	}
	if cfg.LogRetention == 0 {
		cfg.LogRetention = 7 * 24 * time.Hour
	}
	if cfg.LogMaxLines == 0 {
		cfg.LogMaxLines = 100_000
	}
	if cfg.CampaignTick == 0 {
		cfg.CampaignTick = 2 * time.Second
	}
	if cfg.MaxUpload == 0 {
		cfg.MaxUpload = 4 << 30
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, cfg.DB)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, store: st, now: func() time.Time { return time.Now().UTC() }, cas: map[string]*authority{},
		directors: map[string]trust.PrivateKey{}}
	s.pub = &publisher{s: s}
	s.runner = newRunner(s)
	if err := s.start(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context) error {
	if err := s.bootstrap(ctx); err != nil {
		return fmt.Errorf("first start: %w", err)
	}
	var err error
	if s.blobs, err = newBlobStore(s.cfg.DataDir); err != nil {
		return fmt.Errorf("blob store: %w", err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if s.cfg.Broker != "" {
		s.broker, err = newExternalBroker(s)
	} else {
		s.broker, err = newEmbeddedBroker(s)
	}
	if err != nil {
		return err
	}
	if err := s.broker.Start(bctx); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	s.httpLn, err = net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return err
	}
	// Devices fetch artifacts with their client certificate; people and enrolling
	// devices come without one.
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}, // NextProtos: the HTTP server then serves h2
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			pool, err := s.clientCAPool(hello.Context(), &s.httpCAs)
			if err != nil {
				return nil, err
			}
			return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.tlsCert},
				ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool, NextProtos: []string{"h2", "http/1.1"}}, nil
		}}
	s.httpSrv = &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return bctx },
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ln := newHandshakeListener(s.httpLn, tlsCfg, s.cfg.HandshakeTimeout, s.log)
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("https server", "err", err)
		}
	}()
	s.hooks = newWebhooks(s)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.hooks.run(bctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.runner.run(bctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.pruneLogs(bctx) }()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if n, err := s.blobs.gc(bctx, s.store.BlobReferenced, time.Hour); err != nil && bctx.Err() == nil {
			s.log.Warn("blob garbage collection", "err", err)
		} else if n > 0 {
			s.log.Info("unreferenced blobs removed", "blobs", n)
		}
	}()
	s.log.Info("tern server started", "https", s.httpLn.Addr().String(), "mqtt", s.broker.Addr(),
		"db", string(s.store.Dialect()), "ca_fingerprint", s.caFingerprint)
	return nil
}

// HTTPAddr is the bound address of the HTTPS listener.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// MQTTAddr is the bound address of the embedded broker (or the external broker's).
func (s *Server) MQTTAddr() string { return s.broker.Addr() }

// CAFingerprint is what enrolment tokens and `tern fleet login` pin.
func (s *Server) CAFingerprint() string { return s.caFingerprint }

// Store is the server's store (for tests and tools in this module).
func (s *Server) Store() *store.Store { return s.store }

// Close stops serving: open event streams end, devices are disconnected.
func (s *Server) Close() error {
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.httpSrv.Shutdown(ctx)
		cancel()
	}
	if s.cancel != nil {
		s.cancel()
	}
	if s.broker != nil {
		s.broker.Close()
	}
	s.wg.Wait()
	return s.store.Close()
}

// Run starts a server and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}

// serverCASetting holds the server CA, shared by replicas through the store.
const serverCASetting = "server_ca"

type caPair struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// bootstrap makes, once, what every later start relies on: the server CA, the
// default account with its device CA and director key, and an admin API key. It is
// safe to crash anywhere in it: each piece is created only when absent, and the
// admin key is written to admin.token before it is stored, so a key that works was
// always shown.
func (s *Server) bootstrap(ctx context.Context) error {
	now := s.now()
	certPEM, keyPEM, err := newAuthority("Tern server CA", now)
	if err != nil {
		return err
	}
	candidate, _ := json.Marshal(caPair{Cert: string(certPEM), Key: string(keyPEM)})
	v, err := s.store.InitSetting(ctx, serverCASetting, string(candidate))
	if err != nil {
		return err
	}
	var pair caPair
	if err := json.Unmarshal([]byte(v), &pair); err != nil {
		return fmt.Errorf("server CA setting: %w", err)
	}
	if s.serverCA, err = loadAuthority([]byte(pair.Cert), []byte(pair.Key)); err != nil {
		return err
	}
	if err := s.loadTLS(now); err != nil {
		return err
	}
	acct, err := s.store.AccountByName(ctx, DefaultAccount)
	if errors.Is(err, store.ErrNotFound) {
		if acct, err = s.createAccount(ctx, DefaultAccount); errors.Is(err, store.ErrExists) {
			acct, err = s.store.AccountByName(ctx, DefaultAccount) // another replica won
		}
	}
	if err != nil {
		return err
	}
	keys, err := s.store.APIKeys(ctx, acct.ID)
	if err != nil || len(keys) > 0 {
		return err
	}
	secret, rec, err := newAPIKey(acct.ID, "bootstrap admin", store.RoleAdmin, now)
	if err != nil {
		return err
	}
	tokenPath := filepath.Join(s.cfg.DataDir, "admin.token")
	if err := writeFileAtomic(tokenPath, []byte(secret+"\n"), 0o600); err != nil {
		return err
	}
	if err := s.store.CreateAPIKey(ctx, rec); err != nil {
		return err
	}
	fmt.Fprintf(s.cfg.Out, "Admin API key (shown once; also in %s):\n  %s\nServer CA fingerprint (sha256): %s\nLog in with:\n  tern fleet login https://<this-host>%s --key %s --ca-fingerprint %s\n",
		tokenPath, secret, s.caFingerprint, portOf(s.cfg.HTTPAddr), secret, s.caFingerprint)
	return nil
}

// loadTLS builds the certificate the HTTPS API and the embedded broker present.
func (s *Server) loadTLS(now time.Time) error {
	if s.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("tls certificate: %w", err)
		}
		s.tlsCert = cert
		s.caFingerprint = Fingerprint(cert.Certificate[len(cert.Certificate)-1])
		return nil
	}
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, s.cfg.Hosts...)
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	certPEM, keyPEM, err := s.serverCA.serverCert(hosts, now)
	if err != nil {
		return err
	}
	chain := append(append([]byte{}, certPEM...), s.serverCA.certPEM...)
	if s.tlsCert, err = tls.X509KeyPair(chain, keyPEM); err != nil {
		return err
	}
	s.caFingerprint = Fingerprint(s.serverCA.cert.Raw)
	return nil
}

// serverCAPEM is the trust anchor devices and CLIs pin.
func (s *Server) serverCAPEM() []byte {
	return pemBlock("CERTIFICATE", s.tlsCert.Certificate[len(s.tlsCert.Certificate)-1])
}

// createAccount makes an account with a new device CA and director key.
func (s *Server) createAccount(ctx context.Context, name string) (store.Account, error) {
	now := s.now()
	caCert, caKey, err := newAuthority("Tern device CA: "+name, now)
	if err != nil {
		return store.Account{}, err
	}
	director, err := trust.GenerateKey()
	if err != nil {
		return store.Account{}, err
	}
	directorPEM, err := trust.MarshalPrivateKey(director)
	if err != nil {
		return store.Account{}, err
	}
	a := store.Account{ID: "a-" + randomID(8), Name: name, CACert: string(caCert), CAKey: string(caKey),
		DirectorKey: string(directorPEM), CreatedAt: now}
	if err := s.store.CreateAccount(ctx, a); err != nil {
		return a, err
	}
	if b, ok := s.broker.(*embeddedBroker); ok {
		b.invalidateCAs()
	}
	s.httpCAs.mu.Lock()
	s.httpCAs.invalid = true
	s.httpCAs.mu.Unlock()
	return a, nil
}

// deviceCA returns an account's device CA.
func (s *Server) deviceCA(ctx context.Context, account string) (*authority, error) {
	s.authMu.Lock()
	ca, ok := s.cas[account]
	s.authMu.Unlock()
	if ok {
		return ca, nil
	}
	a, err := s.store.Account(ctx, account)
	if err != nil {
		return nil, err
	}
	if ca, err = loadAuthority([]byte(a.CACert), []byte(a.CAKey)); err != nil {
		return nil, err
	}
	s.authMu.Lock()
	s.cas[account] = ca
	s.authMu.Unlock()
	return ca, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
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
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return ""
	}
	return ":" + port
}
