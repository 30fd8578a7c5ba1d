package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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
		pkgs, err := packageReaders(r)
		if err != nil {
			problem(w, http.StatusBadRequest, "bad upload", err.Error())
			return
		}
		list, err := a.Install(r.Context(), pkgs...)
		replyUpdate(w, list, err)
	})
	mux.HandleFunc("POST /v1/apps/{name}/rollback", func(w http.ResponseWriter, r *http.Request) {
		list, err := a.Rollback(r.Context(), r.PathValue("name"))
		replyUpdate(w, list, err)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		events, err := a.Events(since)
		if events == nil {
			events = []Event{}
		}
		reply(w, events, err)
	})
	mux.HandleFunc("GET /v1/update", func(w http.ResponseWriter, r *http.Request) {
		t, err := a.store.Txn()
		if t == nil && err == nil {
			reply(w, map[string]string{"state": "idle"}, nil)
			return
		}
		reply(w, t, err)
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
	mux.HandleFunc("GET /v1/os", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.OSStatus(r.Context())
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/os", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.InstallOS(r.Context(), r.Body)
		reply(w, st, err)
	})
	a.registerDevRoutes(mux)
	return mux
}

// InstallResult is the answer to an install or rollback: the apps' states, and
// the error that rolled an update back, if one did.
type InstallResult struct {
	Apps  []AppStatus `json:"apps"`
	Error string      `json:"error,omitempty"`
}

// replyUpdate answers an install or rollback. A rolled-back update is a 409 whose
// problem detail says why; the apps run their previous versions.
func replyUpdate(w http.ResponseWriter, list []AppStatus, err error) {
	if err != nil {
		reply(w, nil, err)
		return
	}
	reply(w, InstallResult{Apps: list}, nil)
}

// packageReaders returns the packages of an upload: the body itself, or each part
// of a multipart body (several packages installed as one transaction), read in
// order as the install consumes them.
func packageReaders(r *http.Request) ([]io.Reader, error) {
	ct := r.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "multipart/") {
		return []io.Reader{r.Body}, nil
	}
	n, err := strconv.Atoi(r.URL.Query().Get("packages"))
	if err != nil || n < 1 || n > 64 {
		return nil, fmt.Errorf("a multipart upload names its number of packages (?packages=N, 1-64)")
	}
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, err
	}
	out := make([]io.Reader, n)
	for i := range out {
		out[i] = &lazyPart{mr: mr}
	}
	return out, nil
}

// lazyPart reads the next part of a multipart body when first read.
type lazyPart struct {
	mr  *multipart.Reader
	p   *multipart.Part
	err error
}

func (l *lazyPart) Read(b []byte) (int, error) {
	if l.p == nil && l.err == nil {
		l.p, l.err = l.mr.NextPart()
		if l.err == io.EOF {
			l.err = io.ErrUnexpectedEOF
		}
	}
	if l.err != nil {
		return 0, l.err
	}
	return l.p.Read(b)
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
	case errors.Is(err, ErrAlreadyInstalled), errors.Is(err, ErrBusy), errors.Is(err, ErrUpdateAbort), errors.Is(err, ErrNoPrevious):
		return http.StatusConflict
	case errors.Is(err, ErrNoOSUpdates):
		return http.StatusNotImplemented
	case errors.Is(err, ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, ErrDowngrade):
		return http.StatusForbidden
	case errors.Is(err, ErrRefused), errors.Is(err, app.ErrForbiddenCapability), errors.Is(err, ErrDevModeDenied):
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
	case http.StatusInsufficientStorage:
		return "not enough space"
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
