package server

import (
	"net/http"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// routes is the API. Roles: viewer reads, operator changes devices, tokens,
// groups, releases and campaigns, admin manages keys, webhooks and release keys;
// System marks what only the default account's admins may do; Device marks what
// devices fetch with their client certificate.
func routes() []route {
	v, o, a := store.RoleViewer, store.RoleOperator, store.RoleAdmin
	return []route{
		{Method: "GET", Path: "/api/v1/openapi.json", Summary: "This API's OpenAPI 3 document", handle: (*Server).getOpenAPI},
		{Method: "POST", Path: link.EnrollPath, Summary: "Enroll a device: token and CSR in, certificate and trust roots out",
			Request: link.EnrollRequest{}, Response: link.EnrollResponse{}, handle: (*Server).postEnroll},

		{Method: "GET", Path: "/api/v1/account", Role: v, Summary: "The caller's account", Response: accountView{}, handle: (*Server).getAccount},
		{Method: "PUT", Path: "/api/v1/account/policy", Role: a, Summary: "Set the account's policy for its devices (devmode: allow | deny)",
			Request: policy{}, Response: accountView{}, handle: (*Server).putPolicy},
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

		{Method: "POST", Path: "/api/v1/packages", Role: o, Summary: "Upload one .tern package (the body), verified against the release keys",
			RequestType: packageMediaType, MaxBody: -1, Response: store.Package{}, Status: 201, handle: (*Server).postPackage},
		{Method: "GET", Path: "/api/v1/releases", Role: v, Summary: "List releases, newest first", Response: []store.Release{}, handle: (*Server).listReleases},
		{Method: "POST", Path: "/api/v1/releases", Role: o, Summary: "Create a release: multipart/form-data (name, package files) or JSON (name, uploaded package digests)",
			Request: releaseReq{}, RequestType: "multipart/form-data", MaxBody: -1, Response: store.Release{}, Status: 201, handle: (*Server).postRelease},
		{Method: "GET", Path: "/api/v1/releases/{id}", Role: v, Summary: "Show a release (id or name)", Response: store.Release{}, handle: (*Server).getRelease},

		{Method: "GET", Path: "/api/v1/devices/{id}/desired", Role: v, Summary: "A device's desired state and what it reported about it",
			Response: store.DesiredState{}, handle: (*Server).getDesired},
		{Method: "PUT", Path: "/api/v1/devices/{id}/desired", Role: o, Summary: "Give a device a release (it leaves any campaign)",
			Request: desiredReq{}, Response: store.DesiredState{}, handle: (*Server).putDesired},
		{Method: "GET", Path: "/api/v1/devices/{id}/events", Role: v, Summary: "A device's latest events (?limit=), newest first",
			Response: []store.DeviceEvent{}, handle: (*Server).getDeviceEvents},
		{Method: "GET", Path: "/api/v1/devices/{id}/logs", Role: v, Summary: "A device's logs as JSON lines (?app=, ?since=RFC3339 or a duration, ?after=ID, ?follow=1 streams new lines)",
			Response: []store.LogLine{}, handle: (*Server).getDeviceLogs},

		{Method: "GET", Path: "/api/v1/campaigns", Role: v, Summary: "List campaigns with their progress", Response: []CampaignView{}, handle: (*Server).listCampaigns},
		{Method: "POST", Path: "/api/v1/campaigns", Role: o, Summary: "Start a campaign: a release to a group or selector, in phases",
			Request: campaignReq{}, Response: CampaignView{}, Status: 201, handle: (*Server).postCampaign},
		{Method: "GET", Path: "/api/v1/campaigns/{id}", Role: v, Summary: "Show a campaign (id or name): progress per phase and per device",
			Response: CampaignView{}, handle: (*Server).getCampaign},
		{Method: "POST", Path: "/api/v1/campaigns/{id}/pause", Role: o, Summary: "Pause a running campaign", Response: CampaignView{}, handle: campaignAction(store.ActionPause)},
		{Method: "POST", Path: "/api/v1/campaigns/{id}/resume", Role: o, Summary: "Resume a paused campaign (its failures so far are acknowledged)",
			Response: CampaignView{}, handle: campaignAction(store.ActionResume)},
		{Method: "POST", Path: "/api/v1/campaigns/{id}/cancel", Role: o, Summary: "Cancel a campaign: assign no further device", Response: CampaignView{}, handle: campaignAction(store.ActionCancel)},
		{Method: "POST", Path: "/api/v1/campaigns/{id}/rollback", Role: o, Summary: "Roll back: give the campaign's devices what they ran before",
			Response: CampaignView{}, handle: (*Server).postCampaignRollback},

		{Method: "GET", Path: "/api/v1/device/manifests/{digest}", Device: true, Summary: "Device: a released package's manifest.json (client certificate)",
			handle: (*Server).getDeviceManifest},
		{Method: "GET", Path: "/api/v1/device/manifests/{digest}/sig", Device: true, Summary: "Device: a released package's manifest.sig (client certificate)",
			handle: (*Server).getDeviceManifestSig},
		{Method: "GET", Path: "/api/v1/device/blobs/{digest}", Device: true, Summary: "Device: a blob of a released package; Range requests resume (client certificate)",
			handle: (*Server).getDeviceBlob},
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
	Device       bool       // for devices: their client certificate, no API key
}

// Endpoints lists the API's endpoints: for documentation and for tests that prove
// every endpoint's access rule.
func Endpoints() []Endpoint {
	var out []Endpoint
	for _, r := range routes() {
		out = append(out, Endpoint{Method: r.Method, Path: r.Path, Role: r.Role, System: r.System, Device: r.Device})
	}
	return out
}
