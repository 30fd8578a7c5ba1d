package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
)

// TestAccessMatrix calls every endpoint with every role of the default account and
// of another account, and checks the answer against the endpoint's rule: too weak
// a role is refused (403) before anything happens; another account's objects are
// invisible (404) and unchanged.
func TestAccessMatrix(t *testing.T) {
	e := start(t)
	var other struct {
		AdminKey string `json:"admin_key"`
	}
	e.must(e.admin, "POST", "/api/v1/accounts", map[string]any{"name": "other"}, &other)
	keys := map[string]map[store.Role]string{
		"default": {store.RoleAdmin: e.admin, store.RoleOperator: e.key(e.admin, store.RoleOperator), store.RoleViewer: e.key(e.admin, store.RoleViewer)},
		"other":   {store.RoleAdmin: other.AdminKey, store.RoleOperator: e.key(other.AdminKey, store.RoleOperator), store.RoleViewer: e.key(other.AdminKey, store.RoleViewer)},
	}

	// Objects of the default account, to be targeted from the other account.
	id := e.enroll(e.token(e.admin, map[string]any{"max_uses": 5}))
	var tok, grp, hook, spare struct{ ID string }
	e.must(e.admin, "POST", "/api/v1/tokens", map[string]any{}, &tok)
	e.must(e.admin, "POST", "/api/v1/groups", map[string]any{"name": "g1", "members": []string{id.DeviceID}}, &grp)
	e.must(e.admin, "POST", "/api/v1/webhooks", map[string]any{"url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef"}, &hook)
	e.must(e.admin, "POST", "/api/v1/keys", map[string]any{"name": "spare", "role": "viewer"}, &spare)
	rel := e.mustUpload(e.admin, "r1", buildPackage(t, e.releaseKey(e.admin), "alpha", "1.0.0"))
	var camp struct{ ID string }
	e.must(e.admin, "POST", "/api/v1/campaigns", map[string]any{"name": "c1", "release": rel.Name, "group": grp.ID, "wait": "1h"}, &camp)
	real := map[string]string{
		"/api/v1/devices/": id.DeviceID, "/api/v1/tokens/": tok.ID, "/api/v1/groups/": grp.ID,
		"/api/v1/webhooks/": hook.ID, "/api/v1/keys/": spare.ID, "/api/v1/release-keys/": "nope",
		"/api/v1/releases/": rel.ID, "/api/v1/campaigns/": camp.ID,
	}
	fill := func(path, with string) string {
		if with == "" {
			for prefix, v := range real {
				if strings.HasPrefix(path, prefix) {
					with = v
				}
			}
		}
		return strings.Replace(path, "{id}", with, 1)
	}
	body := func(method, path string) any {
		if strings.HasSuffix(path, "/labels") {
			return map[string]any{"labels": map[string]string{"x": "y"}}
		}
		if method == "POST" || method == "PUT" || method == "PATCH" {
			return "{}"
		}
		return nil
	}

	for _, ep := range server.Endpoints() {
		if ep.Role == "" {
			continue
		}
		for _, acct := range []string{"default", "other"} {
			for _, role := range []store.Role{store.RoleAdmin, store.RoleOperator, store.RoleViewer} {
				name := fmt.Sprintf("%s %s/%s-%s", ep.Method, ep.Path, acct, role)
				t.Run(name, func(t *testing.T) {
					allowed := role.Allows(ep.Role) && (!ep.System || (acct == "default" && role == store.RoleAdmin))
					// Own account: ids that do not exist, so an allowed call changes nothing.
					// Other account: the default account's real ids.
					path := fill(ep.Path, map[string]string{"default": "nope", "other": ""}[acct])
					code := e.do(keys[acct][role], ep.Method, path, body(ep.Method, ep.Path), nil)
					switch {
					case !allowed && code != http.StatusForbidden:
						t.Fatalf("got %d, want 403", code)
					case allowed && (code == http.StatusForbidden || code == http.StatusUnauthorized):
						t.Fatalf("got %d, want access", code)
					case allowed && acct == "other" && strings.Contains(ep.Path, "{id}") && code != http.StatusNotFound:
						t.Fatalf("another account's object: got %d, want 404", code)
					}
				})
			}
		}
	}

	// Nothing of the default account changed under the other account's calls.
	dev := e.device(e.admin, id.DeviceID)
	if dev["status"] != "active" || len(dev["labels"].(map[string]any)) != 0 {
		t.Fatalf("device changed: %v", dev)
	}
	var toks []store.Token
	e.must(e.admin, "GET", "/api/v1/tokens", nil, &toks)
	for _, tk := range toks {
		if tk.ID == tok.ID && !tk.RevokedAt.IsZero() {
			t.Fatal("token revoked from another account")
		}
	}
	e.must(e.admin, "GET", "/api/v1/groups/"+grp.ID, nil, nil)
	assertKeyLive(e, spare.ID)
	var c struct{ State string }
	e.must(e.admin, "GET", "/api/v1/campaigns/"+camp.ID, nil, &c)
	if c.State == "cancelled" || c.State == "rolled_back" || c.State == "paused" {
		t.Fatalf("campaign changed from another account: %s", c.State)
	}
	if _, err := e.srv.Store().Desired(context.Background(), "", id.DeviceID); err != nil {
		t.Fatalf("desired state: %v", err)
	} else if d, _ := e.srv.Store().Desired(context.Background(), "", id.DeviceID); d.Target.Campaign != camp.ID {
		t.Fatalf("desired state changed from another account: %+v", d.Target)
	}
	// Listings are per account.
	var ds []store.Device
	e.must(other.AdminKey, "GET", "/api/v1/devices", nil, &ds)
	if len(ds) != 0 {
		t.Fatalf("other account sees %d devices", len(ds))
	}
}

// assertKeyLive checks that the key with id is not revoked.
func assertKeyLive(e *env, id string) {
	var ks []store.APIKey
	e.must(e.admin, "GET", "/api/v1/keys", nil, &ks)
	for _, k := range ks {
		if k.ID == id && !k.RevokedAt.IsZero() {
			e.t.Fatal("api key revoked from another account")
		}
	}
}

func TestUnauthenticatedRequestsAreRefused(t *testing.T) {
	e := start(t)
	for _, key := range []string{"", "garbage", "ternk.nope.nope", "ternk." + strings.Repeat("a", 12) + ".x"} {
		for _, ep := range server.Endpoints() {
			if ep.Role == "" {
				continue
			}
			if code := e.do(key, ep.Method, strings.Replace(ep.Path, "{id}", "x", 1), nil, nil); code != http.StatusUnauthorized {
				t.Errorf("%s %s with key %q: %d, want 401", ep.Method, ep.Path, key, code)
			}
		}
	}
	k := e.key(e.admin, store.RoleViewer)
	var ks []store.APIKey
	e.must(e.admin, "GET", "/api/v1/keys", nil, &ks)
	id := strings.Split(k, ".")[1]
	e.must(e.admin, "DELETE", "/api/v1/keys/"+id, nil, nil)
	if code := e.do(k, "GET", "/api/v1/devices", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("revoked key: %d", code)
	}
}
