package server

import (
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// accountView is an account as the API shows it: never its private keys.
type accountView struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	DeviceCA    string    `json:"device_ca"`
	DirectorKey string    `json:"director_key"` // public half, PKIX PEM
	Policy      policy    `json:"policy"`
	CreatedAt   time.Time `json:"created_at"`
}

// policy is an account's policy for its devices.
type policy struct {
	// DevMode is "allow" (the default) or "deny": the account's devices turn
	// developer mode off and refuse to enable it.
	DevMode string `json:"devmode"`
}

func viewAccount(a store.Account) accountView {
	v := accountView{ID: a.ID, Name: a.Name, DeviceCA: a.CACert, Policy: policy{DevMode: a.DevMode}, CreatedAt: a.CreatedAt}
	if k, err := trust.ParsePrivateKey([]byte(a.DirectorKey)); err == nil {
		v.DirectorKey = string(trust.MarshalPublicKey(k.Public()))
	}
	return v
}

func (s *Server) getAccount(w http.ResponseWriter, r *http.Request, c *caller) error {
	a, err := s.store.Account(r.Context(), c.Account)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, viewAccount(a))
}

// putPolicy sets the caller's account's policy. Every device of the account
// receives it in a new signed desired-state document (devices without a release
// get one that lists no app): a device told "deny" turns developer mode off at
// once, and refuses to turn it on.
func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req policy
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.DevMode != store.DevModeAllow && req.DevMode != store.DevModeDeny {
		return badRequest("devmode: %q: want %q or %q", req.DevMode, store.DevModeAllow, store.DevModeDeny)
	}
	a, err := s.store.SetDevModePolicy(r.Context(), c.Account, req.DevMode, s.now())
	if err != nil {
		return err
	}
	s.log.Info("account policy set", "account", a.ID, "devmode", a.DevMode)
	s.runner.requestPolicySync()
	return writeJSON(w, 200, viewAccount(a))
}

func (s *Server) listAccounts(w http.ResponseWriter, r *http.Request, c *caller) error {
	as, err := s.store.Accounts(r.Context())
	if err != nil {
		return err
	}
	out := []accountView{}
	for _, a := range as {
		out = append(out, viewAccount(a))
	}
	return writeJSON(w, 200, out)
}

type createAccountReq struct {
	Name string `json:"name"`
}

type createdAccount struct {
	Account  accountView `json:"account"`
	AdminKey string      `json:"admin_key"` // shown once
}

func (s *Server) postAccount(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req createAccountReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if !nameRE.MatchString(req.Name) {
		return badRequest("account name must be lower-case letters, digits and dashes")
	}
	a, err := s.createAccount(r.Context(), req.Name)
	if err != nil {
		return err
	}
	secret, k, err := newAPIKey(a.ID, "first admin", store.RoleAdmin, s.now())
	if err != nil {
		return err
	}
	if err := s.store.CreateAPIKey(r.Context(), k); err != nil {
		return err
	}
	return writeJSON(w, 201, createdAccount{Account: viewAccount(a), AdminKey: secret})
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, c *caller) error {
	ks, err := s.store.APIKeys(r.Context(), c.Account)
	if err != nil {
		return err
	}
	if ks == nil {
		ks = []store.APIKey{}
	}
	return writeJSON(w, 200, ks)
}

type createKeyReq struct {
	Name string     `json:"name"`
	Role store.Role `json:"role"`
}

type createdKey struct {
	store.APIKey
	Key string `json:"key"` // shown once
}

func (s *Server) postKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req createKeyReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if !req.Role.Valid() {
		return badRequest("role must be admin, operator or viewer")
	}
	if req.Name == "" || len(req.Name) > 200 {
		return badRequest("a name (up to 200 characters) is required")
	}
	secret, k, err := newAPIKey(c.Account, req.Name, req.Role, s.now())
	if err != nil {
		return err
	}
	if err := s.store.CreateAPIKey(r.Context(), k); err != nil {
		return err
	}
	return writeJSON(w, 201, createdKey{APIKey: k, Key: secret})
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := s.store.RevokeAPIKey(r.Context(), c.Account, r.PathValue("id"), s.now()); err != nil {
		return err
	}
	return noContent(w)
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, c *caller) error {
	ts, err := s.store.Tokens(r.Context(), c.Account)
	if err != nil {
		return err
	}
	if ts == nil {
		ts = []store.Token{}
	}
	return writeJSON(w, 200, ts)
}

