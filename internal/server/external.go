package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/tern-iot/tern/internal/link"
)

// ServerClientCN is the certificate name the server uses towards an external
// broker; the broker's ACL gives it every device topic.
const ServerClientCN = "tern-server"

// externalBroker is an MQTT 5 broker run by someone else (e.g. Mosquitto). The
// server connects to it as a client with a persistent session and subscribes to
// every device's status and reported topics; the broker itself authenticates
// devices by certificate and confines them with its ACL. The server prepares the
// broker's TLS and ACL files under DataDir/broker/ (see docs/server.md).
type externalBroker struct {
	s     *Server
	u     *url.URL
	cm    *autopaho.ConnectionManager
	ctx   context.Context
	lanes *lanes
}

// externalLanes is how many device messages from the external broker are handled
// at once. All of them arrive on the server's one connection; handled one at a
// time, each waits for the previous one's database write, and a campaign step
// holding the database stalls them all (measured: a 20,000-device campaign
// through Mosquitto stopped advancing). In lanes, the store's group commit
// batches their writes as it does for the embedded broker's connections.
const externalLanes = 64

// laneDepth is how many messages wait in a lane.
const laneDepth = 64

// handle stores one device message, then acknowledges it to the broker. A
// message that timed out waiting for the database is tried again (acknowledgements
// go out in order, so leaving one out would hold up every later one); one the
// server refuses (malformed, unknown device) is acknowledged and dropped; and
// none is acknowledged once the server is stopping, so the broker delivers it
// again after the restart.
func (b *externalBroker) handle(pr paho.PublishReceived) {
	if id, kind, ok := link.SplitTopic(pr.Packet.Topic); ok {
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			mctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
			err := b.s.deviceMessage(mctx, id, "", kind, pr.Packet.Payload)
			cancel()
			if b.ctx.Err() != nil {
				return
			}
			if err == nil {
				break
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				b.s.log.Warn("device message refused", "device", id, "kind", kind, "err", err)
				break
			}
			b.s.log.Warn("device message not stored in time; trying again", "device", id, "kind", kind)
			select {
			case <-time.After(wait):
			case <-b.ctx.Done():
				return
			}
		}
	}
	// After a reconnect the packet is no longer tracked (ErrPacketNotFound):
	// the broker sends it again.
	pr.Client.Ack(pr.Packet)
}

// lanes handle messages concurrently, each device's in one lane so that they are
// handled in the order they arrived (a device's online before its offline).
type lanes struct {
	ctx context.Context
	ch  []chan paho.PublishReceived
}

