// Package fleetsim simulates Tern devices for tests and for the fleet simulator:
// each Device is enrolled like a real one (a key, a CSR, a certificate from the
// account's device CA), talks to the server over MQTT 5 with mutual TLS through
// link.Client, verifies every desired-state document with link.VerifyDesired and
// the director key it pinned at enrollment, fetches manifests and blobs over HTTPS
// with its client certificate and Range requests, verifies them against the
// release keys and digests, and reports each step as link.EventMessage.
//
// What it does not do is run anything: "applying" a document only records the
// versions as running, unless Config.Fail says the update fails, in which case
// the device reports that it rolled back. It imports no server code.
package fleetsim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/trust"
)

// Config configures a simulated device.
type Config struct {
	// Dir holds the device's identity and state; a Device enrolled in Dir before
	// comes back with the same id and state.
	Dir string
	// ServerURL and Token enroll a new device (unused when Dir holds an identity).
	ServerURL, Token string
	// Fail, if set, is asked before a document is applied; a non-empty answer
	// makes the update fail: the device reports rolled_back with that message and
	// keeps running what it ran.
	Fail func(d *link.Desired) string
	// Chunk, if set, fetches blobs in ranges of this many bytes (each a Range
	// request), as a device on a poor link resumes after cuts.
	Chunk int64
	// ReportEvery is how often the device republishes reported state and sends
	// pending events; default 200ms.
	ReportEvery time.Duration
	// KeepAlive is the MQTT keepalive in seconds: the broker hears from an idle
	// device (PINGREQ) this often; default 5 (ternd's is 30).
	KeepAlive uint16
	// Heartbeat, if set, changes the device's reported state this often (a
	// counter in "update"), the first time at a random point within one period:
	// the periodic report of a device whose state moves.
	Heartbeat time.Duration
	// DownloadTime, if set, is added to each download (uniformly between half and
	// one and a half of it), as a slow link would take.
	DownloadTime time.Duration
	// InMemory verifies blobs as they stream in and keeps only their digests: a
	// fleet of thousands of devices writes nothing per download.
	InMemory bool
	// CloseIdle closes the device's idle HTTPS connections once its downloads are
	// done, as ternd does, instead of leaving them to the server's idle timeout.
	CloseIdle bool
	// MQTTURL, if set, is the broker the device connects to instead of the one
	// named at enrollment: a deployment with several brokers in front of one
	// server.
	MQTTURL string
	// OnEvent, if set, is called with each event as the device queues it (its
	// Time is when the device decided it).
	OnEvent func(link.EventMessage)
	// OnReport, if set, is called when a reported state with a new heartbeat
	// count is handed to the link to publish, with the count and the time.
	OnReport func(beat uint64, at time.Time)
	Logger   *slog.Logger
}

// Errors a simulated device reports.
var (
	ErrManifest = errors.New("manifest does not verify")
	ErrBlob     = errors.New("blob does not verify")
)

// Device is one simulated device.
type Device struct {
	cfg      Config
	log      *slog.Logger
	id       *link.Identity
	director trust.PublicKey
	keys     []trust.PublicKey
	http     *http.Client

	mu     sync.Mutex
	st     state
	events []link.EventMessage
	ready  chan struct{}
	docs   chan []byte
	online atomic.Bool
	beat   uint64              // heartbeat count in the reported state
	told   uint64              // the last count passed to OnReport
	have   map[string]struct{} // blobs verified, with InMemory

	// Downloaded counts bytes fetched from the server (manifests and blobs).
	Downloaded atomic.Int64
}

// state is what the device keeps across restarts (sim-state.json).
type state struct {
	LastVersion uint64                         `json:"last_version"`
	Running     map[string]link.DesiredPackage `json:"running"`  // by name
	Previous    map[string]link.DesiredPackage `json:"previous"` // N-1, by name
	Seq         uint64                         `json:"seq"`
	Campaign    string                         `json:"campaign,omitempty"`
}

