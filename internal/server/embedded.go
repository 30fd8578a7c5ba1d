package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
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
	s     *Server
	mq    *mqtt.Server
	ln    *tlsListener
	cas   clientCAs
	admit *admission
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
	b.admit = newAdmission(maxConnecting(), 2*b.s.cfg.HandshakeTimeout)
	b.ln = &tlsListener{id: "tern-mqtts", addr: b.s.cfg.MQTTAddr, cfg: tlsCfg, timeout: b.s.cfg.HandshakeTimeout, log: b.s.log, admit: b.admit}
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
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnWillSent, mqtt.OnDisconnect}, []byte{b})
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
		h.b.admit.done(cl.Net.Remote)
		h.b.s.log.Warn("mqtt connection refused", "remote", cl.Net.Remote, "cn", st.PeerCertificates[0].Subject.CommonName, "client_id", cl.ID, "err", err)
		return false
	}
	return true
}

// OnDisconnect ends a connection's admission if it had not ended yet.
func (h *deviceHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if !cl.Net.Inline {
		h.b.admit.done(cl.Net.Remote)
	}
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
	if kind == link.TopicStatus {
		defer h.b.admit.done(cl.Net.Remote) // the device is connected and said so: admit the next
	}
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
	admit    *admission

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
	var retry acceptRetry
	for {
		l.admit.wait()
		conn, err := l.ln.Accept()
		if err != nil {
			l.admit.release()
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			retry.wait(l.log, "mqtt", err)
			continue
		}
		retry.reset()
		remote := conn.RemoteAddr().String()
		l.admit.admitted(remote)
		go func() {
			// The deadline stays until the MQTT CONNECT: the broker sets its own then.
			tc, err := handshake(conn, l.cfg, l.timeout)
			if err != nil {
				l.admit.done(remote)
				l.log.Debug("mqtt tls handshake failed", "remote", remote, "err", err)
				return
			}
			if err := establish(l.id, tc); err != nil {
				l.log.Debug("mqtt connection ended", "remote", remote, "err", err)
			}
			l.admit.done(remote)
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

// admission bounds the devices that are connecting at once: from the accepted
// TCP connection, through the TLS handshake, the MQTT CONNECT and its
// authorisation, to the device's online status being recorded (or the
// connection ending, or a time limit). The next connection waits in the kernel's
// accept queue until one of them is through.
//
// Without it, a fleet that reconnects at once (after a server restart, a network
// cut) starts thousands of handshakes that share the CPU and all finish late, then
// queues thousands of database writes, so most connections miss their deadlines:
// under a 10,000-device storm here nothing connected for a minute, and devices
// whose online status was refused stayed connected but listed offline. Bounded,
// the same work is done first come, first served, each step well within its
// deadline.
type admission struct {
	slots chan struct{}
	limit time.Duration

	mu      sync.Mutex
	gen     uint64
	pending map[string]admitted // remote address -> its admission
}

type admitted struct {
	gen   uint64
	timer *time.Timer // the safety release
}

func newAdmission(n int, limit time.Duration) *admission {
	return &admission{slots: make(chan struct{}, n), limit: limit, pending: map[string]admitted{}}
}

// maxConnecting is how many devices may be connecting at once: enough to keep
// every core busy while most wait on their device or on the database.
func maxConnecting() int { return 64 * runtime.GOMAXPROCS(0) }

// wait takes a slot; release gives back one not tied to a connection.
func (a *admission) wait()    { a.slots <- struct{}{} }
func (a *admission) release() { <-a.slots }

// admitted ties the slot just taken to a connection from remote; the slot comes
// back at done(remote), or after the time limit.
func (a *admission) admitted(remote string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.pending[remote]; ok { // the address was reused: the old connection is gone
		old.timer.Stop()
		delete(a.pending, remote)
		<-a.slots
	}
	a.gen++
	gen := a.gen
	a.pending[remote] = admitted{gen: gen, timer: time.AfterFunc(a.limit, func() { a.end(remote, gen) })}
}

// done ends remote's admission (once; later calls do nothing).
func (a *admission) done(remote string) { a.end(remote, 0) }

func (a *admission) end(remote string, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.pending[remote]
	if !ok || (gen != 0 && e.gen != gen) {
		return
	}
	e.timer.Stop()
	delete(a.pending, remote)
	<-a.slots // never blocks: the slot is held
}