type createTokenReq struct {
	Description string            `json:"description,omitempty"`
	Expires     string            `json:"expires,omitempty"`  // duration, e.g. "24h" or "30d"; default 24h
	MaxUses     int               `json:"max_uses,omitempty"` // default 1
	Labels      map[string]string `json:"labels,omitempty"`
	Approval    store.Approval    `json:"approval,omitempty"` // auto (default) | manual
}

type createdToken struct {
	store.Token
	Secret string `json:"token"` // shown once: hand it to the device (ternd --enroll-token)
}

func (s *Server) postToken(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req createTokenReq
	if err := decode(r, &req); err != nil {
		return err
	}
	ttl := 24 * time.Hour
	if req.Expires != "" {
		d, err := parseDuration(req.Expires)
		if err != nil || d <= 0 || d > 366*24*time.Hour {
			return badRequest("expires must be a duration up to a year (e.g. 24h, 30d)")
		}
		ttl = d
	}
	if req.MaxUses == 0 {
		req.MaxUses = 1
	}
	if req.MaxUses < 0 || req.MaxUses > 1_000_000 {
		return badRequest("max_uses must be between 1 and 1000000")
	}
	switch req.Approval {
	case "":
		req.Approval = store.ApprovalAuto
	case store.ApprovalAuto, store.ApprovalManual:
	default:
		return badRequest("approval must be auto or manual")
	}
	if len(req.Labels) > 64 {
		return badRequest("at most 64 labels")
	}
	for k, v := range req.Labels {
		if err := store.ValidLabel(k, v); err != nil || v == "" {
			return badRequest("bad label %s=%s", k, v)
		}
	}
	now := s.now()
	t := store.Token{ID: "t-" + randomID(6), AccountID: c.Account, Description: req.Description, Labels: req.Labels,
		Approval: req.Approval, MaxUses: req.MaxUses, ExpiresAt: now.Add(ttl), CreatedAt: now}
	secret := randomSecret()
	t.Hash = hashSecret(secret)
	if err := s.store.CreateToken(r.Context(), t); err != nil {
		return err
	}
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	tok := link.Token{ID: t.ID, Secret: secret, CAFingerprint: s.caFingerprint}
	return writeJSON(w, 201, createdToken{Token: t, Secret: tok.String()})
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := s.store.RevokeToken(r.Context(), c.Account, r.PathValue("id"), s.now()); err != nil {
		return err
	}
	return noContent(w)
}

func (s *Server) listReleaseKeys(w http.ResponseWriter, r *http.Request, c *caller) error {
	ks, err := s.store.ReleaseKeys(r.Context(), c.Account)
	if err != nil {
		return err
	}
	if ks == nil {
		ks = []store.ReleaseKey{}
	}
	return writeJSON(w, 200, ks)
}

type releaseKeyReq struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"` // PKIX PEM ed25519, as `tern keys generate` writes it
}

func (s *Server) postReleaseKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req releaseKeyReq
	if err := decode(r, &req); err != nil {
		return err
	}
	pub, err := trust.ParsePublicKey([]byte(req.PublicKey))
	if err != nil {
		return badRequest("public_key: %v", err)
	}
	k := store.ReleaseKey{AccountID: c.Account, KeyID: pub.ID, Name: strings.TrimSpace(req.Name),
		PublicKey: string(trust.MarshalPublicKey(pub)), CreatedAt: s.now()}
	if err := s.store.AddReleaseKey(r.Context(), k); err != nil {
		return err
	}
	return writeJSON(w, 201, k)
}

func (s *Server) deleteReleaseKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := s.store.DeleteReleaseKey(r.Context(), c.Account, r.PathValue("id")); err != nil {
		return err
	}
	return noContent(w)
}