// New enrolls a device (or loads the one in cfg.Dir).
func New(ctx context.Context, cfg Config) (*Device, error) {
	if cfg.ReportEvery == 0 {
		cfg.ReportEvery = 200 * time.Millisecond
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 5
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	idDir := IdentityDir(cfg.Dir)
	id, err := link.LoadIdentity(idDir)
	if errors.Is(err, link.ErrNotEnrolled) {
		id, err = link.Enroll(ctx, cfg.ServerURL, cfg.Token, idDir, cfg.Logger)
	}
	if err != nil {
		return nil, err
	}
	if cfg.MQTTURL != "" {
		id.MQTTURL = cfg.MQTTURL
	}
	d := &Device{cfg: cfg, log: cfg.Logger.With("device", id.DeviceID), id: id, ready: make(chan struct{}, 1), docs: make(chan []byte, 1),
		st: state{Running: map[string]link.DesiredPackage{}, Previous: map[string]link.DesiredPackage{}}, have: map[string]struct{}{}}
	if d.director, err = trust.LoadPublicKey(filepath.Join(id.TrustDir(), "director.pub")); err != nil {
		return nil, err
	}
	matches, _ := filepath.Glob(filepath.Join(id.TrustDir(), "release-*.pub"))
	for _, m := range matches {
		k, err := trust.LoadPublicKey(m)
		if err != nil {
			return nil, err
		}
		d.keys = append(d.keys, k)
	}
	tlsCfg, err := id.TLSConfig()
	if err != nil {
		return nil, err
	}
	d.http = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 2}}
	if data, err := os.ReadFile(d.statePath()); err == nil {
		if err := json.Unmarshal(data, &d.st); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// IdentityDir is where a device with state in dir keeps its identity (Provision
// writes it there).
func IdentityDir(dir string) string { return filepath.Join(dir, "identity") }

// ID is the device id.
func (d *Device) ID() string { return d.id.DeviceID }

// Identity is the device's enrolled identity.
func (d *Device) Identity() *link.Identity { return d.id }

// Online reports whether Run is connected (or trying to be).
func (d *Device) Online() bool { return d.online.Load() }

// SetFail replaces the failure rule.
func (d *Device) SetFail(f func(*link.Desired) string) {
	d.mu.Lock()
	d.cfg.Fail = f
	d.mu.Unlock()
}

// Running returns the versions the device runs, by app name.
func (d *Device) Running() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]string{}
	for n, p := range d.st.Running {
		out[n] = p.Version
	}
	return out
}

// LastVersion is the version of the last document the device accepted.
func (d *Device) LastVersion() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.LastVersion
}

// Beat changes the device's reported state (its heartbeat count); the link
// publishes it at its next report tick.
func (d *Device) Beat() {
	d.mu.Lock()
	d.beat++
	d.mu.Unlock()
}

// Run connects to the server and applies desired state until ctx ends: the
// device is online while it runs, and keeps its state when it stops.
func (d *Device) Run(ctx context.Context) error {
	d.online.Store(true)
	defer d.online.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.cfg.Heartbeat > 0 {
		go d.heartbeat(ctx)
	}
	c := link.NewClient(link.ClientConfig{Identity: d.id, Report: d.report, ReportEvery: d.cfg.ReportEvery, KeepAlive: d.cfg.KeepAlive, Logger: d.log,
		OnDesired: func(payload []byte) {
			select { // keep only the newest document waiting
			case <-d.docs:
			default:
			}
			d.docs <- payload
		},
		Events: d.pendingEvents, EventsReady: d.ready})
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for {
		select {
		case <-ctx.Done():
			return <-done
		case err := <-done:
			return err
		case doc := <-d.docs:
			d.apply(ctx, doc)
		}
	}
}

// heartbeat beats every Config.Heartbeat, the first time at a random point of
// the first period, so that a fleet's beats spread evenly.
func (d *Device) heartbeat(ctx context.Context) {
	first := time.Duration(mrand.Int64N(int64(d.cfg.Heartbeat)))
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Beat()
			t.Reset(d.cfg.Heartbeat)
		}
	}
}

func (d *Device) report(context.Context) (link.Reported, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var update json.RawMessage
	if d.beat > 0 {
		update = json.RawMessage(fmt.Sprintf(`{"beat":%d}`, d.beat))
		if d.beat != d.told && d.cfg.OnReport != nil {
			d.cfg.OnReport(d.beat, time.Now())
		}
		d.told = d.beat
	}
	type appState struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		State   string `json:"state"`
	}
	apps := []appState{}
	for _, p := range d.st.Running {
		apps = append(apps, appState{Name: p.Name, Version: p.Version, State: "running"})
	}
	raw, _ := json.Marshal(apps)
	return link.Reported{AgentVersion: "fleetsim", OS: "simulated", Arch: runtime.GOARCH, Apps: raw, Update: update}, nil
}

