package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// maxLogBatch bounds one log message from a device (500 lines of up to 16 KiB
// would be more; a device's batches are far smaller, and larger ones are cut).
const maxLogBatch = 2 << 20

// deviceLogs stores a batch of a device's log lines. A malformed or oversized
// batch is dropped (and acknowledged: the device must not resend it forever).
func (s *Server) deviceLogs(ctx context.Context, id string, payload []byte) error {
	if len(payload) > maxLogBatch {
		s.log.Warn("device logs dropped: too large", "device", id, "bytes", len(payload))
		return nil
	}
	var batch link.LogBatch
	if err := json.Unmarshal(payload, &batch); err != nil {
		s.log.Warn("device logs dropped: malformed", "device", id, "err", err)
		return nil
	}
	return s.store.AddLogs(ctx, id, batch, s.now())
}

// pruneLogs applies log retention every few minutes.
func (s *Server) pruneLogs(ctx context.Context) {
	for {
		if n, err := s.store.PruneLogs(ctx, s.now(), s.cfg.LogRetention, s.cfg.LogMaxLines); err != nil && ctx.Err() == nil {
			s.log.Warn("log retention", "err", err)
		} else if n > 0 {
			s.log.Info("log retention", "lines_removed", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Minute):
		}
	}
}

// getDeviceLogs serves a device's log lines as JSON lines; with follow=1 it keeps
// the response open and sends lines as they arrive.
func (s *Server) getDeviceLogs(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := store.LogQuery{App: r.URL.Query().Get("app")}
	if v := r.URL.Query().Get("since"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			q.Since = t
		} else if d, err := time.ParseDuration(v); err == nil && d > 0 {
			q.Since = s.now().Add(-d)
		} else {
			return badRequest("since must be an RFC 3339 time or a duration such as 1h")
		}
	}
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("after must be a line id")
		}
		q.After = n
	}
	follow := r.URL.Query().Get("follow") == "1" || r.URL.Query().Get("follow") == "true"
	lines, err := s.store.Logs(r.Context(), c.Account, r.PathValue("id"), q)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for {
		for _, l := range lines {
			if err := enc.Encode(l); err != nil {
				return nil
			}
			q.After = l.ID
		}
		if flusher != nil {
			flusher.Flush()
		}
		if !follow {
			return nil
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-s.store.Changed():
		case <-time.After(2 * time.Second): // lines another replica stored
		}
		if lines, err = s.store.Logs(r.Context(), c.Account, r.PathValue("id"), q); err != nil {
			return nil
		}
	}
}
