package server

import (
	"net/http"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// routes is the API. Roles: viewer reads, operator changes devices, tokens and
// groups, admin manages keys, webhooks and release keys; System marks what only the
// default account's admins may do.
func routes() []route {
	v, o, a := store.RoleViewer, store.RoleOperator, store.RoleAdmin
	return []route{
		{Method: "GET", Path: "/api/v1/openapi.json", Summary: "This API's OpenAPI 3 document", handle: (*Server).getOpenAPI},
		{Method: "POST", Path: link.EnrollPath, Summary: "Enroll a device: token and CSR in, certificate and trust roots out",
			Request: link.EnrollRequest{}, Response: link.EnrollResponse{}, handle: (*Server).postEnroll},

		{Method: "GET", Path: "/api/v1/account", Role: v, Summary: "The caller's account", Response: accountView{}, handle: (*Server).getAccount},
		{Method: "GET", Path: "/api/v1/accounts", Role: a, System: true, Summary: "List accounts", Response: []accountView{}, handle: (*Server).listAccounts},
		{Method: "POST", Path: "/api/v1/accounts", Role: a, System: true, Summary: "Create an account and its first admin key",
			Request: createAccountReq{}, Response: createdAccount{}, Status: 201, handle: (*Server).postAccount},

		{Method: "GET", Path: "/api/v1/keys", Role: a, Summary: "List API keys", Response: []store.APIKey{}, handle: (*Server).listKeys},
		{Method: "POST", Path: "/api/v1/keys", Role: a, Summary: "Create an API key (its secret is shown once)",
			Request: createKeyReq{}, Response: createdKey{}, Status: 201, handle: (*Server).postKey},
		{Method: "DELETE", Path: "/api/v1/keys/{id}", Role: a, Summary: "Revoke an API key", Status: 204, handle: (*Server).deleteKey},

		{Method: "GET", Path: "/api/v1/tokens", Role: o, Summary: "List enrollment tokens", Response: []store.Token{}, handle: (*Server).listTokens},
		{Method: "POST", Path: "/api/v1/tokens", Role: o, Summary: "Create an enrollment token (its secret is shown once)",
			Request: createTokenReq{}, Response: createdToken{}, Status: 201, handle: (*Server).postToken},
		{Method: "DELETE", Path: "/api/v1/tokens/{id}", Role: o, Summary: "Revoke an enrollment token", Status: 204, handle: (*Server).deleteToken},

		{Method: "GET", Path: "/api/v1/devices", Role: v, Summary: "List devices (?selector=, ?status=, ?q=, ?limit=, ?after=)",
			Response: []store.Device{}, handle: (*Server).listDevices},
		{Method: "GET", Path: "/api/v1/devices/{id}", Role: v, Summary: "Show a device with its connection history",
			Response: deviceView{}, handle: (*Server).getDevice},
		{Method: "PATCH", Path: "/api/v1/devices/{id}/labels", Role: o, Summary: "Set (or, with an empty value, remove) labels",
			Request: labelsReq{}, Response: store.Device{}, handle: (*Server).patchLabels},
		{Method: "POST", Path: "/api/v1/devices/{id}/decommission", Role: o, Summary: "Revoke the device's certificate and disconnect it",
			Response: store.Device{}, handle: (*Server).postDecommission},
		{Method: "POST", Path: "/api/v1/devices/{id}/accept", Role: o, Summary: "Accept a pending device",
			Response: store.Device{}, handle: (*Server).postAccept},
		{Method: "POST", Path: "/api/v1/devices/{id}/reject", Role: o, Summary: "Reject a pending device",
			Response: store.Device{}, handle: (*Server).postReject},

		{Method: "GET", Path: "/api/v1/groups", Role: v, Summary: "List groups", Response: []store.Group{}, handle: (*Server).listGroups},
		{Method: "POST", Path: "/api/v1/groups", Role: o, Summary: "Create a group: static members or a label selector",
			Request: groupReq{}, Response: store.Group{}, Status: 201, handle: (*Server).postGroup},
		{Method: "GET", Path: "/api/v1/groups/{id}", Role: v, Summary: "Show a group and its devices", Response: groupView{}, handle: (*Server).getGroup},
		{Method: "PUT", Path: "/api/v1/groups/{id}/members", Role: o, Summary: "Replace a static group's members",
			Request: membersReq{}, Response: store.Group{}, handle: (*Server).putMembers},
		{Method: "DELETE", Path: "/api/v1/groups/{id}", Role: o, Summary: "Delete a group", Status: 204, handle: (*Server).deleteGroup},

		{Method: "GET", Path: "/api/v1/events", Role: v, Summary: "Events after ?after=SEQ; as Server-Sent Events with Accept: text/event-stream",
			Response: []store.Event{}, handle: (*Server).getEvents},

		{Method: "GET", Path: "/api/v1/webhooks", Role: a, Summary: "List webhooks", Response: []store.Webhook{}, handle: (*Server).listWebhooks},
		{Method: "POST", Path: "/api/v1/webhooks", Role: a, Summary: "Create a webhook (HMAC-SHA256 signed deliveries)",
			Request: webhookReq{}, Response: store.Webhook{}, Status: 201, handle: (*Server).postWebhook},
		{Method: "DELETE", Path: "/api/v1/webhooks/{id}", Role: a, Summary: "Delete a webhook", Status: 204, handle: (*Server).deleteWebhook},
		{Method: "GET", Path: "/api/v1/webhooks/{id}/deliveries", Role: a, Summary: "A webhook's delivery log",
			Response: []store.Delivery{}, handle: (*Server).listDeliveries},

		{Method: "GET", Path: "/api/v1/release-keys", Role: v, Summary: "List the account's release keys (device trust roots)",
			Response: []store.ReleaseKey{}, handle: (*Server).listReleaseKeys},
		{Method: "POST", Path: "/api/v1/release-keys", Role: a, Summary: "Register a release public key",
			Request: releaseKeyReq{}, Response: store.ReleaseKey{}, Status: 201, handle: (*Server).postReleaseKey},
		{Method: "DELETE", Path: "/api/v1/release-keys/{id}", Role: a, Summary: "Remove a release key", Status: 204, handle: (*Server).deleteReleaseKey},
	}
}

func noContent(w http.ResponseWriter) error {
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Endpoint describes one API endpoint and who may call it.
type Endpoint struct {
	Method, Path string
	Role         store.Role // "" when no API key is needed
	System       bool       // only admins of the default account
}

// Endpoints lists the API's endpoints: for documentation and for tests that prove
// every endpoint's access rule.
func Endpoints() []Endpoint {
	var out []Endpoint
	for _, r := range routes() {
		out = append(out, Endpoint{Method: r.Method, Path: r.Path, Role: r.Role, System: r.System})
	}
	return out
}