// pendingEvents is link.ClientConfig.Events: the events after since.
func (d *Device) pendingEvents(since uint64) ([]link.EventMessage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	keep := d.events[:0]
	for _, e := range d.events {
		if e.Seq > since {
			keep = append(keep, e)
		}
	}
	d.events = keep
	return append([]link.EventMessage(nil), keep...), nil
}

// event queues a desired-state report and asks the client to send it now.
func (d *Device) event(doc *link.Desired, version uint64, state, msg string) {
	d.mu.Lock()
	d.st.Seq++
	e := link.EventMessage{Seq: d.st.Seq, Time: time.Now().UTC(), Kind: link.EventDesired, State: state, Message: msg, DesiredVersion: version}
	if doc != nil {
		e.Campaign = doc.Campaign
	}
	d.events = append(d.events, e)
	err := d.saveLocked()
	onEvent := d.cfg.OnEvent
	d.mu.Unlock()
	if onEvent != nil {
		onEvent(e)
	}
	if err != nil {
		d.log.Warn("save state", "err", err)
	}
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

// apply verifies and applies one document, reporting accepted, applying, then
// applied or rolled_back; or rejected if it does not verify.
func (d *Device) apply(ctx context.Context, envelope []byte) {
	d.mu.Lock()
	last := d.st.LastVersion
	fail := d.cfg.Fail
	d.mu.Unlock()
	doc, err := link.VerifyDesired(envelope, d.director, d.id.DeviceID, last, time.Now())
	if errors.Is(err, link.ErrDesiredStale) && peekVersion(envelope) == last {
		return // the retained document again, at reconnection
	}
	if err != nil {
		d.log.Warn("desired state rejected", "err", err)
		d.event(nil, peekVersion(envelope), link.DesiredRejected, err.Error())
		return
	}
	d.mu.Lock()
	d.st.LastVersion = doc.Version
	d.mu.Unlock()
	d.event(doc, doc.Version, link.DesiredAccepted, "")
	fetched := false
	for _, p := range doc.Apps {
		d.mu.Lock()
		cur, prev := d.st.Running[p.Name], d.st.Previous[p.Name]
		d.mu.Unlock()
		if cur.Manifest == p.Manifest || prev.Manifest == p.Manifest {
			continue // running, or the N-1 kept for rollback: nothing to fetch
		}
		if err := d.fetchPackage(ctx, p); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.event(doc, doc.Version, link.DesiredRejected, fmt.Sprintf("%s %s: %v", p.Name, p.Version, err))
			return
		}
		fetched = true
	}
	if d.cfg.CloseIdle {
		d.http.CloseIdleConnections()
	}
	if fetched && d.cfg.DownloadTime > 0 {
		wait := d.cfg.DownloadTime/2 + time.Duration(mrand.Int64N(int64(d.cfg.DownloadTime)+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	d.event(doc, doc.Version, link.DesiredApplying, "")
	if fail != nil {
		if msg := fail(doc); msg != "" {
			d.event(doc, doc.Version, link.DesiredRolledBack, msg)
			return
		}
	}
	d.mu.Lock()
	for _, p := range doc.Apps {
		if cur, ok := d.st.Running[p.Name]; ok && cur.Manifest != p.Manifest {
			d.st.Previous[p.Name] = cur
		}
		d.st.Running[p.Name] = p
	}
	d.st.Campaign = doc.Campaign
	d.mu.Unlock()
	d.event(doc, doc.Version, link.DesiredApplied, "")
}

// peekVersion reads a document's version without trusting it, for a report.
func peekVersion(envelope []byte) uint64 {
	env, err := trust.ParseEnvelope(envelope)
	if err != nil {
		return 0
	}
	var v struct {
		Version uint64 `json:"version"`
	}
	json.Unmarshal(env.Payload, &v)
	return v.Version
}

// fetchPackage fetches a package's manifest and signature, verifies them against
// the release keys and the digest the document names, then fetches each blob the
// device lacks.
func (d *Device) fetchPackage(ctx context.Context, p link.DesiredPackage) error {
	manifest, err := d.get(ctx, "/api/v1/device/manifests/"+p.Manifest, 1<<20)
	if err != nil {
		return err
	}
	sig, err := d.get(ctx, "/api/v1/device/manifests/"+p.Manifest+"/sig", app.MaxSigSize)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(manifest)
	if "sha256:"+hex.EncodeToString(sum[:]) != p.Manifest {
		return fmt.Errorf("%w: digest differs from the document's", ErrManifest)
	}
	env, err := trust.ParseEnvelope(sig)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrManifest, err)
	}
	if _, err := env.Verify(app.PayloadType, d.keys, 1); err != nil {
		return fmt.Errorf("%w: %w", ErrManifest, err)
	}
	if string(env.Payload) != string(manifest) {
		return fmt.Errorf("%w: the signature is over another manifest", ErrManifest)
	}
	var pm app.PackageManifest
	if err := json.Unmarshal(manifest, &pm); err != nil {
		return fmt.Errorf("%w: %w", ErrManifest, err)
	}
	for _, b := range pm.Blobs() {
		if err := d.fetchBlob(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

func (d *Device) get(ctx context.Context, path string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(d.id.ServerURL, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	res, err := d.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", path, res.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(res.Body, max+1))
	d.Downloaded.Add(int64(len(data)))
	if err == nil && int64(len(data)) > max {
		err = fmt.Errorf("GET %s: over %d bytes", path, max)
	}
	return data, err
}

// fetchBlob downloads a blob into blobs/sha256/<hex> unless it is there,
// resuming a partial download with Range requests, and checks its digest and
// size before it keeps it.
func (d *Device) fetchBlob(ctx context.Context, b app.Descriptor) error {
	if d.cfg.InMemory {
		return d.verifyBlob(ctx, b)
	}
	final := filepath.Join(d.cfg.Dir, "blobs", "sha256", b.Hex())
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	partial := filepath.Join(d.cfg.Dir, "blobs", "partial", b.Hex())
	if err := os.MkdirAll(filepath.Dir(partial), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		off, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return err
		}
		if off >= b.Size {
			break
		}
		if err := d.fetchRange(ctx, b, f, off); err != nil {
			return err
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if n != b.Size || "sha256:"+hex.EncodeToString(h.Sum(nil)) != b.Digest {
		os.Remove(partial)
		return fmt.Errorf("%w: %s", ErrBlob, b.Digest)
	}
	return os.Rename(partial, final)
}

// verifyBlob downloads a blob (in ranges of Chunk, if set) through its digest,
// keeping nothing but the fact that it verified.
func (d *Device) verifyBlob(ctx context.Context, b app.Descriptor) error {
	d.mu.Lock()
	_, ok := d.have[b.Digest]
	d.mu.Unlock()
	if ok {
		return nil
	}
	h := &counter{h: sha256.New()}
	for h.n < b.Size {
		if err := d.fetchRange(ctx, b, h, h.n); err != nil {
			return err
		}
	}
	if h.n != b.Size || "sha256:"+hex.EncodeToString(h.h.Sum(nil)) != b.Digest {
		return fmt.Errorf("%w: %s", ErrBlob, b.Digest)
	}
	d.mu.Lock()
	d.have[b.Digest] = struct{}{}
	d.mu.Unlock()
	return nil
}

// counter hashes what is written and counts it.
type counter struct {
	h hash.Hash
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	c.h.Write(p)
	c.n += int64(len(p))
	return len(p), nil
}

// fetchRange appends the bytes from off (to off+Chunk, or the end) to f.
func (d *Device) fetchRange(ctx context.Context, b app.Descriptor, f io.Writer, off int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(d.id.ServerURL, "/")+"/api/v1/device/blobs/"+b.Digest, nil)
	if err != nil {
		return err
	}
	end := b.Size - 1
	if d.cfg.Chunk > 0 {
		end = min(end, off+d.cfg.Chunk-1)
	}
	if off > 0 || end < b.Size-1 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
	}
	res, err := d.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	switch {
	case res.StatusCode == http.StatusPartialContent:
	case res.StatusCode == http.StatusOK && off == 0:
	default:
		return fmt.Errorf("GET blob %s from %d: HTTP %d", b.Digest, off, res.StatusCode)
	}
	n, err := io.Copy(f, io.LimitReader(res.Body, end-off+1))
	d.Downloaded.Add(n)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("GET blob %s from %d: empty answer", b.Digest, off)
	}
	return nil
}

func (d *Device) statePath() string { return filepath.Join(d.cfg.Dir, "sim-state.json") }

func (d *Device) saveLocked() error {
	data, err := json.Marshal(d.st)
	if err != nil {
		return err
	}
	tmp := d.statePath() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.statePath())
}
