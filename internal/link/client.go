package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// ReportFunc returns the device's current reported state.
type ReportFunc func(ctx context.Context) (Reported, error)

// ClientConfig configures a device's link to the server.
type ClientConfig struct {
	Identity *Identity
	// Report is called at connect and every ReportEvery; the state is published
	// (retained) whenever it differs from what was last published.
	Report      ReportFunc
	ReportEvery time.Duration // default 10s
	KeepAlive   uint16        // seconds; default 30
	Logger      *slog.Logger

	// OnDesired receives each desired-state envelope the server publishes (the
	// retained one again at every connect); it verifies and applies it.
	OnDesired func(payload []byte)
	// Events returns the device's events after sequence number since, oldest
	// first; the client publishes them (QoS 1) and remembers, in the identity
	// directory, the last one the broker acknowledged, so none is lost or repeated
	// across restarts and disconnections.
	Events func(since uint64) ([]EventMessage, error)
	// EventsReady, when it receives, makes the client publish new events at once
	// instead of at the next report tick.
	EventsReady <-chan struct{}
	// Logs, if set, is drained to the logs topic in batches, one in flight at a
	// time: while the broker has not acknowledged one, lines wait in the source.
	Logs LogSource
}

// Client is a device's MQTT connection to the server: it connects with the device
// certificate, leaves a will that marks it offline, announces itself online,
// publishes its reported state, and reconnects with exponential backoff.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	mu      sync.Mutex
	session string // the current connection's session name
	last    []byte // the last reported state the broker acknowledged
	up      chan struct{}
}

// NewClient returns a client; Run connects it.
func NewClient(cfg ClientConfig) *Client {
	if cfg.ReportEvery == 0 {
		cfg.ReportEvery = 10 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Client{cfg: cfg, log: cfg.Logger, up: make(chan struct{}, 1)}
}

// Run keeps the link up until ctx ends, then says offline and disconnects.
func (c *Client) Run(ctx context.Context) error {
	id := c.cfg.Identity
	tlsCfg, err := id.TLSConfig()
	if err != nil {
		return err
	}
	u, err := url.Parse(id.MQTTURL)
	if err != nil {
		return fmt.Errorf("broker url: %w", err)
	}
	statusTopic := Topic(id.DeviceID, TopicStatus)
	connCtx, cancelConn := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelConn()
	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		TlsCfg:                        tlsCfg,
		KeepAlive:                     c.cfg.KeepAlive,
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         0,
		ConnectTimeout:                15 * time.Second,
		ReconnectBackoff:              backoff,
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			session := newSession()
			c.mu.Lock()
			c.session = session
			c.mu.Unlock()
			will, _ := json.Marshal(StatusMessage{State: Offline, Session: session})
			cp.WillMessage = &paho.WillMessage{Topic: statusTopic, Payload: will, QoS: 1, Retain: true}
			SetReceiveMaximum(cp, deviceReceiveMaximum)
			return cp, nil
		},
		OnConnectionUp: func(*autopaho.ConnectionManager, *paho.Connack) {
			c.log.Info("connected to server", "device", id.DeviceID, "broker", u.Host)
			select {
			case c.up <- struct{}{}:
			default:
			}
		},
		OnConnectError: func(err error) { c.log.Warn("server connection failed", "err", err) },
		ClientConfig: paho.ClientConfig{ClientID: id.DeviceID, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				if pr.Packet.Topic == Topic(id.DeviceID, TopicDesired) && c.cfg.OnDesired != nil && len(pr.Packet.Payload) > 0 {
					c.cfg.OnDesired(pr.Packet.Payload)
				}
				return true, nil
			},
		}},
	})
	if err != nil {
		return err
	}
	ticker := time.NewTicker(c.cfg.ReportEvery)
	defer ticker.Stop()
	var logsReady <-chan struct{}
	if c.cfg.Logs != nil {
		logsReady = c.cfg.Logs.Ready()
	}
	// greeted is false from a connection's start until the server acknowledged
	// the device's online status and the desired-state subscription was made.
	// Until then each tick tries again: a server that refused the status (it
	// may, under load) would otherwise list a connected device as offline, and
	// not send it its desired state, until the next reconnection.
	greeted, connected := false, false
	greet := func() {
		c.mu.Lock()
		session := c.session
		c.mu.Unlock()
		msg, _ := json.Marshal(StatusMessage{State: Online, Session: session, At: time.Now().UTC()})
		if err := c.publish(ctx, cm, statusTopic, msg); err != nil {
			c.log.Warn("publish online; trying again at the next report", "err", err)
			return
		}
		if c.cfg.OnDesired != nil {
			sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			_, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: Topic(id.DeviceID, TopicDesired), QoS: 1}}})
			cancel()
			if err != nil {
				c.log.Warn("subscribe to desired state; trying again at the next report", "err", err)
				return
			}
		}
		greeted = true
		c.report(ctx, cm)
		c.sendEvents(ctx, cm)
		c.sendLogs(ctx, cm)
	}
	for {
		select {
		case <-ctx.Done():
			c.goodbye(cm, statusTopic)
			cancelConn()
			<-cm.Done()
			return nil
		case <-c.up:
			c.mu.Lock()
			c.last = nil // a new connection: publish everything again
			c.mu.Unlock()
			greeted, connected = false, true
			greet()
		case <-ticker.C:
			if connected && !greeted {
				greet()
				continue
			}
			c.report(ctx, cm)
			c.sendEvents(ctx, cm)
			c.sendLogs(ctx, cm)
		case <-c.cfg.EventsReady:
			c.sendEvents(ctx, cm)
		case <-logsReady:
			c.sendLogs(ctx, cm)
		}
	}
}