func newLanes(ctx context.Context, n int, handle func(paho.PublishReceived)) *lanes {
	l := &lanes{ctx: ctx}
	for range n {
		ch := make(chan paho.PublishReceived, laneDepth)
		l.ch = append(l.ch, ch)
		go func() {
			for {
				select {
				case pr := <-ch:
					handle(pr)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return l
}

// dispatch queues a message in its device's lane; a full lane holds up the
// connection (and so the broker), which is the backpressure wanted.
func (l *lanes) dispatch(pr paho.PublishReceived) (bool, error) {
	h := fnv.New32a()
	if id, _, ok := link.SplitTopic(pr.Packet.Topic); ok {
		h.Write([]byte(id))
	}
	select {
	case l.ch[h.Sum32()%uint32(len(l.ch))] <- pr:
	case <-l.ctx.Done():
	}
	return true, nil
}

func newExternalBroker(s *Server) (Broker, error) {
	u, err := url.Parse(s.cfg.Broker)
	if err != nil || (u.Scheme != "mqtts" && u.Scheme != "ssl" && u.Scheme != "tls") || u.Host == "" {
		return nil, fmt.Errorf("--broker must be mqtts://host:port")
	}
	return &externalBroker{s: s, u: u}, nil
}

// writeBrokerFiles writes what a Mosquitto configuration refers to: the CAs it
// trusts for clients (every account's device CA and the server CA), a broker
// certificate issued by the server CA (so devices, which trust only the server CA,
// accept the broker), and the ACL.
func (b *externalBroker) writeBrokerFiles(ctx context.Context) error {
	dir := filepath.Join(b.s.cfg.DataDir, "broker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	accts, err := b.s.store.Accounts(ctx)
	if err != nil {
		return err
	}
	cas := append([]byte{}, b.s.serverCA.certPEM...)
	for _, a := range accts {
		cas = append(cas, a.CACert...)
	}
	host := b.u.Hostname()
	certPEM, keyPEM, err := b.s.serverCA.serverCert([]string{host, "localhost", "127.0.0.1", "::1"}, b.s.now())
	if err != nil {
		return err
	}
	acl := "# Written by tern server. The server reads and writes every device's topics;\n" +
		"# each device (username = certificate CN = device id) only its own.\n" +
		"user " + ServerClientCN + "\ntopic readwrite " + link.TopicPrefix + "#\n\n" +
		"pattern readwrite " + link.TopicPrefix + "%u/#\n"
	for name, data := range map[string][]byte{"clients-ca.pem": cas, "broker.crt": certPEM, "broker.key": keyPEM, "acl": []byte(acl)} {
		if err := writeFileAtomic(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// MosquittoListener is the part of a Mosquitto configuration that serves devices
// with the files a server with data directory dataDir writes under broker/: a
// listener on hostport that requires a client certificate from a device CA, takes
// its CN as username and client id, and applies the server's ACL.
func MosquittoListener(dataDir, hostport string) string {
	host, port, _ := net.SplitHostPort(hostport)
	b := filepath.Join(dataDir, "broker")
	return fmt.Sprintf(`listener %s %s
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
use_username_as_clientid true
acl_file %s
`, port, host, filepath.Join(b, "clients-ca.pem"), filepath.Join(b, "broker.crt"), filepath.Join(b, "broker.key"), filepath.Join(b, "acl"))
}

func (b *externalBroker) Start(ctx context.Context) error {
	b.ctx = ctx
	if err := b.writeBrokerFiles(ctx); err != nil {
		return err
	}
	b.lanes = newLanes(ctx, externalLanes, b.handle)
	var cert tls.Certificate
	var err error
	if b.s.cfg.BrokerCert != "" {
		cert, err = tls.LoadX509KeyPair(b.s.cfg.BrokerCert, b.s.cfg.BrokerKey)
	} else {
		var certPEM, keyPEM []byte
		if certPEM, keyPEM, err = b.s.serverCA.clientCert(ServerClientCN, b.s.now()); err == nil {
			cert, err = tls.X509KeyPair(certPEM, keyPEM)
		}
	}
	if err != nil {
		return fmt.Errorf("broker client certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(b.s.serverCA.cert)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12,
		ServerName: b.u.Hostname()}
	filters := []string{link.TopicPrefix + "+/" + link.TopicStatus, link.TopicPrefix + "+/" + link.TopicReported,
		link.TopicPrefix + "+/" + link.TopicEvents, link.TopicPrefix + "+/" + link.TopicLogs}
	b.cm, err = autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{b.u},
		TlsCfg:                        tlsCfg,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         3600, // messages published while the server is down wait for it
		ReconnectBackoff:              func(n int) time.Duration { return min(500*time.Millisecond<<min(n, 6), 30*time.Second) },
		// As many unacknowledged messages as the lanes hold, not the protocol's
		// 65,535 (paho sizes its incoming queue by this).
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			link.SetReceiveMaximum(cp, externalLanes*(laneDepth+1))
			return cp, nil
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			b.s.log.Info("connected to external broker", "broker", b.u.Host)
			b.s.runner.requestRepublish() // it may have lost its retained messages meanwhile
			go func() {
				var subs []paho.SubscribeOptions
				for _, f := range filters {
					subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 1})
				}
				if _, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs}); err != nil {
					b.s.log.Error("subscribe on external broker", "err", err)
				}
			}()
		},
		OnConnectError: func(err error) { b.s.log.Warn("external broker connection failed", "broker", b.u.Host, "err", err) },
		ClientConfig: paho.ClientConfig{
			ClientID: ServerClientCN,
			// Messages are acknowledged once handled (stored), by the lanes.
			EnableManualAcknowledgment: true,
			OnClientError: func(err error) {
				b.s.log.Warn("external broker connection lost", "broker", b.u.Host, "err", err)
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				b.s.log.Warn("external broker disconnected the server", "broker", b.u.Host, "reason", fmt.Sprintf("0x%02x", d.ReasonCode))
			},
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){b.lanes.dispatch},
		},
	})
	return err
}

func (b *externalBroker) Addr() string {
	if _, _, err := net.SplitHostPort(b.u.Host); err == nil {
		return b.u.Host
	}
	return net.JoinHostPort(b.u.Host, "8883")
}

// Disconnect cannot reach into another broker. A decommissioned device's
// certificate is forgotten by the directory, so its messages are refused by the
// server; cutting its connection needs a CRL on the broker (not yet written).
func (b *externalBroker) Disconnect(id string) {
	b.s.log.Warn("external broker: decommissioned device stays connected until the broker refuses its certificate", "device", id)
}

// Publish sends a QoS 1 message through the server's connection and waits for
// the broker's PUBACK.
func (b *externalBroker) Publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	if b.cm == nil {
		return errors.New("external broker: not started")
	}
	if err := b.cm.AwaitConnection(ctx); err != nil {
		return fmt.Errorf("external broker: %w", err)
	}
	res, err := b.cm.Publish(ctx, &paho.Publish{Topic: topic, Payload: payload, QoS: 1, Retain: retain})
	if err != nil {
		return err
	}
	if res != nil && res.ReasonCode >= 0x80 {
		return fmt.Errorf("external broker refused publish to %s: reason 0x%02x", topic, res.ReasonCode)
	}
	return nil
}

func (b *externalBroker) Close() error {
	if b.cm == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := b.cm.Disconnect(ctx)
	if errors.Is(err, autopaho.ConnectionDownError) || strings.Contains(fmt.Sprint(err), "not connected") {
		return nil
	}
	return err
}
