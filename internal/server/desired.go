package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// maxEvent bounds one device event message.
const maxEvent = 64 << 10

// authenticateDevice admits a request made with a device's client certificate:
// the TLS layer verified it against the device CAs; here it must be the current
// certificate of an active device, issued by that device's own account's CA.
func (s *Server) authenticateDevice(r *http.Request) (*caller, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return nil, &apiError{Status: http.StatusUnauthorized, Title: "unauthorized", Detail: "a device client certificate is required"}
	}
	chain := r.TLS.VerifiedChains[0]
	d, err := s.deviceForCert(r.Context(), chain[0])
	if err != nil {
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrWrongState) || errors.Is(err, errCertRevoked) {
			return nil, &apiError{Status: http.StatusForbidden, Title: "device refused", Detail: err.Error()}
		}
		return nil, err
	}
	ca, err := s.deviceCA(r.Context(), d.AccountID)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(chain[len(chain)-1].Raw, ca.cert.Raw) {
		return nil, &apiError{Status: http.StatusForbidden, Title: "device refused", Detail: "certificate not issued by the device's account"}
	}
	return &caller{Account: d.AccountID, Device: d.ID}, nil
}

// directorKey returns an account's director key, which signs desired state.
func (s *Server) directorKey(ctx context.Context, account string) (trust.PrivateKey, error) {
	s.authMu.Lock()
	k, ok := s.directors[account]
	s.authMu.Unlock()
	if ok {
		return k, nil
	}
	a, err := s.store.Account(ctx, account)
	if err != nil {
		return k, err
	}
	if k, err = trust.ParsePrivateKey([]byte(a.DirectorKey)); err != nil {
		return k, fmt.Errorf("director key of %s: %w", account, err)
	}
	s.authMu.Lock()
	s.directors[account] = k
	s.authMu.Unlock()
	return k, nil
}

// signing is how the store signs documents: with the account's director key, valid
// for the configured lifetime.
func (s *Server) signing(ctx context.Context) store.Signing {
	return store.Signing{TTL: s.cfg.DesiredTTL, Sign: func(account string, d *link.Desired) ([]byte, error) {
		k, err := s.directorKey(ctx, account)
		if err != nil {
			return nil, err
		}
		return link.SignDesired(d, k)
	}}
}

// publisher publishes desired-state documents, retained, one device at a time:
// documents of one device are published under its lock and checked against the
// store afterwards, so the retained message always ends as the newest document,
// however publishes from the API, the runner and the ticker interleave.
type publisher struct {
	s     *Server
	locks [64]sync.Mutex
}

func (p *publisher) lock(device string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(device))
	return &p.locks[h.Sum32()%uint32(len(p.locks))]
}

// publish publishes each document, eight devices at a time. A document the broker
// did not take stays unpublished in the store and is retried by the ticker; after
// the first failure the rest are left to it too (the broker is likely away).
func (p *publisher) publish(ctx context.Context, pubs []store.Publication) {
	if len(pubs) == 0 {
		return
	}
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var done []store.Publication
	defer func() {
		wg.Wait()
		// One transaction for the lot: marking each alone would cost a commit each.
		if err := p.s.store.MarkPublished(context.WithoutCancel(ctx), done...); err != nil {
			p.s.log.Warn("mark desired states published", "err", err)
		}
	}()
	for _, pub := range pubs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			// Bounded: the document is stored; a broker that is away gets it from
			// the ticker later rather than holding up an API answer.
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			final, err := p.one(pctx, pub)
			if err != nil {
				if ctx.Err() == nil {
					p.s.log.Warn("publish desired state: will retry", "device", pub.DeviceID, "version", pub.Version, "err", err)
				}
				abort()
				return
			}
			mu.Lock()
			done = append(done, final)
			mu.Unlock()
		}()
	}
}

