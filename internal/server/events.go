package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// getEvents serves the account's event log: a JSON page, or with Accept:
// text/event-stream a Server-Sent Events stream that follows new events. A stream
// resumes after Last-Event-ID (or ?after=); without either it starts at the newest
// event.
func (s *Server) getEvents(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	after := int64(-1)
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("after must be an event seq")
		}
		after = n
	}
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		if after < 0 {
			after = 0
		}
		limit := 100
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				return badRequest("limit must be 1..1000")
			}
			limit = n
		}
		evs, err := s.store.Events(r.Context(), c.Account, after, limit)
		if err != nil {
			return err
		}
		return writeJSON(w, 200, evs)
	}
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			after = n
		}
	}
	if after < 0 {
		seq, err := s.store.LastEventSeq(r.Context())
		if err != nil {
			return err
		}
		after = seq
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("streaming unsupported")
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(200)
	fmt.Fprint(w, ": tern event stream\n\n")
	flusher.Flush()
	ctx := r.Context()
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	for {
		changed := s.store.Changed()
		evs, err := s.store.Events(ctx, c.Account, after, 500)
		if err != nil {
			return nil // the stream has started: end it; the client resumes
		}
		for _, e := range evs {
			data, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, data)
			after = e.Seq
		}
		if len(evs) > 0 {
			flusher.Flush()
		}
		if len(evs) == 500 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(2 * time.Second): // events recorded by other replicas
		case <-heartbeat.C:
			fmt.Fprint(w, ": ping\n\n")
			flusher.Flush()
		}
	}
}