// report publishes the reported state if it changed since the last acknowledged one.
func (c *Client) report(ctx context.Context, cm *autopaho.ConnectionManager) {
	if c.cfg.Report == nil {
		return
	}
	st, err := c.cfg.Report(ctx)
	if err != nil {
		c.log.Warn("reported state", "err", err)
		return
	}
	doc, err := json.Marshal(st)
	if err != nil {
		c.log.Warn("reported state", "err", err)
		return
	}
	c.mu.Lock()
	same := bytes.Equal(doc, c.last)
	c.mu.Unlock()
	if same {
		return
	}
	if err := c.publish(ctx, cm, Topic(c.cfg.Identity.DeviceID, TopicReported), doc); err != nil {
		c.log.Warn("publish reported state", "err", err)
		return
	}
	c.mu.Lock()
	c.last = doc
	c.mu.Unlock()
}

// publish sends a retained QoS 1 message and waits for the broker's PUBACK; a
// negative reason code is an error.
func (c *Client) publish(ctx context.Context, cm *autopaho.ConnectionManager, topic string, payload []byte) error {
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	res, err := cm.Publish(pctx, &paho.Publish{Topic: topic, Payload: payload, QoS: 1, Retain: true})
	if err != nil {
		return err
	}
	if res != nil && res.ReasonCode >= 0x80 {
		return fmt.Errorf("broker refused publish to %s: reason 0x%02x", topic, res.ReasonCode)
	}
	return nil
}

// goodbye says offline (a clean DISCONNECT sends no will) and disconnects.
func (c *Client) goodbye(cm *autopaho.ConnectionManager, statusTopic string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c.mu.Lock()
	session := c.session
	c.mu.Unlock()
	msg, _ := json.Marshal(StatusMessage{State: Offline, Session: session, At: time.Now().UTC()})
	if err := c.publish(ctx, cm, statusTopic, msg); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		c.log.Debug("publish offline", "err", err)
	}
	cm.Disconnect(ctx)
}

// backoff waits 0.5s, 1s, 2s ... up to a minute between attempts, with jitter so
// a fleet that lost its server does not come back in lockstep.
func backoff(attempt int) time.Duration {
	d := 500 * time.Millisecond << min(attempt, 7)
	d = min(d, time.Minute)
	j, _ := rand.Int(rand.Reader, big.NewInt(int64(d/2)+1))
	return d/2 + time.Duration(j.Int64())
}

func newSession() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// eventsCursorFile holds the sequence number of the last event the broker took.
const eventsCursorFile = "events.seq"

// sendEvents publishes the events the server has not had yet, in order, stopping
// at the first the broker does not acknowledge (the next attempt resumes there).
func (c *Client) sendEvents(ctx context.Context, cm *autopaho.ConnectionManager) {
	if c.cfg.Events == nil {
		return
	}
	cursor := filepath.Join(c.cfg.Identity.Dir, eventsCursorFile)
	var since uint64
	if b, err := os.ReadFile(cursor); err == nil {
		since, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	events, err := c.cfg.Events(since)
	if err != nil {
		c.log.Warn("events", "err", err)
		return
	}
	topic := Topic(c.cfg.Identity.DeviceID, TopicEvents)
	for _, e := range events {
		data, err := json.Marshal(e)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		res, err := cm.Publish(pctx, &paho.Publish{Topic: topic, Payload: data, QoS: 1})
		cancel()
		if err != nil || (res != nil && res.ReasonCode >= 0x80) {
			c.log.Debug("publish event: will retry", "seq", e.Seq, "err", err)
			return
		}
		if e.Seq > since {
			since = e.Seq
			if err := writeCursor(cursor, since); err != nil {
				c.log.Warn("events cursor", "err", err)
			}
		}
	}
}

// writeCursor replaces the cursor file whole.
func writeCursor(path string, seq uint64) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(seq, 10)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// logBatchLines is how many log lines go in one message.
const logBatchLines = 500

// sendLogs publishes buffered log lines until the buffer is empty or the broker
// stops acknowledging (the rest waits for the next attempt).
func (c *Client) sendLogs(ctx context.Context, cm *autopaho.ConnectionManager) {
	if c.cfg.Logs == nil {
		return
	}
	topic := Topic(c.cfg.Identity.DeviceID, TopicLogs)
	for {
		batch, ack, err := c.cfg.Logs.NextBatch(logBatchLines)
		if err != nil {
			c.log.Warn("logs", "err", err)
			return
		}
		if len(batch.Lines) == 0 && batch.Dropped == 0 {
			return
		}
		data, err := json.Marshal(batch)
		if err != nil {
			return
		}
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		res, err := cm.Publish(pctx, &paho.Publish{Topic: topic, Payload: data, QoS: 1})
		cancel()
		if err != nil || (res != nil && res.ReasonCode >= 0x80) {
			return
		}
		if err := ack(); err != nil {
			c.log.Warn("logs", "err", err)
			return
		}
		if len(batch.Lines) < logBatchLines {
			return
		}
	}
}

// deviceReceiveMaximum bounds the messages the broker sends a device before it
// acknowledges them: a device receives only its desired state. Unset, paho
// sizes a queue for the protocol's maximum, 65,535 messages (512 KiB of heap per
// connection, most of a simulated device's memory in the fleet simulator).
const deviceReceiveMaximum = 16

// SetReceiveMaximum sets the CONNECT's Receive Maximum (MQTT 5), which paho also
// uses to size its queue of incoming messages.
func SetReceiveMaximum(cp *paho.Connect, n uint16) {
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	cp.Properties.ReceiveMaximum = &n
}
