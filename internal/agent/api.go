package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/runtime"
	"github.com/tern-iot/tern/internal/trust"
)

// MediaTypePackage is the content type of a package upload.
const MediaTypePackage = "application/vnd.tern.package"

// Problem is an RFC 9457 problem document, the body of every error answer.
type Problem struct {
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// Handler serves the local API: the same API developer mode serves on the LAN.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/apps", func(w http.ResponseWriter, r *http.Request) {
		list, err := a.List(r.Context())
		reply(w, list, err)
	})
	mux.HandleFunc("POST /v1/apps", func(w http.ResponseWriter, r *http.Request) {
		rec, err := a.Install(r.Context(), r.Body)
		if err != nil {
			reply(w, nil, err)
			return
		}
		st, err := a.Inspect(r.Context(), rec.Name())
		st.Manifest = nil
		reply(w, st, err)
	})
	mux.HandleFunc("GET /v1/apps/{name}", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.Inspect(r.Context(), r.PathValue("name"))
		reply(w, st, err)
	})
	mux.HandleFunc("DELETE /v1/apps/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, nil, a.Remove(r.Context(), r.PathValue("name")))
	})
	verbs := map[string]func(*Agent, string) error{
		"start":   func(a *Agent, n string) error { return a.Start(a.ctx, n) },
		"stop":    func(a *Agent, n string) error { return a.Stop(a.ctx, n) },
		"restart": func(a *Agent, n string) error { return a.Restart(a.ctx, n) },
	}
	mux.HandleFunc("POST /v1/apps/{name}/{verb}", func(w http.ResponseWriter, r *http.Request) {
		fn, ok := verbs[r.PathValue("verb")]
		if !ok {
			problem(w, http.StatusNotFound, "unknown verb", r.PathValue("verb"))
			return
		}
		if err := fn(a, r.PathValue("name")); err != nil {
			reply(w, nil, err)
			return
		}
		st, err := a.Inspect(r.Context(), r.PathValue("name"))
		st.Manifest = nil
		reply(w, st, err)
	})
	mux.HandleFunc("GET /v1/apps/{name}/logs", func(w http.ResponseWriter, r *http.Request) {
		tail := -1
		if t := r.URL.Query().Get("tail"); t != "" {
			n, err := strconv.Atoi(t)
			if err != nil || n < 0 {
				problem(w, http.StatusBadRequest, "bad tail", "tail must be a number of lines")
				return
			}
			tail = n
		}
		follow := r.URL.Query().Get("follow") == "1" || r.URL.Query().Get("follow") == "true"
		if _, err := a.store.App(r.PathValue("name")); err != nil {
			reply(w, nil, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		bw := &flushWriter{w: bufio.NewWriter(w), f: w.(http.Flusher)}
		a.Logs(r.Context(), r.PathValue("name"), tail, follow, bw)
		bw.Flush()
	})
	return mux
}

type flushWriter struct {
	w *bufio.Writer
	f http.Flusher
}

func (f *flushWriter) Write(p []byte) (int, error) { return f.w.Write(p) }
func (f *flushWriter) Flush() {
	f.w.Flush()
	f.f.Flush()
}

// reply writes v as JSON, or err as a problem with the status its kind calls for.
func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		problem(w, statusOf(err), titleOf(err), err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if v == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	json.NewEncoder(w).Encode(v)
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotInstalled), errors.Is(err, runtime.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrAlreadyInstalled):
		return http.StatusConflict
	case errors.Is(err, ErrRefused), errors.Is(err, app.ErrForbiddenCapability):
		return http.StatusForbidden
	case isPackageError(err):
		return http.StatusUnprocessableEntity
	}
	return http.StatusInternalServerError
}

func titleOf(err error) string {
	switch statusOf(err) {
	case http.StatusNotFound:
		return "not found"
	case http.StatusConflict:
		return "conflict"
	case http.StatusForbidden:
		return "refused by device policy"
	case http.StatusUnprocessableEntity:
		return "bad package"
	}
	return "internal error"
}

func isPackageError(err error) bool {
	for _, e := range []error{app.ErrNotPackage, app.ErrUnsupportedFormat, app.ErrUnknownEntry,
		app.ErrDuplicateEntry, app.ErrEntryOrder, app.ErrTruncated, app.ErrTooLarge, app.ErrBlobDigest,
		app.ErrBlobSize, app.ErrMissingBlob, app.ErrSignature, app.ErrBadManifest, trust.ErrBadSignature} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(Problem{Title: title, Status: status, Detail: detail})
}

// ListenUnix opens the local API socket, mode 0600: only root talks to ternd.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another ternd is listening", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
