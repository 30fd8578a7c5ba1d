package agent

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/trust"
)

// Management is what a device learned at enrollment: who it is, where its server
// is, and the director key that signs its desired state.
type Management struct {
	DeviceID  string
	ServerURL string
	Director  trust.PublicKey
	TLS       *tls.Config // the device's client certificate, the pinned server CA
}

// manager reconciles the device with its desired state, one document at a time;
// a newer document supersedes one waiting.
type manager struct {
	m     Management
	hc    *http.Client
	offer chan []byte
	mu    sync.Mutex
	next  []byte
}

// Manage turns on reconciliation with the server's desired state. Documents given
// to OfferDesired are verified and applied in the background, in order.
func (a *Agent) Manage(m Management) {
	tr := &http.Transport{TLSClientConfig: m.TLS, ResponseHeaderTimeout: 30 * time.Second}
	mg := &manager{m: m, hc: &http.Client{Transport: tr}, offer: make(chan []byte, 1)}
	a.supsMu.Lock()
	a.mgr = mg
	a.supsMu.Unlock()
	go a.reconcileLoop(mg)
}

// OfferDesired hands a desired-state envelope (as published) to the reconciler.
func (a *Agent) OfferDesired(payload []byte) {
	a.supsMu.Lock()
	mg := a.mgr
	a.supsMu.Unlock()
	if mg == nil {
		return
	}
	mg.mu.Lock()
	mg.next = payload
	mg.mu.Unlock()
	select {
	case mg.offer <- nil:
	default:
	}
}

// retry offers payload again unless a newer document is waiting.
func (mg *manager) retry(payload []byte) {
	mg.mu.Lock()
	if mg.next == nil {
		mg.next = payload
	}
	mg.mu.Unlock()
	select {
	case mg.offer <- nil:
	default:
	}
}

func (a *Agent) reconcileLoop(mg *manager) {
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-mg.offer:
		}
		mg.mu.Lock()
		payload := mg.next
		mg.next = nil
		mg.mu.Unlock()
		if payload != nil {
			a.reconcile(a.ctx, mg, payload)
		}
	}
}

// desiredRecord is the last desired-state document the device accepted.
//
// Invariant after a crash at any point: Version never decreases; Done is set only
// once the document's outcome (applied, rolled back, rejected) was recorded as an
// event. A document accepted but not done is applied again when it arrives again
// (the broker redelivers it retained at every connect).
type desiredRecord struct {
	Version  uint64 `json:"version"`
	Campaign string `json:"campaign,omitempty"`
	Done     bool   `json:"done"`
	// OSTried is set when the document's OS update was started: the device
	// rebooted into it, and the document, delivered again, must report how that
	// ended rather than start it over.
	OSTried bool `json:"os_tried,omitempty"`
	// Since is the version that set the target of the document (link.Desired.Since).
	// A newer document with the same Since - the server renewing its expiry,
	// or re-issuing it to carry the account's policy - is not carried out
	// again: an update that rolled back is not retried behind the operator's
	// back, and an OS trial is not started over.
	Since uint64 `json:"since,omitempty"`
}

var keyDesired = []byte("desired")

func (s *Store) desired() (desiredRecord, error) {
	var r desiredRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyDesired); v != nil {
			return json.Unmarshal(v, &r)
		}
		return nil
	})
	return r, err
}

func (s *Store) saveDesired(r desiredRecord) error {
	data, _ := json.Marshal(r)
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyDesired, data) })
}

// DesiredVersion is the version of the last desired-state document accepted, and
// whether it was carried out, for the reported state.
func (a *Agent) DesiredVersion() (uint64, bool) {
	r, _ := a.store.desired()
	return r.Version, r.Done
}