// one publishes a device's document and returns the one the broker retains in the
// end: the newest stored, if another was stored meanwhile.
func (p *publisher) one(ctx context.Context, pub store.Publication) (store.Publication, error) {
	mu := p.lock(pub.DeviceID)
	mu.Lock()
	defer mu.Unlock()
	for range 3 {
		if err := p.s.broker.Publish(ctx, link.Topic(pub.DeviceID, link.TopicDesired), pub.Envelope, true); err != nil {
			return pub, err
		}
		cur, err := p.s.store.Desired(ctx, "", pub.DeviceID)
		if err != nil {
			return pub, err
		}
		if cur.Version == pub.Version {
			return pub, nil
		}
		pub = store.Publication{DeviceID: cur.DeviceID, Version: cur.Version, Envelope: cur.Envelope}
	}
	return pub, fmt.Errorf("desired state of %s keeps changing", pub.DeviceID)
}

// publishStored publishes the stored documents: those not yet published, or with
// all every document of an active device (at start: the embedded broker lost its
// retained messages with the previous process).
func (p *publisher) publishStored(ctx context.Context, all bool) error {
	if all {
		// Published before, to a broker that may not hold them now: if publishing
		// fails half way, the ticker finishes the job.
		if err := p.s.store.MarkAllUnpublished(ctx); err != nil {
			return err
		}
	}
	after := ""
	for {
		pubs, err := p.s.store.Unpublished(ctx, false, after, 500)
		if err != nil || len(pubs) == 0 {
			return err
		}
		p.publish(ctx, pubs)
		after = pubs[len(pubs)-1].DeviceID
	}
}

// deviceEvent records one event a device published. A malformed event is dropped
// (with a log line) rather than refused: the device would send it again forever.
func (s *Server) deviceEvent(ctx context.Context, id string, payload []byte) error {
	if len(payload) > maxEvent {
		s.log.Warn("device event dropped: too large", "device", id, "bytes", len(payload))
		return nil
	}
	var ev link.EventMessage
	if err := json.Unmarshal(payload, &ev); err != nil || ev.Kind == "" {
		s.log.Warn("device event dropped: malformed", "device", id, "err", err)
		return nil
	}
	res, err := s.store.RecordDeviceEvent(ctx, id, ev, s.now())
	if err != nil {
		return err
	}
	if !res.Duplicate && ev.Kind == link.EventDesired {
		s.log.Info("desired state report", "device", id, "version", ev.DesiredVersion, "state", ev.State, "campaign", ev.Campaign, "message", ev.Message)
	}
	if res.Campaign != "" {
		s.runner.kick(res.Campaign)
	}
	return nil
}

// desiredReq sets a device's release.
type desiredReq struct {
	Release string `json:"release"` // release id or name
}

func (s *Server) putDesired(w http.ResponseWriter, r *http.Request, c *caller) error {
	ctx := r.Context()
	dev, err := s.store.Device(ctx, c.Account, r.PathValue("id"))
	if err != nil {
		return err
	}
	var req desiredReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Release == "" {
		return badRequest("release is required")
	}
	rel, err := s.store.Release(ctx, c.Account, req.Release)
	if err != nil {
		return err
	}
	sg := s.signing(ctx)
	pub, err := s.store.SetDesired(ctx, store.DesiredChange{Account: c.Account, Device: dev.ID, Target: store.TargetOf(rel, ""),
		Now: s.now(), TTL: sg.TTL, Sign: sg.Sign})
	if err != nil {
		return err
	}
	s.log.Info("desired state set", "device", dev.ID, "release", rel.Name, "version", pub.Version)
	s.pub.publish(ctx, []store.Publication{pub})
	d, err := s.store.Desired(ctx, c.Account, dev.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, d)
}

func (s *Server) getDesired(w http.ResponseWriter, r *http.Request, c *caller) error {
	dev, err := s.store.Device(r.Context(), c.Account, r.PathValue("id"))
	if err != nil {
		return err
	}
	d, err := s.store.Desired(r.Context(), c.Account, dev.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, d)
}

func (s *Server) getDeviceEvents(w http.ResponseWriter, r *http.Request, c *caller) error {
	limit := store.DeviceEventsKept
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.DeviceEventsKept {
			return badRequest("limit must be 1..%d", store.DeviceEventsKept)
		}
		limit = n
	}
	evs, err := s.store.DeviceEvents(r.Context(), c.Account, r.PathValue("id"), limit)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, evs)
}
