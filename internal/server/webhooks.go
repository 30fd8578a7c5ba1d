package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/tern-iot/tern/internal/store"
)

// webhookCursor is the setting that holds the seq of the last event the
// dispatcher has turned into deliveries.
const webhookCursor = "webhook_cursor"

// maxAttempts bounds the retries of one delivery.
const maxAttempts = 8

// webhooks turns events into signed HTTP deliveries, retried with exponential
// backoff. Deliveries are rows in the store, so a restart resumes them: an event
// is delivered at least once.
type webhooks struct {
	s      *Server
	client *http.Client
	base   time.Duration // first retry delay
}

func newWebhooks(s *Server) *webhooks {
	base := s.cfg.WebhookRetryBase
	if base == 0 {
		base = 2 * time.Second
	}
	return &webhooks{s: s, base: base, client: &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (h *webhooks) run(ctx context.Context) {
	st := h.s.store
	last, err := st.LastEventSeq(ctx)
	if err != nil {
		h.s.log.Error("webhooks", "err", err)
		return
	}
	// A new server starts delivering at the present, not at the beginning of time.
	if _, err := st.InitSetting(ctx, webhookCursor, strconv.FormatInt(last, 10)); err != nil {
		h.s.log.Error("webhooks", "err", err)
		return
	}
	for {
		changed := st.Changed()
		if err := h.enqueue(ctx); err != nil && ctx.Err() == nil {
			h.s.log.Warn("webhook enqueue", "err", err)
		}
		next, err := h.deliverDue(ctx)
		if err != nil && ctx.Err() == nil {
			h.s.log.Warn("webhook delivery", "err", err)
		}
		wait := 2 * time.Second
		if d := time.Until(next); !next.IsZero() && d < wait {
			wait = max(d, 10*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(wait):
		}
	}
}

// enqueue creates deliveries for events after the cursor.
func (h *webhooks) enqueue(ctx context.Context) error {
	st := h.s.store
	v, err := st.Setting(ctx, webhookCursor)
	if err != nil {
		return err
	}
	cursor, _ := strconv.ParseInt(v, 10, 64)
	evs, err := st.Events(ctx, "", cursor, 200)
	if err != nil || len(evs) == 0 {
		return err
	}
	hooks, err := st.Webhooks(ctx, "")
	if err != nil {
		return err
	}
	for _, e := range evs {
		var ids []string
		for _, w := range hooks {
			if w.AccountID == e.AccountID && (len(w.Events) == 0 || slices.Contains(w.Events, e.Type)) {
				ids = append(ids, w.ID)
			}
		}
		if err := st.EnqueueDeliveries(ctx, webhookCursor, e.Seq, ids, h.s.now()); err != nil {
			return err
		}
	}
	return nil
}

// deliverDue attempts the due deliveries and returns when the next one is due.
func (h *webhooks) deliverDue(ctx context.Context) (time.Time, error) {
	st := h.s.store
	due, err := st.DueDeliveries(ctx, h.s.now(), 50)
	if err != nil || len(due) == 0 {
		return time.Time{}, err
	}
	hooks, err := st.Webhooks(ctx, "")
	if err != nil {
		return time.Time{}, err
	}
	byID := map[string]store.Webhook{}
	for _, w := range hooks {
		byID[w.ID] = w
	}
	var next time.Time
	for _, d := range due {
		w, ok := byID[d.WebhookID]
		if !ok {
			continue
		}
		ev, err := st.Event(ctx, d.EventSeq)
		if err != nil {
			return next, err
		}
		code, derr := h.post(ctx, w, d, ev)
		now := h.s.now()
		status, retryAt, msg := "delivered", time.Time{}, ""
		if derr != nil {
			msg = derr.Error()
			status = "pending"
			retryAt = now.Add(h.base << min(d.Attempts, 10))
			if d.Attempts+1 >= maxAttempts {
				status, retryAt = "failed", time.Time{}
			}
		}
		if err := st.RecordAttempt(ctx, d.ID, status, code, msg, retryAt, now); err != nil {
			return next, err
		}
		if !retryAt.IsZero() && (next.IsZero() || retryAt.Before(next)) {
			next = retryAt
		}
	}
	if len(due) == 50 {
		next = h.s.now()
	}
	return next, nil
}

// WebhookPayload is the body of a delivery.
type WebhookPayload struct {
	Delivery int64           `json:"delivery"`
	Seq      int64           `json:"seq"`
	Type     string          `json:"type"`
	Device   string          `json:"device,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	At       time.Time       `json:"at"`
}

// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>".
// A receiver recomputes it and refuses stale timestamps, as Stripe's webhooks do.
const SignatureHeader = "Tern-Signature"

// Sign computes the v1 signature of body at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

func (h *webhooks) post(ctx context.Context, w store.Webhook, d store.Delivery, ev store.Event) (int, error) {
	body, _ := json.Marshal(WebhookPayload{Delivery: d.ID, Seq: ev.Seq, Type: ev.Type, Device: ev.DeviceID, Data: ev.Data, At: ev.At})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tern-server")
	req.Header.Set("Tern-Event", ev.Type)
	req.Header.Set("Tern-Delivery", strconv.FormatInt(d.ID, 10))
	req.Header.Set(SignatureHeader, Sign(w.Secret, h.s.now(), body))
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}

type webhookReq struct {
	URL    string   `json:"url"`
	Secret string   `json:"secret"`
	Events []string `json:"events,omitempty"`
}

func (s *Server) listWebhooks(w http.ResponseWriter, r *http.Request, c *caller) error {
	hs, err := s.store.Webhooks(r.Context(), c.Account)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, hs)
}

func (s *Server) postWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req webhookReq
	if err := decode(r, &req); err != nil {
		return err
	}
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return badRequest("url must be an http(s) URL")
	}
	if len(req.Secret) < 16 {
		return badRequest("secret must be at least 16 characters")
	}
	wh := store.Webhook{ID: "w-" + randomID(6), AccountID: c.Account, URL: u.String(), Secret: req.Secret,
		Events: req.Events, CreatedAt: s.now()}
	if wh.Events == nil {
		wh.Events = []string{}
	}
	if err := s.store.CreateWebhook(r.Context(), wh); err != nil {
		return err
	}
	return writeJSON(w, 201, wh)
}

func (s *Server) deleteWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := s.store.DeleteWebhook(r.Context(), c.Account, r.PathValue("id")); err != nil {
		return err
	}
	return noContent(w)
}

func (s *Server) listDeliveries(w http.ResponseWriter, r *http.Request, c *caller) error {
	hs, err := s.store.Webhooks(r.Context(), c.Account)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if !slices.ContainsFunc(hs, func(w store.Webhook) bool { return w.ID == id }) {
		return fmt.Errorf("webhook %q: %w", id, store.ErrNotFound)
	}
	ds, err := s.store.Deliveries(r.Context(), id, 100)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, ds)
}