// reconcile verifies a desired-state document and brings the apps (and the OS) to
// it, reporting each step as an event.
func (a *Agent) reconcile(ctx context.Context, mg *manager, payload []byte) {
	rec, err := a.store.desired()
	if err != nil {
		a.log.Error("desired state", "err", err)
		return
	}
	last := rec.Version
	if !rec.Done && last > 0 {
		last-- // the accepted document is not carried out yet: take it again
	}
	d, err := link.VerifyDesired(payload, mg.m.Director, mg.m.DeviceID, last, time.Now())
	if err != nil {
		if errors.Is(err, link.ErrDesiredStale) {
			a.log.Debug("desired state: already applied", "err", err)
			return
		}
		a.log.Warn("desired state refused", "err", err)
		a.event(Event{Kind: link.EventDesired, State: link.DesiredRejected, Message: err.Error()})
		return
	}
	// The account's policy holds from the moment the document is accepted,
	// whatever becomes of its apps. If it cannot be stored, the document is
	// not taken: it is taken again at its next delivery.
	if err := a.ApplyDevModePolicy(ctx, d.DevMode == link.DevModeDeny); err != nil {
		a.log.Error("desired state: developer-mode policy", "err", err)
		return
	}
	sameTarget := d.Since != 0 && rec.Since == d.Since
	if sameTarget && rec.Done {
		// Renewed or re-issued: carried out already (applied or rolled back,
		// and reported). Only its version is new.
		if err := a.store.saveDesired(desiredRecord{Version: d.Version, Campaign: d.Campaign, Since: d.Since, Done: true}); err != nil {
			a.log.Error("desired state", "err", err)
		}
		a.log.Debug("desired state renewed: same target, already carried out", "version", d.Version)
		return
	}
	osTried := (rec.Version == d.Version || sameTarget) && rec.OSTried
	if err := a.store.saveDesired(desiredRecord{Version: d.Version, Campaign: d.Campaign, Since: d.Since, OSTried: osTried}); err != nil {
		a.log.Error("desired state", "err", err)
		return
	}
	report := func(state string, err error) {
		e := Event{Kind: link.EventDesired, State: state, DesiredVersion: d.Version, Campaign: d.Campaign}
		if err != nil {
			e.Message = err.Error()
		}
		a.event(e)
	}
	report(link.DesiredAccepted, nil)
	state, err := a.apply(ctx, mg, d, osTried, func() { report(link.DesiredApplying, nil) })
	// Downloads are done: do not keep a connection to the server idle until
	// its timeout. At a campaign's phase, thousands of devices would each hold
	// a descriptor of the server's for two minutes (the fleet simulator found
	// it: docs/fleetsim.md).
	mg.hc.CloseIdleConnections()
	if ctx.Err() != nil {
		return // ternd stops: the document is taken again at the next start
	}
	if state == link.DesiredApplying {
		// An OS update is on its way (a reboot ahead, or a trial boot being
		// watched): look at the document again shortly, unless a newer one comes.
		time.AfterFunc(2*time.Second, func() { mg.retry(payload) })
		return
	}
	report(state, err)
	if err := a.store.saveDesired(desiredRecord{Version: d.Version, Campaign: d.Campaign, Since: d.Since, Done: true}); err != nil {
		a.log.Error("desired state", "err", err)
	}
}

