package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tern-iot/tern/internal/link"
)

// embeddedBroker runs mochi-mqtt in the server process over mutual TLS.
type embeddedBroker struct {
	s   *Server
	mq  *mqtt.Server
	ln  *tlsListener
	cas clientCAs
}

func newEmbeddedBroker(s *Server) (*embeddedBroker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxReported + 4096
	caps.MaximumClientWritesPending = 1024 // 64 KiB per client at the default 8192 is a lot for small devices' traffic
	caps.MaximumSessionExpiryInterval = 3600
	caps.MaximumMessageExpiryInterval = 7 * 24 * 3600
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		logger = s.log.With("component", "mqtt")
	}
	b := &embeddedBroker{s: s}
	b.mq = mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: logger})
	return b, nil
}

func (b *embeddedBroker) Start(ctx context.Context) error {
	// A broker that has just started holds no connection, whatever the database
	// remembers from before a crash.
	if err := b.s.store.AllOffline(ctx, b.s.now()); err != nil {
		return err
	}
	if err := b.mq.AddHook(&deviceHook{b: b}, nil); err != nil {
		return err
	}
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			pool, err := b.s.clientCAPool(hello.Context(), &b.cas)
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{b.s.tlsCert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool,
			}, nil
		},
	}
	b.ln = &tlsListener{id: "tern-mqtts", addr: b.s.cfg.MQTTAddr, cfg: tlsCfg, timeout: b.s.cfg.HandshakeTimeout, log: b.s.log}
	if err := b.mq.AddListener(b.ln); err != nil {
		return err
	}
	return b.mq.Serve()
}

func (b *embeddedBroker) Addr() string {
	if b.ln != nil && b.ln.ln != nil {
		return b.ln.ln.Addr().String()
	}
	return b.s.cfg.MQTTAddr
}

func (b *embeddedBroker) Disconnect(id string) {
	if cl, ok := b.mq.Clients.Get(id); ok && !cl.Net.Inline {
		b.mq.DisconnectClient(cl, packets.ErrNotAuthorized)
	}
}

func (b *embeddedBroker) Close() error { return b.mq.Close() }

// Publish hands a message to the broker's inline client; a retained one is kept
// (in memory: the server publishes every desired state again at start).
func (b *embeddedBroker) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	return b.mq.Publish(topic, payload, retain, 1)
}

// invalidateCAs makes the next handshake reload the account CAs.
func (b *embeddedBroker) invalidateCAs() {
	b.cas.mu.Lock()
	b.cas.invalid = true
	b.cas.mu.Unlock()
}

// deviceHook authenticates devices by their certificate and confines each to its
// own topics.
type deviceHook struct {
	mqtt.HookBase
	b *embeddedBroker
}

func (h *deviceHook) ID() string { return "tern-devices" }

func (h *deviceHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnWillSent}, []byte{b})
}

// OnConnectAuthenticate admits a client whose verified certificate is a device's
// current one, and only under the client id that certificate names, so no device
// can take over another's session.
func (h *deviceHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return false
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := h.b.s.authorizeDevice(ctx, st.PeerCertificates[0])
	if err != nil || cl.ID != id {
		h.b.s.log.Warn("mqtt connection refused", "remote", cl.Net.Remote, "cn", st.PeerCertificates[0].Subject.CommonName, "client_id", cl.ID, "err", err)
		return false
	}
	return true
}

// OnACLCheck confines a device to topics (and filters) under tern/v1/d/{its id}/.
func (h *deviceHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	return strings.HasPrefix(topic, link.TopicPrefix+cl.ID+"/")
}

// OnPublish records a device's message before the broker acknowledges it: an
// error becomes a negative PUBACK (MQTT 5) and the device publishes again.
func (h *deviceHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	id, kind, ok := link.SplitTopic(pk.TopicName)
	if !ok || id != cl.ID {
		return pk, packets.ErrNotAuthorized
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.b.s.deviceMessage(ctx, id, cl.Net.Remote, kind, pk.Payload); err != nil {
		h.b.s.log.Warn("device message refused", "device", id, "kind", kind, "err", err)
		return pk, packets.ErrUnspecifiedError
	}
	return pk, nil
}

// OnWillSent records a device's will: its connection ended without a DISCONNECT.
func (h *deviceHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	id, kind, ok := link.SplitTopic(pk.TopicName)
	if !ok || id != cl.ID {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.b.s.deviceMessage(ctx, id, cl.Net.Remote, kind, pk.Payload); err != nil {
		h.b.s.log.Warn("device will refused", "device", id, "err", err)
	}
}

// tlsListener is a mochi listener that bounds the TLS handshake and the MQTT
// CONNECT by one deadline (mochi sets none, so a client that stalls would hold a
// descriptor forever). mochi replaces the deadline with its keepalive one once the
// CONNECT is read.
type tlsListener struct {
	id, addr string
	cfg      *tls.Config
	timeout  time.Duration
	log      *slog.Logger

	mu     sync.Mutex
	ln     net.Listener
	closed bool
}

func (l *tlsListener) ID() string       { return l.id }
func (l *tlsListener) Address() string  { return l.addr }
func (l *tlsListener) Protocol() string { return "mqtts" }

func (l *tlsListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			conn.SetDeadline(time.Now().Add(l.timeout))
			tc := tls.Server(conn, l.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
			err := tc.HandshakeContext(ctx)
			cancel()
			if err != nil {
				l.log.Debug("mqtt tls handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
				conn.Close()
				return
			}
			if err := establish(l.id, tc); err != nil {
				l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		closeClients(l.id)
	}
	if l.ln != nil {
		l.ln.Close()
	}
}
