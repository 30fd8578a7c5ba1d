package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/store/storetest"
)

func TestEventStreamFollowsEnrolmentAndPresence(t *testing.T) {
	e := start(t)
	c := server.NewClient(e.url, e.admin, e.srv.CAFingerprint())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var types []string
	go c.Follow(ctx, 0, func(raw json.RawMessage) error {
		var ev store.Event
		json.Unmarshal(raw, &ev)
		mu.Lock()
		types = append(types, ev.Type)
		mu.Unlock()
		return nil
	})
	id := e.enroll(e.token(e.admin, nil))
	d := e.connect(id, reportApps(`[]`))
	waitFor(t, "online", func() bool { return e.device(e.admin, id.DeviceID)["online"] == true })
	d.stop()
	waitFor(t, "enrolled, online, reported, offline on the stream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		got := strings.Join(types, ",")
		return strings.Contains(got, "enrolled") && strings.Contains(got, "online") &&
			strings.Contains(got, "reported") && strings.Contains(got, "offline")
	})
}

func TestWebhookDeliveriesAreSignedAndRetried(t *testing.T) {
	e := start(t)
	const secret = "0123456789abcdef-secret"
	var mu sync.Mutex
	calls := 0
	var good []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 { // the first attempt fails: it must be retried
			w.WriteHeader(503)
			return
		}
		sig := r.Header.Get(server.SignatureHeader)
		ts := strings.TrimPrefix(strings.Split(sig, ",")[0], "t=")
		var sec int64
		json.Unmarshal([]byte(ts), &sec)
		if server.Sign(secret, time.Unix(sec, 0), body) != sig {
			w.WriteHeader(401)
			return
		}
		var p server.WebhookPayload
		json.Unmarshal(body, &p)
		good = append(good, p.Type)
	}))
	defer hook.Close()
	var wh store.Webhook
	e.must(e.admin, "POST", "/api/v1/webhooks", map[string]any{"url": hook.URL, "secret": secret, "events": []string{"enrolled"}}, &wh)
	e.enroll(e.token(e.admin, nil))
	waitFor(t, "a signed delivery after a retry", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(good) == 1 && good[0] == "enrolled"
	})
	var ds []store.Delivery
	e.must(e.admin, "GET", "/api/v1/webhooks/"+wh.ID+"/deliveries", nil, &ds)
	if len(ds) != 1 || ds[0].Status != "delivered" || ds[0].Attempts != 2 {
		t.Fatalf("delivery log %+v", ds)
	}
}

func TestGroupsStaticAndDynamic(t *testing.T) {
	e := start(t)
	tok := e.token(e.admin, map[string]any{"max_uses": 3, "labels": map[string]string{"env": "prod"}})
	a, b := e.enroll(tok), e.enroll(tok)
	e.must(e.admin, "PATCH", "/api/v1/devices/"+b.DeviceID+"/labels", map[string]any{"labels": map[string]string{"env": "dev"}}, nil)
	e.must(e.admin, "POST", "/api/v1/groups", map[string]any{"name": "prod", "selector": "env=prod"}, nil)
	e.must(e.admin, "POST", "/api/v1/groups", map[string]any{"name": "pick", "members": []string{b.DeviceID}}, nil)
	var g struct {
		Devices []store.Device `json:"devices"`
	}
	e.must(e.admin, "GET", "/api/v1/groups/prod", nil, &g)
	if len(g.Devices) != 1 || g.Devices[0].ID != a.DeviceID {
		t.Fatalf("dynamic group: %+v", g.Devices)
	}
	c := e.enroll(tok) // joins the dynamic group by its labels
	e.must(e.admin, "GET", "/api/v1/groups/prod", nil, &g)
	if len(g.Devices) != 2 {
		t.Fatalf("dynamic group after a new device: %d", len(g.Devices))
	}
	e.must(e.admin, "PUT", "/api/v1/groups/pick/members", map[string]any{"members": []string{a.DeviceID, c.DeviceID}}, nil)
	e.must(e.admin, "GET", "/api/v1/groups/pick", nil, &g)
	if len(g.Devices) != 2 {
		t.Fatalf("static group: %+v", g.Devices)
	}
	if code := e.do(e.admin, "PUT", "/api/v1/groups/prod/members", map[string]any{"members": []string{}}, nil); code != 409 {
		t.Fatalf("members of a dynamic group: %d", code)
	}
}

// TestServerOnPostgres runs enrolment, presence and a restart on PostgreSQL.
func TestServerOnPostgres(t *testing.T) {
	url := storetest.PostgresURL(t, pg)
	e := startWith(t, t.TempDir(), url)
	id := e.enroll(e.token(e.admin, nil))
	d := e.connect(id, reportApps(`[{"name":"pg"}]`))
	waitFor(t, "online", func() bool { return e.device(e.admin, id.DeviceID)["online"] == true })
	d.stop()
	e.restart()
	dev := e.device(e.admin, id.DeviceID)
	if dev["status"] != "active" || dev["reported"] == nil {
		t.Fatalf("after restart on postgres: %v", dev)
	}
}

func TestOpenAPIDocumentIsServedAndCoversEveryEndpoint(t *testing.T) {
	e := start(t)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	e.must("", "GET", "/api/v1/openapi.json", nil, &doc)
	for _, ep := range server.Endpoints() {
		if doc.Paths[ep.Path][strings.ToLower(ep.Method)] == nil {
			t.Errorf("%s %s missing from the OpenAPI document", ep.Method, ep.Path)
		}
	}
}
