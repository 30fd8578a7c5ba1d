package logship

import (
	"context"
	"log/slog"
	"strings"
	"time"
)

// Handler returns a slog handler that hands each record to next and ships it too,
// as a line of app "ternd": the agent's own log reaches the server with the apps'.
func Handler(next slog.Handler, buf *Buffer) slog.Handler {
	return &shipHandler{next: next, buf: buf}
}

type shipHandler struct {
	next  slog.Handler
	buf   *Buffer
	attrs []slog.Attr
}

func (h *shipHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *shipHandler) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	write := func(a slog.Attr) bool {
		b.WriteByte(' ')
		b.WriteString(a.Key)
		b.WriteByte('=')
		b.WriteString(a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	h.buf.Append(Line{Time: t, App: "ternd", Stream: "agent", Level: strings.ToLower(r.Level.String()), Line: b.String()})
	return h.next.Handle(ctx, r)
}

func (h *shipHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &shipHandler{next: h.next.WithAttrs(attrs), buf: h.buf, attrs: append(append([]slog.Attr{}, h.attrs...), attrs...)}
}

func (h *shipHandler) WithGroup(name string) slog.Handler {
	return &shipHandler{next: h.next.WithGroup(name), buf: h.buf, attrs: h.attrs}
}
