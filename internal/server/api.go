package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// maxBody bounds every request body.
const maxBody = 64 << 10

// caller is who made an authenticated request.
type caller struct {
	Account string
	KeyID   string
	Role    store.Role
	System  bool   // an admin of the default account: may manage accounts
	Device  string // a device authenticated by its client certificate (device endpoints)
}

// route is one API endpoint. The route table is the single source of the API's
// shape: the mux, the access rules, the OpenAPI document and the access-matrix test
// all read it.
type route struct {
	Method, Path string
	Role         store.Role // minimum role; "" for endpoints without an API key
	System       bool       // only admins of the default account
	Summary      string
	Request      any // example request body type, for the OpenAPI document
	Response     any // example response body type
	Status       int // success status (200 when 0)
	// Device marks an endpoint for devices: authenticated by the device's client
	// certificate (mutual TLS), not by an API key.
	Device bool
	// MaxBody bounds the request body: 0 is maxBody, -1 the server's upload limit.
	MaxBody int64
	// RequestType is the request body's media type when it is not JSON.
	RequestType string
	handle      func(s *Server, w http.ResponseWriter, r *http.Request, c *caller) error
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range routes() {
		rt := rt
		mux.HandleFunc(rt.Method+" "+rt.Path, func(w http.ResponseWriter, r *http.Request) {
			s.serve(rt, w, r)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, &apiError{Status: http.StatusNotFound, Title: "no such endpoint"})
	})
	return mux
}

func (s *Server) serve(rt route, w http.ResponseWriter, r *http.Request) {
	limit := rt.MaxBody
	switch limit {
	case 0:
		limit = maxBody
	case -1:
		limit = s.cfg.MaxUpload
	}
	body := &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit)}
	r.Body = body
	var c *caller
	if rt.Device {
		var err error
		if c, err = s.authenticateDevice(r); err != nil {
			writeProblem(w, err)
			return
		}
	}
	if rt.Role != "" {
		var err error
		if c, err = s.authenticate(r); err != nil {
			writeProblem(w, err)
			return
		}
		if !c.Role.Allows(rt.Role) || (rt.System && !c.System) {
			writeProblem(w, &apiError{Status: http.StatusForbidden, Title: "forbidden",
				Detail: fmt.Sprintf("this needs role %s%s; the key has role %s", rt.Role, map[bool]string{true: " in the default account"}[rt.System], c.Role)})
			return
		}
	}
	if err := rt.handle(s, w, r, c); err != nil {
		if body.exceeded != nil {
			err = body.exceeded // whatever the reader made of it, the body was too large
		}
		var ae *apiError
		if !errors.As(err, &ae) && !isClientError(err) {
			s.log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		writeProblem(w, err)
	}
}

// limitedBody remembers that the body went over its limit, so the answer is a
// 413 even when a parser (tar, multipart) reported the cut as something else.
type limitedBody struct {
	io.ReadCloser
	exceeded error
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		b.exceeded = mbe
	}
	return n, err
}

// authenticate checks the request's bearer API key.
func (s *Server) authenticate(r *http.Request) (*caller, error) {
	unauth := func(detail string) error {
		return &apiError{Status: http.StatusUnauthorized, Title: "unauthorized", Detail: detail}
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, unauth("send an API key as Authorization: Bearer <key>")
	}
	id, secret, err := parseAPIKey(strings.TrimSpace(tok))
	if err != nil {
		return nil, unauth(err.Error())
	}
	k, err := s.store.APIKey(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && subtle.ConstantTimeCompare([]byte(k.Hash), []byte(hashSecret(secret))) != 1) {
		return nil, unauth("unknown API key")
	}
	if err != nil {
		return nil, err
	}
	if !k.RevokedAt.IsZero() {
		return nil, unauth("API key revoked")
	}
	c := &caller{Account: k.AccountID, KeyID: k.ID, Role: k.Role}
	if k.Role == store.RoleAdmin {
		if a, err := s.store.Account(r.Context(), k.AccountID); err == nil && a.Name == DefaultAccount {
			c.System = true
		}
	}
	return c, nil
}

// apiError is an RFC 9457 problem.
type apiError struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
	Type   string `json:"type,omitempty"`
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Title, e.Detail) }

func badRequest(format string, args ...any) error {
	return &apiError{Status: http.StatusBadRequest, Title: "bad request", Detail: fmt.Sprintf(format, args...)}
}

// problemFor maps errors to problems: typed kinds from the store and the protocol
// become 4xx; anything else is a 500 that says nothing of the cause.
func problemFor(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var mbe *http.MaxBytesError
	p := func(status int, title string) *apiError {
		return &apiError{Status: status, Title: title, Detail: err.Error()}
	}
	switch {
	case errors.As(err, &mbe):
		return &apiError{Status: http.StatusRequestEntityTooLarge, Title: "request body too large", Detail: fmt.Sprintf("the limit is %d bytes", mbe.Limit)}
	case errors.Is(err, store.ErrNotFound):
		return p(http.StatusNotFound, "not found")
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrKeyEnrolled):
		return p(http.StatusConflict, "conflict")
	case errors.Is(err, store.ErrWrongState):
		return p(http.StatusConflict, "wrong state")
	case errors.Is(err, store.ErrTokenInvalid), errors.Is(err, link.ErrBadToken):
		return p(http.StatusUnauthorized, "invalid enrollment token")
	case errors.Is(err, store.ErrTokenExpired), errors.Is(err, store.ErrTokenRevoked), errors.Is(err, store.ErrTokenExhausted):
		return p(http.StatusForbidden, "enrollment token not usable")
	case errors.Is(err, store.ErrDecommissioned), errors.Is(err, store.ErrRejected):
		return p(http.StatusForbidden, "device refused")
	case errors.Is(err, store.ErrBadSelector), errors.Is(err, ErrBadCSR), errors.Is(err, store.ErrBadCampaign), errors.Is(err, store.ErrBadPolicy):
		return p(http.StatusBadRequest, "bad request")
	case errors.Is(err, store.ErrBadRelease):
		return p(http.StatusUnprocessableEntity, "invalid release")
	case errors.Is(err, store.ErrCampaignState):
		return p(http.StatusConflict, "wrong state")
	case errors.Is(err, store.ErrConflict):
		return p(http.StatusConflict, "conflict")
	case errors.Is(err, context.Canceled):
		return &apiError{Status: 499, Title: "client closed request"}
	}
	return &apiError{Status: http.StatusInternalServerError, Title: "internal error"}
}

func isClientError(err error) bool { return problemFor(err).Status < 500 }

func writeProblem(w http.ResponseWriter, err error) {
	p := problemFor(err)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decode reads exactly one JSON value into v: unknown fields, trailing data, a
// wrong content type and oversize bodies are refused.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &apiError{Status: http.StatusUnsupportedMediaType, Title: "unsupported media type", Detail: "send application/json"}
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return badRequest("empty body: a JSON object is expected")
		}
		return badRequest("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return badRequest("trailing data after the JSON object")
	}
	return nil
}

// parseDuration accepts Go durations plus a "d" suffix for days.
func parseDuration(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(d, "%d", &n); err != nil || n <= 0 {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
