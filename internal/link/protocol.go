// Package link is the device<->server protocol: the enrolment exchange over HTTPS,
// the MQTT topics and messages, and the device's side of both (Enroll, Client).
//
// Device code imports this package; the server imports it for the shared message
// types. It never imports the server.
package link

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrBadToken reports an enrolment token string that does not parse.
var ErrBadToken = errors.New("malformed enrollment token")

// tokenPrefix versions the token format.
const tokenPrefix = "tern1"

// Token is an enrolment token as the operator hands it to a device: which token,
// its secret, and the SHA-256 fingerprint of the server's CA certificate. Like a
// kubeadm or k3s join token, it lets a device trust the server on first contact
// with no other file, and refuse an impostor.
type Token struct {
	ID            string
	Secret        string
	CAFingerprint string // hex SHA-256 of the server CA's DER
}

// String encodes t as "tern1.<id>.<secret>.<ca-fingerprint>".
func (t Token) String() string {
	return strings.Join([]string{tokenPrefix, t.ID, t.Secret, t.CAFingerprint}, ".")
}

// Credential is the part the server checks: "<id>.<secret>".
func (t Token) Credential() string { return t.ID + "." + t.Secret }

// ParseToken decodes a token string.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != tokenPrefix || parts[1] == "" || parts[2] == "" {
		return Token{}, fmt.Errorf("%w: want %s.<id>.<secret>.<ca-sha256>", ErrBadToken, tokenPrefix)
	}
	if fp, err := hex.DecodeString(parts[3]); err != nil || len(fp) != 32 {
		return Token{}, fmt.Errorf("%w: CA fingerprint is not a hex SHA-256", ErrBadToken)
	}
	return Token{ID: parts[1], Secret: parts[2], CAFingerprint: strings.ToLower(parts[3])}, nil
}

// ParseCredential splits "<id>.<secret>" (a full token string is accepted too).
func ParseCredential(s string) (id, secret string, err error) {
	if t, err := ParseToken(s); err == nil {
		return t.ID, t.Secret, nil
	}
	id, secret, ok := strings.Cut(s, ".")
	if !ok || id == "" || secret == "" || strings.Contains(secret, ".") {
		return "", "", ErrBadToken
	}
	return id, secret, nil
}

// EnrollPath is where a device posts its EnrollRequest.
const EnrollPath = "/api/v1/enroll"

// EnrollRequest is a device's request to join: its token credential and a CSR
// signed by the key it generated (which never leaves the device).
type EnrollRequest struct {
	Token string `json:"token"` // "<id>.<secret>"
	CSR   string `json:"csr"`   // PEM CERTIFICATE REQUEST, ECDSA P-256
}

// Enrollment statuses in an EnrollResponse.
const (
	EnrollActive  = "active"  // certificate issued
	EnrollPending = "pending" // waiting for an operator: ask again later
)

// EnrollResponse is the server's answer. When Status is "active" it carries
// everything the device needs from then on.
type EnrollResponse struct {
	DeviceID    string     `json:"device_id"`
	Status      string     `json:"status"`
	RetryAfter  int        `json:"retry_after,omitempty"` // seconds, when pending
	Certificate string     `json:"certificate,omitempty"` // PEM: the device's certificate, CN = DeviceID
	DeviceCA    string     `json:"device_ca,omitempty"`   // PEM: the account's device CA
	ServerCA    string     `json:"server_ca,omitempty"`   // PEM: the CA that signs the server's and broker's certificates
	MQTTURL     string     `json:"mqtt_url,omitempty"`    // e.g. mqtts://host:8883
	Trust       TrustRoots `json:"trust"`
}

// TrustRoots are the account's keys a device pins at enrolment.
type TrustRoots struct {
	ReleaseKeys []string `json:"release_keys"` // PKIX PEM ed25519 public keys
	DirectorKey string   `json:"director_key"` // PKIX PEM ed25519: signs desired-state documents
}

// Topics, all under TopicPrefix + device id + "/".
const (
	TopicPrefix   = "tern/v1/d/"
	TopicStatus   = "status"   // device -> server, retained: StatusMessage; the will says offline
	TopicReported = "reported" // device -> server, retained: the reported-state document
	TopicDesired  = "desired"  // server -> device, retained: the signed desired-state document
	TopicEvents   = "events"   // device -> server
	TopicLogs     = "logs"     // device -> server, QoS 1: LogBatch
)

// Topic returns the topic of kind for device id.
func Topic(id, kind string) string { return TopicPrefix + id + "/" + kind }

// SplitTopic returns the device id and kind of a device topic.
func SplitTopic(topic string) (id, kind string, ok bool) {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return "", "", false
	}
	id, kind, ok = strings.Cut(rest, "/")
	return id, kind, ok && id != "" && kind != ""
}

// StatusMessage is a device's presence. Session names one connection: the will
// set at CONNECT carries the same session as the online message sent after it, so
// the server can tell a late will of an old connection from the current one.
type StatusMessage struct {
	State   string    `json:"state"` // "online" | "offline"
	Session string    `json:"session"`
	At      time.Time `json:"at,omitzero"`
}

// Presence states.
const (
	Online  = "online"
	Offline = "offline"
)

// Reported is the reported-state document a device publishes: its agent, OS and
// apps. Apps is kept as raw JSON so the agent's status type can grow without a
// protocol change.
type Reported struct {
	AgentVersion string          `json:"agent_version"`
	OS           string          `json:"os"`
	Arch         string          `json:"arch"`
	Hostname     string          `json:"hostname,omitempty"`
	Apps         json.RawMessage `json:"apps"`
	Update       json.RawMessage `json:"update,omitempty"`
}

// LogLine is one tagged log line of a device: an app's stdout or stderr line, or
// the agent's own ("ternd").
type LogLine struct {
	Time    time.Time `json:"time"`
	App     string    `json:"app"`
	Version string    `json:"version,omitempty"`
	Stream  string    `json:"stream,omitempty"` // stdout | stderr | agent
	Level   string    `json:"level,omitempty"`  // when the app logs JSON with a level
	Line    string    `json:"line"`
}

// LogBatch is what a device publishes on its logs topic: lines in order, and how
// many lines it had to drop before them (its offline buffer was full).
type LogBatch struct {
	Dropped uint64    `json:"dropped,omitempty"`
	Lines   []LogLine `json:"lines"`
}

// LogSource hands a device's buffered log lines to the link, a batch at a time;
// ack drops the batch from the buffer once the broker has it.
type LogSource interface {
	NextBatch(maxLines int) (batch LogBatch, ack func() error, err error)
	Ready() <-chan struct{}
}
