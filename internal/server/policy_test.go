package server_test

import (
	"strings"
	"testing"

	"github.com/tern-iot/tern/internal/store"
)

// TestDevModePolicyAPI: only admins set the policy; a bad value is a 400 that
// changes nothing; the account shows it, and the change is an event.
func TestDevModePolicyAPI(t *testing.T) {
	e := start(t)
	type account struct {
		Policy struct {
			DevMode string `json:"devmode"`
		} `json:"policy"`
	}
	var a account
	e.must(e.admin, "GET", "/api/v1/account", nil, &a)
	if a.Policy.DevMode != store.DevModeAllow {
		t.Fatalf("default policy %q", a.Policy.DevMode)
	}
	var prob struct{ Detail string }
	if code := e.do(e.admin, "PUT", "/api/v1/account/policy", map[string]string{"devmode": "sometimes"}, &prob); code != 400 || !strings.Contains(prob.Detail, "sometimes") {
		t.Fatalf("bad value: %d %+v", code, prob)
	}
	if code := e.do(e.admin, "PUT", "/api/v1/account/policy", `{"devmode":"deny","extra":1}`, nil); code != 400 {
		t.Fatalf("unknown field: %d", code)
	}
	if code := e.do(e.key(e.admin, store.RoleOperator), "PUT", "/api/v1/account/policy", map[string]string{"devmode": "deny"}, nil); code != 403 {
		t.Fatalf("operator: %d", code)
	}
	e.must(e.admin, "GET", "/api/v1/account", nil, &a)
	if a.Policy.DevMode != store.DevModeAllow {
		t.Fatalf("refused changes changed the policy: %q", a.Policy.DevMode)
	}
	e.must(e.admin, "PUT", "/api/v1/account/policy", map[string]string{"devmode": "deny"}, &a)
	if a.Policy.DevMode != store.DevModeDeny {
		t.Fatalf("after deny: %q", a.Policy.DevMode)
	}
	var evs []struct {
		Type string
		Data map[string]string
	}
	e.must(e.admin, "GET", "/api/v1/events", nil, &evs)
	found := false
	for _, ev := range evs {
		if ev.Type == store.EventPolicy && ev.Data["devmode"] == "deny" && ev.Data["previous"] == "allow" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no account.policy event in %+v", evs)
	}
}