// apply brings the device to d: apps at their desired versions in one transaction
// (a desired version equal to an app's N-1 is a rollback, with no download), then
// the OS. It returns the outcome state.
func (a *Agent) apply(ctx context.Context, mg *manager, d *link.Desired, osTried bool, applying func()) (string, error) {
	var installs []link.DesiredPackage
	var rollbacks []string
	for _, p := range d.Apps {
		r, err := a.store.App(p.Name)
		switch {
		case err == nil && r.Version() == p.Version:
		case err == nil && r.Previous != nil && r.Previous.App.Version == p.Version:
			rollbacks = append(rollbacks, p.Name)
		default:
			installs = append(installs, p)
		}
	}
	osChange := d.OS != nil && a.cfg.OS != nil
	if osChange {
		st, err := a.OSStatus(ctx)
		switch {
		case err == nil && st.Update != "":
			return link.DesiredApplying, nil // an OS update is still on trial: wait for its end
		case err == nil && st.Version == d.OS.Version && st.Committed == st.Booted:
			osChange = false
		case osTried:
			// This document's OS update ran, and the device is not on it: it
			// rolled back. Its reason is in the update's events.
			return link.DesiredRolledBack, fmt.Errorf("OS %s rolled back: %s", d.OS.Version, a.lastUpdateError())
		}
	}
	if len(installs)+len(rollbacks) == 0 && !osChange {
		return link.DesiredApplied, nil
	}
	applying()
	for _, name := range rollbacks {
		if _, err := a.Rollback(ctx, name); err != nil {
			return outcome(err)
		}
	}
	if len(installs) > 0 {
		var readers []io.Reader
		for _, p := range installs {
			r, err := a.fetchPackage(ctx, mg, p)
			if err != nil {
				return link.DesiredRejected, fmt.Errorf("%s %s: %w", p.Name, p.Version, err)
			}
			readers = append(readers, r)
		}
		if _, err := a.Install(ctx, readers...); err != nil {
			return outcome(err)
		}
	}
	if osChange {
		r, err := a.fetchPackage(ctx, mg, *d.OS)
		if err != nil {
			return link.DesiredRejected, fmt.Errorf("OS %s: %w", d.OS.Version, err)
		}
		rec, _ := a.store.desired()
		rec.OSTried = true
		if err := a.store.saveDesired(rec); err != nil {
			return link.DesiredRejected, err
		}
		if _, err := a.InstallOS(ctx, r); err != nil {
			return outcome(err)
		}
		// The OS update reboots the device; after the reboot the document,
		// delivered again, reports how it ended.
		return link.DesiredApplying, nil
	}
	return link.DesiredApplied, nil
}

// lastUpdateError is the reason recorded for the last update that rolled back.
func (a *Agent) lastUpdateError() string {
	evs, _ := a.store.Events(0)
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == "update" && evs[i].To == "rolling_back" && evs[i].Message != "" {
			return evs[i].Message
		}
	}
	return "unknown"
}

func outcome(err error) (string, error) {
	if errors.Is(err, ErrUpdateAbort) {
		return link.DesiredRolledBack, err
	}
	return link.DesiredRejected, err
}

// fetchPackage returns a package stream assembled from the server's parts: the
// signed manifest and its signature, then each blob, read from the device's own
// store when it has it and downloaded (resuming after a cut) when it does not.
// Install verifies it all as it reads, exactly as a local install.
func (a *Agent) fetchPackage(ctx context.Context, mg *manager, p link.DesiredPackage) (io.Reader, error) {
	base := strings.TrimSuffix(mg.m.ServerURL, "/") + "/api/v1/device/"
	manifest, err := mg.getSmall(ctx, base+"manifests/"+p.Manifest, app.MaxManifestSize)
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(manifest); "sha256:"+hex.EncodeToString(sum[:]) != p.Manifest {
		return nil, fmt.Errorf("%w: the server's manifest is not %s", app.ErrBlobDigest, p.Manifest)
	}
	sig, err := mg.getSmall(ctx, base+"manifests/"+p.Manifest+"/sig", app.MaxSigSize)
	if err != nil {
		return nil, err
	}
	pm, err := app.ParsePackageManifest(manifest)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		put := func(name string, size int64, r io.Reader) error {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644}); err != nil {
				return err
			}
			_, err := io.CopyN(tw, r, size)
			return err
		}
		err := put(app.EntryFormat, int64(len(app.FormatLine)), strings.NewReader(app.FormatLine))
		if err == nil {
			err = put(app.EntryManifest, int64(len(manifest)), strings.NewReader(string(manifest)))
		}
		if err == nil {
			err = put(app.EntrySig, int64(len(sig)), strings.NewReader(string(sig)))
		}
		for _, d := range pm.Blobs() {
			if err != nil {
				break
			}
			var rc io.ReadCloser
			if a.content.HasBlob(d.Digest) {
				rc, err = os.Open(a.content.BlobPath(d.Digest))
			} else {
				rc = &resumingBody{ctx: ctx, hc: mg.hc, url: base + "blobs/" + d.Digest, size: d.Size, log: a.log}
			}
			if err == nil {
				err = put(app.BlobPrefix+d.Hex(), d.Size, rc)
				rc.Close()
			}
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// getSmall fetches a small document whole.
func (mg *manager) getSmall(ctx context.Context, url string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := mg.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("GET %s: %w", url, app.ErrTooLarge)
	}
	return data, nil
}
